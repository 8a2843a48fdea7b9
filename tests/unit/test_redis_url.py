"""MM_REDIS_URL parsing: plain, TLS and sentinel URLs, and that Celery reads them as mm does."""

from __future__ import annotations

import ssl

import pytest
from celery import Celery
from kombu import Connection

from mm.redis_url import RedisURLError, parse, redact

BRIEF_EXAMPLE = "sentinel://:password@h1:26379;sentinel://h2:26379;sentinel://h3:26379/0?master_name=mymaster"


def celery_app(url: str) -> Celery:
    """A Celery app configured from ``url`` the way celeryconfig.py does it (nothing connects)."""
    target = parse(url)
    app = Celery("t", broker=target.url, backend=target.url, set_as_current=False)
    app.conf.broker_transport_options = target.transport_options()
    app.conf.result_backend_transport_options = target.transport_options()
    if target.tls:
        app.conf.broker_use_ssl = target.ssl_options()
        app.conf.redis_backend_use_ssl = target.ssl_options()
    return app


def test_a_plain_url_is_passed_on_unchanged():
    target = parse("redis://:pw@10.0.0.5:6380/3")

    assert target.url == "redis://:pw@10.0.0.5:6380/3"
    assert (target.scheme, target.db, target.password, target.username) == ("redis", 3, "pw", None)
    assert target.transport_options() == {} and target.ssl_options() == {}
    assert not target.is_sentinel and not target.tls


def test_the_sentinel_example_becomes_kombus_canonical_url_and_transport_options():
    target = parse(BRIEF_EXAMPLE)

    assert target.is_sentinel
    assert target.sentinels == (("h1", 26379), ("h2", 26379), ("h3", 26379))
    assert (target.master_name, target.db, target.password) == ("mymaster", 0, "password")
    assert target.url == "sentinel://:password@h1:26379/0;sentinel://h2:26379;sentinel://h3:26379"
    assert target.transport_options()["master_name"] == "mymaster"


def test_credentials_and_db_may_sit_on_the_first_or_the_last_sentinel_url():
    first = parse("sentinel://u:p@a:1/2;sentinel://b:2?master_name=m")
    last = parse("sentinel://a:1;sentinel://u:p@b:2/2?master_name=m")

    assert first.url == last.url == "sentinel://u:p@a:1/2;sentinel://b:2"
    assert (last.username, last.password, last.db) == ("u", "p", 2)


def test_a_sentinel_without_a_port_uses_26379_and_ipv6_hosts_keep_their_brackets():
    target = parse("sentinel://[::1];sentinel://s2?master_name=m")

    assert target.sentinels == (("::1", 26379), ("s2", 26379))
    assert target.url == "sentinel://[::1]:26379/0;sentinel://s2:26379"


def test_a_password_with_url_special_characters_survives_the_round_trip_through_kombu():
    target = parse("sentinel://:p%40ss%3Bw%2Fd@a:1/0;sentinel://b:2?master_name=m")

    conn = Connection(target.url, transport_options=target.transport_options())
    assert target.password == "p@ss;w/d"
    assert conn.password == "p@ss;w/d"
    assert len(conn.alt) == 2


def test_sentinel_credentials_go_to_sentinel_kwargs_and_never_into_celerys_url():
    target = parse("sentinel://:nodepw@a:1;sentinel://b:2?master_name=m&sentinel_password=sentpw")

    assert "sentpw" not in target.url
    kwargs = target.transport_options()["sentinel_kwargs"]
    assert kwargs["password"] == "sentpw" and kwargs["socket_timeout"] > 0
    assert target.password == "nodepw"


@pytest.mark.parametrize("url, message", [
    ("sentinel://a:1;sentinel://b:2", "master_name"),
    ("sentinel://a:1/0;sentinel://b:2/1?master_name=m", "db"),
    ("sentinel://:x@a:1;sentinel://:y@b:2?master_name=m", "password"),
    ("sentinel://a:1?master_name=m&socket_timeout=3", "socket_timeout"),
    ("sentinel://a:1?master_name=m&ssl_cert_reqs=required", "TLS"),
    ("sentinel://a:1;redis://b:2?master_name=m", "sentinel://"),
    ("sentinel://a:1?master_name=m;sentinel://b:2?master_name=n", "master_name"),
    ("sentinel://a:notaport?master_name=m", "port"),
    ("redis://a:1;redis://b:2", "sentinel"),
    ("http://a:1", "scheme"),
    ("redis://a:1/zero", "database"),
    ("redis://a:1/0?ssl_cert_reqs=required", "rediss"),
    ("rediss://a:1/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    ("rediss://a:1/0?ssl_check_hostname=maybe", "ssl_check_hostname"),
    ("rediss://a:1/0?ssl_ca_cert=/x", "ssl_ca_cert"),
])
def test_an_unusable_url_is_refused_with_the_reason(url, message):
    with pytest.raises(RedisURLError, match=message):
        parse(url)


def test_errors_and_redacted_urls_never_show_a_password():
    with pytest.raises(RedisURLError) as err:
        parse("sentinel://:topsecret@a:1;sentinel://b:2?sentinel_password=alsosecret")

    assert "topsecret" not in str(err.value) and "alsosecret" not in str(err.value)
    shown = redact("sentinel://u:topsecret@a:1;sentinel://b:2?master_name=m&sentinel_password=alsosecret")
    assert "secret" not in shown and "u:***@a:1" in shown


def test_rediss_query_parameters_become_typed_ssl_options():
    target = parse("rediss://:pw@redis.internal:6380/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.crt"
                   "&ssl_certfile=/etc/c.crt&ssl_keyfile=/etc/c.key&ssl_check_hostname=false")

    assert target.tls
    assert target.ssl_options() == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.crt",
                                    "ssl_certfile": "/etc/c.crt", "ssl_keyfile": "/etc/c.key",
                                    "ssl_check_hostname": False}
    assert target.client_url() == "rediss://:pw@redis.internal:6380/1"


def test_rediss_without_ssl_cert_reqs_verifies_the_server_certificate():
    assert parse("rediss://h:6380/0").ssl_options() == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert parse("rediss://h:6380/0?ssl_cert_reqs=CERT_NONE").ssl_options()["ssl_cert_reqs"] == ssl.CERT_NONE


def test_client_url_keeps_redis_py_parameters_other_than_tls():
    target = parse("rediss://h:6380/0?socket_timeout=5&ssl_cert_reqs=none")

    assert target.client_url() == "rediss://h:6380/0?socket_timeout=5"


def test_celery_builds_the_sentinel_backend_for_the_same_sentinels_db_and_password():
    app = celery_app("sentinel://a:1;sentinel://b:2;sentinel://:pw@c:3/4?master_name=mymaster")

    backend = app.backend
    assert type(backend).__name__ == "SentinelBackend"
    assert [(h["host"], h["port"]) for h in backend.connparams["hosts"]] == [("a", 1), ("b", 2), ("c", 3)]
    assert (backend.connparams["db"], backend.connparams["password"]) == (4, "pw")
    assert backend._transport_options["master_name"] == "mymaster"
    conn = app.connection_for_write()
    assert conn.transport_cls == "sentinel" and conn.virtual_host == "4" and conn.password == "pw"
    assert conn.transport_options["master_name"] == "mymaster"


def test_celery_gets_tls_options_for_broker_and_backend_from_a_rediss_url():
    app = celery_app("rediss://:pw@h:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.crt")

    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.backend.connparams["ssl_ca_certs"] == "/etc/ca.crt"
    assert app.connection_for_write().ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.crt"}
