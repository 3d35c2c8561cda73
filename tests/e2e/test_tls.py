"""TLS plaintext through uprobes on libssl: nginx, curl, Python, processes started before and after."""
from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time

import pytest

from httptrace.exchange import Role

from .conftest import ExchangeCapture, free_port, serving, start_nginx

PY_TLS_SERVER = """
import http.server, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

URLLIB_CLIENT = """
import ssl, sys, urllib.request
ctx = ssl._create_unverified_context()
body = urllib.request.urlopen(sys.argv[1], context=ctx).read()
open(sys.argv[2], "wb").write(body)
"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_nginx(tmp_path, certificate):
    workdir = tmp_path / "nginx"
    os.makedirs(workdir / "www")
    for src in certificate:
        (workdir / src.name).write_bytes(src.read_bytes())
    port = free_port()
    proc = start_nginx(workdir, port, "nginx-tls.conf.template")
    yield proc, port, workdir / "www"
    proc.terminate()
    proc.wait(10)


def by_role(exchanges, role):
    return [ex for ex in exchanges if ex.connection.role == role]


def test_nginx_over_tls_with_curl_and_urllib(tls_nginx, tmp_path):
    """nginx was started before the tracer; curl and urllib after it."""
    _, port, www = tls_nginx
    big = os.urandom(1024 * 1024)
    (www / "big.bin").write_bytes(big)
    with ExchangeCapture(ports=[port]) as cap:
        subprocess.run(["curl", "-sSk", "-o", str(tmp_path / "hello"), f"https://127.0.0.1:{port}/hello"], check=True)
        subprocess.run([sys.executable, "-c", URLLIB_CLIENT, f"https://127.0.0.1:{port}/static/big.bin",
                        str(tmp_path / "big")], check=True)
    assert (tmp_path / "big").read_bytes() == big
    servers, clients = by_role(cap.exchanges, Role.SERVER), by_role(cap.exchanges, Role.CLIENT)
    assert sorted(ex.request.target for ex in servers) == ["/hello", "/static/big.bin"]
    assert sorted(ex.connection.comm for ex in clients) == ["curl", "python"]
    for ex in cap.exchanges:
        assert ex.connection.tls, ex
        assert ex.request.method == "GET" and ex.response.status == 200
        assert not ex.flags, ex.flags
        if ex.request.target == "/hello":
            assert ex.response.body == (tmp_path / "hello").read_bytes() == b"hello over tls\n"
        else:
            assert ex.response.body == big and ex.response.body_size == len(big)
    assert len(cap.exchanges) == 4
    assert cap.stats["parse_errors"] == 0 and cap.stats["drops"] == 0


def test_python_tls_server_started_after_the_tracer(certificate, tmp_path):
    cert, key = certificate
    port = free_port()
    (tmp_path / "page.txt").write_bytes(b"served by python over tls\n" * 40)
    with ExchangeCapture(ports=[port]) as cap, \
            serving([sys.executable, "-c", PY_TLS_SERVER, str(port), str(cert), str(key)], port,
                    cwd=tmp_path, stderr=subprocess.DEVNULL) as server:
        time.sleep(0.2)
        out = subprocess.run(["curl", "-sSk", f"https://127.0.0.1:{port}/page.txt"], check=True,
                             capture_output=True).stdout
    (served,) = [ex for ex in by_role(cap.exchanges, Role.SERVER) if ex.request.target == "/page.txt"]
    assert served.connection.pid == server.pid and served.connection.tls
    assert served.response.status == 200 and served.response.body == out
    assert served.request.header("User-Agent").startswith("curl/")


def test_tls_traffic_on_other_ports_stays_filtered_out(tls_nginx):
    """--port must hold for plaintext from the TLS library too: a TLS socket the port filter ignored
    used to become capturable once its first SSL_read/SSL_write returned."""
    _, port, _ = tls_nginx
    watched = free_port()   # nothing listens here: only the filter matters
    with ExchangeCapture(ports=[watched]) as cap:
        for _ in range(2):
            subprocess.run(["curl", "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{port}/hello"], check=True)
        subprocess.run([sys.executable, "-c", URLLIB_CLIENT, f"https://127.0.0.1:{port}/hello", os.devnull],
                       check=True)
    assert cap.exchanges == [], [(ex.connection.comm, ex.connection.remote) for ex in cap.exchanges]
    assert cap.stats["events"] == 0


def test_no_tls_flag_leaves_ciphertext_alone(tls_nginx):
    _, port, _ = tls_nginx
    with ExchangeCapture(ports=[port], tls=False) as cap:
        subprocess.run(["curl", "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{port}/hello"], check=True)
    assert cap.exchanges == []
    assert cap.stats["parse_errors"] == 0


STATIC_CLIENT = os.path.join(os.path.dirname(__file__), "servers", "static_tls", "client.c")


@pytest.fixture(scope="module")
def static_tls_client(tmp_path_factory):
    """A client with OpenSSL linked in statically: no libssl.so in its process."""
    out = tmp_path_factory.mktemp("static") / "static-tls-client"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), STATIC_CLIENT, "-lssl", "-lcrypto", "-lpthread"],
                   check=True, capture_output=True)
    return str(out)


def test_statically_linked_openssl_is_found_by_its_symbols(tls_nginx, static_tls_client):
    """A long-running program started after the tracer: the periodic re-scan finds its own SSL_read and
    SSL_write (no libssl.so in the process) and its requests are captured from then on."""
    from httptrace.tracer import TLS_RESCAN_EVERY_S

    _, port, www = tls_nginx
    (www / "static.txt").write_bytes(b"for a static client\n")
    with ExchangeCapture(ports=[port]) as cap:
        client = subprocess.Popen([static_tls_client, str(port), "/static/static.txt", "--wait-stdin"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # A re-scan examines programs for a bounded time, so the first may not reach this one.
        deadline = time.monotonic() + TLS_RESCAN_EVERY_S * 4 + 5
        while static_tls_client not in cap.tracer.tls_libraries and time.monotonic() < deadline:
            time.sleep(0.2)
        out = client.communicate(b"go\n", timeout=30)[0]
    assert client.returncode == 0 and out.endswith(b"for a static client\n")
    assert static_tls_client in cap.tracer.tls_libraries
    clients = [ex for ex in by_role(cap.exchanges, Role.CLIENT) if ex.connection.pid == client.pid]
    assert len(clients) == 1, [(ex.connection.comm, ex.connection.role) for ex in cap.exchanges]
    (ex,) = clients
    assert ex.connection.tls and ex.request.target == "/static/static.txt"
    assert ex.response.status == 200 and ex.response.body == b"for a static client\n"
