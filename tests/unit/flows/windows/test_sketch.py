from __future__ import annotations

import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from flows.windows.sketch import RELATIVE_ACCURACY, bucket_of, quantile


def exact_quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@given(st.lists(st.integers(0, 600_000), min_size=1, max_size=400), st.sampled_from([0.5, 0.9, 0.99, 0.0, 1.0]))
def test_quantiles_are_within_the_relative_accuracy(values: list[int], q: float) -> None:
    estimate = quantile(Counter(bucket_of(v) for v in values), q)
    exact = exact_quantile(values, q)
    assert estimate is not None
    assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact + 1e-9


@given(st.lists(st.integers(1, 100_000), min_size=1), st.lists(st.integers(1, 100_000), min_size=1))
def test_merged_sketches_answer_like_one_sketch_of_all_values(a: list[int], b: list[int]) -> None:
    merged = Counter(bucket_of(v) for v in a) + Counter(bucket_of(v) for v in b)
    whole = Counter(bucket_of(v) for v in a + b)
    assert merged == whole
    assert quantile(merged, 0.9) == quantile(whole, 0.9)


def test_empty_sketch_has_no_quantile() -> None:
    assert quantile({}, 0.5) is None
