"""The results as a markdown report (bench/results/latest.md), from the JSON document (latest.json)."""

from __future__ import annotations

from typing import Any

from bench.common import median_or_none
from bench.cpu_split import table

# (key in the results, label, what it is)
THROUGHPUT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("limit", "limit", "confluent-kafka consume + contract decoder, no aggregation, 1 process"),
    ("limit_2p", "limit, 2 processes", "the limit as 2 processes at once, each reading half of the partitions"),
    ("limit_4p", "limit, 4 processes", "the limit as 4 processes at once, each reading a quarter of the partitions"),
    (
        "baseline_orjson",
        "baseline_orjson: hand-written, orjson (the issue's baseline)",
        "hand-written consumer: stream starts per 10 s x country x device, per-partition watermark, "
        "duplicates dropped; decodes with `orjson.loads` and the contract's rules checked in plain Python. "
        "Exact: its cells equal the truth's and it rejected exactly the malformed messages",
    ),
    (
        "baseline",
        "baseline: hand-written, our msgspec decoder",
        "the same consumer (same counting code, same exactness check) decoding with our contract decoder "
        "(schemas/decoder.py, msgspec), as the limit does",
    ),
    ("streampulse_all_1p", "streampulse all metrics, 1 process", "`run --exit-at-end`, real Redis writes"),
    ("streampulse_all_2p", "streampulse all metrics, 2 processes", "bytewax cluster, `--process-id/--addresses`"),
    ("streampulse_all_4p", "streampulse all metrics, 4 processes", "bytewax cluster of 4 processes"),
    ("streampulse_all_w2", "streampulse all metrics, 1 process x 2 workers", "`--workers 2`"),
    ("streampulse_starts_1p", "streampulse stream_starts only, 1 process", "`--metric-set stream_starts`"),
)
# (description, key, comparison, threshold): the targets.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("all metrics, 1 process >= 50 % of the limit", "streampulse_all_1p_vs_limit", ">=", 0.5),
    ("stream_starts only >= 60 % of the limit", "streampulse_starts_1p_vs_limit", ">=", 0.6),
    (
        "stream_starts only >= 1.2 x the baseline: hand-written, orjson (the issue's baseline)",
        "streampulse_starts_1p_vs_baseline_orjson",
        ">=",
        1.2,
    ),
    (
        "stream_starts only >= 1.2 x the baseline: hand-written, our msgspec decoder",
        "streampulse_starts_1p_vs_baseline",
        ">=",
        1.2,
    ),
    ("2 processes >= 1.6 x 1 process", "streampulse_all_2p_vs_all_1p", ">=", 1.6),
    ("scale-out efficiency, 2 processes >= 0.8 (issue 13)", "scaleout_efficiency_2p", ">=", 0.8),
    ("scale-out efficiency, 4 processes >= 0.8 (issue 13)", "scaleout_efficiency_4p", ">=", 0.8),
    ("  the same, start-up taken out, 2 processes", "scaleout_efficiency_2p_steady", ">=", 0.8),
    ("  the same, start-up taken out, 4 processes", "scaleout_efficiency_4p_steady", ">=", 0.8),
    ("wall clock, 2 processes >= 1.4 x 1 process on this machine (issue 13)", "wallclock_ratio_2p", ">=", 1.4),
    ("all metrics, 1 process >= 60 % of the limit (issue 13: no regression)", "streampulse_all_1p_vs_limit", ">=", 0.6),
    ("freshness p99 <= 2 s at 20 000 events/s (Redis, partial)", "freshness_p99_ms", "<=", 2000.0),
    ("freshness p99 <= 3 s at 20 000 events/s (/metrics counter)", "freshness_prometheus_p99_ms", "<=", 3000.0),
    ("memory per open session <= 300 bytes", "bytes_per_open_session", "<=", 300.0),
)


def _n(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}{suffix}"
    return f"{round(value):,}{suffix}" if isinstance(value, int | float) else str(value)


def _ratio(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _exact(runs: list[dict[str, Any]]) -> str:
    checks = [r["check"]["exact"] for r in runs if "check" in r]
    if not checks:
        return "n/a"
    return "yes" if all(checks) else f"no ({checks.count(False)}/{len(checks)} runs)"


def render(results: dict[str, Any]) -> str:
    """The whole report."""
    lines: list[str] = []
    machine = results["machine"]
    data = results.get("input") or {}
    lines += [
        "# streampulse benchmark",
        "",
        f"- commit `{results['commit']}`, {results['generated_at']}",
        f"- machine: {machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}; services: {results['services']} on the same machine",
        f"- input: {_n(data.get('messages'))} messages ({_n(data.get('valid_events'))} valid events, "
        f"mean {_n(data.get('mean_message_bytes'))} B) in {results['config']['partitions']}+"
        f"{results['config']['partitions']} partitions, {_n(data.get('span_s'))} s of event time; faults: "
        f"{_n(data.get('late_events'))} late, {_n(data.get('duplicates'))} duplicates, "
        f"{_n(data.get('malformed'))} malformed; preloaded by the load generator at "
        f"{_n(data.get('preload_eps'))} msg/s",
        f"- {results['config']['rounds']} rounds, contenders alternating; medians. events/s = messages in the "
        "topics / wall time of the process(es) from start to exit (start-up included: "
        f"`streampulse run` on empty topics takes {_n(results.get('streampulse_startup_s'), 2)} s)",
        *(
            [f"- **WARNING**: the product's code changed during the run ({results['code_changed_during_run']})"]
            if results.get("code_changed_during_run")
            else []
        ),
        "",
        "## Throughput",
        "",
        "| contender | events/s (median) | min – max | vs limit | vs baseline_orjson (issue's) | "
        "vs baseline (msgspec) | peak RSS MB | CPU s: own / rest of machine | cores busy | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    runs: dict[str, list[dict[str, Any]]] = results.get("runs", {})
    ratios: dict[str, Any] = results.get("ratios", {})
    for key, label, _what in THROUGHPUT_ROWS:
        series = [r for r in runs.get(key, []) if "eps" in r]
        eps = results.get(f"{key}_eps")
        spread = f"{min(r['eps'] for r in series):,} – {max(r['eps'] for r in series):,}" if series else "–"
        rss = max((r["peak_rss_mb"] for r in series), default=None)
        cpu = median_or_none([r["cpu_s"] for r in series if "cpu_s" in r])
        other = median_or_none([r["other_cpu_s"] for r in series if "other_cpu_s" in r])
        busy = median_or_none([r["cores_busy"] for r in series if "cores_busy" in r])
        lines.append(
            f"| {label} | {_n(eps)} | {spread} | {_ratio(ratios.get(f'{key}_vs_limit'))} | "
            f"{_ratio(ratios.get(f'{key}_vs_baseline_orjson'))} | {_ratio(ratios.get(f'{key}_vs_baseline'))} | "
            f"{_n(rss)} | {_seconds(cpu)} / {_seconds(other)} | {_seconds(busy)} | {_exact(series)} |"
        )
    quix = results.get("quix") or {}
    quix_ok = [r for r in quix.get("runs", []) if "check" in r]
    if quix_ok:
        q = quix_ok
        lines.append(
            f"| Quix Streams 3.28 (on {quix['services']}) | {_n(results.get('quix_eps'))} | "
            f"{min(r['eps'] for r in q):,} – {max(r['eps'] for r in q):,} | "
            f"{_ratio(quix.get('vs_limit_same_broker'))} (same broker) | – | – | "
            f"{_n(max(r['peak_rss_mb'] for r in q))} | – | – | {_exact(q)} |"
        )
    pathway = results.get("pathway") or {}
    if pathway.get("runs"):
        series = [r for r in pathway["runs"] if "eps" in r]
        lines.append(
            f"| Pathway 0.33 (on {pathway['services']}) | {_n(results.get('pathway_eps'))} | "
            + (f"{min(r['eps'] for r in series):,} – {max(r['eps'] for r in series):,}" if series else "–")
            + f" | {_ratio(pathway.get('vs_limit_same_broker'))} (same broker) | – | – | "
            f"{_n(max((r['peak_rss_mb'] for r in series), default=None))} | "
            f"{_seconds(median_or_none([r['cpu_s'] for r in series]))} / "
            f"{_seconds(median_or_none([r['other_cpu_s'] for r in series]))} | "
            f"{_seconds(median_or_none([r['cores_busy'] for r in series]))} | {_exact(series)} |"
        )
    lines += ["", "Contenders:"] + [f"- **{label}**: {what}" for _k, label, what in THROUGHPUT_ROWS]
    failures = results.get("failures") or {}
    for key, message in failures.items():
        lines.append(f"- failed: {key}: {message}")
    if quix_ok:
        q0 = quix_ok[0]["check"]
        lines += [
            f"- **Quix Streams**: {quix['description']} On {_n(quix.get('messages'))} playback messages "
            f"({quix['services']}), where the same run measured the limit at {_n(quix.get('limit_eps'))} and "
            f"streampulse stream_starts-only at {_n(quix.get('streampulse_starts_1p_eps'))} events/s. Counted "
            f"{_n(q0['measured_total'])} stream starts in closed windows where the truth has "
            f"{_n(q0['expected_total'])} (first round): {_n(q0['late_dropped'])} events dropped as late "
            f"(`on_late`), {_n(q0['cells_missing'])} of {_n(q0['cells'])} (window, country, device) cells never "
            "emitted (`.final()` closes a key's window only when a later event of the same key arrives), "
            "duplicates counted twice.",
        ]
    elif results.get("skipped", {}).get("quix"):
        lines.append(f"- **Quix Streams**: skipped: {results['skipped']['quix']}")
    lines += _pathway(results, pathway)
    lines += _peer_ratios(results)

    lines += _scaleout(results)
    lines += ["", "## Targets (issues 5 and 13)", "", "| target | measured | met |", "|---|---:|---|"]
    for description, key, op, threshold in TARGETS:
        value = ratios.get(key, results.get(key))
        if value is None:
            lines.append(f"| {description} | – | not measured |")
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        shown = f"{value:.2f}" if threshold < 10 else f"{value:,.0f}"
        lines.append(f"| {description} | {shown} | {'yes' if met else 'no'} |")

    fresh = results.get("freshness") or {}
    lines += ["", "## Freshness under live load", ""]
    if fresh:
        lines += [
            f"Load generator in realtime mode asked for {_n(fresh['rate_asked_eps'])} events/s and held "
            f"{_n(fresh['rate_held_eps'])} (measured from the topics' end offsets); `streampulse run` live, all "
            f"metrics, 1 process; {fresh['markers']} marker `play_start`s stamped with the wall clock.",
            "",
            "| where | what is seen | p50 | p99 | max |",
            "|---|---|---:|---:|---:|",
            f"| Redis (`streampulse query`) | partial window including the marker | "
            f"{_n(fresh['redis_partial_p50_ms'])} ms | {_n(fresh['redis_partial_p99_ms'])} ms | "
            f"{_n(fresh['redis_partial_max_ms'])} ms |",
            f"| /metrics `streampulse_stream_starts_total` | the counter including the marker (advances at every "
            f"publish, scraped every 0.1 s) | {_n(fresh.get('metrics_counter_p50_ms'))} ms | "
            f"{_n(fresh.get('metrics_counter_p99_ms'))} ms | {_n(fresh.get('metrics_counter_max_ms'))} ms |",
            f"| /metrics `streampulse_watermark_delay_seconds` | wall clock − watermark, sampled every 0.1 s | "
            f"{_n(fresh['watermark_delay_p50_s'], 2)} s | {_n(fresh['watermark_delay_p99_s'], 2)} s | – |",
            "",
            f"Markers seen: {fresh['markers_seen_redis']} in Redis, {fresh['markers_seen_metrics']} on /metrics; "
            f"max consumer lag {_n(fresh['max_consumer_lag_messages'])} messages; flow RSS "
            f"{_n(fresh['peak_rss_mb'])} MB.",
        ]
    else:
        lines.append(f"skipped: {results.get('skipped', {}).get('freshness', 'not run')}")

    memory = results.get("memory") or {}
    lines += ["", "## Memory as open sessions grow", ""]
    if memory.get("steps"):
        lines += [
            "`streampulse run` live, all metrics, 1 process; N sessions already playing, 3 heartbeats each "
            "(30 s apart), all open at the end.",
            "",
            "| open sessions | messages | RSS at rest MB | peak RSS MB |",
            "|---:|---:|---:|---:|",
        ]
        for step in memory["steps"]:
            lines.append(
                f"| {step['sessions']:,} | {step['messages']:,} | {_n(step['rss_mb'])} | {_n(step['peak_rss_mb'])} |"
            )
        lines += [
            "",
            f"Bytes per open session (RSS growth / session growth): **{_n(memory.get('bytes_per_open_session'))}** "
            f"(peak: {_n(memory.get('peak_bytes_per_open_session'))}), of which about "
            f"{_n(memory.get('bytes_per_remembered_event_id'))} per remembered event id (3 per session here, "
            "kept for duplicate detection over the coarse window + lateness).",
        ]
    else:
        lines.append(f"skipped: {results.get('skipped', {}).get('memory', 'not run')}")

    profile = results.get("profile") or {}
    lines += ["", "## Profile: `streampulse run --exit-at-end`, all metrics, 1 process", ""]
    if profile.get("samples"):
        lines += [f"py-spy, {profile['samples']:,} samples ({profile.get('mode', '')}). By category:", ""]
        lines += [f"- {e['share']:.1%} {e['what']}" for e in profile["by_category"]]
        lines += ["", "Top functions by own time:", ""]
        lines += [f"- {e['share']:.1%} `{e['what']}`" for e in profile["top_self_functions"][:12]]
        lines += ["", "Top lines by own time:", ""]
        lines += [f"- {e['share']:.1%} `{e['what']}`" for e in profile["top_self_lines"][:12]]
        lines += ["", "Project functions by inclusive time:", ""]
        lines += [f"- {e['share']:.1%} `{e['what']}`" for e in profile["top_inclusive_project_functions"][:12]]
    else:
        lines.append(f"skipped: {results.get('skipped', {}).get('profile', 'not run')}")
    for processes in (2, 4):
        lines += _cluster_profile(results, processes)
    lines += _cpu_split(results)
    skipped = results.get("skipped") or {}
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines) + "\n"


def _pathway(results: dict[str, Any], pathway: dict[str, Any]) -> list[str]:
    series = [r for r in pathway.get("runs", []) if "check" in r]
    if not series:
        skipped = results.get("skipped", {}).get("pathway") or results.get("failures", {}).get("pathway")
        return [f"- **Pathway**: skipped: {skipped}"] if skipped else []
    check = series[0]["check"]
    return [
        f"- **Pathway**: {pathway['description']} On {_n(pathway.get('messages'))} messages "
        f"({pathway['services']}), where the same run measured the limit at {_n(pathway.get('limit_eps'))} and "
        f"streampulse stream_starts-only at {_n(pathway.get('streampulse_starts_1p_eps'))} events/s. Counted "
        f"{_n(check['measured_total'])} stream starts where the truth has {_n(check['expected_total'])} (first "
        f"round): {_n(check['cells_differing'])} of {_n(check['cells'])} (window, country, device) cells differ "
        f"({_n(check['cells_extra'])} extra, {_n(check['cells_missing'])} missing; at most "
        f"{_n(check.get('late_counted_at_most'))} of the counts beyond the truth are late events it let through); "
        f"{_n(check.get('parsed'))} messages fit its schema.",
    ]


def _peer_ratios(results: dict[str, Any]) -> list[str]:
    """Each peer as a ratio to streampulse stream_starts only, measured on the same broker in the same sitting."""
    rows = []
    for key, label in (("quix", "Quix Streams 3.28"), ("pathway", "Pathway 0.33")):
        peer = results.get(key) or {}
        if peer.get("runs"):
            rows.append(
                f"| {label} | {_n(results.get(f'{key}_eps'))} | {_n(peer.get('streampulse_starts_1p_eps'))} | "
                f"{_ratio(peer.get('vs_streampulse_starts_same_broker'))} | {_exact(peer['runs'])} |"
            )
    if not rows:
        return []
    return [
        "",
        "Peers against streampulse stream_starts only, same broker, same sitting (medians):",
        "",
        "| peer | peer events/s | streampulse stream_starts events/s | peer / streampulse | peer exact |",
        "|---|---:|---:|---:|---|",
        *rows,
    ]


def _cpu_split(results: dict[str, Any]) -> list[str]:
    """Each process's CPU seconds step by step, at 1, 2 and 4 processes (bench/cpu_split.py)."""
    split = results.get("cpu_split") or {}
    if not split:
        return []
    lines = [
        "",
        "## CPU seconds of each process, step by step (all metrics)",
        "",
        "Counted with `time.thread_time()` around the flow's steps (bench/cpu_split.py), not sampled: where "
        "processes share the cores, a sample cannot tell waiting from working. One run per process count; "
        "librdkafka's threads (each Kafka client's fetching, parsing and producing) are counted apart, "
        "sampled per thread after the first batch (bench/thread_cpu.py); `rest` is bytewax's own work "
        "(scheduling, exchange, progress), the maps between steps and shutdown.",
        "",
    ]
    for processes, figures in split.items():
        labels = ["1 process"] if processes == "1" else [f"process {i} of {processes}" for i in range(len(figures))]
        lines += [*table(figures, labels), ""]
    return lines[:-1]


def _cluster_profile(results: dict[str, Any], processes: int) -> list[str]:
    """Where each process of the N-process cluster spends its time: categories and top functions, per process."""
    profile = results.get(f"profile_{processes}p") or {}
    lines = ["", f"## Profile: all metrics, {processes} processes, py-spy on each", ""]
    if not profile.get("processes"):
        skipped = results.get("skipped", {}).get(f"profile_{processes}p", "not run")
        return [*lines, f"skipped: {skipped}"]
    lines.append(f"{profile.get('mode', '')}; shares of each process's own samples.")
    for entry in profile["processes"]:
        lines += ["", f"**Process {entry['process_id']}** ({entry['samples']:,} samples). By category:", ""]
        lines += [f"- {e['share']:.1%} {e['what']}" for e in entry["by_category"][:8]]
        lines += ["", "Top functions by own time:", ""]
        lines += [f"- {e['share']:.1%} `{e['what']}`" for e in entry["top_self_functions"][:8]]
        lines += ["", "Project functions by inclusive time:", ""]
        lines += [f"- {e['share']:.1%} `{e['what']}`" for e in entry["top_inclusive_project_functions"][:8]]
    return lines


def _scaleout(results: dict[str, Any]) -> list[str]:
    """The scale-out table (bench/scaleout.py): CPU seconds per process, efficiency, capacity, wall clock."""
    runs: dict[str, list[dict[str, Any]]] = results.get("runs", {})
    lines = [
        "",
        "## Scale-out: all metrics on 1, 2 and 4 processes",
        "",
        "Efficiency = CPU s of the 1-process run / (N x CPU s of the busiest process); capacity = events / CPU s "
        "of the busiest process (what N free cores would hold); wall clock = events/s / the 1-process events/s "
        "measured here, where the broker and Redis share the cores. Steady state: the same with each process's "
        "start-up and shutdown (its CPU s on empty topics, in the column) taken out. Ceiling: the same efficiency "
        "of the limit (consume + decode, nothing shared) as N processes each reading 1/N of the partitions, what "
        "N processes on this machine's cores, beside the broker and Redis, let any N-process run reach. Medians.",
        "",
        "| processes | events/s here | wall clock vs 1 | CPU s of each process (first round) | busiest CPU s | "
        "efficiency | start-up CPU s (busiest) | steady-state efficiency | ceiling (the limit's efficiency) | "
        "capacity events/s | rest of machine CPU s | cores left for the flow |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (1, 2, 4):
        series = [r for r in runs.get(f"streampulse_all_{n}p", []) if "eps" in r]
        each = ", ".join(f"{s:.1f}" for s in series[0].get("process_cpu_s", [])) if series else "–"
        lines.append(
            f"| {n} | {_n(results.get(f'streampulse_all_{n}p_eps'))} | "
            f"{_ratio(1.0 if n == 1 and series else results.get(f'wallclock_ratio_{n}p'))} | {each} | "
            f"{_seconds(results.get(f'busiest_process_cpu_s_{n}p'))} | "
            f"{_ratio(1.0 if n == 1 and series else results.get(f'scaleout_efficiency_{n}p'))} | "
            f"{_seconds(results.get(f'startup_busiest_cpu_s_{n}p'))} | "
            f"{_ratio(1.0 if n == 1 and series else results.get(f'scaleout_efficiency_{n}p_steady'))} | "
            f"{_ratio(1.0 if n == 1 and series else results.get(f'limit_efficiency_{n}p'))} | "
            f"{_n(results.get(f'capacity_{n}p_eps'))} | {_seconds(results.get(f'other_cpu_s_{n}p'))} | "
            f"{_ratio(results.get(f'cores_left_for_flow_{n}p'))} |"
        )
    return lines


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
