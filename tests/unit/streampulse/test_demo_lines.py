"""`streampulse demo --plain`: each final window printed once, in order, none skipped."""

from __future__ import annotations

from sinks.redis_query import Row
from streampulse.demo import window_lines

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def total(i: int, value: int, final: bool) -> Row:
    start = T0 + i * 10_000
    return Row("stream_starts", start, start + 10_000, {}, value, final)


def country(i: int, name: str, value: int) -> Row:
    start = T0 + i * 10_000
    return Row("stream_starts", start, start + 10_000, {"country": name}, value, True)


def test_every_final_window_once_oldest_first_up_to_the_first_open_one() -> None:
    totals = [total(2, 30, True), total(1, 20, True), total(3, 5, False), total(4, 0, True)]
    lines, newest = window_lines(totals, [country(1, "US", 12), country(1, "BR", 8), country(2, "BR", 30)], first=False)
    assert lines == [
        "[22:13:10Z 10 s] stream starts 20 (SPS 2.0)  by country: US 12  BR 8",
        "[22:13:20Z 10 s] stream starts 30 (SPS 3.0)  by country: BR 30",
    ]
    assert newest == T0 + 20_000


def test_the_first_call_prints_only_the_newest_final_window() -> None:
    lines, newest = window_lines([total(1, 20, True), total(2, 0, True), total(3, 5, False)], [], first=True)
    assert lines == ["[22:13:20Z 10 s] stream starts 0 (SPS 0.0)  by country: "]
    assert newest == T0 + 20_000


def test_nothing_final_prints_nothing() -> None:
    assert window_lines([total(1, 20, False)], [], first=False) == ([], None)
