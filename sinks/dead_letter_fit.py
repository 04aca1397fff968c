"""Fitting a dead letter into the dead-letter topic's size limit.

A rejected message is dead-lettered whole when it fits the limit (the
dead-letter topic's `max.message.bytes`, sinks/dead_letter.py). One that
does not, e.g. a 10 MiB message on a topic that accepts 1 MiB, goes truncated:
the first bytes of its value that fit, with headers that say so and let the
original be found and checked: `sp-truncated` (`true`), `sp-original-size`
(bytes of the value), `sp-original-sha256` (hex digest of the whole value)
and, if its key had to be cut too, `sp-original-key-size`. A message is never
dropped for being too large to dead-letter whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flows.partials import DeadLetter

Headers = list[tuple[str, bytes]]

# Bytes a record costs beyond its key, value and header bytes: the record batch header (61), the record's own
# varints and each header's length prefixes, rounded up generously so an estimate is never short.
RECORD_OVERHEAD = 512
# A key longer than this is cut in a truncated letter: the key only places the letter on a partition.
MAX_TRUNCATED_KEY = 1024
# What a letter is cut to when even the limit's estimate was refused by the broker (see sinks/dead_letter.py).
STUB_VALUE_BYTES = 1024
DETAIL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What is produced for one dead letter: key, value and headers, and whether the value was cut."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    truncated: bool

    @property
    def size(self) -> int:
        """Estimated bytes of the record on the wire, uncompressed, overhead included."""
        return record_size(self.key, self.value, self.headers)


def dead_letter_headers(letter: DeadLetter) -> Headers:
    """The headers describing a rejected message: why, and where it came from."""
    return [
        ("sp-reason", letter.reason.encode()),
        ("sp-detail", letter.detail.encode("utf-8", errors="replace")[:DETAIL_BYTES]),
        ("sp-source-topic", letter.topic.encode()),
        ("sp-source-partition", str(letter.partition).encode()),
        ("sp-source-offset", str(letter.offset).encode()),
        ("sp-source-timestamp-ms", str(letter.timestamp_ms).encode()),
    ]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Estimated record size: key, value, header names and values, plus a generous overhead."""
    header_bytes = sum(len(name) + len(data) for name, data in headers)
    return len(key or b"") + len(value or b"") + header_bytes + RECORD_OVERHEAD


def compression_slack(limit: int) -> int:
    """Bytes LZ4 may add to incompressible data in a batch of `limit` bytes (its worst case is n/255 + 16)."""
    return limit // 255 + 16


def fit_letter(letter: DeadLetter, limit: int) -> Outgoing:
    """The letter whole if it fits in `limit` bytes, else truncated to fit, with headers saying so."""
    headers = dead_letter_headers(letter)
    whole = Outgoing(letter.key, letter.value, headers, truncated=False)
    budget = limit - compression_slack(limit)
    if whole.size <= budget:
        return whole
    return truncate(letter, headers, budget)


def truncate(letter: DeadLetter, headers: Headers, budget: int) -> Outgoing:
    """The letter with its value (and an over-long key) cut so the record fits `budget` bytes."""
    key, all_headers = _cut_key_and_describe(letter, headers)
    room = max(budget - record_size(key, b"", all_headers), 0)
    return Outgoing(key, (letter.value or b"")[:room], all_headers, truncated=True)


def stub(letter: DeadLetter) -> Outgoing:
    """The smallest useful letter: headers and the first `STUB_VALUE_BYTES` bytes of the value."""
    key, all_headers = _cut_key_and_describe(letter, dead_letter_headers(letter))
    return Outgoing(key, (letter.value or b"")[:STUB_VALUE_BYTES], all_headers, truncated=True)


def _cut_key_and_describe(letter: DeadLetter, headers: Headers) -> tuple[bytes | None, Headers]:
    """The key to send (cut if over-long) and the headers of a truncated letter, describing the whole."""
    value = letter.value or b""
    key = letter.key
    extra: Headers = [
        ("sp-truncated", b"true"),
        ("sp-original-size", str(len(value)).encode()),
        ("sp-original-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    if key is not None and len(key) > MAX_TRUNCATED_KEY:
        extra.append(("sp-original-key-size", str(len(key)).encode()))
        key = key[:MAX_TRUNCATED_KEY]
    return key, headers + extra
