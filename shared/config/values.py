"""The values of settings: each parser turns one variable's text into its value or raises ValueError
(shared/config/__init__.py adds the variable's name), and the database URL's own type."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, unquote

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class DatabaseUrl:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def parse(cls, url: str) -> "DatabaseUrl":
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise ValueError("must start with mysql://")
        db = parts.path.lstrip("/")
        if not db or "/" in db:
            raise ValueError("must name a database: mysql://user:pass@host:port/db")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                   user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
                   database=unquote(db))

    def with_database(self, database: str) -> "DatabaseUrl":
        return dataclasses.replace(self, database=database)

    def __str__(self) -> str:  # never print the password
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"


def _str(value: str) -> str:
    return value


def _int(lo: int | None = None, hi: int | None = None):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if lo is not None and n < lo:
            raise ValueError(f"must be at least {lo}")
        if hi is not None and n > hi:
            raise ValueError(f"must be at most {hi}")
        return n
    return parse


def _float(lo: float = 0.0):
    def parse(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise ValueError("must be a number") from None
        if not n >= lo:
            raise ValueError(f"must be at least {lo}")
        if not math.isfinite(n):
            raise ValueError("must be a finite number")
        return n
    return parse


def _choice(*choices: str):
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"must be {', '.join(choices[:-1])} or {choices[-1]}")
        return v
    return parse


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _upload_hours(value: str) -> int:
    """RETENTION_UPLOADS_HOURS: 0 (keep uploads) or at least a day (jobs can use an upload for a day)."""
    n = _int(0)(value)
    if 0 < n < 24:
        raise ValueError("must be 0 (keep uploads) or at least 24 (jobs can use an upload for a day)")
    return n


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.strip().rstrip("/")


def _http_urls(value: str) -> tuple[str, ...]:
    urls = tuple(_http_url(u) for u in value.split(",") if u.strip())
    if not urls:
        raise ValueError("must name at least one URL")
    if len(set(urls)) != len(urls):
        raise ValueError("lists a URL twice")
    return urls


def _origins(value: str) -> tuple[str, ...]:
    """Browser origins (scheme://host[:port], no path) or *."""
    origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc
                              or parts.path or parts.query or parts.fragment):
            raise ValueError(f"{origin!r} is not an origin like https://h5.example.com (or *)")
    return origins


def _webhook_secret(secret: str, name: str = "WEBHOOK_SECRET") -> None:
    """whsec_ + base64 (Standard Webhooks), or a plain string of at least 24 characters."""
    import base64
    import binascii
    if secret.startswith("whsec_"):
        try:
            if len(base64.b64decode(secret[6:], validate=True)) < 16:
                raise ConfigError(f"{name}: a whsec_ secret must hold at least 16 bytes")
        except binascii.Error:
            raise ConfigError(f"{name}: whsec_ must be followed by base64") from None
    elif len(secret) < 24:
        raise ConfigError(f"{name}: must be whsec_<base64> or at least 24 characters")


def _subscribe_data(value: str) -> tuple[tuple[str, str], ...]:
    from shared.subscribe import parse_data
    return parse_data(value)


def _page(value: str) -> str:
    """A page of the mini-program (pages/index/index, optionally with a query)."""
    v = value.strip()
    if not v or len(v) > 128 or any(c.isspace() or not c.isprintable() for c in v) or "#" in v:
        raise ValueError(f"{value!r} is not a page path like pages/index/index")
    return v


def _storage_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("must be s3://bucket/prefix")
    elif parts.scheme == "file":
        if not parts.path:
            raise ValueError("must be file:///absolute/path")
    else:
        raise ValueError("must be s3://bucket/prefix or file:///path")
    return value


def _database_url(value: str) -> DatabaseUrl:
    return DatabaseUrl.parse(value)
