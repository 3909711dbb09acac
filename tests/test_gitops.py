"""GitOps moves against a real bare GitOps repo: one commit per move, only `images:` edited, races retried."""

from __future__ import annotations

from pathlib import Path

import git
import pytest
import yaml
from temporalio.exceptions import ApplicationError

from activities.errors import BAD_REQUEST, BROKEN_KUSTOMIZATION
from activities.gitops import GitOpsActivities, pin_images
from activities.gitrepo import GitWorkspace
from sandbox.repos import commit_change, create_repos, log, read_file_at
from workflows.types import GitOpsMoveInput, ImagePin

ROOT = Path(__file__).resolve().parent.parent
APP_COMMIT = "3f2a1c9d0b7e55aa66bb77cc88dd99ee00ff1122"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@pytest.fixture
def gitops(tmp_path: Path) -> Path:
    _, repo = create_repos(tmp_path / "repos", ROOT / "infra" / "gitops", ROOT / "sandbox" / "example_app")
    return repo


@pytest.fixture
def acts(tmp_path: Path) -> GitOpsActivities:
    return GitOpsActivities(GitWorkspace(tmp_path / "ws"), author_name="Ferry Bot", author_email="ferry@example.com")


def move_input(repo: Path, *pins: ImagePin, env: str = "testbed", release: str = "release/shop/3f2a1c9d0b7e"):
    return GitOpsMoveInput(
        repo_url=str(repo),
        branch="main",
        environment=env,
        path=env,
        images=list(pins),
        release_id=release,
        app_commit=APP_COMMIT,
    )


def pin(name: str, digest: str = D1, registry: str = "harbor.onprem.local") -> ImagePin:
    return ImagePin(name=name, new_name=f"{registry}/ferry/{name}", digest=digest)


def head(repo: Path) -> str:
    return git.Git(str(repo)).rev_parse("refs/heads/main").strip()


def changed_paths(repo: Path, sha: str) -> list[str]:
    return git.Git(str(repo)).show("--format=", "--name-only", sha).split()


async def test_move_edits_only_images_and_writes_the_trailers(gitops: Path, acts: GitOpsActivities) -> None:
    before_sha = head(gitops)
    before = read_file_at(gitops, "main", "testbed/kustomization.yaml")
    result = await acts.move(move_input(gitops, pin("web", D2), pin("api", D1)))

    assert result.changed and result.commit == head(gitops)
    assert changed_paths(gitops, result.commit) == ["testbed/kustomization.yaml"]
    assert git.Repo(gitops).commit(result.commit).parents[0].hexsha == before_sha
    after = read_file_at(gitops, "main", "testbed/kustomization.yaml")
    data = yaml.safe_load(after)
    assert data["images"] == [
        {"name": "web", "newName": "harbor.onprem.local/ferry/web", "digest": D2},
        {"name": "api", "newName": "harbor.onprem.local/ferry/api", "digest": D1},
    ]
    # Everything but `images:` is byte for byte what people wrote, comments included.
    kept = [line for line in before.splitlines() if not line.startswith("images:")]
    assert after.splitlines()[: len(kept)] == kept
    assert yaml.safe_load(before) | {"images": data["images"]} == data

    sha, message = log(gitops)[0]
    assert sha == result.commit
    assert message == (
        "testbed: release release/shop/3f2a1c9d0b7e\n\n"
        f"api: harbor.onprem.local/ferry/api@{D1}\n"
        f"web: harbor.onprem.local/ferry/web@{D2}\n\n"
        "Ferry-Release: release/shop/3f2a1c9d0b7e\n"
        f"Ferry-Commit: {APP_COMMIT}\n"
        "Ferry-Environment: testbed"
    )
    trailers = git.Git(str(gitops)).log("-1", "--format=%(trailers:only,unfold)", sha).strip().splitlines()
    assert trailers == [
        "Ferry-Release: release/shop/3f2a1c9d0b7e",
        f"Ferry-Commit: {APP_COMMIT}",
        "Ferry-Environment: testbed",
    ]
    author = git.Git(str(gitops)).log("-1", "--format=%an <%ae>|%cn <%ce>", sha)
    assert author == "Ferry Bot <ferry@example.com>|Ferry Bot <ferry@example.com>"


async def test_move_twice_makes_one_commit(gitops: Path, acts: GitOpsActivities) -> None:
    before = len(log(gitops))
    first = await acts.move(move_input(gitops, pin("api")))
    second = await acts.move(move_input(gitops, pin("api")))
    assert first.changed and not second.changed
    assert second.commit == first.commit == head(gitops)
    assert len(log(gitops)) == before + 1


async def test_move_keeps_other_entries_and_replaces_tags(gitops: Path, acts: GitOpsActivities) -> None:
    original = read_file_at(gitops, "main", "staging/kustomization.yaml").replace(
        "images: []\n",
        "images:\n"
        "  # pinned by hand for an incident\n"
        "  - name: billing\n"
        "    newName: harbor.cloud.local/ferry/billing\n"
        "    newTag: v1.2.3\n"
        "  - name: api\n"
        "    newTag: old\n"
        "patches: []\n",
    )
    commit_change(gitops, {"staging/kustomization.yaml": original}, "staging: hand pin")
    result = await acts.move(move_input(gitops, pin("api", D3, "harbor.cloud.local"), pin("web"), env="staging"))
    text = read_file_at(gitops, result.commit, "staging/kustomization.yaml")
    data = yaml.safe_load(text)
    assert data["images"] == [
        {"name": "billing", "newName": "harbor.cloud.local/ferry/billing", "newTag": "v1.2.3"},
        {"name": "api", "newName": "harbor.cloud.local/ferry/api", "digest": D3},
        {"name": "web", "newName": "harbor.onprem.local/ferry/web", "digest": D1},
    ]
    assert list(data) == ["apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"]
    assert text.endswith("patches: []\n")
    assert "# Ferry pins each image" in text  # comments outside `images:` stay


async def test_concurrent_push_is_rebased_and_retried(
    gitops: Path, acts: GitOpsActivities, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_push = acts._push
    competitors: list[str] = []

    def push_after_someone_else(repo: git.Repo, branch: str) -> None:
        if not competitors:
            # Someone edits the very same file (and another) between our fetch and our push.
            text = read_file_at(gitops, "main", "testbed/kustomization.yaml").replace(
                "resources:\n", "commonAnnotations:\n  team: shop\nresources:\n"
            )
            competitors.append(
                commit_change(gitops, {"testbed/kustomization.yaml": text, "README.md": "x\n"}, "hand edit")
            )
        original_push(repo, branch)

    monkeypatch.setattr(acts, "_push", push_after_someone_else)
    result = await acts.move(move_input(gitops, pin("api")))

    assert result.changed and result.commit == head(gitops)
    assert git.Repo(gitops).commit(result.commit).parents[0].hexsha == competitors[0]
    data = yaml.safe_load(read_file_at(gitops, "main", "testbed/kustomization.yaml"))
    assert data["commonAnnotations"] == {"team": "shop"}  # their edit survives
    assert data["images"][0]["digest"] == D1  # ours is applied on top
    ferry_commits = [s for s, m in log(gitops) if "Ferry-Release:" in m]
    assert ferry_commits == [result.commit]


async def test_a_branch_that_keeps_moving_fails_retryably(
    gitops: Path, acts: GitOpsActivities, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_push = acts._push
    attempts: list[str] = []

    def always_beaten(repo: git.Repo, branch: str) -> None:
        attempts.append(commit_change(gitops, {"README.md": f"{len(attempts)}\n"}, "someone else"))
        original_push(repo, branch)

    monkeypatch.setattr(acts, "_push", always_beaten)
    with pytest.raises(ApplicationError) as err:
        await acts.move(move_input(gitops, pin("api")))
    assert not err.value.non_retryable and "kept moving" in str(err.value)
    assert len(attempts) == acts.max_push_attempts
    assert head(gitops) == attempts[-1]  # nothing of ours reached the remote
    assert not any("Ferry-Release:" in m for _, m in log(gitops))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("apiVersion: v1\nkind: Kustomization\nimages: []\n", "no 'resources'"),
        ("resources: [a\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("resources: [../_base/api]\nimages: oops\n", "'images' must be a list"),
        (None, "not found"),
    ],
)
async def test_broken_kustomization_is_fatal_and_commits_nothing(
    gitops: Path, acts: GitOpsActivities, content: str | None, problem: str
) -> None:
    commit_change(gitops, {"testbed/kustomization.yaml": content}, "someone breaks testbed")
    before = head(gitops)
    with pytest.raises(ApplicationError) as err:
        await acts.move(move_input(gitops, pin("api")))
    assert err.value.type == BROKEN_KUSTOMIZATION and err.value.non_retryable
    assert problem in str(err.value) and "testbed/kustomization.yaml" in str(err.value)
    assert head(gitops) == before
    # Once fixed, the same move goes through from a clean worktree.
    good = read_file_at(gitops, f"{before}~1", "testbed/kustomization.yaml")
    commit_change(gitops, {"testbed/kustomization.yaml": good}, "fix testbed")
    assert (await acts.move(move_input(gitops, pin("api")))).changed


@pytest.mark.parametrize(
    ("pins", "path"),
    [
        ([ImagePin(name="api", new_name="h/ferry/api", digest="latest")], "testbed"),
        ([pin("api", D1), pin("api", D2)], "testbed"),
        ([pin("api")], "../outside"),
    ],
)
async def test_bad_input_is_refused_before_touching_git(gitops: Path, acts, pins, path: str) -> None:
    inp = move_input(gitops, *pins)
    inp.path = path
    with pytest.raises(ApplicationError) as err:
        await acts.move(inp)
    assert err.value.type == BAD_REQUEST and err.value.non_retryable
    assert not acts.workspace.root.exists()


def test_pin_images_falls_back_to_a_full_dump_for_unusual_layouts() -> None:
    text = "resources: [a]\nimages: [\n  {name: api, newTag: x}\n]\nnamespace: n  # trailing\n"
    out = pin_images(text, [pin("api")], "k.yaml")
    assert out is not None
    assert yaml.safe_load(out) == {
        "resources": ["a"],
        "images": [{"name": "api", "newName": "harbor.onprem.local/ferry/api", "digest": D1}],
        "namespace": "n",
    }
    assert list(yaml.safe_load(out)) == ["resources", "images", "namespace"]
    assert pin_images(out, [pin("api")], "k.yaml") is None  # and stable from then on


def test_pin_images_appends_images_when_the_key_is_missing() -> None:
    out = pin_images("# head\nresources:\n  - a", [pin("web")], "k.yaml")
    assert out == (
        "# head\nresources:\n  - a\nimages:\n"
        "  - name: web\n    newName: harbor.onprem.local/ferry/web\n"
        f"    digest: {D1}\n"
    )


async def test_move_inside_a_real_activity_context_heartbeats(gitops: Path, tmp_path: Path) -> None:
    from temporalio.testing import ActivityEnvironment

    beats: list[object] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    acts = GitOpsActivities(GitWorkspace(tmp_path / "ws2", heartbeat_every=0.001))
    result = await env.run(acts.move, move_input(gitops, pin("api")))
    assert result.changed and result.commit == head(gitops)
    assert beats and beats[0] == ("move testbed",)
    assert (await env.run(acts.move, move_input(gitops, pin("api")))).changed is False
