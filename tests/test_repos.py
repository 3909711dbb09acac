"""The sandbox's bare repos: created from the templates once, and commits pushed the way a developer would."""

from __future__ import annotations

from pathlib import Path

import git
import pytest
import yaml

from activities.changes import glob_match
from common.config import Service
from sandbox.config import example_services
from sandbox.repos import commit_change, create_repos, log, read_file_at

ROOT = Path(__file__).resolve().parent.parent
GITOPS_TEMPLATE = ROOT / "infra" / "gitops"
APP_TEMPLATE = ROOT / "sandbox" / "example_app"


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    return create_repos(tmp_path / "repos", GITOPS_TEMPLATE, APP_TEMPLATE)


def _head(repo: Path) -> str:
    return git.Git(str(repo)).rev_parse("refs/heads/main").strip()


def test_create_repos_makes_bare_repos_with_the_templates(repos: tuple[Path, Path]) -> None:
    app, gitops = repos
    assert git.Repo(app).bare and git.Repo(gitops).bare
    assert len(log(app)) == 1 and len(log(gitops)) == 1
    assert read_file_at(app, "main", "services/api/app.py") == (APP_TEMPLATE / "services/api/app.py").read_text()
    testbed = yaml.safe_load(read_file_at(gitops, "main", "testbed/kustomization.yaml"))
    assert "../_base/api" in testbed["resources"]
    files = git.Git(str(app)).ls_tree("-r", "--name-only", "main").split()
    assert not any("__pycache__" in f for f in files)


def test_create_repos_twice_leaves_existing_repos_alone(tmp_path: Path, repos: tuple[Path, Path]) -> None:
    app, gitops = repos
    sha = commit_change(app, {"README.md": "changed\n"}, "a developer's commit")
    heads = (_head(app), _head(gitops))
    again = create_repos(tmp_path / "repos", GITOPS_TEMPLATE, APP_TEMPLATE)
    assert again == (app, gitops)
    assert (_head(app), _head(gitops)) == heads
    assert _head(app) == sha


def test_commit_change_returns_a_sha_that_is_in_the_bare_repo(repos: tuple[Path, Path]) -> None:
    app, _ = repos
    sha = commit_change(app, {"services/api/new.py": "X = 1\n"}, "api: add new.py", author=("Ann", "ann@example.com"))
    g = git.Git(str(app))
    assert g.cat_file("-t", sha).strip() == "commit"
    assert _head(app) == sha
    assert read_file_at(app, sha, "services/api/new.py") == "X = 1\n"
    assert g.log("-1", "--format=%an <%ae>", sha) == "Ann <ann@example.com>"
    assert log(app)[0] == (sha, "api: add new.py")
    assert [s for s, _ in log(app, path="services/api/new.py")] == [sha]


def test_commit_change_on_a_new_branch_and_deleting_a_file(repos: tuple[Path, Path]) -> None:
    app, _ = repos
    root = _head(app)
    on_main = commit_change(app, {"docs/a.md": "a\n"}, "docs on main")
    feature = commit_change(app, {"services/web/page.py": None}, "web: drop page", branch="feature", start_point=root)
    g = git.Git(str(app))
    assert g.rev_parse("refs/heads/feature").strip() == feature
    assert _head(app) == on_main  # main did not move
    assert git.Repo(app).commit(feature).parents[0].hexsha == root
    with pytest.raises(git.GitCommandError):
        read_file_at(app, feature, "services/web/page.py")
    # A second commit on the existing branch builds on it.
    second = commit_change(app, {"services/web/x.py": ""}, "web: x", branch="feature")
    assert git.Repo(app).commit(second).parents[0].hexsha == feature


def test_example_services_fit_the_config_schema_and_the_templates() -> None:
    services = example_services()
    assert set(services) == {"api", "web", "worker", "billing", "common"}
    for raw in services.values():
        Service.model_validate(raw)  # raises on anything ferry.yaml would refuse
    assert services["common"]["kind"] == "library"
    assert services["api"]["depends_on"] == ["common"] and services["worker"]["depends_on"] == ["common"]
    assert services["web"]["depends_on"] == [] and services["billing"]["depends_on"] == []
    app_files = [p.relative_to(APP_TEMPLATE).as_posix() for p in APP_TEMPLATE.rglob("*") if p.is_file()]
    for name, raw in services.items():
        assert any(glob_match(g, f) for g in raw["paths"] for f in app_files), f"{name} owns no file"
        if raw.get("kind", "service") == "service":
            assert raw["image"] == name
            assert raw["argocd_apps"] == {e: f"shop-{e}" for e in ("testbed", "staging", "production")}
            deployment = yaml.safe_load((GITOPS_TEMPLATE / "_base" / name / "deployment.yaml").read_text())
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == name


def test_gitops_template_environments_include_every_base() -> None:
    bases = sorted(p.name for p in (GITOPS_TEMPLATE / "_base").iterdir() if p.is_dir())
    assert bases == ["api", "billing", "web", "worker"]
    for env in ("testbed", "staging", "production"):
        k = yaml.safe_load((GITOPS_TEMPLATE / env / "kustomization.yaml").read_text())
        assert k["resources"] == [f"../_base/{b}" for b in ("api", "web", "worker", "billing")]
        assert k["namespace"] == f"shop-{env}" and k["images"] == []
    for base in bases:
        k = yaml.safe_load((GITOPS_TEMPLATE / "_base" / base / "kustomization.yaml").read_text())
        for resource in k["resources"]:
            assert (GITOPS_TEMPLATE / "_base" / base / resource).is_file()
