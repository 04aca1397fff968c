"""How each playback event adds to the partial aggregates of its window.

One function per event type; each adds to plain dict counters keyed by
`(window_start_ms, aggregate, *dims)` (see flows/catalog.py for the names).
Pure Python, no Kafka: unit tests call these directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.partials import Partials

Handler = Callable[[Any, int, Partials], None]


def _play_start(event: Any, window: int, acc: Partials) -> None:
    key = (window, "stream_starts", event.country, event.device_type, event.cdn)
    acc[key] = acc.get(key, 0) + 1


HANDLERS: dict[str, Handler] = {
    "play_start": _play_start,
}
