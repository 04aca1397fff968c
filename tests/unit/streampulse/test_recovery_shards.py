"""A recovery directory remembers how many window-state shards wrote it, and refuses another count at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings.errors import ConfigError
from streampulse.run import CLUSTER_MARKER, recovery_config


def test_the_same_shard_count_resumes_and_another_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "recovery"
    assert recovery_config(str(directory), None, 1, shards=2) is not None
    assert (directory / CLUSTER_MARKER).exists()
    assert recovery_config(str(directory), None, 1, shards=2) is not None
    with pytest.raises(ConfigError, match=r"a cluster of 2 workers in all .* this run has 4. .*restart with 2 workers"):
        recovery_config(str(directory), None, 1, shards=4)


def test_snapshots_from_before_sharding_are_refused_with_what_to_do(tmp_path: Path) -> None:
    directory = tmp_path / "recovery"
    recovery_config(str(directory), None, 1, shards=1)
    (directory / CLUSTER_MARKER).unlink()  # as an earlier streampulse left it: the store, no marker
    with pytest.raises(ConfigError, match=r"before the window state was sharded.*move .* away to start afresh"):
        recovery_config(str(directory), None, 1, shards=1)
