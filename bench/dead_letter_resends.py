"""How many dead letters a crash writes again: kill -9 a live `run --recovery-dir` under load, then finish.

    .venv/bin/python -m bench.dead_letter_resends [--kills 6] [--snapshot-interval 2s] [--stack embedded]

Playback events with 2 % bad messages (missing fields) are produced at about
8,000 messages/s while `streampulse run --recovery-dir` is killed with SIGKILL
2-6 s into each run and restarted; a last `--exit-at-end` run finishes. Every
letter names its source (`sp-source-partition`, `sp-source-offset`): the
letters beyond one per source are the re-sends. The bound (README,
"Dead letters after a crash") is the bad messages read in one snapshot
interval per crash; nothing may be missing.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from bench.stack import create_topics, start_services
from tests.integration.helpers import REPO, playback_sessions, produce, read_to_end

FEED_BATCH = 4_000
FEED_PAUSE_S = 0.5


def _messages(seed: int, bad_fraction: float) -> tuple[list[tuple[int, bytes | None, bytes]], int]:
    now = int(time.time() * 1000)
    log = playback_sessions(seed, 4, sessions=60_000, start_ms=now - 3_600_000, span_ms=3_000_000)
    rng = random.Random(seed)
    messages: list[tuple[int, bytes | None, bytes]] = []
    bad = 0
    for p, events in log.partitions.items():
        for event in events:
            messages.append((p, str(event["session_id"]).encode(), orjson.dumps(event)))
            if rng.random() < bad_fraction:
                messages.append((p, b"bad", b'{"event_type":"play_start","serial":' + str(bad).encode() + b"}"))
                bad += 1
    rng.shuffle(messages)  # partitions interleaved in time; order within a partition is kept by the producer
    return messages, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--snapshot-interval", default="2s")
    parser.add_argument("--stack", default="embedded", choices=["embedded", "apache"])
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="sp-resends-") as tmp:
        work = Path(tmp)
        services = start_services(args.stack, work)
        try:
            name = f"resends-{int(time.time())}"
            create_topics(services.bootstrap, {f"playback-{name}": 4, f"signup-{name}": 1})
            messages, bad = _messages(args.seed, 0.02)
            topic = f"playback-{name}"

            def feed() -> None:
                for i in range(0, len(messages), FEED_BATCH):
                    produce(services.bootstrap, topic, messages[i : i + FEED_BATCH])
                    time.sleep(FEED_PAUSE_S)

            feeder = threading.Thread(target=feed)
            feeder.start()
            run = [
                sys.executable, "-m", "streampulse.cli", "run", "--kafka-bootstrap", services.bootstrap,
                "--playback-topic", topic, "--signup-topic", f"signup-{name}", "--dead-letter-topic", f"dead-{name}",
                "--redis-url", services.redis_url, "--namespace", name, "--recovery-dir", str(work / "recovery"),
                "--snapshot-interval", args.snapshot_interval, "--metrics-port", "0",
            ]  # fmt: skip
            for kill in range(args.kills):
                process = subprocess.Popen(run, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(2, 6))
                process.send_signal(signal.SIGKILL)
                process.wait()
                print(f"kill {kill + 1}: {len(read_to_end(services.bootstrap, f'dead-{name}'))} letters so far")
            feeder.join()
            final = subprocess.run([*run, "--exit-at-end"], cwd=REPO, capture_output=True, text=True, check=False)
            if final.returncode != 0:
                raise SystemExit(f"the last run failed:\n{final.stderr[-2000:]}")
            letters = read_to_end(services.bootstrap, f"dead-{name}")
            sources: Counter[tuple[bytes, bytes]] = Counter()
            for letter in letters:
                raw = letter.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                headers = {key: value for key, value in pairs if isinstance(value, bytes)}
                sources[(headers["sp-source-partition"], headers["sp-source-offset"])] += 1
            print(
                f"{len(messages)} messages, {bad} bad; {args.kills} kills, snapshot interval {args.snapshot_interval}: "
                f"{len(letters)} letters, {len(sources)} distinct sources, {len(letters) - len(sources)} re-sent, "
                f"{bad - len(sources)} missing"
            )
            return 0 if len(sources) == bad else 1
        finally:
            services.stop()


if __name__ == "__main__":
    raise SystemExit(main())
