"""`gitops.state_at` against a real bare GitOps repo: an environment's whole state when a release deployed it.

The state is every pin of the environment's kustomization at the release's move commit, found by its trailers;
rollbacks to the release and reverted moves do not count; a state that cannot be restored is UnrestorableState.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities import errors
from activities.gitops import UNRESTORABLE_STATE, GitOpsActivities, state_pins
from activities.gitrepo import GitWorkspace
from sandbox.repos import commit_change, create_repos, read_file_at
from workflows import rollback
from workflows.types import EnvironmentStateInput, GitOpsMoveInput, GitOpsRevertInput, ImagePin

ROOT = Path(__file__).resolve().parent.parent
A_COMMIT = "a" * 40
B_COMMIT = "b" * 40
D1, D2, D3, D4 = ("sha256:" + c * 64 for c in "1234")
REGISTRY = "harbor.cloud.local/ferry"


@pytest.fixture
def gitops(tmp_path: Path) -> Path:
    _, repo = create_repos(tmp_path / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")
    return repo


@pytest.fixture
def acts(tmp_path: Path) -> GitOpsActivities:
    return GitOpsActivities(GitWorkspace(tmp_path / "ws"), author_name="Ferry Bot", author_email="ferry@example.com")


def pin(name: str, digest: str) -> ImagePin:
    return ImagePin(name=name, new_name=f"{REGISTRY}/{name}", digest=digest)


def moved(repo: Path, release: str, app_commit: str, *pins: ImagePin, env: str = "staging", **kw) -> GitOpsMoveInput:
    return GitOpsMoveInput(
        repo_url=str(repo),
        branch="main",
        environment=env,
        path=env,
        images=list(pins),
        release_id=release,
        app_commit=app_commit,
        **kw,
    )


def state_of(repo: Path, release: str = "shop-aaaaaaaaaaaa", *expected: ImagePin, **kw) -> EnvironmentStateInput:
    return EnvironmentStateInput(
        repo_url=str(repo),
        branch="main",
        environment=kw.pop("env", "staging"),
        path=kw.pop("path", "staging"),
        release_id=release,
        app_commit=kw.pop("app_commit", A_COMMIT),
        expected=list(expected),
        **kw,
    )


async def a_then_b(repo: Path, acts: GitOpsActivities) -> tuple[str, str]:
    """Release A pins api and web in staging; release B then moves web only. Returns both move commits."""
    a = await acts.move(moved(repo, "shop-aaaaaaaaaaaa", A_COMMIT, pin("api", D1), pin("web", D2)))
    b = await acts.move(moved(repo, "shop-bbbbbbbbbbbb", B_COMMIT, pin("web", D3)))
    return a.commit, b.commit


async def unrestorable(acts: GitOpsActivities, inp: EnvironmentStateInput) -> str:
    with pytest.raises(ApplicationError) as err:
        await acts.state_at(inp)
    assert err.value.type == UNRESTORABLE_STATE and err.value.non_retryable
    return err.value.message


async def test_the_state_is_every_pin_at_the_release_move_commit_and_now(gitops: Path, acts) -> None:
    a, b = await a_then_b(gitops, acts)
    inp = state_of(gitops, "shop-aaaaaaaaaaaa", pin("api", D1), pin("web", D2))
    state = await acts.state_at(inp)
    assert state.commit == a and state.head == b
    assert state.images == [pin("api", D1), pin("web", D2)]  # web as A left it
    assert state.current == [pin("api", D1), pin("web", D3)]
    # Only A's own images must be in the state: a release that built api only still gets web's pin of then.
    assert (await acts.state_at(state_of(gitops, "shop-aaaaaaaaaaaa", pin("api", D1)))).images == state.images
    assert await acts.state_at(inp) == state  # read-only: twice, the same answer
    # The request may name the move commit (the signed one); it must be that release's move there.
    assert (await acts.state_at(state_of(gitops, "shop-aaaaaaaaaaaa", commit=a))).commit == a
    message = await unrestorable(acts, state_of(gitops, "shop-aaaaaaaaaaaa", commit=b))
    assert f"names GitOps commit {b[:12]}" in message and a[:12] in message


async def test_a_rollback_to_the_release_is_not_its_move_commit(gitops: Path, acts) -> None:
    a, _ = await a_then_b(gitops, acts)
    back = await acts.move(
        moved(
            gitops,
            "shop-aaaaaaaaaaaa",
            A_COMMIT,
            pin("web", D4),
            rollback=True,
            rollback_comment="oops",
            requested_by="rita",
        )
    )
    state = await acts.state_at(state_of(gitops, "shop-aaaaaaaaaaaa"))
    assert state.commit == a and state.head == back.commit
    assert state.images == [pin("api", D1), pin("web", D2)] and state.current == [pin("api", D1), pin("web", D4)]


async def test_a_release_never_deployed_there_or_reverted_has_no_state(gitops: Path, acts) -> None:
    a, _ = await a_then_b(gitops, acts)
    assert "no GitOps commit" in await unrestorable(acts, state_of(gitops, "shop-cccccccccccc"))
    # Same release, other environment: its move there is not this one's.
    message = await unrestorable(acts, state_of(gitops, env="production", path="production"))
    assert "deployed shop-aaaaaaaaaaaa to production" in message
    # A move that was reverted never stayed deployed.
    c = await acts.move(moved(gitops, "shop-cccccccccccc", "c" * 40, pin("api", D4)))
    revert = await acts.revert(
        GitOpsRevertInput(
            repo_url=str(gitops),
            branch="main",
            environment="staging",
            path="staging",
            commit=c.commit,
            images=[pin("api", D4)],
            release_id="shop-cccccccccccc",
            reason="Degraded",
        )
    )
    assert revert.changed
    message = await unrestorable(acts, state_of(gitops, "shop-cccccccccccc", app_commit="c" * 40))
    assert f"reverted ({c.commit[:12]} (reverted by {revert.commit[:12]}))" in message
    # ... while the release before it still has its state.
    assert (await acts.state_at(state_of(gitops))).commit == a


async def test_the_state_must_hold_the_release_own_images_and_its_commit(gitops: Path, acts) -> None:
    await a_then_b(gitops, acts)
    message = await unrestorable(acts, state_of(gitops, "shop-aaaaaaaaaaaa", pin("api", D4)))
    assert f"api is {D1} there, shop-aaaaaaaaaaaa built {D4}" in message
    assert "not pinned there" in await unrestorable(acts, state_of(gitops, "shop-aaaaaaaaaaaa", pin("worker", D1)))
    assert "at app commit aaaaaaaaaaaa, not" in await unrestorable(acts, state_of(gitops, app_commit="f" * 40))


async def test_a_broken_kustomization_at_the_move_commit_is_unrestorable(gitops: Path, acts) -> None:
    before = read_file_at(gitops, "main", "staging/kustomization.yaml")
    trailers = "Ferry-Release: shop-dddddddddddd\nFerry-Commit: " + "d" * 40 + "\nFerry-Environment: staging\n"
    commit_change(gitops, {"staging/kustomization.yaml": "images: [oops\n"}, f"staging: by hand\n\n{trailers}")
    message = await unrestorable(acts, state_of(gitops, "shop-dddddddddddd", app_commit="d" * 40))
    assert "not valid YAML" in message and "staging/kustomization.yaml" in message
    # Fixed since: the state of that release is still the broken file of its commit.
    commit_change(gitops, {"staging/kustomization.yaml": before}, "staging: fixed")
    assert "not valid YAML" in await unrestorable(acts, state_of(gitops, "shop-dddddddddddd", app_commit="d" * 40))


def test_state_pins_are_validated() -> None:
    text = (
        "resources: [a]\nimages:\n  - name: web\n    newTag: v1\n"
        f"  - name: redis\n    digest: {D2}\n  - name: api\n    newName: r/api\n    digest: {D1}\n"
    )
    assert state_pins(text, "here") == [ImagePin("api", "r/api", D1), ImagePin("redis", "redis", D2)]
    for broken, problem in (
        ("images: {a: 1}", "'images' must be a list"),
        ("- a", "not a YAML mapping"),
        ("images:\n  - name: api\n    digest: latest\n", "is not a digest pin"),
        (f"images:\n  - name: api\n    digest: {D1}\n  - name: api\n    digest: {D2}\n", "listed twice"),
    ):
        with pytest.raises(ApplicationError, match=problem) as err:
            state_pins(broken, "here")
        assert err.value.type == UNRESTORABLE_STATE


async def test_bad_input_is_refused_before_touching_git(gitops: Path, acts) -> None:
    for inp in (state_of(gitops, " "), state_of(gitops, commit="abc"), state_of(gitops, path="../x")):
        with pytest.raises(ApplicationError) as err:
            await acts.state_at(inp)
        assert err.value.type == errors.BAD_REQUEST


def test_the_workflow_refuses_on_the_types_the_activities_raise() -> None:
    assert rollback.UNRESTORABLE == UNRESTORABLE_STATE
    assert rollback.ARTIFACT_MISSING == errors.ARTIFACT_MISSING
