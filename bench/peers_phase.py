"""The peers phase of `make bench`: Quix Streams and Pathway beside streampulse on the same broker.

Each peer runs in its own virtual environment (bench/peer.py) and does the same windowed count of stream
starts; in rounds with the limit and streampulse stream_starts only (the references) alternating, on one
broker: Apache Kafka when Quix Streams runs (tansu lacks `retention.ms` in DescribeConfigs, which it reads),
else the sitting's own. Each peer is reported as a ratio to the references measured in the same rounds
(`quix_eps`, `pathway_eps` and their sections of the results).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import contenders as c
from bench.common import ChildFailed, median_or_none, say
from bench.contenders import CONTENDERS
from bench.peer import PATHWAY, PEER_DESCRIPTIONS, QUIX, Peer, peer_env, peer_python
from bench.preload import Preloaded, PreloadSpec, preload
from bench.stack import Services, create_topics, delete_topics, start_services

PEERS: dict[str, Peer] = {"quix": QUIX, "pathway": PATHWAY}


def preload_topics(args: argparse.Namespace, services: Services, prefix: str, events: int | None = None) -> Preloaded:
    """`prefix`-playback and -signup made with the sitting's partitions and filled by the load generator."""
    playback, signup = f"{prefix}-playback", f"{prefix}-signup"
    create_topics(services.bootstrap, {playback: args.partitions, signup: args.partitions})
    spec = PreloadSpec(events=events or args.events, seed=args.seed, span_ms=args.span)
    return preload(spec, services.bootstrap, playback, signup, args.partitions)


def run_peers(
    results: dict[str, Any], args: argparse.Namespace, services: Services, work_dir: Path, run_id: str
) -> None:
    """The peers selected (Quix Streams, Pathway) in one sitting, beside the limit and streampulse stream_starts
    only on the same broker: each peer is reported as a ratio to those."""
    peers = [name for name in PEERS if name in args.phases]
    pythons: dict[str, Path] = {}
    for name in peers:
        python = peer_python(PEERS[name])
        if python is None:
            results["skipped"][name] = "its virtual environment could not be made (see the log)"
            say(f"{name}: skipped: {results['skipped'][name]}")
        else:
            pythons[name] = python
    if not pythons:
        return
    peer_services = services
    started_here: Services | None = None
    if services.name.startswith("embedded") and "quix" in pythons:
        # Quix Streams reads `retention.ms` from DescribeConfigs, which tansu does not return: Apache Kafka it is,
        # for every peer (the same broker for the ratios). Without it, Pathway stays on tansu (it works there).
        reason = _apache_unavailable()
        if reason:
            results["skipped"]["quix"] = reason
            say(f"quix: skipped: {reason}")
            del pythons["quix"]
        else:
            say("peers: starting Apache Kafka for them (Quix Streams: tansu lacks retention.ms in DescribeConfigs)")
            started_here = peer_services = start_services(
                "apache", work_dir / "services-apache", redis_url=services.redis_url
            )
    if not pythons:
        return
    try:
        _peer_rounds(results, args, peer_services, pythons, work_dir, run_id)
    finally:
        if started_here is not None:
            started_here.stop()


def _peer_rounds(
    results: dict[str, Any],
    args: argparse.Namespace,
    services: Services,
    pythons: dict[str, Path],
    work_dir: Path,
    run_id: str,
) -> None:
    peer_target = c.Target(services.bootstrap, services.redis_url, f"bench-dead-letter-q-{run_id}", work_dir)
    create_topics(services.bootstrap, {peer_target.dead_letter_topic: args.partitions})
    data = preload_topics(args, services, f"bench-peers-{run_id}", args.quix_events)
    runners: dict[str, c.Contender] = {
        "limit": CONTENDERS["limit"],
        "streampulse_starts_1p": CONTENDERS["streampulse_starts_1p"],
    }
    if "quix" in pythons:
        quix_python, quix_env = pythons["quix"], peer_env(QUIX)
        runners["quix"] = lambda d, t, i: c.quix(d, t, i, quix_python, quix_env)
    if "pathway" in pythons:
        pathway_python, pathway_env = pythons["pathway"], peer_env(PATHWAY)
        runners["pathway"] = lambda d, t, i: c.pathway(d, t, i, pathway_python, pathway_env, args.partitions)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            try:
                result = runners[name](data, peer_target, f"q-{name}-r{r + 1}-{run_id}")
            except (ChildFailed, RuntimeError, OSError, ValueError) as exc:
                # One peer failing must not lose the other's figures.
                say(f"peers round {r + 1}/{args.rounds}: {name} FAILED: {str(exc)[:2000]}")
                runs[name].append({"error": str(exc)[:500]})
                results["failures"][name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                continue
            runs[name].append(result.as_dict())
            exact = "" if result.check is None else f", exact {'yes' if result.check['exact'] else 'NO'}"
            say(
                f"peers round {r + 1}/{args.rounds}: {name:<22} {result.messages:,} msgs in "
                f"{result.wall_s:6.2f} s = {result.eps:>9,.0f}/s{exact}"
            )
    limit_eps = median_or_none([r["eps"] for r in runs["limit"] if "eps" in r])
    starts_eps = median_or_none([r["eps"] for r in runs["streampulse_starts_1p"] if "eps" in r])
    reference = {"limit": runs["limit"], "streampulse_starts_1p": runs["streampulse_starts_1p"]}
    for name in ("quix", "pathway"):
        if name not in runs:
            continue
        eps = median_or_none([r["eps"] for r in runs[name] if "eps" in r])
        results[f"{name}_eps"] = eps
        results[name] = {
            "services": services.name,
            "messages": data.messages,
            "description": PEER_DESCRIPTIONS[name],
            "limit_eps": limit_eps,
            "streampulse_starts_1p_eps": starts_eps,
            "vs_limit_same_broker": round(eps / limit_eps, 3) if eps and limit_eps else None,
            "vs_streampulse_starts_same_broker": round(eps / starts_eps, 3) if eps and starts_eps else None,
            "runs": runs[name],
            "reference_runs": reference,
        }
    delete_topics(services.bootstrap, data.topics)


def _apache_unavailable() -> str | None:
    """Why Apache Kafka cannot be started here, or None."""
    from tests.services.apache_kafka import java_available, kafka_jars_ready

    if not java_available():
        return (
            "no Java here to run Apache Kafka (Quix Streams needs `retention.ms` from DescribeConfigs; tansu has none)"
        )
    if not kafka_jars_ready():
        return "the Apache Kafka jars are missing: run `bash tools/kafka/fetch-kafka.sh` (or `make kafka-jars`)"
    return None
