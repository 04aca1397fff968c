from __future__ import annotations

from pathlib import Path

from flows.windows.catalog import AGGREGATES, METRICS
from sinks.docs import metrics_markdown

REPO = Path(__file__).resolve().parents[2]


def test_metric_catalogue_doc_is_current() -> None:
    text = metrics_markdown()
    assert (REPO / "docs" / "metrics.md").read_text(encoding="utf-8") == text, (
        "run: python -m sinks.docs docs/metrics.md"
    )
    for name in [*METRICS, *AGGREGATES]:
        assert f"`{name}`" in text
    assert "`streampulse_stream_starts_total`" in text
