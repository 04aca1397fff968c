"""The load generator: realistic, deterministic playback and sign-up traffic with a ground truth.

Modules, one job each:

- `world`: countries, devices, CDNs, plans and prices, error codes, catalogue, accounts (enums from the contract);
- `diurnal`: per-country viewing curves in local time;
- `model`: sessions and sign-up funnels, emitted in event-time order;
- `incidents`: scripted incidents and the ready scenarios in `scenarios/`;
- `faults`, `malformed`: delivery faults (jitter, late, duplicates, malformed messages);
- `truth`: the ground-truth record (format in `TRUTH.md`);
- `sinks`: JSON Lines, Parquet, Kafka, memory;
- `runner`: one run, with realtime pacing and progress;
- `api`: `generate(...)` for tests; `cli`: `streampulse loadgen`.
"""
