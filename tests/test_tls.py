"""
wss:// with --listen ssl:..., end to end with a certificate made for the test.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.support.clients import connect, two_in_a_room


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest_twisted.ensureDeferred
async def test_wss_with_a_trusted_certificate_and_a_refused_untrusted_client(
    tmp_path: Path, daemon_factory
) -> None:
    key, cert = self_signed(tmp_path)
    chatd = daemon_factory("--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    port = await chatd.wait_listening()
    trusting = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert.read_bytes()))

    # A client that does not trust the certificate fails the handshake...
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        await connect(port, tls=optionsForClientTLS("localhost"), host="localhost")

    # ...and the server carries on for clients that do.
    a, a_id, b = await two_in_a_room(port, "encrypted", tls=trusting, host="localhost")
    await a.request({"action": "message", "body": "over TLS"})
    event = await b.next()
    assert (event["from"], event["body"]) == (a_id, "over TLS")
    assert a.protocol is not None and a.protocol.transport.getPeerCertificate() is not None
    await a.close()
    await b.close()


def handshake_offering_alpn(port: int, cert: Path, protocols: list[str]) -> tuple[bytes, object]:
    """A TLS connection that offers ALPN as browsers and curl do, then the
    WebSocket handshake: the response's first bytes, and the protocol agreed."""
    import socket
    import ssl

    from tests.fakes import HANDSHAKE

    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(protocols)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(HANDSHAKE)
            return tls.recv(100), tls.selected_alpn_protocol()


@pytest.mark.parametrize("protocols", [["h2", "http/1.1"], ["http/1.1"]])
@pytest_twisted.ensureDeferred
async def test_wss_for_a_client_that_offers_alpn_as_browsers_do(
    tmp_path: Path, daemon_factory, protocols: list[str],
) -> None:
    from twisted.internet.threads import deferToThread

    key, cert = self_signed(tmp_path)
    chatd = daemon_factory("--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    port = await chatd.wait_listening()
    response, agreed = await deferToThread(handshake_offering_alpn, port, cert, protocols)
    assert response.startswith(b"HTTP/1.1 101 "), response
    assert agreed == "http/1.1"


@pytest_twisted.ensureDeferred
async def test_chatd_client_over_wss_with_a_self_signed_certificate(tmp_path: Path, daemon_factory) -> None:
    import os
    import subprocess
    import sys

    from twisted.internet.threads import deferToThread

    key, cert = self_signed(tmp_path)
    chatd = daemon_factory("--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    port = await chatd.wait_listening()
    client = os.path.join(os.path.dirname(sys.executable), "chatd-client")
    url = f"wss://localhost:{port}"

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([client, *options, url], input="/list\n", capture_output=True, text=True, timeout=60)

    untrusted = await deferToThread(run)
    assert untrusted.returncode == 1
    assert untrusted.stderr == (
        f"chatd-client: cannot connect to {url}: the server's certificate is not trusted "
        "(--cafile FILE trusts it, --insecure skips the check)\n")
    for options in (("--cafile", str(cert)), ("--insecure",)):
        trusted = await deferToThread(run, *options)
        assert trusted.returncode == 0, trusted.stderr
        assert '"status": "connected"' in trusted.stdout
