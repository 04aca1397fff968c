"""Both implementations of the playback fold, for tests that must hold for each.

The native one (native/, `streampulse_native`) is skipped where it is not
installed, unless `STREAMPULSE_REQUIRE_NATIVE=1` (CI sets it), which makes a
missing build a failure rather than a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from flows.fold.native import NativePlaybackAggregator, native_core
from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder, StreamStartsFolder
from settings.windows import WindowConfig

REQUIRE_ENV = "STREAMPULSE_REQUIRE_NATIVE"

MakeAggregator = Callable[[str, WindowConfig, PlaybackFolder | StreamStartsFolder], Any]

needs_native = pytest.mark.skipif(
    native_core() is None and os.environ.get(REQUIRE_ENV) != "1",
    reason="streampulse_native is not installed (pip install ./native)",
)

PLAYBACK_AGGREGATORS = [
    pytest.param(PartitionAggregator, id="python"),
    pytest.param(NativePlaybackAggregator, id="native", marks=needs_native),
]
