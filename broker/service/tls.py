"""Certificates for mutual TLS between brokers, and the SSL contexts that use them.

A CA signs one certificate per domain (CN = the domain's name). The CA is either one for the
whole deployment (``ca.crt``) or one per domain (``DOMAIN-ca.crt``), so that two organisations
need not share a CA key. A broker trusts its own CA and each peer's CA (``tls.ca`` and
``peers.NAME.ca``) for the handshake, and then *pins* each peer: it accepts a request only from
a certificate whose SHA-256 fingerprint its config lists for that peer, and it checks that the
server it calls presents a fingerprint pinned for it. A certificate no trusted CA signed is
refused during the handshake; one a trusted CA signed that is not pinned gets a 403.

A CA's private key may be encrypted at rest with a passphrase (PKCS#8 with the best encryption
``cryptography`` offers); keys of earlier releases, stored unencrypted, are still read. A
domain's own TLS key is never encrypted: its broker reads it unattended.

Why the peers' CAs are trust anchors at all, when the pin alone decides: Python's ``ssl`` cannot
ask for a client certificate without verifying its chain (``CERT_OPTIONAL`` and
``CERT_REQUIRED`` both verify; ``CERT_NONE`` asks for none), and it has no verify callback in
which a pin could stand for the chain. So the chain is verified against the CAs the config
names, and the pin is checked after the handshake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.errors import ConfigError, UserError

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


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with ``passphrase`` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def is_encrypted_key(pem: bytes) -> bool:
    """Whether a PEM private key needs a passphrase (PKCS#8 or the older OpenSSL form)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def load_private_key(pem: bytes, passphrase: bytes | None, where: str,
                     hint: str = "") -> ec.EllipticCurvePrivateKey:
    """Read a PEM private key, encrypted or not. A key that is encrypted while no passphrase is
    given, a wrong passphrase and a file that is no EC key are each a one-line UserError that
    names ``where`` (and adds ``hint``, what to do)."""
    encrypted = is_encrypted_key(pem)
    if encrypted and not passphrase:
        raise UserError(f"{where} is encrypted and no passphrase was given" + (f"; {hint}" if hint else ""))
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise UserError(f"{where}: the passphrase does not decrypt it; check the passphrase "
                            "file or variable") from None
        raise UserError(f"{where} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{where} is not an EC private key")
    return key


def encrypt_key(pem: bytes, passphrase: bytes, where: str) -> bytes:
    """The unencrypted PEM key ``pem`` encrypted with ``passphrase`` (an earlier release's CA key)."""
    return _key_pem(load_private_key(pem, None, where), passphrase)


def make_ca(name: str, days: int = VALID_DAYS, passphrase: bytes | None = None) -> KeyPair:
    """A self-signed CA for one deployment of brokers, or for one domain. Its key is encrypted
    with ``passphrase`` when one is given."""
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
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key, passphrase))


def make_domain_cert(
    ca: KeyPair, domain: str, names: list[str] | tuple[str, ...] = (), days: int = VALID_DAYS,
    key_pem: bytes | None = None, ca_passphrase: bytes | None = None,
) -> KeyPair:
    """A certificate for ``domain``'s broker, usable as TLS server and client.

    ``names`` are the host names and IP addresses peers use to reach it (subjectAltName).
    ``key_pem``: keep this private key (a renewal); without it a new key is made. The
    certificate ends ``days`` from now, or when the CA does if that is sooner.
    ``ca_passphrase`` opens the CA's key when it is encrypted. The domain's key is not
    encrypted: its broker reads it unattended.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = load_private_key(ca.key_pem, ca_passphrase, "the CA key")
    if key_pem is None:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        loaded = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        key = loaded
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
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
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


def not_after(pem_or_der: bytes) -> float:
    """When a certificate expires, in seconds since the epoch."""
    if pem_or_der.lstrip().startswith(b"-----"):
        cert = x509.load_pem_x509_certificate(pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(pem_or_der)
    return cert.not_valid_after_utc.timestamp()


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether the CA certificate ``ca_pem`` signed ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def alt_names(pem: bytes) -> list[str]:
    """The host names and IP addresses of a certificate's subjectAltName."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` in one rename, so that a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def check_ca_file(path: Path, where: str) -> None:
    """``path`` is a readable PEM file of CA certificates; else a ConfigError saying what to fix."""
    hint = ("give the CA certificate that signed the domain's certificate (ca.crt, or "
            "DOMAIN-ca.crt from `viocluster broker certs --own-ca`)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror}); {hint}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{where}: {path} is not a PEM certificate; {hint}") from None
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise ConfigError(f"{where}: {path} holds a certificate that is not a CA's "
                              f"({cert.subject.rfc4514_string()}); {hint}")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path  # this domain's CA, or the deployment's
    peer_cas: tuple[Path, ...] = ()  # the CAs of peers that have their own (peers.NAME.ca)
    peer_ca_labels: tuple[str, ...] = ()  # where each is set, for messages: peers.b.ca

    @property
    def cas(self) -> tuple[Path, ...]:
        """Every trust anchor, each once."""
        return tuple(dict.fromkeys((self.ca, *self.peer_cas)))

    def check(self, source: str) -> None:
        for label in ("cert", "key", "ca"):
            path = getattr(self, label)
            if not path.is_file():
                raise ConfigError(
                    f"{source}.tls.{label}: {path} does not exist; create the broker "
                    "certificates with `viocluster broker certs` (the broker role does it)"
                )
        check_ca_file(self.ca, f"{source}: tls.ca")
        labels = self.peer_ca_labels or tuple("peers.?.ca" for _ in self.peer_cas)
        for path, label in zip(self.peer_cas, labels):
            check_ca_file(path, f"{source}: {label}")


def _load(ctx: ssl.SSLContext, files: TlsFiles, source: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_into(ctx, files, source)
    return ctx


def load_into(ctx: ssl.SSLContext, files: TlsFiles, source: str) -> None:
    """Load our certificate and key and every trust anchor into ``ctx``. On a live context (a
    reload) new connections use them; a CA once loaded stays trusted until a restart."""
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{source}.tls: cannot load {files.cert} or {files.key} ({exc}); "
            "check that the key matches the certificate and the files are PEM"
        ) from None
    for ca in files.cas:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{source}.tls: cannot load the CA file {ca} ({exc}); "
                              "check that it is a PEM certificate") from None


def server_context(files: TlsFiles, source: str = "config") -> ssl.SSLContext:
    """Server side: ask every client for a certificate signed by a trusted CA.

    The certificate is optional at the TLS layer so that a client without one gets an HTTP
    401 that says why; the API then checks the pin of every certificate it is shown.
    """
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files, source)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles, source: str = "config") -> ssl.SSLContext:
    """Client side: present our certificate; the server must chain to a trusted CA."""
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files, source)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
