"""Bad flags and environment variables stop the command at start, saying what to fix; secrets never print."""

from __future__ import annotations

import pytest

from streampulse.cli import COMMANDS, _command_in, build_parser, main
from streampulse.processes import free_port


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(args)
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out + captured.err


def test_bad_environment_variable_is_reported_like_a_bad_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMPULSE_METRICS_PORT", "not-a-port")
    code, output = run_cli(["run"], capsys)
    assert code == 2
    assert "--metrics-port" in output and "not-a-port" in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--kafka-bootstrap", "no-port-here"], "host:port"),
        (["--fine-window", "10s", "--coarse-window", "15s"], "whole multiple"),
        (["--namespace", "has space"], "--namespace"),
        (["--playback-topic", "same", "--signup-topic", "same"], "three different topics"),
        (["--process-id", "0"], "--addresses"),
        (["--kafka-security-protocol", "SASL_SSL"], "--kafka-sasl-mechanism"),
        (["--redis-url", "http://x"], "--redis-url"),
        (["--redis-url", "rediss://127.0.0.1:1/0", "--redis-ssl-ca-location", "/no/such/ca.pem"], "No such file"),
        (["--redis-ssl-ca-location", __file__], "use a rediss:// --redis-url"),
        (["--coarse-window", "1m", "--detector-state-interval", "90s"], "--detector-state-interval (90000 ms) must be"),
        (["--detector-state-interval", "hourly"], "--detector-state-interval"),
        (["--detector-states-kept", "0"], "--detector-states-kept"),
        (["--detector-states-kept", "1"], "--detector-states-kept (1) must be at least 2"),
    ],
)
def test_invalid_configuration_stops_with_what_to_fix(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = run_cli(["run", *args], capsys)
    assert code == 2
    assert expected in output


def test_unreachable_redis_is_reported_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cret-Pa55word"
    monkeypatch.setenv("STREAMPULSE_REDIS_PASSWORD", secret)
    url = f"redis://user:{secret}@127.0.0.1:{free_port()}/0"
    code, output = run_cli(["query", "stream_starts", "--redis-url", url], capsys)
    assert code == 2
    assert "not reachable" in output
    assert secret not in output


def test_unknown_metric_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(["query", "no_such_metric", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"], capsys)
    assert code == 2
    assert "stream_starts" in output


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--exit-at-end"], "run"),
        (["--log-level", "DEBUG", "query", "stream_starts"], "query"),
        (["--log-level=DEBUG", "replay"], "replay"),
        (["--help"], None),
        (["nope"], None),
        ([], None),
    ],
)
def test_only_the_named_subcommand_is_built(argv: list[str], command: str | None) -> None:
    assert _command_in(argv) == command
    parser = build_parser(only=command)
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert subcommands is not None
    assert list(subcommands) == ([command] if command else list(COMMANDS))


def test_a_lone_subcommand_parses_as_with_all_of_them() -> None:
    argv = ["query", "stream_starts", "--resolution", "1m", "--by", "country"]
    assert vars(build_parser(only="query").parse_args(argv)).keys() == vars(build_parser().parse_args(argv)).keys()


def test_a_bad_detector_start_stops_the_replay_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_cli(["replay", "--detector-start", "warm"], capsys)
    assert code == 2
    assert "--detector-start" in output and "'live', 'cold'" in output


def test_the_detector_state_interval_comes_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMPULSE_DETECTOR_STATE_INTERVAL", "45s")
    code, output = run_cli(["run"], capsys)
    assert code == 2
    assert "--detector-state-interval (45000 ms) must be a whole multiple of --coarse-window" in output
