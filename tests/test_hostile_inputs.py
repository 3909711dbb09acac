"""Hostile and malformed inputs are refused at the door (issue 17): exit 2, the key or argument named, and
nothing started: no Temporal client is ever asked for.

Config keys go through the real loader (a ferry.yaml on disk, `ferry --config ... release start`), CLI
arguments through the real entry point (`starters.cli.main`), against a real app repository on disk so that
the commit check has something to look in. Good inputs next to each bad one must still pass.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sample import sample_config

from common import inputs
from common.config import ConfigError, load_config, parse_config
from common.yamlsafe import MAX_NODES, YamlBudgetError, load_yaml, load_yaml_all
from starters import commits, provision_cmds, release_cmds, rollback_cmds
from starters.cli import main
from starters.common import UNREACHABLE, USAGE, CommandError
from workflows.approval_types import MAX_COMMENT, MAX_NAME

MISSING_SHA = "0123456789abcdef0123456789abcdef01234567"
MEGABYTE = "x" * 1_000_000


def _git(cwd: Path, *argv: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "HOME": str(cwd),
    }
    return subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A bare app repository with one commit: (path, commit SHA, SHA of that commit's tree)."""
    root = tmp_path_factory.mktemp("app")
    work = root / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "README").write_text("app\n")
    _git(work, "add", "README")
    _git(work, "commit", "-q", "-m", "first")
    bare = root / "app.git"
    _git(root, "clone", "-q", "--bare", str(work), str(bare))
    return bare, _git(work, "rev-parse", "HEAD"), _git(work, "rev-parse", "HEAD^{tree}")


class TemporalCalls:
    """Stands in for every CLI module's `client_for`: records the call, then exits as 'unreachable'."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, _cfg: object) -> object:
        self.calls += 1
        raise CommandError("(test) Temporal would be reached here", UNREACHABLE)


@pytest.fixture
def temporal(monkeypatch: pytest.MonkeyPatch) -> TemporalCalls:
    """No Temporal: a refused input must never get as far as connecting."""
    calls = TemporalCalls()
    for module in (release_cmds, rollback_cmds, provision_cmds):
        monkeypatch.setattr(module, "client_for", calls)
    return calls


def write_config(tmp_path: Path, app: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The sample ferry.yaml on the real app repository, with `change` applied, written to disk."""
    data = sample_config(app_repo=str(app))
    data["provisioning"] = {"workspaces": {"tf": {"site": "onprem", "path": str(tmp_path / "tf")}}}
    if change is not None:
        change(data)
    path = tmp_path / "ferry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str]:
    """`ferry --config CONFIG ARGV...` through the real entry point: (exit code, stderr)."""
    code = main(["--config", str(config), *argv])
    return code, capsys.readouterr().err


def setting(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets data[k1][k2]... = value."""

    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data.setdefault(key, {})
        data[keys[-1]] = value

    return change


# (key named in the message, change, what the message says about it)
BAD_CONFIG = [
    ("services.web.image", setting("services", "web", "image", value="../../x"), "not a valid OCI repository name"),
    ("services.web.image", setting("services", "web", "image", value="Web"), "not a valid OCI repository name"),
    ("services.web.image", setting("services", "web", "image", value="web:1.0"), "not a valid OCI repository name"),
    ("services.web.image", setting("services", "web", "image", value="web\n"), "not a valid OCI repository name"),
    ("services.web.image", setting("services", "web", "image", value="team//web"), "not a valid OCI repository"),
    ("services.web.image", setting("services", "web", "image", value="a" * 250), "registry clients refuse"),
    ("sites.onprem.harbor.project", setting("sites", "onprem", "harbor", "project", value="../x"), "Harbor project"),
    ("sites.cloud.harbor.project", setting("sites", "cloud", "harbor", "project", value="team/x"), "Harbor project"),
    ("environments.staging.path", setting("environments", "staging", "path", value="../../.."), "no '..'"),
    ("environments.staging.path", setting("environments", "staging", "path", value="a/../../b"), "no '..'"),
    ("environments.staging.path", setting("environments", "staging", "path", value="/etc"), "not absolute"),
    ("environments.staging.path", setting("environments", "staging", "path", value="~/x"), "not absolute"),
    ("environments.staging.path", setting("environments", "staging", "path", value="stag\x00ing"), "control"),
    ("environments.staging.path", setting("environments", "staging", "path", value="staging\nx"), "control"),
    ("environments.staging.path", setting("environments", "staging", "path", value=""), "empty path"),
    ("services.web.paths", setting("services", "web", "paths", value=["../other/**"]), "no '..'"),
    ("services.web.paths", setting("services", "web", "paths", value=["ok/**", "/srv/**"]), "entry 1"),
    ("change_analysis.global_paths", setting("change_analysis", "global_paths", value=["../x"]), "no '..'"),
    ("repos.gitops.branch", setting("repos", "gitops", "branch", value="main\n"), "not a valid git branch"),
    ("repos.gitops.branch", setting("repos", "gitops", "branch", value="deploy.lock"), "not a valid git branch"),
    ("repos.gitops.branch", setting("repos", "gitops", "branch", value="a@{b"), "not a valid git branch"),
    ("repos.app.branch", setting("repos", "app", "branch", value="-main"), "not a valid git branch"),
    ("repos.app.branch", setting("repos", "app", "branch", value="a..b"), "not a valid git branch"),
    (
        "provisioning.workspaces.../../etc",
        setting("provisioning", "workspaces", "../../etc", value={"site": "onprem", "path": "tf"}),
        "name must be",
    ),
    ("provisioning.workspaces.tf.path", setting("provisioning", "workspaces", "tf", "path", value="t\x00f"), "control"),
]


@pytest.mark.parametrize(
    ("key", "change", "problem"), BAD_CONFIG, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(BAD_CONFIG)]
)
def test_bad_config_exits_2_naming_the_key_and_starts_nothing(
    tmp_path: Path,
    app_repo: tuple[Path, str, str],
    temporal: TemporalCalls,
    capsys: pytest.CaptureFixture[str],
    key: str,
    change: Callable[[dict[str, Any]], None],
    problem: str,
) -> None:
    app, sha, _ = app_repo
    config = write_config(tmp_path, app, change)
    code, err = run(capsys, config, "release", "start", "--commit", sha, "--branch", "main")
    assert code == USAGE, err
    assert f"{config}: {key}: " in err and problem in err, err
    assert temporal.calls == 0


def test_the_issue_s_image_message_says_what_a_name_is(tmp_path: Path, app_repo: tuple[Path, str, str]) -> None:
    app, _, _ = app_repo
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, app, setting("services", "web", "image", value="../../x")))
    assert (
        "services.web.image: '../../x' is not a valid OCI repository name (lowercase letters, digits, "
        "separators . _ __ -, path components joined by /)" in str(err.value)
    )


def laughs(levels: int = 9) -> str:
    """The billion laughs: each anchor refers nine times to the one before it."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def test_alias_bomb_in_workspace_variables_is_refused_at_once(
    tmp_path: Path, app_repo: tuple[Path, str, str], temporal: TemporalCalls, capsys: pytest.CaptureFixture[str]
) -> None:
    app, _, _ = app_repo
    config = write_config(tmp_path, app, lambda data: data.pop("provisioning"))
    config.write_text(
        config.read_text()
        + f"provisioning:\n  workspaces:\n    tf:\n      site: onprem\n      path: {tmp_path}\n      variables:\n"
        + indented(laughs(), 8)
    )
    started = time.monotonic()
    code, err = run(capsys, config, "provision", "plan", "tf")
    assert time.monotonic() - started < 5
    assert code == USAGE and f"{config}: " in err and "alias" in err, err
    assert temporal.calls == 0


def test_alias_bomb_in_the_group_file_is_refused_naming_it(
    tmp_path: Path, app_repo: tuple[Path, str, str], temporal: TemporalCalls, capsys: pytest.CaptureFixture[str]
) -> None:
    app, sha, _ = app_repo
    (tmp_path / "groups.yaml").write_text(laughs() + "qa: *l8\n")
    config = write_config(tmp_path, app, setting("approvals", "group_file", value="groups.yaml"))
    code, err = run(capsys, config, "release", "start", "--commit", sha, "--branch", "main")
    assert code == USAGE and "approvals.group_file" in err and "groups.yaml" in err and "alias" in err, err
    assert temporal.calls == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (laughs(), "expands to more than"),
        # Merge keys are flattened by PyYAML itself while constructing: refused before that.
        (
            "m0: &m0 {a: 1, b: 2, c: 3}\n"
            + "".join(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 9)),
            "expands to more than",
        ),
        ("x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(1_001)), "alias references"),
        ("&a [*a]", "recursive"),
        ("[" * 900 + "]" * 900, "nested too deeply"),
    ],
    ids=["billion-laughs", "merge-keys", "many-aliases", "recursive", "deep"],
)
def test_the_safe_loader_refuses_what_would_explode(text: str, problem: str) -> None:
    with pytest.raises(YamlBudgetError) as err:
        load_yaml(text, "where.yaml")
    assert str(err.value).startswith("where.yaml: ") and problem in str(err.value)
    assert isinstance(err.value, yaml.YAMLError)  # callers that handle invalid YAML handle this too


def test_the_safe_loader_reads_what_safe_load_reads() -> None:
    text = "base: &b {image: web, tag: 1}\nstaging: *b\nprod: {<<: *b, tag: 2}\nlist: [1, 2.5, true, null, x]\n"
    assert load_yaml(text, "t") == yaml.safe_load(text)
    assert load_yaml("", "t") is None
    assert load_yaml_all("a: 1\n---\nb: 2\n", "t") == [{"a": 1}, {"b": 2}]
    assert load_yaml(b"k: v\n", "t") == {"k": "v"}
    big = {f"k{i}": list(range(5)) for i in range(MAX_NODES // 20)}  # many nodes, no alias: fine
    assert load_yaml(yaml.safe_dump(big), "t") == big


def test_a_kustomization_bomb_is_a_broken_kustomization_not_a_crash() -> None:
    from temporalio.exceptions import ApplicationError

    from activities.gitops import pin_images

    with pytest.raises(ApplicationError) as err:
        pin_images("resources: [a]\n" + laughs(), [], "staging/kustomization.yaml")
    assert err.value.non_retryable and "staging/kustomization.yaml" in str(err.value) and "alias" in str(err.value)


# (argv after `ferry`, the argument named, what the message says); {sha} is a commit of the app repo.
BAD_ARGUMENTS = [
    (["release", "start", "--commit", "{sha}", "--branch", "main\n"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch", "rel.lock"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch", "a@{b"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch", "x/.hidden"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch=-f"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch", "a\tb"], "--branch", "control character"),
    (["release", "start", "--commit", "{sha}", "--branch", "@"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", "{sha}", "--branch", "b" * 300], "--branch", "longer than"),
    (["queue", "--branch", "main\n"], "--branch", "not a valid git branch"),
    (["release", "start", "--commit", MISSING_SHA, "--branch", "main"], "--commit", "is not a commit of the app"),
    (["release", "start", "--commit", "{tree}", "--branch", "main"], "--commit", "is not a commit of the app"),
    (
        ["release", "start", "--commit", "{sha}", "--branch", "main", "--base", MISSING_SHA],
        "--base",
        "is not a commit of the app",
    ),
    (["release", "start", "--commit", "xyz", "--branch", "main"], "--commit 'xyz'", "not a full 40-character"),
    (["approve", "shop-{sha12}", "--stage", "staging", "--comment", MEGABYTE], "--comment", "1000000 characters"),
    (["reject", "shop-{sha12}", "--stage", "staging", "--comment", MEGABYTE], "--comment", "1000000 characters"),
    (["promote", "shop-{sha12}", "--stage", "production", "--comment", MEGABYTE], "--comment", "at most 2000"),
    (["rollback", "staging", "--to", "shop-{sha12}", "--comment", MEGABYTE], "--comment", "1000000 characters"),
    (["approve", "shop-{sha12}", "--stage", "s" * (MAX_NAME + 1)], "--stage", "characters"),
    (["approve", "shop-{sha12}", "--stage", "staging", "--as", "u" * (MAX_NAME + 1)], "--as", "characters"),
]


@pytest.mark.parametrize(
    ("argv", "argument", "problem"), BAD_ARGUMENTS, ids=[f"{a[0]}-{n}-{i}" for i, (a, n, _) in enumerate(BAD_ARGUMENTS)]
)
def test_bad_argument_exits_2_naming_it_and_starts_nothing(
    tmp_path: Path,
    app_repo: tuple[Path, str, str],
    temporal: TemporalCalls,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    argument: str,
    problem: str,
) -> None:
    app, sha, tree = app_repo
    filled = [a.replace("{sha12}", sha[:12]).replace("{sha}", sha).replace("{tree}", tree) for a in argv]
    code, err = run(capsys, write_config(tmp_path, app), *filled)
    assert code == USAGE, err
    assert argument in err and problem in err, err[:500]
    assert temporal.calls == 0
    assert len(err) < 2_000  # the message names the input; it does not echo a megabyte back


def test_an_absent_commit_names_the_commit_and_the_repo(
    tmp_path: Path, app_repo: tuple[Path, str, str], temporal: TemporalCalls, capsys: pytest.CaptureFixture[str]
) -> None:
    app, _, _ = app_repo
    code, err = run(capsys, write_config(tmp_path, app), "release", "start", "--commit", MISSING_SHA, "--branch", "m")
    assert code == USAGE and MISSING_SHA in err and str(app) in err and "shop" in err and temporal.calls == 0


def test_a_buildkite_branch_is_checked_like_the_argument(
    tmp_path: Path,
    app_repo: tuple[Path, str, str],
    temporal: TemporalCalls,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, sha, _ = app_repo
    monkeypatch.setenv("BUILDKITE_COMMIT", sha)
    monkeypatch.setenv("BUILDKITE_BRANCH", "main\nx")
    code, err = run(capsys, write_config(tmp_path, app), "release", "start", "--from-buildkite")
    assert code == USAGE and "BUILDKITE_BRANCH" in err and temporal.calls == 0
    monkeypatch.setenv("BUILDKITE_BRANCH", "main")
    monkeypatch.setenv("BUILDKITE_COMMIT", MISSING_SHA)
    code, err = run(capsys, write_config(tmp_path, app), "release", "start", "--from-buildkite")
    assert code == USAGE and f"BUILDKITE_COMMIT {MISSING_SHA}" in err and temporal.calls == 0


# Good inputs: they pass every check and get as far as Temporal (the stand-in answers "unreachable").
GOOD_ARGUMENTS = [
    ["release", "start", "--commit", "{sha}", "--branch", "release/1.2"],
    ["release", "start", "--commit", "{sha}", "--branch", "feature/JIRA-12_x.y", "--base", "{sha}"],
    ["release", "start", "--commit", "{SHA}", "--branch", "main", "--direct"],
    ["queue", "--branch", "release/1.2"],
    ["approve", "shop-{sha12}", "--stage", "staging", "--as", "quinn", "--comment", "c" * MAX_COMMENT],
    ["promote", "shop-{sha12}", "--stage", "production", "--as", "rita", "--comment", "soaked well"],
    ["rollback", "staging", "--to", "shop-{sha12}", "--as", "rita", "--comment", "r" * MAX_COMMENT],
]


@pytest.mark.parametrize("argv", GOOD_ARGUMENTS, ids=[" ".join(a[:2]) + f"-{i}" for i, a in enumerate(GOOD_ARGUMENTS)])
def test_good_arguments_pass_the_door(
    tmp_path: Path,
    app_repo: tuple[Path, str, str],
    temporal: TemporalCalls,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    app, sha, _ = app_repo
    filled = [a.replace("{sha12}", sha[:12]).replace("{sha}", sha).replace("{SHA}", sha.upper()) for a in argv]
    code, err = run(capsys, write_config(tmp_path, app), *filled)
    assert (code, temporal.calls) == (UNREACHABLE, 1), err


def test_good_config_values_load(tmp_path: Path, app_repo: tuple[Path, str, str]) -> None:
    app, _, _ = app_repo

    def good(data: dict[str, Any]) -> None:
        data["services"]["web"]["image"] = "team/web-app.v2__x---y"
        data["services"]["web"]["paths"] = ["./services/web/**", "services/web/*.html"]
        data["sites"]["onprem"]["harbor"]["project"] = "shop-team"
        data["sites"]["cloud"]["harbor"]["project"] = "shop.cloud_1"
        data["environments"]["staging"]["path"] = "clusters/eu-1/staging"
        data["repos"]["app"]["branch"] = "release/1.2"
        data["repos"]["gitops"]["branch"] = "deploy/prod-eu"
        data["change_analysis"] = {"global_paths": ["WORKSPACE", "build/*.bzl"]}

    cfg = load_config(write_config(tmp_path, app, good))
    assert cfg.services["web"].image == "team/web-app.v2__x---y"
    assert cfg.environments["staging"].path == "clusters/eu-1/staging"
    assert (cfg.repos.app.branch, cfg.repos.gitops.branch) == ("release/1.2", "deploy/prod-eu")


@pytest.mark.parametrize(
    "name", ["main", "release/1.2", "feature/x.y", "é", "a-b_c", "main\n", "x.lock", "a@{b", "a..b", "a b", "a/.b",
             "a/b/", "/a", "a//b", "a.", "HEAD", "@", "-x", "a\x7fb", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b"],
)  # fmt: skip
def test_the_fallback_rules_agree_with_git(name: str) -> None:
    """Hosts without git use the same rules in Python: they must give git's verdict."""
    if name == "@":  # git takes '@' for HEAD outside a repository; branch_problem refuses it before asking
        assert inputs.branch_problem(name) is not None and not inputs._ref_rules_accept(name)
        return
    assert inputs._ref_rules_accept(name) == inputs._git_accepts_branch(name)


def test_remote_commit_check_fetches_just_that_commit(app_repo: tuple[Path, str, str]) -> None:
    """The remote path (what an https:// or ssh:// app repo takes), through git's own file:// transport."""
    app, sha, tree = app_repo
    url = f"file://{app}"
    assert commits._remote_presence(url, sha) is commits.Presence.THERE
    assert commits._remote_presence(url, MISSING_SHA) is commits.Presence.MISSING
    assert commits._remote_presence(url, tree) is commits.Presence.MISSING
    with pytest.raises(CommandError) as err:
        commits._remote_presence(f"file://{app.parent}/nothing-here.git", sha)
    assert err.value.code == UNREACHABLE and "nothing was started" in str(err.value)


def test_local_path_or_remote() -> None:
    assert commits.local_path("/srv/git/app.git") == Path("/srv/git/app.git")
    assert commits.local_path("file:///srv/app.git") == Path("/srv/app.git")
    assert commits.local_path("git@github.com:acme/shop.git") is None
    assert commits.local_path("ssh://git@host/acme/shop.git") is None
    assert commits.local_path("https://github.com/acme/shop.git") is None


def test_parse_config_refuses_a_bad_image_without_a_file() -> None:
    data = sample_config()
    data["services"]["web"]["image"] = "ferry/../../x"
    with pytest.raises(ConfigError, match="services.web.image: 'ferry/../../x' is not a valid OCI"):
        parse_config(data)


def test_an_upstream_megabyte_of_text_is_cut_before_it_reaches_history_or_status() -> None:
    from activities.errors import fatal, retryable
    from workflows.errors import MAX_MESSAGE, failure_message

    huge = "Traceback (most recent call last):\n" + "x" * 1_000_000
    for error in (fatal(huge, "SyncFailed"), retryable(huge)):
        assert len(error.message) <= MAX_MESSAGE and error.message.startswith("Traceback")
        assert "more characters cut" in error.message
    # A failure that did not come through activities/errors.py is cut on its way into a status too.
    assert len(failure_message(RuntimeError(huge))) <= MAX_MESSAGE
