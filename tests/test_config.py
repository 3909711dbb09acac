"""ferry.yaml validation: the example is complete and valid; every error names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from sample import sample_config

from common.config import ConfigError, CredentialRef, FerryConfig, load_config, parse_config
from common.plan import build_plan

EXAMPLE = Path(__file__).parent.parent / "infra" / "ferry.example.yaml"


def test_example_config_is_valid_and_documents_every_key() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.environments["staging"].gate == "staging"
    text = EXAMPLE.read_text()

    def keys(model: type[BaseModel]) -> set[str]:
        found = set(model.model_fields)
        for field in model.model_fields.values():
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                for inner in (arg, *getattr(arg, "__args__", ())):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        found |= keys(inner)
        return found

    from common.config import BuildkiteEndpoint, HarborEndpoint, TektonEndpoint

    every = keys(FerryConfig) | keys(HarborEndpoint) | keys(TektonEndpoint) | keys(BuildkiteEndpoint)
    undocumented = sorted(k for k in every if f"{k}:" not in text)
    assert undocumented == []


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "ferry.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sites:\n  onprem: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    data = sample_config()
    data["sites"]["onprem"]["harbor"]["pasword"] = "x"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert "sites.onprem.harbor.pasword: unknown key" in str(err.value)


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    data = sample_config()
    data["sites"]["cloud"]["argocd"]["credential"] = "s3cr3t-token"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert "sites.cloud.argocd.credential" in str(err.value)
    assert "s3cr3t-token" not in str(err.value)


def test_unknown_dependency_group_and_cycle_are_reported_together() -> None:
    data = sample_config()
    data["services"]["web"]["depends_on"] = ["nope"]
    data["gates"]["staging"]["groups"] = ["qa", "ghosts"]
    data["services"]["common"]["depends_on"] = ["api"]
    with pytest.raises(ConfigError) as err:
        parse_config(data, "ferry.yaml")
    message = str(err.value)
    assert "services.web.depends_on: unknown service 'nope'" in message
    assert "gates.staging.groups: unknown group 'ghosts'" in message
    assert "depends_on cycle" in message


def test_service_without_image_and_missing_app_are_named() -> None:
    data = sample_config()
    del data["services"]["api"]["image"]
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "services.api" in str(err.value) and "image" in str(err.value)
    data = sample_config()
    del data["services"]["web"]["argocd_apps"]["production"]
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "services.web.argocd_apps: no application for environment 'production'" in str(err.value)


def test_credential_read_never_shows_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_X_TOKEN", "very-secret")
    assert CredentialRef(env="FERRY_X_TOKEN").read() == "very-secret"
    monkeypatch.delenv("FERRY_X_TOKEN")
    with pytest.raises(ConfigError) as err:
        CredentialRef(env="FERRY_X_TOKEN").read()
    assert "env:FERRY_X_TOKEN is not set" in str(err.value)
    secret = tmp_path / "token"
    secret.write_text("file-secret\n")
    assert CredentialRef(file=str(secret)).read() == "file-secret"


def test_plan_carries_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TEST_TOKEN_HARBOR_ONPREM", "plan-must-not-hold-this")
    plan = build_plan(parse_config(sample_config()))
    assert "plan-must-not-hold-this" not in repr(plan)
    assert [e.name for e in plan.environments] == ["testbed", "staging", "production"]
    assert plan.gates[0].members == {"qa": ["quinn", "quentin"]}


def test_group_file_members_join_the_groups(tmp_path: Path) -> None:
    (tmp_path / "groups.yaml").write_text("qa: [quincy]\nsecurity: [sam]\n")
    data = sample_config()
    data["approvals"]["group_file"] = "groups.yaml"
    cfg = load_config(write(tmp_path, data))
    assert cfg.groups["qa"] == ["quentin", "quincy", "quinn"] and cfg.groups["security"] == ["sam"]
    (tmp_path / "groups.yaml").write_text("qa: quincy\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "ferry.yaml")
    assert "must map each group name to a list" in str(err.value)


def test_freeze_window_needs_one_form_and_a_timezone() -> None:
    data = sample_config()
    data["freeze_windows"] = [{"environments": ["production"], "reason": "x", "cron": "0 18 * * FRI"}]
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "freeze_windows.0" in str(err.value) and "cron and duration_hours" in str(err.value)
    data["freeze_windows"] = [
        {"environments": ["production"], "reason": "x", "start": "2026-12-20T00:00:00", "end": "2026-12-21T00:00:00"}
    ]
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "timezone" in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://ferry-bot:glpat-s3cr3t@gitlab.example.com/shop/app.git",
        "https://ghp_s3cr3tToken@github.com/shop/app.git",
        "http://oauth2:s3cr3t@git.internal:8080/shop/app.git",
        "HTTPS://x-access-token:s3cr3t@github.com/shop/app.git",
        "https://s3cr3t:@github.com/shop/app.git",
        "ssh://git:s3cr3t@git.internal/shop/app.git",  # a password is a secret whatever the scheme
    ],
)
@pytest.mark.parametrize("repo", ["app", "gitops"])
def test_repo_url_with_credentials_is_refused(tmp_path: Path, repo: str, url: str) -> None:
    data = sample_config()
    data["repos"][repo]["url"] = url
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    message = str(err.value)
    assert f"{tmp_path / 'ferry.yaml'}: repos.{repo}.url: credentials must not be in the URL" in message
    assert "credential helper" in message and "ssh://git@" in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@github.com/shop/app.git",
        "git@github.com:shop/app.git",
        "ssh://git@git.internal:2222/shop/app.git",
        "https://github.com/shop/app.git",
        "https://git.internal/shop/app@v2.git",  # an @ in the path is not userinfo
        "/srv/git/app.git",
        "file:///srv/git/app.git",
        "../app",
    ],
)
def test_repo_url_without_credentials_is_accepted(url: str) -> None:
    data = sample_config()
    data["repos"]["app"]["url"] = url
    assert parse_config(data).repos.app.url == url


def test_signers_file_is_relative_to_ferry_yaml_and_trust_unverified_is_for_sandboxes(tmp_path: Path) -> None:
    data = sample_config()
    data["approvals"]["signatures"] = {"allowed_signers": "signers/allowed", "key_dir": "~/keys"}
    data["sandbox"] = False
    cfg = load_config(write(tmp_path, data))
    assert cfg.approvals.signatures is not None
    assert cfg.approvals.signatures.allowed_signers == str(tmp_path / "signers" / "allowed")
    assert cfg.approvals.signatures.key_dir == str(Path("~/keys").expanduser())
    data["approvals"]["trust_unverified"] = True
    with pytest.raises(ConfigError, match=r"approvals.trust_unverified: only a sandbox config \(sandbox: true\)"):
        load_config(write(tmp_path, data))
    data["sandbox"] = True
    assert load_config(write(tmp_path, data)).approvals.trust_unverified
    data["approvals"]["buildkite_block_step"] = "approve"
    with pytest.raises(ConfigError, match="must contain {stage}"):
        load_config(write(tmp_path, data))


def test_a_whole_file_problem_starts_with_its_key_not_top_level() -> None:
    data = sample_config()
    data["services"]["web"]["depends_on"] = ["nope"]
    with pytest.raises(ConfigError) as err:
        parse_config(data, "ferry.yaml")
    assert str(err.value).startswith("ferry.yaml: services.web.depends_on: unknown service 'nope'")
    assert "(top level)" not in str(err.value)


@pytest.mark.parametrize("name", ["web\n", "Web"])
def test_a_service_name_must_match_entirely(name: str) -> None:
    """`$` in a regex also matches before a final newline: names are checked with fullmatch."""
    data = sample_config()
    data["services"][name] = data["services"].pop("web")
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "name must be lowercase letters, digits and '-'" in str(err.value)
