"""What a `tesai` command loads before it runs: the command tree and, for a client command,
the HTTP client, never the control plane (the server, the database, Celery, Ray, pandas).
Each of those costs a noticeable part of a second at every call; bench/cli_startup.py
measures the time. The client loads the CA bundle only for https, and still checks it."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tesai.client import TesaiClient
from tests.embedded.helpers import clean_env

SERVER_SIDE = {
    "alembic", "asyncpg", "celery", "fastapi", "numpy", "pandas", "ray", "redis",
    "sqlalchemy", "starlette", "uvicorn", "tesai.app", "tesai.settings", "tesai.runtime",
}  # fmt: skip

RUN = """
import json, sys
from tesai.cli.main import app
try:
    app({args!r}, prog_name="tesai")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(args: list[str], env: dict[str, str]) -> set[str]:
    """Modules (and their top packages) loaded by running `tesai ARGS` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", RUN.format(args=args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return set(modules) | {m.split(".")[0] for m in modules}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A stored login for a server that is not there: the command runs its whole client
    path (credentials, HTTP client, request) and fails at the connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    creds = tmp_path / "config" / "tesai" / "credentials.json"
    creds.parent.mkdir(parents=True)
    login = {"server": dead, "access_token": "t", "refresh_token": "", "expires_at": 2e9}
    creds.write_text(json.dumps(login))
    return clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"))


def test_help_loads_neither_the_control_plane_nor_the_http_client(env: dict[str, str]) -> None:
    loaded = loaded_by(["--help"], env)
    assert "tesai.cli.clusters" in loaded  # the whole command tree was built
    assert loaded & (SERVER_SIDE | {"httpx"}) == set()


@pytest.mark.parametrize(
    "args",
    [["cluster", "list"], ["job", "logs", "j", "--cluster", "c", "--follow"], ["balance"]],
)
def test_a_client_command_loads_no_control_plane(args: list[str], env: dict[str, str]) -> None:
    loaded = loaded_by(args, env)
    assert "httpx" in loaded  # it did try the server
    assert loaded & SERVER_SIDE == set()


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context for 127.0.0.1 with a certificate nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"hello": "world"}')

    def log_message(self, *args: object) -> None:
        pass


def test_the_client_still_refuses_an_https_server_it_cannot_verify(tmp_path: Path) -> None:
    """The CA bundle is loaded only for https (start-up cost), and then always checked."""
    plain = HTTPServer(("127.0.0.1", 0), _Hello)
    tls = HTTPServer(("127.0.0.1", 0), _Hello)
    tls.socket = _self_signed(tmp_path).wrap_socket(tls.socket, server_side=True)
    for server in (plain, tls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with TesaiClient(f"http://127.0.0.1:{plain.server_port}", "t") as client:
            assert client.get("/") == {"hello": "world"}
        with (
            TesaiClient(f"https://127.0.0.1:{tls.server_port}", "t") as client,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get("/")
        # Reached from a client made for a plain-HTTP server, too.
        with (
            TesaiClient(f"http://127.0.0.1:{plain.server_port}", "t") as client,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(f"https://127.0.0.1:{tls.server_port}/")
    finally:
        plain.shutdown()
        tls.shutdown()
