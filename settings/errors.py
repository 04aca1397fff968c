"""The error every settings check raises: its message says what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid configuration; the message says what to fix."""
