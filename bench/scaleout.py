"""How the all-metrics flow scales out: efficiency and capacity from each process's CPU seconds.

This 2-core machine also runs the broker and Redis, so the wall clock of a
2- or 4-process cluster cannot show what the cluster would do with a core per
process. CPU seconds can: if the work splits evenly and costs nothing extra,
each of N processes spends 1/N of the 1-process run's CPU seconds.

- efficiency at N = CPU s of the 1-process run / (N x CPU s of the busiest
  process of the N-process run): 1.0 is a perfect split; the busiest process
  counts because, with a core each, the cluster finishes when it does.
- capacity at N (events/s with N free cores) = events / CPU s of the busiest
  process: how fast the cluster would go if nothing but its own work held each
  process back (start-up included, as in every wall time here).
- steady-state efficiency at N: the same with each run's start-up taken out, the CPU seconds the busiest
  process of an N-process run spends on empty topics (imports, joining the cluster, connecting, shutting
  down): what a long-running cluster gets, where a benchmark of seconds pays start-up once per process.
- the ceiling at N: the same efficiency of the limit (consume + decode, nothing shared) run as N processes that
  each read 1/N of the partitions: the most parallel work there is, so what this machine (N processes on its
  cores, beside the broker and Redis) lets any N-process efficiency reach.
- wall-clock ratio = N-process events/s / 1-process events/s, measured here.
- the rest of the machine (broker, Redis, the harness) over each run: its CPU
  seconds, and the cores that leaves the flow (cores - rest / wall time).

Medians over the rounds of each figure; a run that failed has no figures.
"""

from __future__ import annotations

from typing import Any

from bench.common import median_or_none

# The all-metrics contenders by process count (bench/contenders.py CONTENDERS).
ALL_METRICS = {1: "streampulse_all_1p", 2: "streampulse_all_2p", 4: "streampulse_all_4p"}
# The limit on 1, 2 and 4 processes: the ceiling of the efficiency on this machine.
LIMIT = {1: "limit", 2: "limit_2p", 4: "limit_4p"}


def efficiency(one_process_cpu_s: float, busiest_process_cpu_s: float, processes: int) -> float | None:
    """CPU s of the 1-process run / (N x CPU s of the N-process run's busiest process); None without figures."""
    if one_process_cpu_s <= 0 or busiest_process_cpu_s <= 0 or processes < 1:
        return None
    return one_process_cpu_s / (processes * busiest_process_cpu_s)


def capacity_eps(events: int, busiest_process_cpu_s: float) -> float | None:
    """Events per second the cluster would hold with a free core per process: events / busiest CPU s."""
    return events / busiest_process_cpu_s if busiest_process_cpu_s > 0 and events > 0 else None


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    return median_or_none([float(r[key]) for r in runs if r.get(key) is not None])


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    messages: int,
    cores: int,
    startup_cpu_s: dict[int, float | None] | None = None,
) -> dict[str, Any]:
    """The scale-out keys of latest.json from the throughput runs (a key is None where a run is missing).

    `messages` is what every run read (the events of events/s); `cores` the machine's; `startup_cpu_s` the busiest
    process's CPU seconds on empty topics per process count (for the steady-state efficiency).
    """
    startup = startup_cpu_s or {}
    out: dict[str, Any] = {}
    per_count: dict[int, dict[str, float | None]] = {}
    for n, name in ALL_METRICS.items():
        series = [r for r in runs.get(name, []) if "eps" in r]
        per_count[n] = {
            "eps": _median(series, "eps"),
            "cpu_s": _median(series, "cpu_s"),
            "busiest": _median(series, "busiest_process_cpu_s"),
            "other_cpu_s": _median(series, "other_cpu_s"),
            "wall_s": _median(series, "wall_s"),
        }
        figures = per_count[n]
        other, wall = figures["other_cpu_s"], figures["wall_s"]
        out[f"cpu_s_{n}p"] = figures["cpu_s"]
        out[f"busiest_process_cpu_s_{n}p"] = figures["busiest"]
        out[f"other_cpu_s_{n}p"] = other
        # What the broker, Redis and the rest left the flow of the machine's cores during the run.
        out[f"cores_left_for_flow_{n}p"] = (
            round(max(cores - other / wall, 0.0), 2) if other is not None and wall else None
        )
    one = per_count[1]
    for n in (2, 4):
        figures = per_count[n]
        busiest = figures["busiest"]
        ratio = efficiency(one["cpu_s"] or 0.0, busiest or 0.0, n)
        out[f"scaleout_efficiency_{n}p"] = None if ratio is None else round(ratio, 3)
        fixed_one, fixed_n = startup.get(1), startup.get(n)
        steady = None
        if fixed_one is not None and fixed_n is not None and one["cpu_s"] and busiest:
            steady = efficiency(one["cpu_s"] - fixed_one, busiest - fixed_n, n)
        out[f"scaleout_efficiency_{n}p_steady"] = None if steady is None else round(steady, 3)
        capacity = capacity_eps(messages, busiest or 0.0)
        out[f"capacity_{n}p_eps"] = None if capacity is None else round(capacity)
        eps, one_eps = figures["eps"], one["eps"]
        out[f"wallclock_ratio_{n}p"] = round(eps / one_eps, 3) if eps and one_eps else None
    limit_one = _median([r for r in runs.get(LIMIT[1], []) if "eps" in r], "cpu_s")
    for n in (2, 4):
        busiest = _median([r for r in runs.get(LIMIT[n], []) if "eps" in r], "busiest_process_cpu_s")
        ceiling = efficiency(limit_one or 0.0, busiest or 0.0, n)
        out[f"limit_efficiency_{n}p"] = None if ceiling is None else round(ceiling, 3)
    capacity_one = capacity_eps(messages, one["cpu_s"] or 0.0)
    out["capacity_1p_eps"] = None if capacity_one is None else round(capacity_one)
    return out
