"""`gitops.revert` against a real bare GitOps repo: the automatic rollback's commit.

It reverts exactly the release's own move, once, and never anyone's newer commit.
"""

from __future__ import annotations

from pathlib import Path

import git
import pytest
import yaml
from temporalio.exceptions import ApplicationError

from activities.errors import BAD_COMMIT, BAD_REQUEST
from activities.gitops import GitOpsActivities
from activities.gitrepo import GitWorkspace
from sandbox.repos import commit_change, create_repos, log, read_file_at
from workflows.types import GitOpsMoveInput, GitOpsRevertInput, ImagePin

ROOT = Path(__file__).resolve().parent.parent
OLD_APP = "1" * 40
NEW_APP = "2" * 40
D_OLD = "sha256:" + "a" * 64
D_NEW = "sha256:" + "b" * 64
D_NEWER = "sha256:" + "c" * 64
ENV = "production"
FILE = f"{ENV}/kustomization.yaml"


@pytest.fixture
def gitops(tmp_path: Path) -> Path:
    _, repo = create_repos(tmp_path / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")
    return repo


@pytest.fixture
def acts(tmp_path: Path) -> GitOpsActivities:
    return GitOpsActivities(GitWorkspace(tmp_path / "ws"), author_name="Ferry Bot", author_email="ferry@example.com")


def pin(name: str, digest: str) -> ImagePin:
    return ImagePin(name=name, new_name=f"harbor.cloud.local/ferry/{name}", digest=digest)


async def move(acts: GitOpsActivities, repo: Path, app: str, *pins: ImagePin, release: str) -> str:
    result = await acts.move(
        GitOpsMoveInput(
            repo_url=str(repo),
            branch="main",
            environment=ENV,
            path=ENV,
            images=list(pins),
            release_id=release,
            app_commit=app,
        )
    )
    return result.commit


def revert_input(repo: Path, commit: str, *pins: ImagePin) -> GitOpsRevertInput:
    return GitOpsRevertInput(
        repo_url=str(repo),
        branch="main",
        environment=ENV,
        path=ENV,
        commit=commit,
        images=list(pins),
        release_id="release/shop/222222222222",
        reason="canary analysis failed at step 2",
    )


def pinned(repo: Path) -> dict[str, str]:
    data = yaml.safe_load(read_file_at(repo, "main", FILE))
    return {i["name"]: i["digest"] for i in data.get("images") or []}


def head(repo: Path) -> str:
    return git.Git(str(repo)).rev_parse("refs/heads/main").strip()


async def test_revert_restores_the_previous_pins_once_and_names_release_and_reason(
    gitops: Path, acts: GitOpsActivities
) -> None:
    await move(acts, gitops, OLD_APP, pin("api", D_OLD), release="release/shop/111111111111")
    bad = await move(acts, gitops, NEW_APP, pin("api", D_NEW), release="release/shop/222222222222")
    assert pinned(gitops) == {"api": D_NEW}

    first = await acts.revert(revert_input(gitops, bad, pin("api", D_NEW)))

    assert first.changed and first.commit == head(gitops) and not first.skipped
    assert pinned(gitops) == {"api": D_OLD}
    assert first.images == [pin("api", D_OLD)]
    assert first.app_commit == OLD_APP  # what the environment runs again, for the next change analysis
    _, message = log(gitops)[0]
    assert f"This reverts commit {bad}." in message
    assert "release/shop/222222222222" in message and "canary analysis failed at step 2" in message

    # Twice: the same revert commit, nothing new on the branch.
    commits = len(log(gitops))
    second = await acts.revert(revert_input(gitops, bad, pin("api", D_NEW)))
    assert (second.commit, second.changed) == (first.commit, False)
    assert len(log(gitops)) == commits


async def test_a_newer_move_of_the_same_image_is_never_reverted(gitops: Path, acts: GitOpsActivities) -> None:
    await move(acts, gitops, OLD_APP, pin("api", D_OLD), release="release/shop/111111111111")
    bad = await move(acts, gitops, NEW_APP, pin("api", D_NEW), release="release/shop/222222222222")
    newer = await move(acts, gitops, "3" * 40, pin("api", D_NEWER), release="release/shop/333333333333")

    result = await acts.revert(revert_input(gitops, bad, pin("api", D_NEW)))

    assert not result.changed and result.commit == ""
    assert newer[:12] in result.skipped and "never reverted" in result.skipped
    assert head(gitops) == newer and pinned(gitops) == {"api": D_NEWER}


async def test_a_newer_unrelated_commit_stays_when_the_release_is_reverted(
    gitops: Path, acts: GitOpsActivities
) -> None:
    await move(acts, gitops, OLD_APP, pin("api", D_OLD), pin("web", D_OLD), release="release/shop/111111111111")
    bad = await move(acts, gitops, NEW_APP, pin("api", D_NEW), release="release/shop/222222222222")
    # Someone else's newer commit in production: pins web to a newer image (another line of the same file).
    text = read_file_at(gitops, "main", FILE).replace(f"digest: {D_OLD}", f"digest: {D_NEWER}")
    assert text.count(D_NEWER) == 1
    theirs = commit_change(gitops, {FILE: text}, "production: hotfix web", author=("Olga", "olga@example.com"))

    result = await acts.revert(revert_input(gitops, bad, pin("api", D_NEW)))

    assert result.changed
    assert pinned(gitops) == {"api": D_OLD, "web": D_NEWER}  # theirs kept, ours undone
    assert git.Repo(gitops).commit(result.commit).parents[0].hexsha == theirs


async def test_bad_input_changes_nothing(gitops: Path, acts: GitOpsActivities) -> None:
    before = head(gitops)
    with pytest.raises(ApplicationError) as err:
        await acts.revert(revert_input(gitops, "not-a-sha", pin("api", D_NEW)))
    assert err.value.type == BAD_REQUEST and err.value.non_retryable
    with pytest.raises(ApplicationError) as err:
        await acts.revert(revert_input(gitops, "f" * 40, pin("api", D_NEW)))
    assert err.value.type == BAD_COMMIT and "nothing was reverted" in str(err.value)
    assert head(gitops) == before


async def test_a_move_that_finds_its_pins_in_place_says_whose_commit_set_them(
    gitops: Path, acts: GitOpsActivities
) -> None:
    def move_input(release: str, app: str) -> GitOpsMoveInput:
        return GitOpsMoveInput(
            repo_url=str(gitops),
            branch="main",
            environment=ENV,
            path=ENV,
            images=[pin("api", D_NEW)],
            release_id=release,
            app_commit=app,
        )

    first = await acts.move(move_input("release/shop/222222222222", NEW_APP))
    commit_change(gitops, {"staging/notes.txt": "another environment moved\n"}, "staging: unrelated")
    # A retry after a lost push answer: nothing to write, and the release's own move is still its own.
    again = await acts.move(move_input("release/shop/222222222222", NEW_APP))
    assert (again.changed, again.own_commit) == (False, first.commit) and first.own_commit == first.commit
    assert again.commit == head(gitops)  # what Argo CD syncs at: the branch as it is
    # Another release whose image has the identical digest (a rebuild): the pins are someone else's commit.
    rebuild = await acts.move(move_input("release/shop/333333333333", "3" * 40))
    assert (rebuild.changed, rebuild.own_commit) == (False, "")


async def test_a_commit_that_is_not_the_releases_own_move_is_never_reverted(
    gitops: Path, acts: GitOpsActivities
) -> None:
    await move(acts, gitops, OLD_APP, pin("api", D_OLD), release="release/shop/111111111111")
    theirs = await move(acts, gitops, NEW_APP, pin("api", D_NEW), release="release/shop/999999999999")
    before = len(log(gitops))
    # Release 222222222222 asks to revert a commit another release made (a wrong id, a rebuild's no-op move).
    result = await acts.revert(revert_input(gitops, theirs, pin("api", D_NEW)))
    assert not result.changed and result.commit == ""
    assert "is not release/shop/222222222222's move" in result.skipped and "999999999999" in result.skipped
    assert pinned(gitops) == {"api": D_NEW} and len(log(gitops)) == before
