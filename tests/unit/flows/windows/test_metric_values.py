"""Metric values from stored aggregates: roll-ups agree with computing from the raw cells by hand."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from flows.windows.catalog import METRICS
from flows.windows.metric_values import detail_dim, parts_of, roll_up, top, value_of
from flows.windows.sketch import bucket_of, quantile

COUNTRIES = ("BR", "US", "DE")
DEVICES = ("tv", "web")

starts_table = st.dictionaries(
    st.tuples(st.sampled_from(COUNTRIES), st.sampled_from(DEVICES), st.sampled_from(("c1", "c2"))), st.integers(0, 500)
)
failures_table = st.dictionaries(
    st.tuples(st.sampled_from(COUNTRIES), st.sampled_from(DEVICES), st.sampled_from(("E1", "E2"))), st.integers(0, 500)
)


@given(starts_table, failures_table)
def test_a_ratio_rolled_up_is_the_ratio_of_summed_parts_never_an_average_of_ratios(
    starts: dict[tuple[str, str, str], int], failures: dict[tuple[str, str, str], int]
) -> None:
    vsf = METRICS["vsf_rate"]
    groups = roll_up(vsf, {"stream_starts": starts, "start_failures": failures}, ("country",))
    for country in COUNTRIES:
        s = sum(v for (c, _d, _cdn), v in starts.items() if c == country)
        f = sum(v for (c, _d, _code), v in failures.items() if c == country)
        if not any(c == country for c, _d, _x in [*starts, *failures]):
            assert (country,) not in groups
            continue
        value = value_of(vsf, groups[(country,)], 10.0)
        if s + f == 0:
            assert value is None
        else:
            assert value is not None and math.isclose(value, f / (s + f))


def test_counts_add_per_second_divides_by_the_window_and_where_filters() -> None:
    values = {"stream_starts": {("BR", "tv", "c1"): 30, ("BR", "web", "c2"): 10, ("US", "tv", "c1"): 5}}
    starts, sps = METRICS["stream_starts"], METRICS["sps"]
    by_country = roll_up(starts, values, ("country",))
    assert {k: value_of(starts, g, 10.0) for k, g in by_country.items()} == {("BR",): 40, ("US",): 5}
    everything = roll_up(sps, values, ())
    assert value_of(sps, everything[()], 10.0) == 4.5
    tv_only = roll_up(starts, values, ("cdn",), where={"device_type": "tv"})
    assert {k: value_of(starts, g, 10.0) for k, g in tv_only.items()} == {("c1",): 35}


def test_a_ratio_with_nothing_below_it_has_no_value() -> None:
    groups = roll_up(METRICS["rebuffer_ratio"], {"rebuffer_ms": {("BR", "tv"): 0}}, ())
    assert value_of(METRICS["rebuffer_ratio"], groups[()], 10.0) is None


def test_percentiles_come_from_merged_sketch_buckets_across_countries() -> None:
    startup = {"BR": [100, 200, 300, 5000], "US": [150, 250, 4000, 4100, 4200]}
    sketch: dict[tuple[str, str, int], int] = defaultdict(int)
    for country, samples in startup.items():
        for ms in samples:
            sketch[(country, "tv", bucket_of(ms))] += 1
    p50 = METRICS["startup_ms_p50"]
    assert detail_dim(p50) == "bucket"
    merged = roll_up(p50, {"startup_ms_sketch": dict(sketch)}, ())[()]
    everything = sorted(ms for samples in startup.values() for ms in samples)
    exact = everything[math.floor(0.5 * (len(everything) - 1))]
    value = value_of(p50, merged, 10.0)
    assert value is not None and abs(value - exact) <= 0.01 * exact
    # the same as the sketch of all samples at once
    assert value == quantile({bucket_of(ms): everything.count(ms) for ms in set(everything)}, 0.5)


def test_top_titles_rank_summed_title_counts_ties_by_name() -> None:
    values = {
        "title_starts": {("BR", "tv", "t1"): 5, ("US", "tv", "t1"): 4, ("US", "web", "t2"): 9, ("BR", "web", "t3"): 9}
    }
    group = roll_up(METRICS["top_titles"], values, ())[()]
    assert top(group, 2) == [("t1", 9), ("t2", 9)]
    assert parts_of(METRICS["rebuffer_ratio"]) == ["rebuffer_ms", "played_ms"]
