# The playback fold in Rust (native/), built as a wheel for Debian bookworm's Python 3.11 (the same ABI as below).
FROM rust:1-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY native /native
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir "maturin>=1.7,<2" \
    && /venv/bin/maturin build --release --manifest-path /native/Cargo.toml --out /wheels

FROM python:3.11-slim
WORKDIR /app
COPY --from=native /wheels /wheels
COPY . .
RUN pip install --no-cache-dir /wheels/*.whl .
ENTRYPOINT []
