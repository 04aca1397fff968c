"""How to reach Redis, and the key namespace that separates live from replay."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from settings.secret import Secret


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis, and the key namespace that separates live from replay."""

    url: str
    namespace: str
    password: Secret | None = None
    # CA certificate (PEM) that signed the server's certificate, for rediss:// URLs; None: the system's CAs.
    ssl_ca_location: str | None = None

    @property
    def display_url(self) -> str:
        """The URL with any password in it masked, for logs and messages."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:********@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
