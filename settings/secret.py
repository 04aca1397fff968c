"""A secret (password) that never shows itself: not in str(), repr(), logs or error messages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Secret:
    """A value that never shows itself in str(), repr() or logs."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The secret itself: pass it straight to the client that needs it."""
        return self._value

    def __str__(self) -> str:
        return "********"

    def __repr__(self) -> str:
        return "Secret('********')"
