"""Change engines: the path index against plain glob matching, the path graph against the naive scan,
manifests, global paths, the engine choice of `changes.analyze`, and the Bazel engine on a diamond.

The Bazel tests need `bazel` (Debian: apt-get install bazel-bootstrap): without it they skip, unless
CI=true, where they fail. They share one Bazel server (its first query takes a few seconds).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import git
import pytest
from temporalio.exceptions import ApplicationError

from activities.bazel import BazelEngine, BazelRunner, _rdeps_query
from activities.change_engines import (
    DEFAULT_GLOBAL_PATHS,
    ManifestError,
    Package,
    PathGraphEngine,
    PathIndex,
    ScanEngine,
    glob_match,
    merge_packages,
    parse_package_manifest,
    parse_services_file,
)
from activities.changes import ChangeActivities, affected_services, checkout
from activities.errors import BAD_REQUEST, NOT_CONFIGURED
from activities.gitrepo import GitWorkspace
from sandbox.repos import commit_change
from workflows.types import AnalyzeChangesInput, ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "bazel_ws"
STUBS = ROOT / "tests" / "bazel_stubs"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}

# The diamond's services as ferry.yaml declares them; the libraries come from the fixture's manifests.
SERVICES = [
    ServiceSpec(name="alpha", paths=["services/alpha/**", "deploy/alpha/**"], depends_on=["top"], image="alpha"),
    ServiceSpec(name="beta", paths=["services/beta/**"], depends_on=["left"], image="beta"),
    ServiceSpec(name="gamma", paths=["services/gamma/**"], depends_on=["right"], image="gamma"),
    ServiceSpec(name="delta", paths=["services/delta/**"], image="delta"),
]
ALL = ["alpha", "beta", "delta", "gamma"]

# changed files -> the services both engines must name (hand-derived from the BUILD files).
DIAMOND_CASES: list[tuple[list[str], list[str]]] = [
    (["services/delta/main.py"], ["delta"]),  # a leaf
    (["libs/base/base.py"], ["alpha", "beta", "gamma"]),  # the base of the diamond
    (["libs/left/left.py"], ["alpha", "beta"]),  # one side
    (["libs/top/top.py"], ["alpha"]),  # the top
    (["libs/right/BUILD.bazel"], ["alpha", "gamma"]),  # a package's BUILD file
    (["WORKSPACE"], ALL),  # a root build file
    ([".buildkite/pipeline.yml"], ALL),  # CI configuration
    (["docs/guide.md"], []),  # outside every package, owned by nobody
    (["deploy/alpha/values.yaml"], ["alpha"]),  # outside every package, owned by a service
    (["services/beta/README.md"], ["beta"]),  # inside a package but no Bazel target
    (["libs/right/right.py", "services/delta/main.py"], ["alpha", "delta", "gamma"]),
]


def fixture_packages(root: Path = FIXTURE) -> list[Package]:
    return [
        parse_package_manifest(p.relative_to(root).as_posix(), p.read_text()) for p in root.rglob("ferry-package.yaml")
    ]


def diamond_graph(services: list[ServiceSpec] = SERVICES, manifests: bool = True) -> PathGraphEngine:
    return PathGraphEngine.from_services(services, fixture_packages() if manifests else [])


# --- the path index answers as glob_match ---

GLOB_CASES = [
    ("services/api/**", "services/api/app.py"),
    ("services/api/**", "services/api"),
    ("services/api/**", "services/apix/app.py"),
    ("services/api", "services/api/app.py"),
    ("services/api", "services/api"),
    ("services/api/", "services/api/a/b.py"),
    ("./services/api", "services/api/x"),
    ("/services/api", "services/api/x"),
    ("services/*/Dockerfile", "services/web/Dockerfile"),
    ("services/*/Dockerfile", "services/web/sub/Dockerfile"),
    ("**/BUILD.bazel", "BUILD.bazel"),
    ("**/BUILD.bazel", "libs/common/BUILD.bazel"),
    ("libs/**/test_*.py", "libs/test_a.py"),
    ("libs/**/test_*.py", "libs/common/tests/test_a.py"),
    ("*.md", "README.md"),
    ("*.md", "docs/README.md"),
    ("svc/file?.py", "svc/file1.py"),
    ("svc/[ab].py", "svc/b.py"),
    ("svc/[!ab].py", "svc/b.py"),
    ("svc/[ab.py", "svc/[ab.py"),  # an unclosed class is literal
    ("svc/a+b(c).py", "svc/a+b(c).py"),
    ("**", "anything/at/all"),
    ("", "x"),
    ("a/**/", "a/b/c"),
]


@pytest.mark.parametrize(("pattern", "path"), GLOB_CASES)
def test_index_matches_exactly_what_glob_match_matches(pattern: str, path: str) -> None:
    index = PathIndex()
    index.add(pattern, 7)
    assert (index.match(path) == [7]) is glob_match(pattern, path)


def test_index_agrees_with_glob_match_on_random_patterns() -> None:
    rng = random.Random(11)
    segments = ["a", "b", "src", "lib", "x.py", "y.md", "BUILD"]
    wild = ["*", "**", "?", "*.py", "[ab]", "[!a]", "x*", "**"]

    def pattern() -> str:
        parts = [rng.choice(wild) if rng.random() < 0.3 else rng.choice(segments) for _ in range(rng.randint(1, 4))]
        return "/".join(parts) + ("/" if rng.random() < 0.1 else "")

    patterns = [pattern() for _ in range(300)]
    index = PathIndex()
    for i, p in enumerate(patterns):
        index.add(p, i)
    for _ in range(400):
        path = "/".join(rng.choice(segments) for _ in range(rng.randint(1, 5)))
        expected = {i for i, p in enumerate(patterns) if glob_match(p, path)}
        assert set(index.match(path)) == expected, path


# --- the path graph agrees with the naive scan ---


def random_packages(rng: random.Random, n: int) -> list[Package]:
    packages = []
    for i in range(n):
        d = f"{rng.choice(['svc', 'lib', 'tools'])}/p{i}"
        paths = rng.choice(
            [[f"{d}/**"], [d], [f"{d}/src/**", f"{d}/BUILD"], [f"{d}/**/*.py"], [f"{d}/**", f"proto/*/p{i}.proto"]]
        )
        deps = tuple(f"p{j}" for j in rng.sample(range(i), min(i, rng.choice([0, 1, 2]))))
        packages.append(Package(f"p{i}", tuple(paths), deps, rng.choice(["service", "library"])))
    return packages


def test_path_graph_gives_the_scans_answers_and_reasons() -> None:
    rng = random.Random(5)
    packages = random_packages(rng, 200)
    fast, naive = PathGraphEngine(packages), ScanEngine(packages)
    files = [
        f"{p.paths[0].split('/**')[0].split('/src')[0]}/{rng.choice(['a.py', 'src/b.py', 'BUILD', 'x/y.md'])}"
        for p in packages
    ]
    files += ["proto/x/p3.proto", "docs/readme.md", "MODULE.bazel", "lib/p9/defs.bzl"]
    for _ in range(200):
        changed = sorted(set(rng.sample(files, rng.randint(1, 8))))
        assert fast.affected_packages(changed) == naive.affected_packages(changed), changed
        assert fast.affected(changed) == naive.affected(changed)


def test_reasons_name_the_shortest_chain_and_direct_changes_win() -> None:
    graph = diamond_graph()
    affected, reasons = graph.affected(["libs/base/base.py"])
    assert affected == ["alpha", "beta", "gamma"]
    assert reasons["beta"] == "depends on left -> base (changed: libs/base/base.py)"
    assert reasons["alpha"] == "depends on top -> left -> base (changed: libs/base/base.py)"
    _, reasons = graph.affected(["libs/base/base.py", "services/alpha/main.py"])
    assert reasons["alpha"] == "changed: services/alpha/main.py"


def test_long_chains_are_shortened_in_reasons_and_agree_with_the_scan() -> None:
    chain = [Package("p0", ("p0/**",))] + [Package(f"p{i}", (f"p{i}/**",), (f"p{i - 1}",)) for i in range(1, 3000)]
    chain[-1] = replace(chain[-1], kind="service")
    reasons = PathGraphEngine(chain).affected_packages(["p0/x.py"])
    assert len(reasons) == 3000
    assert reasons["p8"] == "depends on p7 -> p6 -> p5 -> p4 -> p3 -> p2 -> p1 -> p0 (changed: p0/x.py)"
    assert reasons["p9"] == "depends on p8 -> p7 -> p6 -> p5 -> p4 -> p3 -> ... (+2 more) -> p0 (changed: p0/x.py)"
    assert reasons["p2999"].startswith("depends on p2998 -> p2997 -> ") and "(+2992 more) -> p0 (" in reasons["p2999"]
    assert ScanEngine(chain).affected_packages(["p0/x.py"]) == reasons


def test_affected_services_keeps_its_answers_without_global_paths() -> None:
    # The old public function has no global paths: a root build file is just a file nobody owns.
    assert affected_services(SERVICES, ["WORKSPACE"]) == ([], {})
    assert affected_services(SERVICES, ["services/beta/x.py"]) == (["beta"], {"beta": "changed: services/beta/x.py"})


# --- global paths ---


@pytest.mark.parametrize(
    "changed", [["MODULE.bazel"], ["BUILD.bazel"], [".bazelrc"], [".buildkite/steps/e2e.yml"], ["tools/rules.bzl"]]
)
def test_a_global_path_affects_every_service(changed: list[str]) -> None:
    affected, reasons = diamond_graph().affected(changed)
    assert affected == ALL
    assert reasons["delta"] == f"changed: {changed[0]}, a global path: affects every service"


def test_global_paths_are_configurable() -> None:
    assert diamond_graph().global_paths == DEFAULT_GLOBAL_PATHS
    none = PathGraphEngine.from_services(SERVICES, fixture_packages(), global_paths=[])
    assert none.affected([".buildkite/pipeline.yml"]) == ([], {})
    own = PathGraphEngine.from_services(SERVICES, fixture_packages(), global_paths=["ci/**"])
    assert own.affected(["ci/run"])[0] == ALL and own.affected(["WORKSPACE"])[0] == []


def test_a_direct_change_keeps_its_reason_beside_a_global_one() -> None:
    _, reasons = diamond_graph().affected(["WORKSPACE", "services/delta/main.py"])
    assert reasons["delta"] == "changed: services/delta/main.py"
    assert reasons["alpha"] == "changed: WORKSPACE, a global path: affects every service"


# --- manifests ---


def test_package_manifest_paths_are_relative_to_its_directory() -> None:
    p = parse_package_manifest("libs/a/ferry-package.yaml", "name: a\npaths: ['src/**', '/proto/a/*.proto']\n")
    assert p == Package("a", ("libs/a/src/**", "proto/a/*.proto"), (), "library", "libs/a/ferry-package.yaml")
    default = parse_package_manifest("libs/b/ferry-package.yaml", "name: b\ndepends_on: [a]\n")
    assert default.paths == ("libs/b/**",) and default.depends_on == ("a",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("paths: ['**']\n", "name: must be a non-empty string"),
        ("name: a\npaths: ['../other/**']\n", "leaves the package"),
        ("name: a\nowner: me\n", "unknown key(s) owner"),
        ("name: a\ndepends_on: base\n", "depends_on: must be a list"),
        ("- just a list\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_manifest_names_its_file_and_problem(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_package_manifest("libs/a/ferry-package.yaml", text)
    assert "libs/a/ferry-package.yaml" in str(err.value) and message in str(err.value)


def test_services_file_declares_packages_from_the_root() -> None:
    text = "packages:\n  base: {paths: ['libs/base/**']}\n  left: {paths: [libs/left], depends_on: [base]}\n"
    base, left = parse_services_file(text)
    assert base.paths == ("libs/base/**",) and left.depends_on == ("base",) and left.source == "services.yaml"
    with pytest.raises(ManifestError, match=r"services.yaml: packages.x.paths: must name at least one path"):
        parse_services_file("packages:\n  x: {paths: []}\n")


def test_merge_only_ferry_yaml_makes_a_package_deployable() -> None:
    manifest = [
        Package("alpha", ("extra/alpha/**",), ("base",), "library", "extra/ferry-package.yaml"),
        Package("base", ("libs/base/**",), (), "library", "libs/base/ferry-package.yaml"),
    ]
    merged = {p.name: p for p in merge_packages(SERVICES, manifest)}
    assert merged["alpha"].kind == "service"
    assert merged["alpha"].paths == ("services/alpha/**", "deploy/alpha/**", "extra/alpha/**")
    assert merged["alpha"].depends_on == ("top", "base")
    assert merged["base"].kind == "library"
    with pytest.raises(ManifestError, match="declared twice: in a/ferry-package.yaml and in b/ferry-package.yaml"):
        merge_packages(
            [],
            [
                Package("x", ("a/**",), source="a/ferry-package.yaml"),
                Package("x", ("b/**",), source="b/ferry-package.yaml"),
            ],
        )
    with pytest.raises(ManifestError, match="a/ferry-package.yaml: depends_on: no package is named 'nope'"):
        merge_packages([], [Package("x", ("a/**",), ("nope",), source="a/ferry-package.yaml")])


def test_the_bench_answers_identically_at_a_small_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_change_analysis", ROOT / "bench" / "change_analysis.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    repo = bench.generate(packages=300, files=3000)
    assert len(repo.files) == 3000 and len(repo.manifests) == 300
    line, same = bench.run(packages=300, files=3000, n_commits=10, repeat=1)
    assert same and "answers identical" in line and line.startswith("change_analysis: naive/path-graph = ")


# --- the activity: engine choice, manifests, twice ---


def make_remote(root: Path, template: Path = FIXTURE) -> Path:
    """A bare repo whose main branch holds the template's files in one commit."""
    work = root / "work"
    shutil.copytree(template, work)
    repo = git.Repo.init(work, initial_branch="main")
    repo.git.add("-A")
    repo.git.commit("-q", "--no-verify", "-m", "diamond", env=GIT_ENV)
    bare = root / "diamond.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    repo.git.push("-q", str(bare), "main:refs/heads/main")
    repo.close()
    shutil.rmtree(work)
    return bare


def analyze_input(remote: Path, commit: str, **kw: object) -> AnalyzeChangesInput:
    return AnalyzeChangesInput(
        repo_url=str(remote),
        commit=commit,
        branch="main",
        default_branch="main",
        services=SERVICES,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path)


def no_bazel(tmp_path: Path) -> ChangeActivities:
    return ChangeActivities(GitWorkspace(tmp_path / "ws"), BazelRunner(str(tmp_path / "missing" / "bazel")))


async def test_manifests_at_the_commit_join_the_graph_and_twice_is_the_same(remote: Path, tmp_path: Path) -> None:
    acts = no_bazel(tmp_path)
    sha = commit_change(remote, {"libs/base/base.py": "NAME = 'base2'\n"}, "base: change")
    without = await acts.analyze(analyze_input(remote, sha))
    assert without.affected == []  # ferry.yaml alone does not know the libraries
    first = await acts.analyze(analyze_input(remote, sha, package_manifests=True))
    second = await acts.analyze(analyze_input(remote, sha, package_manifests=True))
    assert first.affected == ["alpha", "beta", "gamma"]
    assert first.reasons["gamma"] == "depends on right -> base (changed: libs/base/base.py)"
    assert first == second
    # A manifest added in the commit counts at that commit.
    sha = commit_change(
        remote,
        {"libs/extra/ferry-package.yaml": "name: extra\n", "libs/extra/x.py": "", "services/delta/main.py": ""},
        "delta uses extra",
    )
    later = await acts.analyze(analyze_input(remote, sha, package_manifests=True))
    assert later.affected == ["delta"]


async def test_a_broken_manifest_is_fatal_and_names_it(remote: Path, tmp_path: Path) -> None:
    sha = commit_change(remote, {"libs/left/ferry-package.yaml": "name: left\ndepends_on: [bsae]\n"}, "typo")
    with pytest.raises(ApplicationError) as err:
        await no_bazel(tmp_path).analyze(analyze_input(remote, sha, package_manifests=True))
    assert err.value.type == BAD_REQUEST and err.value.non_retryable
    assert "libs/left/ferry-package.yaml" in str(err.value) and "'bsae'" in str(err.value)


async def test_global_paths_through_the_activity(remote: Path, tmp_path: Path) -> None:
    acts = no_bazel(tmp_path)
    sha = commit_change(remote, {".buildkite/pipeline.yml": "steps: []\n"}, "ci")
    assert (await acts.analyze(analyze_input(remote, sha))).affected == ALL
    assert (await acts.analyze(analyze_input(remote, sha, global_paths=["tools/**"]))).affected == []


async def test_unknown_engine_is_refused(remote: Path, tmp_path: Path) -> None:
    head = git.Git().ls_remote(str(remote), "refs/heads/main").split()[0]
    with pytest.raises(ApplicationError) as err:
        await no_bazel(tmp_path).analyze(analyze_input(remote, head, engine="buck"))
    assert err.value.type == BAD_REQUEST and "use one of auto, paths, bazel" in str(err.value)


async def test_without_bazel_auto_uses_the_path_graph_and_bazel_says_how_to_install(
    remote: Path, tmp_path: Path
) -> None:
    acts = no_bazel(tmp_path)
    sha = commit_change(remote, {"libs/left/left.py": "NAME = 'l2'\n"}, "left")
    auto = await acts.analyze(analyze_input(remote, sha, engine="auto", package_manifests=True))
    paths = await acts.analyze(analyze_input(remote, sha, engine="paths", package_manifests=True))
    assert auto == paths and auto.affected == ["alpha", "beta"]
    with pytest.raises(ApplicationError) as err:
        await acts.analyze(analyze_input(remote, sha, engine="bazel"))
    assert err.value.type == NOT_CONFIGURED and err.value.non_retryable
    assert "apt-get install bazel-bootstrap" in str(err.value)


# --- the Bazel runner, with a stand-in binary ---

FAKE_BAZEL = """#!{python}
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_BAZEL_LOG"], "a") as log:
    query_file = [a.split("=", 1)[1] for a in args if a.startswith("--query_file=")]
    log.write(repr((args, open(query_file[0]).read() if query_file else None)) + "\\n")
mode = os.environ.get("FAKE_BAZEL_MODE", "ok")
if mode == "ok":
    print("//libs/left:left.py")
    print("//libs/left:left")
    print("//services/beta:beta")
    sys.exit(0)
if mode == "network":
    sys.stderr.write("ERROR: Error downloading [https://mirror.bazel.build/x.zip]: Unknown host\\n")
    sys.exit(7)
if mode == "build":
    sys.stderr.write("ERROR: /ws/libs/right/BUILD.bazel:1:11: name 'py_libary' is not defined\\n")
    sys.exit(7)
sys.stderr.write("ERROR: Unrecognized option: --bogus\\n")
sys.exit(2)
"""


@pytest.fixture
def fake_bazel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    binary = tmp_path / "bin" / "bazel"
    binary.parent.mkdir()
    binary.write_text(FAKE_BAZEL.format(python=sys.executable))
    binary.chmod(0o755)
    log = tmp_path / "bazel.log"
    monkeypatch.setenv("FAKE_BAZEL_LOG", str(log))
    ws = tmp_path / "fx"
    shutil.copytree(FIXTURE, ws)
    yield binary, ws


def test_runner_command_line_and_the_query_it_sends(fake_bazel: tuple[Path, Path], tmp_path: Path) -> None:
    binary, ws = fake_bazel
    runner = BazelRunner(str(binary), output_user_root=tmp_path / "out", max_idle_secs=30, query_flags=["--x=1"])
    engine = BazelEngine(ws, diamond_graph(SERVICES, manifests=False), runner)
    changed = ["libs/left/left.py", "libs/left/BUILD.bazel", "services/delta/README.md", "docs/guide.md"]
    affected, reasons = engine.affected(changed)
    # Without manifests ferry.yaml does not know `left`; the stand-in says beta's target depends on it.
    assert affected == ["beta", "delta"]
    assert reasons["beta"] == "depends on changed Bazel targets (changed: libs/left/left.py (+1 more))"
    assert reasons["delta"] == "changed: services/delta/README.md"  # no target: mapped by path
    (args, query), *_ = [ast.literal_eval(line) for line in (tmp_path / "bazel.log").read_text().splitlines()]
    assert args[:3] == [f"--output_user_root={tmp_path / 'out'}", "--max_idle_secs=30", "query"]
    assert "--noshow_progress" in args and "--output=label" in args and args[-1] == "--x=1"
    # Changed files are looked up among their packages' targets; a changed BUILD file makes its whole package
    # count; docs/ is in no package, so it is not in the query at all.
    assert query == (
        'rdeps(//..., filter("^(//libs/left:left[.]py|//services/delta:README[.]md)$", '
        "set(//libs/left:* //services/delta:*)) + set(//libs/left:*))"
    )


def test_query_text_for_the_root_package_and_odd_names() -> None:
    assert _rdeps_query({"//:a-b+c.py": "a-b+c.py"}, {""}, set()) == (
        'rdeps(//..., filter("^(//:a[-]b[+]c[.]py)$", set(//:*)))'
    )


@pytest.mark.parametrize(
    ("mode", "retry", "type_", "words"),
    [
        ("network", True, "UpstreamUnavailable", "could not be fetched"),
        ("build", False, BAD_REQUEST, "do not load"),
        ("flags", False, BAD_REQUEST, "check change_analysis.bazel flags"),
    ],
)
def test_runner_classifies_failures(
    fake_bazel: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, mode: str, retry: bool, type_: str, words: str
) -> None:
    binary, ws = fake_bazel
    monkeypatch.setenv("FAKE_BAZEL_MODE", mode)
    with pytest.raises(ApplicationError) as err:
        BazelRunner(str(binary), batch=True).query(ws, "//...")
    assert err.value.non_retryable is not retry and err.value.type == type_ and words in str(err.value)


# --- the real Bazel on the diamond ---


def stub_flags() -> list[str]:
    """What Debian's bazel-bootstrap (Bazel 4) needs to answer `bazel query` offline."""
    overrides = [f"--override_repository={name}={STUBS / name}" for name in ("rules_cc", "remote_coverage_tools")]
    # Query never compiles: skip probing the C compiler (a few seconds off the first query, no gcc needed).
    return [*overrides, "--repo_env=BAZEL_DO_NOT_DETECT_CPP_TOOLCHAIN=1"]


@pytest.fixture(scope="module")
def bazel() -> Iterator[BazelRunner]:
    if shutil.which("bazel") is None:
        message = "bazel is not installed: apt-get install bazel-bootstrap (Debian/Ubuntu) to run the Bazel tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="ferry-bazel-"))
    runner = BazelRunner(output_user_root=root, query_flags=stub_flags(), max_idle_secs=120, timeout=300)
    try:
        yield runner
    finally:
        runner.shutdown()
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bazel_repo(bazel: BazelRunner, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ChangeActivities, str]:
    """The diamond as a remote, the activities (one clone: one Bazel server), and the first commit."""
    root = tmp_path_factory.mktemp("diamond")
    remote = make_remote(root)
    acts = ChangeActivities(GitWorkspace(root / "ws"), bazel)
    first = git.Git().ls_remote(str(remote), "refs/heads/main").split()[0]
    return remote, acts, first


async def checked_out(acts: ChangeActivities, remote: Path, commit: str) -> Path:
    return await acts.workspace.run(str(remote), lambda r: checkout(r, commit), what="checkout")


@pytest.mark.parametrize("manifests", [True, False], ids=["libraries-from-manifests", "ferry-yaml-only"])
async def test_both_engines_agree_on_the_diamond(bazel_repo, manifests: bool) -> None:
    remote, acts, first = bazel_repo
    ws = await checked_out(acts, remote, first)
    services = (
        SERVICES
        if manifests
        else [
            *SERVICES,
            *(
                ServiceSpec(name=p.name, paths=list(p.paths), depends_on=list(p.depends_on), kind="library")
                for p in fixture_packages()
            ),
        ]
    )
    graph = PathGraphEngine.from_services(services, fixture_packages() if manifests else [])
    engine = BazelEngine(ws, graph, acts.bazel)
    for changed, expected in DIAMOND_CASES:
        by_paths, by_bazel = graph.affected(changed), engine.affected(changed)
        assert by_paths[0] == expected, changed
        assert by_bazel[0] == expected, changed
        # Direct and global reasons are worded alike; Bazel says so when it found a dependency.
        for name in expected:
            if by_paths[1][name].startswith("changed:"):
                assert by_bazel[1][name] == by_paths[1][name]
            else:
                assert by_bazel[1][name].startswith("depends on")


async def test_bazel_knows_the_diamond_without_any_depends_on(bazel_repo) -> None:
    remote, acts, first = bazel_repo
    ws = await checked_out(acts, remote, first)
    bare = [replace(s, depends_on=[]) for s in SERVICES]
    graph = PathGraphEngine.from_services(bare)  # no libraries, no dependencies
    engine = BazelEngine(ws, graph, acts.bazel)
    assert graph.affected(["libs/base/base.py"]) == ([], {})
    affected, reasons = engine.affected(["libs/base/base.py"])
    assert affected == ["alpha", "beta", "gamma"]
    assert reasons["alpha"] == "depends on changed Bazel targets (changed: libs/base/base.py)"
    # Finer than a package graph: only base's own test depends on this file.
    assert engine.affected(["libs/base/check_base.py"]) == ([], {})


async def test_bazel_engine_in_the_activity_twice_and_auto(bazel_repo) -> None:
    remote, acts, _ = bazel_repo
    sha = commit_change(remote, {"libs/right/right.py": "NAME = 'right2'\n"}, "right: change")
    first = await acts.analyze(analyze_input(remote, sha, engine="bazel"))
    second = await acts.analyze(analyze_input(remote, sha, engine="bazel"))
    assert first == second
    assert first.affected == ["alpha", "gamma"]
    assert first.reasons["gamma"] == "depends on changed Bazel targets (changed: libs/right/right.py)"
    auto = await acts.analyze(analyze_input(remote, sha, engine="auto"))
    assert auto == first  # a Bazel workspace and bazel on the worker: auto picks Bazel


async def test_broken_build_files_fail_bazel_and_auto_falls_back(bazel_repo) -> None:
    remote, acts, _ = bazel_repo
    broken = "py_libary(name = 'right', srcs = ['right.py'])\n"
    sha = commit_change(remote, {"libs/right/BUILD.bazel": broken, "services/gamma/main.py": ""}, "typo")
    with pytest.raises(ApplicationError) as err:
        await acts.analyze(analyze_input(remote, sha, engine="bazel"))
    assert err.value.type == BAD_REQUEST and err.value.non_retryable
    assert "do not load" in str(err.value) and "py_libary" in str(err.value)
    auto = await acts.analyze(analyze_input(remote, sha, engine="auto", package_manifests=True))
    assert auto.affected == ["alpha", "gamma"]  # the path graph's answer
    assert auto.reasons["gamma"] == "changed: services/gamma/main.py"
