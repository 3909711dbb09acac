"""The CLI's input handling, without a server: Buildkite variables, validation, exit codes, --help."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def test_from_buildkite_sends_a_proof_naming_the_block_step_and_believes_no_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unblocker variables are only a claim: the proof names the build and block step for the workers to
    read back from Buildkite (teams are never sent: the workers ask Buildkite)."""
    from starters.release_cmds import decision_from_args

    monkeypatch.setenv("BUILDKITE_UNBLOCKER", "Carol Danvers")
    monkeypatch.setenv("BUILDKITE_UNBLOCKER_EMAIL", "carol@nasa.gov")
    monkeypatch.setenv("BUILDKITE_UNBLOCKER_TEAMS", "everyone:release-managers")
    monkeypatch.setenv("BUILDKITE_PIPELINE_SLUG", "shop")
    monkeypatch.setenv("BUILDKITE_BUILD_NUMBER", "42")
    cfg = parse_config(sample_config())
    args = approve_args("--from-buildkite", "--stage", "production")
    decision = decision_from_args(cfg, args, approve=True, workflow_id="release/shop/abc")
    assert (decision.user, decision.channel, decision.teams) == ("carol@nasa.gov", "buildkite", [])
    assert decision.proof is not None
    assert (decision.proof.kind, decision.proof.pipeline, decision.proof.build_number, decision.proof.step_key) == (
        "buildkite",
        "shop",
        42,
        "approve-production",
    )
    monkeypatch.delenv("BUILDKITE_BUILD_NUMBER")
    with pytest.raises(CommandError, match="BUILDKITE_BUILD_NUMBER"):
        decision_from_args(cfg, args, approve=True, workflow_id="release/shop/abc")


def test_as_user_signs_the_decision_for_this_workflow_gate_and_comment(tmp_path: Path) -> None:
    from signing import ALLOWED_SIGNERS

    from common import signatures
    from starters.release_cmds import decision_from_args

    cfg = parse_config(sample_config())
    args = approve_args("x", "--stage", "staging", "--as", "quinn", "--comment", "QA ok")
    decision = decision_from_args(cfg, args, True, "release/shop/abc")
    assert (decision.user, decision.channel) == ("quinn", "cli") and decision.proof is not None
    claim = signatures.Claim.parse(decision.proof.claim)
    assert (claim.workflow_id, claim.action, claim.stage, claim.principal) == (
        "release/shop/abc",
        "approve",
        "staging",
        "quinn",
    )
    assert claim.comment_sha256 == signatures.comment_digest("QA ok")
    assert signatures.verify(decision.proof.claim, decision.proof.signature, "quinn", ALLOWED_SIGNERS).startswith(
        "SHA256:"
    )
    # Somebody without a key for the name cannot make a decision at all (no unsigned fallback).
    data = sample_config()
    data["approvals"]["signatures"]["key_dir"] = str(tmp_path)
    with pytest.raises(CommandError) as err:
        decision_from_args(parse_config(data), args, True, "release/shop/abc")
    assert err.value.code == USAGE and "no signing key for quinn" in str(err.value)


def test_override_freeze_needs_a_comment() -> None:
    from starters.release_cmds import decision_from_args

    args = approve_args("x", "--stage", "production", "--as", "rita", "--override-freeze")
    with pytest.raises(CommandError) as err:
        decision_from_args(parse_config(sample_config()), args, True, "release/shop/abc")
    assert "--override-freeze needs --comment" in str(err.value)
