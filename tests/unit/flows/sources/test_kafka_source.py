"""The partition readers' pure parts, no broker: the base's loop and partition states, Kafka's messages and dead letters.

`ListReader` is a `PartitionReader` whose "next records" are a list of
batches, with a clock the test moves, so the loop the Kafka and the archive
readers share (fold, replay feed, active/idle/finished, when a summary goes
out) runs here exactly as in a flow. The Kafka reader's own parts are tested
on real `confluent_kafka.Message` objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message

from flows.fold.playback import PlaybackFolder
from flows.sources.kafka import dead_letter, split_messages
from flows.sources.reader_base import IDLE_REPORT_INTERVAL_S, PartitionReader, Records
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayRange
from schemas.decoder import EventDecoder, Rejection
from settings.windows import WindowConfig

T0 = 1_795_420_800_000  # 2026-11-23T08:00:00Z
NOW_MS = T0 + 3_600_000  # decoding "now": every event below is in its past
WINDOWS = WindowConfig()


def _message(i: int, time_ms: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{i}",
            "event_type": "play_attempt",
            "event_time_ms": time_ms,
            "country": "NL",
            "device_type": "tv",
            "schema_version": 1,
            "session_id": f"s{i}",
            "account_id": f"a{i}",
            "title_id": "t1",
        }
    )


def _events(times: Iterable[int]) -> list[Any]:
    decode = EventDecoder("playback", 65_536, 3_600_000).decode
    events = [decode(_message(i, t), NOW_MS) for i, t in enumerate(times)]
    assert not any(isinstance(e, Rejection) for e in events)
    return events


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class ListReader(PartitionReader[int]):
    """A partition whose records are `batches`, read one per call; at its end once they are all read."""

    def __init__(self, batches: list[list[Any]], config: ReaderConfig, clock: Clock, *, exit_at_end: bool) -> None:
        super().__init__(
            "topic#0",
            "playback",
            PlaybackFolder(WINDOWS, config.session_timeout_ms),
            config,
            next_offset=0,
            exit_at_end=exit_at_end,
            clock=clock,
        )
        self.batches = list(batches)
        self.reads = 0

    def read_records(self) -> Records:
        self.reads += 1
        if not self.batches:
            return Records((), 0, self._next_offset, at_end=True)
        events = self.batches.pop(0)
        return Records(iter(events), len(events), self._next_offset + len(events), at_end=not self.batches)

    def snapshot(self) -> int:
        return self._next_offset


def test_live_batches_are_folded_and_an_exit_at_end_partition_finishes() -> None:
    clock = Clock()
    first, second = _events([T0, T0 + 1_000]), _events([T0 + 5_000])
    reader = ListReader([first, second], ReaderConfig(WINDOWS), clock, exit_at_end=True)

    [one] = reader.next_batch()
    assert (one.state, one.consumed, one.high_event_time_ms) == ("active", 2, T0 + 1_000)
    assert reader.snapshot() == 2
    # The last batch: the partition is at its end, and with exit_at_end that is the end of the reader.
    [two] = reader.next_batch()
    assert (two.state, two.consumed, two.high_event_time_ms) == ("finished", 1, T0 + 5_000)
    assert reader.snapshot() == 3
    with pytest.raises(StopIteration):
        reader.next_batch()


def test_a_partition_at_its_end_turns_idle_after_idle_after_ms_and_says_so_every_few_seconds() -> None:
    clock = Clock()
    config = ReaderConfig(WINDOWS, idle_after_ms=10_000)
    reader = ListReader([_events([T0])], config, clock, exit_at_end=False)

    [first] = reader.next_batch()
    assert first.state == "active"  # at the end, but it just had a record: it still holds the watermark
    clock.now += 9.9
    assert reader.next_batch() == []  # nothing read, still active: nothing to say
    clock.now += 0.1
    [idle] = reader.next_batch()
    assert (idle.state, idle.consumed) == ("idle", 0)
    clock.now += IDLE_REPORT_INTERVAL_S - 0.5
    assert reader.next_batch() == []  # said a moment ago
    clock.now += 0.5
    [again] = reader.next_batch()
    assert again.state == "idle"
    # A record wakes it up.
    reader.batches.append(_events([T0 + 20_000]))
    [awake] = reader.next_batch()
    assert (awake.state, awake.consumed) == ("active", 1)


def test_without_records_an_active_partition_says_nothing_and_a_source_with_news_says_it() -> None:
    class NewsReader(ListReader):
        news = False

        def has_news(self) -> bool:
            return self.news

    reader = NewsReader([[], []], ReaderConfig(WINDOWS), Clock(), exit_at_end=False)  # empty reads
    assert reader.next_batch() == []
    reader.news = True
    [summary] = reader.next_batch()
    assert (summary.state, summary.consumed) == ("active", 0)


def test_a_replay_drops_the_lead_stops_past_the_range_and_finishes() -> None:
    replay = ReplayRange(
        from_ms=T0, to_ms=T0 + 60_000, lead_ms=(("playback", 30_000),), timestamp_skew_ms=0, tail_ms=10_000
    )
    config = ReaderConfig(WINDOWS, replay=replay)
    # Older than the lead (dropped), in the lead, in the range, past the stop (folded, then the partition stops).
    before_lead, lead, inside, past = T0 - 40_000, T0 - 10_000, T0 + 1_000, T0 + 70_000
    reader = ListReader(
        [_events([before_lead, lead, inside]), _events([past]), _events([past + 1])],
        config,
        Clock(),
        exit_at_end=False,
    )

    [first] = reader.next_batch()
    assert (first.state, first.consumed, first.high_event_time_ms) == ("active", 3, inside)
    [last] = reader.next_batch()
    assert (last.state, last.high_event_time_ms) == ("finished", past)
    with pytest.raises(StopIteration):
        reader.next_batch()
    assert reader.reads == 2  # nothing past the range is read


def test_a_paced_replay_holds_events_ahead_of_its_clock_and_reads_nothing_new_meanwhile() -> None:
    hour = 3_600_000
    replay = ReplayRange(
        from_ms=T0, to_ms=T0 + 2 * hour, lead_ms=(("playback", 0),), timestamp_skew_ms=0, tail_ms=0, pace=1.0
    )
    reader = ListReader(
        [_events([T0, T0 + hour]), _events([T0 + hour + 1])],
        ReaderConfig(WINDOWS, replay=replay),
        Clock(),
        exit_at_end=True,
    )

    started = time.time()
    [first] = reader.next_batch()
    # The first event starts the paced clock; the second is an hour of event time ahead of it: it waits.
    assert (first.state, first.consumed, first.high_event_time_ms) == ("active", 2, T0)
    awake = reader.next_awake()
    assert awake is not None
    assert started + hour / 1000 - 5 <= awake.timestamp() <= time.time() + hour / 1000
    assert reader.next_batch() == []
    assert reader.reads == 1  # held: the next batch stays unread


def test_a_reject_becomes_a_dead_letter_with_where_it_was_and_why() -> None:
    value = b'{"event_type": "play_attempt"'
    message = Message(topic="playback-events", partition=3, offset=41, key=b"s1", value=value, timestamp=(1, T0))
    rejection = EventDecoder("playback", 65_536, 3_600_000).decode(value, NOW_MS)
    assert isinstance(rejection, Rejection)

    letter = dead_letter("playback-events", 3, message, rejection)

    assert (letter.topic, letter.partition, letter.offset, letter.timestamp_ms) == ("playback-events", 3, 41, T0)
    assert (letter.key, letter.value) == (b"s1", value)
    assert (letter.reason, letter.detail) == (rejection.reason, rejection.detail)


def _record(offset: int) -> Message:
    return Message(topic="t", partition=0, offset=offset, value=b"{}")


def _eof() -> Message:
    return Message(topic="t", partition=0, error=KafkaError(KafkaError._PARTITION_EOF))


@pytest.mark.parametrize(
    ("messages", "was_at_end", "records", "at_end"),
    [
        pytest.param([], False, 0, False, id="nothing"),
        pytest.param([], True, 0, True, id="nothing-still-at-end"),
        pytest.param([_eof()], False, 0, True, id="eof"),
        pytest.param([_record(5), _record(6)], True, 2, False, id="records-leave-the-end"),
        pytest.param([_record(5), _eof()], False, 1, True, id="records-then-eof"),
        pytest.param([_eof(), _record(5)], False, 1, False, id="eof-then-records"),
    ],
)
def test_the_end_of_a_partition_is_the_fetchers_event_after_the_last_record(
    messages: list[Message], was_at_end: bool, records: int, at_end: bool
) -> None:
    got, end, errors = split_messages(messages, was_at_end)
    assert (len(got), end, errors) == (records, at_end, [])


def test_errors_are_set_apart_from_records() -> None:
    broken = Message(topic="t", partition=0, error=KafkaError(KafkaError._TRANSPORT))
    records, at_end, errors = split_messages([_record(1), broken], False)
    assert [m.offset() for m in records] == [1]
    assert at_end is False
    assert [e.code() for e in errors] == [KafkaError._TRANSPORT]
