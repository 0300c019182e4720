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

from tests.helpers import connect, two_in_a_room


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
