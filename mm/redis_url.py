"""Parse ``MM_REDIS_URL``: a plain ``redis://``, a TLS ``rediss://`` or a Redis Sentinel ``sentinel://`` URL.

Pure (no I/O). ``mm/celeryconfig.py`` turns the result into Celery's broker and result-backend settings
and ``mm/store.py`` into redis-py clients, so Celery and mm always reach the same Redis the same way.

Sentinel URLs follow kombu's syntax: one ``sentinel://`` URL per sentinel, separated by ``;``; the
data nodes' credentials and the database number belong to the first one (kombu and Celery read them
only there). mm also accepts them on any one sentinel URL, and takes from the query string what kombu
expects as transport options::

    sentinel://:PASSWORD@h1:26379;sentinel://h2:26379;sentinel://h3:26379/0?master_name=mymaster

Query parameters of a sentinel URL: ``master_name`` (required), ``sentinel_username`` and
``sentinel_password`` (for sentinels started with ``requirepass``). Celery is handed the canonical
kombu form (``sentinel://:PASSWORD@h1:26379/0;sentinel://h2:26379;sentinel://h3:26379``) and the rest
as ``master_name`` / ``sentinel_kwargs`` transport options.

TLS: ``rediss://HOST:PORT/DB?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.crt`` (also
``ssl_certfile``, ``ssl_keyfile`` for a client certificate, ``ssl_check_hostname``). ``ssl_cert_reqs``
defaults to ``required``, as in redis-py.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

SENTINEL_PORT = 26379
# Timeouts of the short SENTINEL queries (master discovery); a dead sentinel must not stall a client.
SENTINEL_SOCKET_TIMEOUT_S = 2.0

SENTINEL_PARAMS = ("master_name", "sentinel_username", "sentinel_password")
SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE,
    "cert_required": ssl.CERT_REQUIRED, "cert_optional": ssl.CERT_OPTIONAL, "cert_none": ssl.CERT_NONE,
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class RedisURLError(ValueError):
    """MM_REDIS_URL cannot be used; the message says why (never with the password)."""


@dataclass(frozen=True)
class RedisURL:
    """Where mm's Redis is and how to reach it.

    Attributes:
        url: the URL for Celery's ``broker_url`` and ``result_backend`` (for a plain URL, the URL as
            given; for sentinel, kombu's canonical form without mm's query parameters).
        scheme: ``redis``, ``rediss``, ``unix`` or ``sentinel``.
        db: the database number.
        username, password: the data nodes' credentials (ACL user and password).
        sentinels: (host, port) of every sentinel (sentinel only).
        master_name: the monitored master's name (sentinel only).
        sentinel_username, sentinel_password: credentials of the sentinels themselves.
        ssl: the ``ssl_*`` query parameters, as given (``rediss`` only).
    """

    url: str
    scheme: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: dict[str, str] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def ssl_options(self) -> dict[str, Any]:
        """``broker_use_ssl`` / ``redis_backend_use_ssl`` / redis-py keyword arguments ({} without TLS)."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[self.ssl.get("ssl_cert_reqs", "required").lower()]}
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if self.ssl.get(name):
                options[name] = self.ssl[name]
        if "ssl_check_hostname" in self.ssl:
            options["ssl_check_hostname"] = self.ssl["ssl_check_hostname"].lower() in _TRUE
        return options

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments for the sentinels themselves (not for the data nodes)."""
        kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
                                  "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S}
        if self.sentinel_username:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def transport_options(self) -> dict[str, Any]:
        """What kombu's sentinel transport and Celery's sentinel backend need besides the URL."""
        if not self.is_sentinel:
            return {}
        return {"master_name": self.master_name, "sentinel_kwargs": self.sentinel_kwargs()}

    def client_url(self) -> str:
        """The URL for redis-py's ``from_url`` (plain URLs only): the ``ssl_*`` parameters removed,
        since redis-py lets URL parameters override keyword arguments; pass :meth:`ssl_options`."""
        if self.is_sentinel:
            raise RedisURLError("a sentinel URL has no single server URL; use redis.sentinel.Sentinel")
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in SSL_PARAMS]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def redacted(self) -> str:
        """The URL with every password replaced by ``***`` (for logs and errors)."""
        return redact(self.url)


def redact(url: str) -> str:
    """``url`` (one or several ``;``-separated URLs) with passwords, also in the query, masked."""
    out = []
    for chunk in url.split(";"):
        try:
            parts = urlsplit(chunk)
            netloc = parts.netloc
            if parts.password is not None:
                netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
            query = urlencode([(k, "***" if "password" in k else v)
                               for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
            out.append(urlunsplit(parts._replace(netloc=netloc, query=query)))
        except ValueError:
            out.append("<unparsable>")
    return ";".join(out)


def parse(url: str) -> RedisURL:
    """Parse ``MM_REDIS_URL``.

    Raises:
        RedisURLError: unknown scheme, bad port or database, a sentinel URL without ``master_name``
            or with conflicting credentials, an unknown sentinel parameter, TLS parameters on a
            ``redis://`` URL or an invalid ``ssl_cert_reqs``.
    """
    url = url.strip()
    if url.startswith("sentinel://"):
        return _parse_sentinel(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if ";" in url:
        raise RedisURLError(f"{redact(url)}: several ';'-separated URLs are only supported for sentinel:// "
                            "(run Redis Sentinel for failover)")
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisURLError(f"{redact(url)}: the scheme must be redis://, rediss:// (TLS), unix:// or "
                            "sentinel://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise RedisURLError(f"{redact(url)}: {exc}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    ssl_params = {k: v for k, v in query.items() if k in SSL_PARAMS}
    if ssl_params and scheme != "rediss":
        raise RedisURLError(f"{redact(url)}: ssl_* parameters need the rediss:// scheme")
    for name in query:
        if name.startswith("ssl_") and name not in SSL_PARAMS:
            raise RedisURLError(f"{redact(url)}: unknown TLS parameter {name!r} (known: {', '.join(SSL_PARAMS)})")
    _check_ssl(url, ssl_params)
    db = query.get("db") if scheme == "unix" else (parts.path.strip("/") or query.get("db"))
    return RedisURL(
        url=url, scheme=scheme, db=_db(url, db), username=_unquote(parts.username),
        password=_unquote(parts.password), ssl=ssl_params,
    )


def _parse_sentinel(url: str) -> RedisURL:
    sentinels: list[tuple[str, int]] = []
    found: dict[str, tuple[str, ...]] = {"username": (), "password": (), "db": ()}
    query: dict[str, str] = {}
    for chunk in url.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        if not chunk.startswith("sentinel://"):
            raise RedisURLError(f"{redact(url)}: every ';'-separated part must be a sentinel:// URL")
        try:
            parts = urlsplit(chunk)
            port = parts.port or SENTINEL_PORT
        except ValueError as exc:
            raise RedisURLError(f"{redact(url)}: {exc}") from None
        if not parts.hostname:
            raise RedisURLError(f"{redact(url)}: a sentinel URL without a host")
        sentinels.append((parts.hostname, port))
        for name, value in (("username", _unquote(parts.username)), ("password", _unquote(parts.password)),
                            ("db", parts.path.strip("/") or None)):
            if value is not None:
                found[name] += (value,)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in SENTINEL_PARAMS:
                hint = " (TLS to sentinel-managed nodes is not supported yet)" if name.startswith("ssl_") else ""
                raise RedisURLError(f"{redact(url)}: unknown sentinel URL parameter {name!r}{hint}; "
                                    f"known: {', '.join(SENTINEL_PARAMS)}")
            if query.get(name, value) != value:
                raise RedisURLError(f"{redact(url)}: {name} is given twice with different values")
            query[name] = value
    for name, values in found.items():
        if len(set(values)) > 1:
            raise RedisURLError(f"{redact(url)}: the {name} is given twice with different values; give it once, "
                                "on the first sentinel URL")
    if not query.get("master_name"):
        raise RedisURLError(f"{redact(url)}: a sentinel URL needs ?master_name=<name> (the name the sentinels "
                            "monitor)")
    username = found["username"][0] if found["username"] else None
    password = found["password"][0] if found["password"] else None
    db = _db(url, found["db"][0] if found["db"] else None)
    return RedisURL(
        url=_kombu_sentinel_url(sentinels, username, password, db), scheme="sentinel", db=db,
        username=username, password=password, sentinels=tuple(sentinels), master_name=query["master_name"],
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _kombu_sentinel_url(sentinels: list[tuple[str, int]], username: str | None, password: str | None,
                        db: int) -> str:
    """kombu's form: credentials and database on the first sentinel URL, none on the others."""
    auth = ""
    if username or password:
        auth = f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"
    urls = []
    for i, (host, port) in enumerate(sentinels):
        host = f"[{host}]" if ":" in host else host
        urls.append(f"sentinel://{auth}{host}:{port}/{db}" if i == 0 else f"sentinel://{host}:{port}")
    return ";".join(urls)


def _check_ssl(url: str, params: dict[str, str]) -> None:
    reqs = params.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in _CERT_REQS:
        raise RedisURLError(f"{redact(url)}: ssl_cert_reqs must be required, optional or none, not {reqs!r}")
    check = params.get("ssl_check_hostname")
    if check is not None and check.lower() not in _TRUE + _FALSE:
        raise RedisURLError(f"{redact(url)}: ssl_check_hostname must be true or false, not {check!r}")


def _db(url: str, raw: str | None) -> int:
    if raw in (None, ""):
        return 0
    try:
        db = int(raw)
    except ValueError:
        raise RedisURLError(f"{redact(url)}: the database must be a number, not {raw!r}") from None
    if db < 0:
        raise RedisURLError(f"{redact(url)}: the database must not be negative")
    return db


def _unquote(value: str | None) -> str | None:
    return unquote(value) if value else None
