"""The dataflow's assembly (streampulse/dataflow.py): which steps a configuration has and where each stream goes.

Run in-process with bytewax's testing source and sinks: summaries folded by the flow's own folders from
a few stream starts, plus rejected messages; no Kafka, no Redis.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main
from bytewax.visualize import to_rendered

from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.warm_start import SavedState
from flows.fold.partition_aggregator import Folder, PartitionAggregator
from flows.partials import BatchSummary, DeadLetter
from flows.pipeline_health import PipelineHealth
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayRange
from flows.windows.store import ShardProgress, WindowUpdate
from settings.kafka import KafkaSettings
from settings.redis import RedisSettings
from settings.windows import WindowConfig
from sinks.base import process_part
from streampulse import dataflow
from streampulse.dataflow import FlowSettings, FlowSinks, build_dataflow

WINDOWS = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
PARTITION = "iterable"  # the one partition bytewax's TestingSource has
KAFKA = KafkaSettings("127.0.0.1:1", "playback-events", "signup-events", "dead-letters")
REDIS = RedisSettings("redis://127.0.0.1:1/0", "test")


class Outputs:
    """What reached each sink."""

    def __init__(self) -> None:
        self.dead_letters: list[tuple[str, list[DeadLetter]]] = []
        self.health: list[PipelineHealth] = []
        self.windows_redis: list[WindowUpdate | ShardProgress] = []
        self.windows_prometheus: list[WindowUpdate] = []
        self.anomalies_kafka: list[AnomalyEvent] = []
        self.anomalies_redis: list[AnomalyEvent] = []
        self.anomalies_prometheus: list[Detection] = []
        self.detector_states: list[SavedState] = []

    def sinks(self) -> FlowSinks:
        return FlowSinks(**{name: TestingSink(items) for name, items in vars(self).items()})


def play_start(n: int, t: int) -> SimpleNamespace:
    return SimpleNamespace(
        event_id=f"e{n}",
        event_type="play_start",
        event_time_ms=t,
        country="BR",
        device_type="tv",
        cdn="c1",
        session_id=f"s{n}",
        account_id=f"a{n}",
        title_id="t1",
        startup_ms=900,
    )


def letter(offset: int, reason: str) -> DeadLetter:
    return DeadLetter("playback-events", 0, offset, T0, b"k", b"{not json", reason, "detail")


LETTERS = [letter(1, "malformed_json"), letter(2, "bad_enum"), letter(3, "bad_enum")]


def source_of_batches(
    topics: Mapping[str, str], folders: Mapping[str, Callable[[], Folder]], reader: ReaderConfig
) -> TestingSource[BatchSummary]:
    """Two batches of stream starts, folded by the flow's own playback folder, the first with rejects."""
    return TestingSource(two_batches(folders, reader))


def two_batches(folders: Mapping[str, Callable[[], Folder]], reader: ReaderConfig) -> list[BatchSummary]:
    aggregator = PartitionAggregator(PARTITION, reader.windows, folders["playback"]())
    aggregator.add_all(play_start(n, T0 + n * 1_000) for n in range(5))
    first = aggregator.summary("active")
    first.rejects = list(LETTERS)
    aggregator.add_all(play_start(n, T0 + n * 1_000) for n in range(5, 12))
    second = aggregator.summary("finished")
    return [first, second]


def settings(metric_set: str = "all", replay: ReplayRange | None = None, shards: int = 1) -> FlowSettings:
    reader = ReaderConfig(WINDOWS, exit_at_end=True, metric_set=metric_set, replay=replay)
    return FlowSettings(KAFKA, REDIS, reader, shards=shards)


def window_updates(outputs: Outputs) -> list[WindowUpdate]:
    return [u for u in outputs.windows_redis if isinstance(u, WindowUpdate)]


def run(flow: Dataflow, workers: int) -> None:
    cluster_main(flow, [], 0, worker_count_per_proc=workers)  # type: ignore[no-untyped-call]


def steps(flow: Dataflow) -> dict[str, set[str]]:
    """Each top-level step's name -> the names of the steps whose output it reads."""
    rendered = to_rendered(flow).substeps
    owner = {port.port_id: step.step_name for step in rendered for port in step.out_ports}
    return {
        step.step_name: {owner[source] for port in step.inp_ports for source in port.from_port_ids} for step in rendered
    }


def upstream(graph: dict[str, set[str]], step: str, stop_at: str = "") -> set[str]:
    """Every step `step` reads from, directly or not, not looking past `stop_at`."""
    seen: set[str] = set()
    todo = [step]
    while todo:
        for before in graph[todo.pop()]:
            if before not in seen:
                seen.add(before)
                if before != stop_at:
                    todo.append(before)
    return seen


@pytest.mark.parametrize(("workers", "shards"), [(1, 1), (2, 1), (2, 2)])
def test_rejects_reach_the_dead_letter_sink_and_only_their_counts_reach_the_window_step(
    workers: int, shards: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged: list[BatchSummary] = []
    on_batch = dataflow.WindowLogic.on_batch

    def spy(self: dataflow.WindowLogic, values: list[BatchSummary]) -> Any:
        merged.extend(values)
        return on_batch(self, values)

    monkeypatch.setattr(dataflow.WindowLogic, "on_batch", spy)
    outputs = Outputs()
    run(build_dataflow(settings(shards=shards), source_of_batches, outputs.sinks()), workers)

    # Keyed to the one process: each batch's letters stay in the process that read them.
    assert {key for key, _letters in outputs.dead_letters} == {process_part(0)}
    written = [letter for _key, letters in outputs.dead_letters for letter in letters]
    assert sorted(written, key=lambda d: d.offset) == LETTERS
    assert len(merged) == 2 * shards  # every shard gets every batch's progress
    assert all(summary.rejects == [] for summary in merged)  # the bytes never travel to the window step
    by_reason = [s.rejected_by_reason for s in merged if s.rejected_by_reason]
    assert by_reason == [{"malformed_json": 1, "bad_enum": 2}]  # counted once, by shard 0
    # The health document still counts every reject, by reason.
    last = outputs.health[-1]
    assert (last.bad_events_total, last.bad_events_by_reason) == (3, {"malformed_json": 1, "bad_enum": 2})
    # The stream starts still reach Redis and /metrics: one final coarse window holding all twelve.
    finals = [u for u in window_updates(outputs) if u.final and u.resolution == "1m" and u.complete is not None]
    assert {u.window_start_ms for u in finals} == {T0}
    assert sum(sum(u.complete["stream_starts"].values()) for u in finals if u.complete is not None) == 12
    assert sorted(outputs.windows_prometheus, key=repr) == sorted(window_updates(outputs), key=repr)
    progress = [p for p in outputs.windows_redis if isinstance(p, ShardProgress)]
    assert {p.shard for p in progress} == set(range(shards))


def test_every_path_from_the_input_to_the_window_step_leaves_rejects_behind() -> None:
    graph = steps(build_dataflow(settings(), source_of_batches, Outputs().sinks()))
    assert "kafka_in" in upstream(graph, "windows")
    assert "kafka_in" not in upstream(graph, "windows", stop_at="rejects_apart")
    # Nothing between the input and the dead-letter sink moves data between workers (the sink keeps it in the process).
    assert upstream(graph, "dead_letter_out") == {"rejects", "kafka_in"}


def test_a_replay_writes_to_no_kafka_topic() -> None:
    replay = ReplayRange(T0, T0 + 60_000, (("playback", 0),), 0, 0)
    graph = steps(build_dataflow(settings(replay=replay), source_of_batches, Outputs().sinks()))
    assert "dead_letter_out" not in graph and "anomalies_kafka_out" not in graph
    assert {"redis_out", "prometheus_out", "health_out", "anomalies_redis_out"} <= graph.keys()
    live = steps(build_dataflow(settings(), source_of_batches, Outputs().sinks()))
    assert {"dead_letter_out", "anomalies_kafka_out"} <= live.keys()


def test_the_stream_starts_only_configuration_has_no_anomaly_steps() -> None:
    graph = steps(build_dataflow(settings(metric_set="stream_starts"), source_of_batches, Outputs().sinks()))
    assert not [step for step in graph if "anomal" in step]
    assert {"dead_letter_out", "redis_out", "prometheus_out"} <= graph.keys()


def test_a_replay_writes_only_the_windows_inside_its_range() -> None:
    # The range holds the first fine window only: the other fine windows and the coarse one reach past it.
    replay = ReplayRange(T0, T0 + 10_000, (("playback", 0),), 0, 0)
    outputs = Outputs()
    run(build_dataflow(settings(replay=replay), source_of_batches, outputs.sinks()), 1)
    assert window_updates(outputs)
    assert {(u.resolution, u.window_start_ms) for u in window_updates(outputs)} == {("10s", T0)}
    assert outputs.dead_letters == [] and outputs.anomalies_kafka == []


def test_a_window_step_resumes_from_its_snapshot_and_from_a_store_snapshotted_before() -> None:
    reader = settings().reader
    # Fresh summaries for each merge: the store takes their rows over (flows/windows/window.py, add_row).
    first, second = two_batches(dataflow._folders(reader), reader)
    logic = dataflow.WindowLogic(reader, [PARTITION], 1, None)
    logic.on_batch([first])
    snapshot = logic.snapshot()
    assert isinstance(snapshot, bytes)  # taken whole at once: later merges do not reach it
    logic.on_batch([second])
    expected = logic.on_eof()[0]
    for resume in (snapshot, pickle.loads(snapshot)):  # bytes, or a WindowStore as earlier versions kept it
        resumed = dataflow.WindowLogic(reader, [PARTITION], 1, resume)
        resumed.on_batch([two_batches(dataflow._folders(reader), reader)[1]])
        got = resumed.on_eof()[0]
        assert [o for o in got if not isinstance(o, PipelineHealth)] == [
            o for o in expected if not isinstance(o, PipelineHealth)
        ]
