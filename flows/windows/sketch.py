"""A mergeable quantile sketch with 1 % relative error, as plain bucket counts.

Values fall in logarithmic buckets (the DDSketch mapping): bucket `i` holds
(γ^(i-1), γ^i] with γ = (1 + α) / (1 - α), and is read back as
2γ^i / (γ + 1), which is within α of every value in it. A sketch is just
`{bucket: count}`, so it adds like any other counter: per partition, per
window, per dimension, and across rolled-up dimensions at query time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = math.log(GAMMA)
ZERO_BUCKET = -(2**31)  # values <= 0 (startup_ms may be 0)


def bucket_of(value: int) -> int:
    """The bucket holding `value`."""
    if value <= 0:
        return ZERO_BUCKET
    return math.ceil(math.log(value) / LOG_GAMMA)


def bucket_value(bucket: int) -> float:
    """The representative value of a bucket (within the relative accuracy of all its values)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA**bucket / (GAMMA + 1)


def quantile(buckets: Mapping[int, int], q: float) -> float | None:
    """The `q`-quantile (0..1) of the sketched values: the value of rank floor(q * (n - 1)), or None if empty."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen > rank:
            return bucket_value(bucket)
    raise AssertionError("unreachable: rank is below the total")
