"""mm's kombu transports: what makes a worker survive losing its broker (the integration proof is
tests/integration/test_sentinel.py, which asserts that no worker exits across a failover)."""

from types import SimpleNamespace

import pytest
import redis
from kombu import Connection
from kombu.transport import get_transport_cls

from mm import app as _app  # noqa: F401  (mm's app installs the transports)
from mm import broker_transport


def test_redis_rediss_and_sentinel_urls_get_mm_transports():
    assert get_transport_cls("redis") is broker_transport.Transport
    assert get_transport_cls("rediss") is broker_transport.Transport
    assert get_transport_cls("sentinel") is broker_transport.SentinelTransport
    # kombu's failover to the next sentinel URL resolves the transport from the scheme again.
    conn = Connection("sentinel://127.0.0.1:1/0;sentinel://127.0.0.1:2/0")
    conn.switch("sentinel://127.0.0.1:2/0")
    assert conn.transport_cls == "sentinel" and get_transport_cls(conn.transport_cls).Channel is \
        broker_transport.SentinelChannel


@pytest.mark.parametrize("channel", [broker_transport.Channel, broker_transport.SentinelChannel])
def test_a_channel_closed_after_its_connection_let_go_raises_a_connection_error(channel):
    # kombu's own channel raises AttributeError here, which Celery treats as unrecoverable.
    orphan = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(redis.ConnectionError):
        channel._connparams(orphan)
    # ... and a connection error is what kombu's close swallows (Connection.maybe_close_channel).
    assert redis.ConnectionError in broker_transport.Transport.connection_errors
