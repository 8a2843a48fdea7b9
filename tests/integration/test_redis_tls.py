"""mm over TLS: a real redis-server with --tls-port only, a throwaway CA and certificates from openssl.

The server requires client certificates (mutual TLS), so every mm process must pass the URL's
ssl_certfile/ssl_keyfile, and verifies the server against the URL's ssl_ca_certs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from mm import store
from tests.procs import Proc, free_port, wait_for
from tests.stack import sim_node
from tests.support import GB, require_binary, sim_model

MODEL = sim_model("tls:1b", load_bandwidth=10 * GB, eval_rate=2000)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(tmp: Path, name: str) -> None:
    """``<name>.crt`` / ``<name>.key``: a self-signed CA."""
    openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=tmp)


def make_cert(tmp: Path, name: str, ca: str, san: str) -> None:
    """``<name>.crt`` / ``<name>.key`` signed by ``ca``, valid for ``san``."""
    openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp)
    (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=tmp)


def tls_url(port: int, pki: Path, ca: str = "ca", db: int = 0) -> str:
    return (f"rediss://127.0.0.1:{port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={pki / (ca + '.crt')}"
            f"&ssl_certfile={pki / 'client.crt'}&ssl_keyfile={pki / 'client.key'}")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """(port, pki dir) of a redis-server that speaks only TLS and requires a client certificate."""
    require_binary("openssl")
    pki = tmp_path_factory.mktemp("pki")
    make_ca(pki, "ca")
    make_ca(pki, "other-ca")
    make_cert(pki, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(pki, "client", "ca", "DNS:mm-client")
    port = free_port()
    proc = Proc([shutil.which("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                 "--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key"),
                 "--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", "yes",
                 "--dir", str(pki), "--save", "", "--appendonly", "no"], log=pki / "redis-tls.log")
    try:
        wait_for(redis.Redis.from_url(tls_url(port, pki)).ping, 15, what=f"TLS redis ({pki / 'redis-tls.log'})")
        yield port, pki
    finally:
        proc.stop()


def test_store_connect_talks_tls_to_a_server_with_a_certificate_from_the_urls_ca(tls_redis):
    port, pki = tls_redis
    r = store.connect(tls_url(port, pki, db=1))

    r.set("mm:tls:probe", "ok")

    assert r.get("mm:tls:probe") == b"ok"
    conn = r.connection_pool.get_connection()
    try:
        assert conn._sock.version().startswith("TLS")  # the socket really is TLS
    finally:
        r.connection_pool.release(conn)


def test_store_connect_refuses_a_server_whose_certificate_another_ca_signed(tls_redis):
    port, pki = tls_redis

    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        store.connect(tls_url(port, pki, ca="other-ca")).ping()


def test_a_plain_connection_to_the_tls_port_gets_nothing(tls_redis):
    port, _ = tls_redis

    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_timeout=2).ping()


def test_a_job_runs_end_to_end_over_tls_through_celery_broker_backend_and_mm_state(tmp_path, tls_redis):
    port, pki = tls_redis
    url = tls_url(port, pki, db=2)
    redis.Redis.from_url(url).flushdb()
    with sim_node(tmp_path, url, [MODEL], 4 * GB) as stack:
        done = subprocess.run([sys.executable, "-c", "from mm.cli import main; main()", "enqueue", MODEL["name"],
                               "over tls", "--wait", "--num-predict", "6"], capture_output=True, text=True,
                              timeout=120, env=os.environ | {"MM_REDIS_URL": url})

        assert done.returncode == 0, done.stderr + stack.logs()
        assert done.stdout.strip()
        assert '"eval_tokens": 6' in done.stderr
        assert redis.Redis.from_url(url).keys("celery-task-meta-*"), "no Celery result stored over TLS"
