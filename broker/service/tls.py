"""Certificates for mutual TLS between brokers, and the SSL contexts that use them.

One small CA per deployment signs one certificate per domain (CN = the domain's name). A broker
trusts the CA for the handshake and then *pins* each peer: it accepts a request only from a
certificate whose SHA-256 fingerprint its config lists for that peer, and it checks that the
server it calls presents the fingerprint pinned for it. A certificate the CA never signed is
refused during the handshake; a CA-signed certificate that is not pinned gets a 403.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.errors import ConfigError

VALID_DAYS = 825


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, cert: Path, key: Path) -> None:
        cert.parent.mkdir(parents=True, exist_ok=True)
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600, exist_ok=True)
        key.chmod(0o600)
        key.write_bytes(self.key_pem)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(name: str, days: int = VALID_DAYS) -> KeyPair:
    """A self-signed CA for one deployment of brokers."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} broker CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_domain_cert(
    ca: KeyPair, domain: str, names: list[str] | tuple[str, ...] = (), days: int = VALID_DAYS
) -> KeyPair:
    """A certificate for ``domain``'s broker, usable as TLS server and client.

    ``names`` are the host names and IP addresses peers use to reach it (subjectAltName).
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names or ("localhost", "127.0.0.1"):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def fingerprint_der(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: bytes) -> str:
    """The pin of a certificate: ``sha256:`` and the hex SHA-256 of its DER encoding."""
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def common_name(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    def check(self, source: str) -> None:
        for label in ("cert", "key", "ca"):
            path = getattr(self, label)
            if not path.is_file():
                raise ConfigError(
                    f"{source}.tls.{label}: {path} does not exist; create the broker "
                    "certificates with `viocluster broker certs` (the broker role does it)"
                )


def _load(ctx: ssl.SSLContext, files: TlsFiles, source: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{source}.tls: cannot load {files.cert}, {files.key} or {files.ca} ({exc}); "
            "check that the key matches the certificate and the files are PEM"
        ) from None
    return ctx


def server_context(files: TlsFiles, source: str = "config") -> ssl.SSLContext:
    """Server side: ask every client for a certificate signed by the deployment CA.

    The certificate is optional at the TLS layer so that a client without one gets an HTTP
    401 that says why; the API then checks the pin of every certificate it is shown.
    """
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files, source)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles, source: str = "config") -> ssl.SSLContext:
    """Client side: present our certificate; the server must chain to the deployment CA."""
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files, source)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
