"""Change analysis against real git repositories (bare remotes made from the templates, plus clones)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import git
import pytest
from temporalio.exceptions import ApplicationError

from activities.changes import ChangeActivities, affected_services, glob_match
from activities.errors import BAD_COMMIT
from activities.gitops import GitOpsActivities
from activities.gitrepo import EMPTY_TREE, GitWorkspace
from sandbox.config import example_services
from sandbox.repos import commit_change, create_repos
from workflows.types import AnalyzeChangesInput, GitOpsMoveInput, ImagePin, ServiceSpec

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "ab" * 32


def specs(raw: dict | None = None) -> list[ServiceSpec]:
    raw = raw if raw is not None else example_services()
    return [
        ServiceSpec(
            name=n,
            paths=s["paths"],
            depends_on=s.get("depends_on", []),
            kind=s.get("kind", "service"),
            image=s.get("image"),
        )
        for n, s in raw.items()
    ]


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    return create_repos(tmp_path / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")


@pytest.fixture
def workspace(tmp_path: Path) -> GitWorkspace:
    return GitWorkspace(tmp_path / "ws")


@pytest.fixture
def acts(workspace: GitWorkspace) -> ChangeActivities:
    return ChangeActivities(workspace)


def inp(app: Path, commit: str, branch: str = "main", gitops: Path | None = None, **kw: object) -> AnalyzeChangesInput:
    return AnalyzeChangesInput(
        repo_url=str(app),
        commit=commit,
        branch=branch,
        default_branch="main",
        services=specs(),
        gitops_repo_url=str(gitops) if gitops else None,
        first_env_path="testbed" if gitops else None,
        **kw,  # type: ignore[arg-type]
    )


def head(repo: Path, ref: str = "main") -> str:
    return git.Git(str(repo)).rev_parse(f"refs/heads/{ref}").strip()


# --- globs ---


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("services/api/**", "services/api/app.py", True),
        ("services/api/**", "services/api/tests/deep/x.py", True),
        ("services/api/**", "services/api", False),  # the directory itself is no file of it
        ("services/api/**", "services/apix/app.py", False),
        ("services/api", "services/api/app.py", True),  # a directory owns what is in it
        ("services/api/", "services/api/a/b.py", True),
        ("services/*/Dockerfile", "services/web/Dockerfile", True),
        ("services/*/Dockerfile", "services/web/sub/Dockerfile", False),
        ("**/BUILD.bazel", "BUILD.bazel", True),
        ("**/BUILD.bazel", "libs/common/BUILD.bazel", True),
        ("libs/**/test_*.py", "libs/test_a.py", True),
        ("libs/**/test_*.py", "libs/common/tests/test_a.py", True),
        ("*.md", "README.md", True),
        ("*.md", "docs/README.md", False),  # anchored at the root, unlike gitignore
        ("svc/file?.py", "svc/file1.py", True),
        ("svc/file?.py", "svc/file10.py", False),
        ("svc/[ab].py", "svc/b.py", True),
        ("svc/[!ab].py", "svc/b.py", False),
        ("svc/a+b(c).py", "svc/a+b(c).py", True),  # regex characters are literal
    ],
)
def test_glob_match(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


def test_affected_follows_dependencies_transitively() -> None:
    chain = specs(
        {
            "base": {"kind": "library", "paths": ["libs/base/**"]},
            "mid": {"kind": "library", "paths": ["libs/mid/**"], "depends_on": ["base"]},
            "svc-a": {"paths": ["services/a/**"], "depends_on": ["mid"], "image": "a"},
            "svc-b": {"paths": ["services/b/**"], "depends_on": ["svc-a"], "image": "b"},
            "svc-c": {"paths": ["services/c/**"], "image": "c"},
        }
    )
    affected, reasons = affected_services(chain, ["libs/base/x.py", "libs/base/y.py"])
    assert affected == ["svc-a", "svc-b"]
    assert reasons["svc-a"] == "depends on mid -> base (changed: libs/base/x.py (+1 more))"
    assert reasons["svc-b"] == "depends on svc-a -> mid -> base (changed: libs/base/x.py (+1 more))"
    # A direct change wins over a dependency as the reason.
    affected, reasons = affected_services(chain, ["libs/base/x.py", "services/b/main.py"])
    assert affected == ["svc-a", "svc-b"] and reasons["svc-b"] == "changed: services/b/main.py"


# --- the activity ---


async def test_one_service_changed_affects_only_it(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    parent = head(app)
    sha = commit_change(app, {"services/web/page.py": "X = 1\n"}, "web: change the page")
    result = await acts.analyze(inp(app, sha))
    assert result.commit == sha and result.base_commit == parent
    assert result.changed_files == ["services/web/page.py"]
    assert result.affected == ["web"]
    assert result.reasons == {"web": "changed: services/web/page.py"}


async def test_shared_library_change_affects_its_dependents(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    sha = commit_change(app, {"libs/common/shop_common/logs.py": "# new\n"}, "common: logs")
    result = await acts.analyze(inp(app, sha))
    assert result.affected == ["api", "worker"]
    assert result.reasons["api"] == "depends on common (changed: libs/common/shop_common/logs.py)"
    assert "common" not in result.reasons  # a library is not deployable


async def test_docs_only_change_affects_nothing(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    sha = commit_change(app, {"docs/architecture.md": "# new\n", "README.md": "hi\n"}, "docs")
    result = await acts.analyze(inp(app, sha))
    assert result.changed_files == ["README.md", "docs/architecture.md"]
    assert result.affected == [] and result.reasons == {}


async def test_rename_counts_both_paths(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    content = (ROOT / "sandbox/example_app/services/web/page.py").read_text()
    sha = commit_change(
        app, {"services/web/page.py": None, "services/billing/page.py": content}, "move page to billing"
    )
    result = await acts.analyze(inp(app, sha))
    assert result.changed_files == ["services/billing/page.py", "services/web/page.py"]
    assert result.affected == ["billing", "web"]


async def test_root_commit_changes_everything(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    result = await acts.analyze(inp(app, head(app)))
    assert result.base_commit == EMPTY_TREE
    assert result.affected == ["api", "billing", "web", "worker"]
    assert "services/api/app.py" in result.changed_files


async def test_explicit_base_covers_every_commit_since(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    base = head(app)
    commit_change(app, {"services/api/x.py": ""}, "api")
    sha = commit_change(app, {"services/billing/x.py": ""}, "billing")
    result = await acts.analyze(inp(app, sha, base_commit=base))
    assert result.base_commit == base and result.affected == ["api", "billing"]


async def test_feature_branch_compares_with_its_branch_point(repos, acts: ChangeActivities) -> None:
    app, _ = repos
    point = commit_change(app, {"services/api/x.py": ""}, "api on main")
    commit_change(app, {"services/worker/x.py": "", "services/web/x.py": ""}, "web+worker on feature", branch="feature")
    commit_change(app, {"services/billing/x.py": ""}, "main moves on")  # after the branch point: not ours
    sha = head(app, "feature")
    result = await acts.analyze(inp(app, sha, branch="feature"))
    assert result.base_commit == point
    assert result.affected == ["web", "worker"]


async def test_base_is_the_last_release_of_the_first_environment(repos, workspace, acts) -> None:
    app, gitops = repos
    released = commit_change(app, {"services/api/x.py": ""}, "api: released to testbed")
    commit_change(app, {"services/web/x.py": ""}, "web: not released yet")
    sha = commit_change(app, {"services/billing/x.py": ""}, "billing")

    # Without a release every commit stands alone: only its own change.
    alone = await acts.analyze(inp(app, sha, gitops=gitops))
    assert alone.affected == ["billing"]

    gitops_acts = GitOpsActivities(workspace)
    await gitops_acts.move(
        GitOpsMoveInput(
            repo_url=str(gitops),
            branch="main",
            environment="testbed",
            path="testbed",
            images=[ImagePin(name="api", new_name="harbor.local/ferry/api", digest=DIGEST)],
            release_id="release/shop/" + released[:12],
            app_commit=released,
        )
    )
    # A later commit to another environment's folder does not count: the first environment is the base.
    commit_change(gitops, {"staging/notes.md": "x\n"}, "staging: notes\n\nFerry-Commit: " + sha)

    result = await acts.analyze(inp(app, sha, gitops=gitops))
    assert result.base_commit == released
    assert result.affected == ["billing", "web"]
    # Analysing the released commit itself again (a reset) does not compare it with itself.
    again = await acts.analyze(inp(app, released, gitops=gitops))
    assert again.affected == ["api"]


async def test_analysis_twice_gives_the_same_answer(repos, workspace, acts) -> None:
    app, _ = repos
    sha = commit_change(app, {"libs/common/x.py": ""}, "common")
    first = await acts.analyze(inp(app, sha))
    second = await acts.analyze(inp(app, sha))
    assert first == second
    assert len([p for p in workspace.root.iterdir() if p.is_dir()]) == 1  # one clone, fetched the 2nd time


async def test_commits_pushed_after_the_clone_are_fetched(repos, acts) -> None:
    app, _ = repos
    first = commit_change(app, {"services/api/a.py": ""}, "api")
    await acts.analyze(inp(app, first))
    later = commit_change(app, {"services/web/a.py": ""}, "web")
    assert (await acts.analyze(inp(app, later))).affected == ["web"]


async def test_concurrent_analyses_share_one_clone(repos, workspace, acts) -> None:
    app, _ = repos
    shas = [commit_change(app, {f"services/{s}/c.py": ""}, s) for s in ("api", "web", "worker", "billing")]
    results = await asyncio.gather(*(acts.analyze(inp(app, sha)) for sha in shas))
    assert [r.affected for r in results] == [["api"], ["web"], ["worker"], ["billing"]]
    assert len([p for p in workspace.root.iterdir() if p.is_dir()]) == 1


@pytest.mark.parametrize("commit", ["0" * 40, "deadbeef", "--upload-pack=evil", ""])
async def test_unknown_commit_is_bad_commit(repos, acts, commit: str) -> None:
    app, _ = repos
    with pytest.raises(ApplicationError) as err:
        await acts.analyze(inp(app, commit))
    assert err.value.type == BAD_COMMIT and err.value.non_retryable
    assert "push it first or check the SHA" in str(err.value) or "not a hex commit SHA" in str(err.value)
    assert str(app) in str(err.value)


async def test_unreachable_remote_is_retryable(tmp_path: Path, acts) -> None:
    with pytest.raises(ApplicationError) as err:
        await acts.analyze(inp(tmp_path / "nowhere.git", "a" * 40))
    assert not err.value.non_retryable
    assert "nowhere.git" in str(err.value)


async def test_credentials_in_the_url_never_reach_the_message(acts) -> None:
    url = "https://ferry:s3cr3t-token@127.0.0.1:9/shop/app.git"
    with pytest.raises(ApplicationError) as err:
        await acts.analyze(
            AnalyzeChangesInput(repo_url=url, commit="a" * 40, branch="main", default_branch="main", services=[])
        )
    assert "s3cr3t-token" not in str(err.value) and "127.0.0.1" in str(err.value)


async def test_a_reverted_release_is_not_the_base(repos, workspace, acts, tmp_path: Path) -> None:
    app, gitops = repos
    gitops_acts = GitOpsActivities(workspace)

    async def release(commit: str, digest: str) -> str:
        move = GitOpsMoveInput(
            repo_url=str(gitops),
            branch="main",
            environment="testbed",
            path="testbed",
            images=[ImagePin(name="api", new_name="harbor.local/ferry/api", digest=digest)],
            release_id="release/shop/" + commit[:12],
            app_commit=commit,
        )
        return (await gitops_acts.move(move)).commit

    first = commit_change(app, {"services/api/x.py": ""}, "api")
    await release(first, "sha256:" + "1" * 64)
    second = commit_change(app, {"services/web/x.py": ""}, "web")
    bad_move = await release(second, "sha256:" + "2" * 64)
    # The rollback: a plain `git revert` of the GitOps commit, as Ferry or an SRE would do it.
    clone = git.Repo.clone_from(str(gitops), tmp_path / "sre")
    identity = {
        "GIT_AUTHOR_NAME": "SRE",
        "GIT_AUTHOR_EMAIL": "s@x",
        "GIT_COMMITTER_NAME": "SRE",
        "GIT_COMMITTER_EMAIL": "s@x",
    }
    clone.git.revert("--no-edit", bad_move, env=identity)
    clone.git.push("origin", "HEAD:main")

    third = commit_change(app, {"services/billing/x.py": ""}, "billing")
    result = await acts.analyze(inp(app, third, gitops=gitops))
    assert result.base_commit == first  # `second` is not deployed any more, so its web change counts again
    assert result.affected == ["billing", "web"]

    # Reverting the revert makes `second` deployed again.
    clone.git.revert("--no-edit", "HEAD", env=identity)
    clone.git.push("origin", "HEAD:main")
    assert (await acts.analyze(inp(app, third, gitops=gitops))).base_commit == second


async def test_a_broken_cache_entry_is_recloned(repos, workspace, acts) -> None:
    app, _ = repos
    sha = commit_change(app, {"services/api/y.py": ""}, "api")
    leftover = workspace.path_for(str(app))
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("half a clone from a crash")
    assert (await acts.analyze(inp(app, sha))).affected == ["api"]
    assert (leftover / ".git").is_dir() and not (leftover / "junk").exists()
