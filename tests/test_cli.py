"""The CLI's input handling, without a server: Buildkite variables, validation, exit codes, --help."""

from __future__ import annotations

import argparse

import pytest
from sample import sample_config

from common.config import parse_config
from starters.cli import build_parser, main
from starters.common import USAGE, CommandError, workflow_id_for
from starters.release_cmds import release_input_from_args

SHA = "0123456789abcdef0123456789abcdef01234567"


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["release", "start", *argv])


def test_from_buildkite_reads_the_step_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDKITE_COMMIT", SHA.upper())
    monkeypatch.setenv("BUILDKITE_BRANCH", "feature/login")
    monkeypatch.setenv("BUILDKITE_MESSAGE", "login: remember me")
    monkeypatch.setenv("BUILDKITE_BUILD_URL", "https://buildkite.com/acme/shop/builds/42")
    monkeypatch.setenv("BUILDKITE_BUILD_AUTHOR_EMAIL", "dev@example.com")
    inp = release_input_from_args(parse_config(sample_config()), args("--from-buildkite"))
    assert (inp.commit, inp.branch, inp.message) == (SHA, "feature/login", "login: remember me")
    assert inp.build_url.endswith("/builds/42") and inp.author == "dev@example.com"
    assert inp.release_id == f"shop-{SHA[:12]}"


def test_from_buildkite_outside_a_step_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDKITE_COMMIT", raising=False)
    with pytest.raises(CommandError) as err:
        release_input_from_args(parse_config(sample_config()), args("--from-buildkite"))
    assert err.value.code == USAGE and "BUILDKITE_COMMIT" in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--commit", "abc", "--branch", "main"], "not a full 40-character"),
        (["--commit", SHA, "--branch", "bad branch"], "not a valid git branch"),
        (["--commit", SHA, "--branch", "main", "--service", "ghost"], "unknown service(s) ghost"),
        (["--commit", SHA, "--branch", "main", "--service", "common"], "is a library"),
        (["--commit", SHA, "--branch", "main", "--repo", "other"], "--repo 'other' is not configured"),
        (["--commit", SHA], "needs --commit SHA and --branch"),
    ],
)
def test_bad_release_input_is_named(argv: list[str], message: str) -> None:
    with pytest.raises(CommandError) as err:
        release_input_from_args(parse_config(sample_config()), args(*argv))
    assert err.value.code == USAGE and message in str(err.value)


def test_release_references() -> None:
    cfg = parse_config(sample_config())
    assert workflow_id_for(cfg, f"shop-{SHA[:12]}") == f"release/shop/{SHA[:12]}"
    assert workflow_id_for(cfg, SHA) == f"release/shop/{SHA[:12]}"
    assert workflow_id_for(cfg, "release/shop/x") == "release/shop/x"
    with pytest.raises(CommandError):
        workflow_id_for(cfg, "abc")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf sub-command of the parser, walked from its subparsers (so a new one cannot be missed)."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name)) or [(*prefix, name)]
    return found


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert {("release", "start"), ("promote",), ("report",), ("codec-server",), ("provision", "apply")} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "usage: ferry" in out and len(out.splitlines()) > 3, command


def test_missing_config_exits_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "list"]) == USAGE
    assert "not found" in capsys.readouterr().err


def approve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["approve", *argv])


def test_approver_identity_from_the_buildkite_unblocker(monkeypatch: pytest.MonkeyPatch) -> None:
    from starters.release_cmds import decision_from_args

    monkeypatch.setenv("BUILDKITE_UNBLOCKER", "Carol Danvers")
    monkeypatch.setenv("BUILDKITE_UNBLOCKER_EMAIL", "carol@nasa.gov")
    monkeypatch.setenv("BUILDKITE_UNBLOCKER_TEAMS", "everyone:release-managers")
    cfg = parse_config(sample_config())
    decision = decision_from_args(cfg, approve_args("--from-buildkite", "--stage", "production"), approve=True)
    assert (decision.user, decision.email, decision.channel) == ("carol@nasa.gov", "carol@nasa.gov", "buildkite")
    assert decision.teams == ["everyone", "release-managers"]


def test_as_flag_only_where_the_config_allows_it() -> None:
    from starters.release_cmds import decision_from_args

    data = sample_config()
    data["approvals"]["allow_as_flag"] = False
    with pytest.raises(CommandError) as err:
        decision_from_args(parse_config(data), approve_args("shop-x", "--stage", "staging", "--as", "quinn"), True)
    assert err.value.code == USAGE and "--from-buildkite" in str(err.value)
    allowed = decision_from_args(
        parse_config(sample_config()), approve_args("x", "--stage", "staging", "--as", "q"), True
    )
    assert (allowed.user, allowed.channel) == ("q", "cli")


def test_override_freeze_needs_a_comment() -> None:
    from starters.release_cmds import decision_from_args

    args = approve_args("x", "--stage", "production", "--as", "rita", "--override-freeze")
    with pytest.raises(CommandError) as err:
        decision_from_args(parse_config(sample_config()), args, True)
    assert "--override-freeze needs --comment" in str(err.value)
