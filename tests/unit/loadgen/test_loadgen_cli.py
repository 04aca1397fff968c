"""`streampulse loadgen` on the command line: determinism, options and environment, errors, progress, realtime."""

from __future__ import annotations

import argparse
import io
import json
import socket
import time
from pathlib import Path

import orjson
import pytest

from loadgen.api import generate
from loadgen.config import FaultConfig
from loadgen.runner import Progress
from streampulse.loadgen_cli import add_arguments, build_config, default_start_ms, register, run

START_MS = 1_714_521_600_000
HOUR_MS = 3_600_000
FAULTS = ["--jitter-ms", "1500", "--late-fraction", "0.01", "--duplicate-fraction", "0.02"]
FAULTS += ["--malformed-fraction", "0.01"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(argv: list[str]) -> int:
    return run(parse(argv))


def produce_files(tmp_path: Path, name: str, argv: list[str]) -> tuple[bytes, bytes]:
    out, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
    assert run_cli([*argv, "--out", str(out), "--truth", str(truth)]) == 0
    return out.read_bytes(), truth.read_bytes()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    common = ["--events", "20000", "--start", str(START_MS), "--span", "2h", *FAULTS, "--scenario", "cdn-outage-br"]
    a = produce_files(tmp_path, "a", ["--seed", "11", *common])
    b = produce_files(tmp_path, "b", ["--seed", "11", *common])
    c = produce_files(tmp_path, "c", ["--seed", "12", *common])
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]
    assert len(a[0].splitlines()) > 20000  # faults on top of the 20000 valid events


def test_cli_and_api_agree(tmp_path: Path) -> None:
    lines, truth = produce_files(tmp_path, "x", ["--seed", "2", "--events", "5000", "--start", str(START_MS), *FAULTS])
    g = generate(
        seed=2,
        events=5000,
        start_ms=START_MS,
        faults=FaultConfig(jitter_ms=1500, late_fraction=0.01, duplicate_fraction=0.02, malformed_fraction=0.01),
    )
    assert b"".join(m.value + b"\n" for m in g.messages) == lines
    assert orjson.loads(truth) == g.truth


def test_environment_variables_set_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPULSE_SEED", "77")
    monkeypatch.setenv("STREAMPULSE_EVENTS", "123")
    monkeypatch.setenv("STREAMPULSE_HEARTBEAT_INTERVAL", "10s")
    monkeypatch.setenv("STREAMPULSE_FLAT", "yes")
    args = parse(["--start", str(START_MS)])
    config = build_config(args)
    assert (config.seed, config.events, config.params.heartbeat_interval_ms) == (77, 123, 10_000)
    assert config.params.diurnal is False
    assert parse(["--seed", "5"]).seed == 5  # a flag beats the environment


def test_register_adds_the_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="streampulse")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["loadgen", "--events", "10"])
    assert args.func is run and args.events == 10


def test_default_start_ends_the_span_at_or_before_now() -> None:
    now = START_MS + 5 * HOUR_MS + 123
    for span in (HOUR_MS, 24 * HOUR_MS, 3 * 24 * HOUR_MS):
        start = default_start_ms(span, now)
        assert start + span <= now
        assert start % (24 * HOUR_MS) == 0
        assert now - (start + span) < 24 * HOUR_MS
    config = build_config(parse(["--events", "10"]), now=now)
    assert config.start_ms + (config.span_ms or 0) <= now


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "x.csv"], "use a .jsonl or .parquet"),
        (["--mode", "realtime", "--start", "5", "--out", "x.jsonl"], "--start is for --mode simulated"),
        (["--out", "x.parquet", "--malformed-fraction", "0.1"], "cannot be written to Parquet"),
    ],
)
def test_bad_combinations_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a if not a.startswith("x.") else str(tmp_path / a) for a in argv]
    assert run_cli(["--events", "10", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_incident_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "inc.yaml"
    bad.write_text("- {name: x, start: '+1m', duration: 1m, where: {country: BR}, effect: {explode: 3}}\n")
    assert run_cli(["--events", "10", "--out", str(tmp_path / "o.jsonl"), "--incidents", str(bad)]) == 2
    assert "unknown effect 'explode'" in capsys.readouterr().err


def test_bad_values_are_argparse_errors() -> None:
    for argv in (["--late-fraction", "1.5"], ["--scenario", "no-such"], ["--span", "soon"], ["--rate", "0"]):
        with pytest.raises(SystemExit):
            parse(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_broker_is_a_quick_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = run_cli(["--events", "10", "--kafka-bootstrap", f"127.0.0.1:{free_port()}", "--kafka-timeout", "1s"])
    assert code == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "cannot reach Kafka" in err and "--kafka-bootstrap" in err


def test_quiet_when_stderr_is_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--events", "2000", "--out", str(tmp_path / "q.jsonl")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_count_rate_and_eta_on_a_terminal() -> None:
    config = build_config(parse(["--events", "1000", "--start", str(START_MS)]))
    tty = _Tty()
    progress = Progress(config, stream=tty, every_s=0)
    progress.update(500, START_MS + HOUR_MS)
    progress.update(1000, START_MS + 2 * HOUR_MS, final=True)
    text = tty.getvalue()
    assert "500 events" in text and "ev/s" in text and "ETA" in text and "50%" in text
    quiet = io.StringIO()
    Progress(config, stream=quiet, every_s=0).update(500, START_MS)
    assert quiet.getvalue() == ""


def test_realtime_mode_uses_the_wall_clock_and_paces(tmp_path: Path) -> None:
    out = tmp_path / "rt.jsonl"
    before = time.time_ns() // 1_000_000
    assert run_cli(["--mode", "realtime", "--rate", "400", "--events", "300", "--out", str(out), "--flat"]) == 0
    after = time.time_ns() // 1_000_000
    times = [json.loads(line)["event_time_ms"] for line in out.read_bytes().splitlines()]
    assert len(times) == 300
    # Events are never sent before their time: all lie between the start and the end of the run.
    assert before <= min(times) and max(times) <= after
    # About 300 events at ~400/s: the run is paced, it does not dump them at once.
    assert max(times) - min(times) > 200


def test_same_bytes_in_another_process_with_another_hash_seed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    argv = ["--seed", "6", "--events", "4000", "--start", str(START_MS), "--span", "1h", *FAULTS]
    argv += ["--scenario", "incident-day"]
    here = produce_files(tmp_path, "here", argv)
    out, truth = tmp_path / "there.jsonl", tmp_path / "there.json"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [sys.executable, "-m", "streampulse.loadgen_cli", *argv, "--out", str(out), "--truth", str(truth)]
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[3])
    assert (out.read_bytes(), truth.read_bytes()) == here
