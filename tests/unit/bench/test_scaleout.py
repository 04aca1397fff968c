"""The scale-out arithmetic of `make bench` (bench/scaleout.py), on CPU seconds made up for the purpose."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scaleout import capacity_eps, efficiency, summarise


def test_a_perfect_split_is_efficiency_one() -> None:
    # 10 CPU s on one process; two processes of 5 s each: the same work, split evenly, nothing extra.
    assert efficiency(10.0, 5.0, 2) == pytest.approx(1.0)


def test_the_busiest_process_sets_efficiency_and_capacity() -> None:
    # Everything still on one worker: the busiest process does the whole job, the other idles.
    assert efficiency(10.0, 10.0, 2) == pytest.approx(0.5)
    # Four processes, the busiest at 4 s of 10: uneven (1.0 would be 2.5 s each).
    assert efficiency(10.0, 4.0, 4) == pytest.approx(0.625)
    assert capacity_eps(1_000_000, 4.0) == pytest.approx(250_000.0)


def test_no_figures_give_none_not_a_division_by_zero() -> None:
    assert efficiency(0.0, 5.0, 2) is None
    assert efficiency(10.0, 0.0, 2) is None
    assert capacity_eps(1_000, 0.0) is None
    assert capacity_eps(0, 1.0) is None


def _run(eps: float, wall_s: float, processes: list[float], other: float) -> dict[str, Any]:
    return {
        "eps": eps,
        "wall_s": wall_s,
        "cpu_s": sum(processes),
        "process_cpu_s": processes,
        "busiest_process_cpu_s": max(processes),
        "other_cpu_s": other,
    }


def test_summary_keys_from_the_median_of_each_figure() -> None:
    runs = {
        "streampulse_all_1p": [_run(100_000, 10.0, [8.0], 6.0), _run(90_000, 11.0, [9.0], 7.0)],
        "streampulse_all_2p": [_run(120_000, 8.0, [5.0, 4.0], 4.0), _run(110_000, 9.0, [5.5, 4.5], 4.0)],
        "streampulse_all_4p": [{"error": "boom"}],  # a failed run has no figures
        "limit": [_run(500_000, 2.0, [1.5], 1.0)],
    }
    out = summarise(runs, messages=1_000_000, cores=2)
    # 1 process: median 8.5 CPU s; 2 processes: busiest median 5.25 s.
    assert out["cpu_s_1p"] == pytest.approx(8.5)
    assert out["busiest_process_cpu_s_2p"] == pytest.approx(5.25)
    assert out["scaleout_efficiency_2p"] == pytest.approx(round(8.5 / (2 * 5.25), 3))
    assert out["capacity_2p_eps"] == round(1_000_000 / 5.25)
    assert out["capacity_1p_eps"] == round(1_000_000 / 8.5)
    assert out["wallclock_ratio_2p"] == pytest.approx(round(115_000 / 95_000, 3))
    # The rest of the machine took 4 CPU s over 8.5 s of wall time: 2 - 4 / 8.5 cores were left.
    assert out["other_cpu_s_2p"] == pytest.approx(4.0)
    assert out["cores_left_for_flow_2p"] == pytest.approx(round(2 - 4.0 / 8.5, 2))
    for key in ("scaleout_efficiency_4p", "capacity_4p_eps", "wallclock_ratio_4p", "cpu_s_4p"):
        assert out[key] is None, key


def test_summary_without_any_run_is_all_none() -> None:
    out = summarise({}, messages=0, cores=2)
    assert out and all(value is None for value in out.values()), out


def test_the_steady_state_efficiency_takes_each_process_s_start_up_out() -> None:
    runs = {
        "streampulse_all_1p": [_run(100_000, 10.0, [11.0], 1.0)],
        "streampulse_all_2p": [_run(150_000, 7.0, [6.5, 6.0], 1.0)],
    }
    # Start-up: 1 s on one process, 1.5 s on the busiest of two: 10 s of work against 5 s on the busiest.
    out = summarise(runs, 1_000_000, 2, {1: 1.0, 2: 1.5})
    assert out["scaleout_efficiency_2p"] == pytest.approx(11.0 / (2 * 6.5), abs=1e-3)
    assert out["scaleout_efficiency_2p_steady"] == pytest.approx(10.0 / (2 * 5.0), abs=1e-3)
    assert summarise(runs, 1_000_000, 2)["scaleout_efficiency_2p_steady"] is None  # not measured: not made up


def test_the_ceiling_is_the_limit_s_own_efficiency_on_as_many_processes() -> None:
    runs = {
        "limit": [_run(500_000, 4.0, [5.0], 1.0), _run(480_000, 4.2, [5.4], 1.0)],
        "limit_4p": [_run(600_000, 3.0, [1.4, 1.3, 1.5, 1.2], 1.0)],
        "limit_2p": [{"error": "boom"}],
    }
    out = summarise(runs, 1_000_000, 2)
    # Median 5.2 CPU s on one process; the busiest of four read its quarter in 1.5 s.
    assert out["limit_efficiency_4p"] == pytest.approx(round(5.2 / (4 * 1.5), 3))
    assert out["limit_efficiency_2p"] is None
