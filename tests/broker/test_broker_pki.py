"""`viocluster broker certs` with CA keys encrypted at rest: a passphrase from a file or an
environment variable, one clear line when it is missing or wrong, CA keys of earlier releases
(unencrypted) still read and encrypted on request, renewal of what ends soon (--renew-within),
and the switch of a domain from the deployment CA to its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker.cli import main
from broker.service.tls import (
    KeyPair, fingerprint_pem, is_encrypted_key, issued_by, make_ca, make_domain_cert, not_after,
)


def _certs(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["broker", "certs", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text("correct horse battery staple\n")
    path.chmod(0o600)
    return path


def test_a_new_ca_key_is_encrypted_and_domain_keys_are_not(tmp_path, capsys, secret):
    d = tmp_path / "pki"
    rc, out, err = _certs(capsys, "--dir", str(d), "--domain", "a=127.0.0.1",
                          "--ca-passphrase-file", str(secret))
    assert rc == 0 and out.split("\t")[2].strip() == "created" and err == ""
    assert is_encrypted_key((d / "ca.key").read_bytes())
    assert not is_encrypted_key((d / "a.key").read_bytes())  # the broker reads it unattended
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    # the same from an environment variable (what a vault or a secret manager fills)
    own = tmp_path / "own"
    rc, _out, err = _certs_env(capsys, "VC_CA_PASS", "s3cret-from-env", "--dir", str(own),
                               "--own-ca", "--domain", "b")
    assert rc == 0 and err == ""
    assert is_encrypted_key((own / "b-ca.key").read_bytes())


def _certs_env(capsys, name: str, value: str, *args: str) -> tuple[int, str, str]:
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv(name, value)
        return _certs(capsys, *args, "--ca-passphrase-env", name)
    finally:
        mp.undo()


def test_an_encrypted_ca_key_without_or_with_a_wrong_passphrase_is_one_line(tmp_path, capsys, secret):
    d = tmp_path / "pki"
    assert _certs(capsys, "--dir", str(d), "--domain", "a", "--ca-passphrase-file", str(secret))[0] == 0
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    # a new domain needs the CA key: no passphrase
    rc, out, err = _certs(capsys, "--dir", str(d), "--domain", "b")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "ca.key is encrypted and no passphrase was given" in err
    assert "--ca-passphrase-file FILE or --ca-passphrase-env NAME" in err
    # a wrong one
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    rc, out, err = _certs(capsys, "--dir", str(d), "--domain", "b", "--ca-passphrase-file", str(wrong))
    assert rc == 2 and err.count("\n") == 1 and "the passphrase does not decrypt it" in err, err
    # a wrong one is refused even when nothing is signed (found before the renewal day)
    rc, _out, err = _certs(capsys, "--dir", str(d), "--domain", "a", "--ca-passphrase-file", str(wrong))
    assert rc == 2 and "does not decrypt" in err
    # a renewal without one
    rc, _out, err = _certs(capsys, "--dir", str(d), "--renew", "a")
    assert rc == 2 and err.count("\n") == 1 and "is encrypted and no passphrase" in err
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before  # nothing was written
    # an existing certificate is only read: no passphrase needed
    rc, out, _err = _certs(capsys, "--dir", str(d), "--domain", "a")
    assert rc == 0 and out.split("\t")[2].strip() == "kept"
    # missing or empty passphrase sources
    rc, _out, err = _certs(capsys, "--dir", str(d), "--domain", "b", "--ca-passphrase-file",
                           str(tmp_path / "nope"))
    assert rc == 2 and "cannot read it" in err and err.count("\n") == 1
    (tmp_path / "empty").write_text("\n")
    rc, _out, err = _certs(capsys, "--dir", str(d), "--domain", "b", "--ca-passphrase-file",
                           str(tmp_path / "empty"))
    assert rc == 2 and "is empty" in err
    rc, _out, err = _certs(capsys, "--dir", str(d), "--domain", "b", "--ca-passphrase-env",
                           "VC_SURELY_UNSET_VARIABLE")
    assert rc == 2 and "not set or empty" in err
    rc, _out, err = _certs(capsys, "--dir", str(d), "--encrypt-ca")
    assert rc == 2 and "--encrypt-ca needs the passphrase" in err


def test_an_unencrypted_ca_key_of_an_earlier_release_is_read_and_encrypted_on_request(
        tmp_path, capsys, secret):
    d = tmp_path / "pki"
    d.mkdir()
    legacy = make_ca("viocluster")  # as earlier releases wrote it
    legacy.write(d / "ca.crt", d / "ca.key")
    assert not is_encrypted_key(legacy.key_pem)
    # read with no passphrase (a warning says how to encrypt it), and with one
    rc, out, err = _certs(capsys, "--dir", str(d), "--domain", "a")
    assert rc == 0 and "created" in out and "--encrypt-ca" in err
    rc, out, _err = _certs(capsys, "--dir", str(d), "--domain", "b", "--ca-passphrase-file", str(secret))
    assert rc == 0 and "created" in out
    assert (d / "ca.key").read_bytes() == legacy.key_pem
    # --encrypt-ca alone: every CA key in the directory, the same key
    (d / "z-ca.crt").write_bytes(make_ca("z").cert_pem)  # a peer's CA certificate: no key, skipped
    rc, out, err = _certs(capsys, "--dir", str(d), "--encrypt-ca", "--ca-passphrase-file", str(secret))
    assert rc == 0 and out == "ca.key\tencrypted\n" and err == ""
    pem = (d / "ca.key").read_bytes()
    assert is_encrypted_key(pem) and (d / "ca.key").stat().st_mode & 0o777 == 0o600
    ca = KeyPair(legacy.cert_pem, pem)
    cert = make_domain_cert(ca, "c", ca_passphrase=secret.read_text().strip().encode())
    assert issued_by(cert.cert_pem, legacy.cert_pem)
    # a second time: nothing to do
    rc, out, _err = _certs(capsys, "--dir", str(d), "--encrypt-ca", "--ca-passphrase-file", str(secret))
    assert rc == 0 and out == ""


def _expiring(d: Path, name: str, days: int, passphrase: bytes | None, stem: str = "ca") -> str:
    """Reissue ``name``'s certificate from CA ``stem`` to end in ``days`` days; its pin."""
    ca = KeyPair((d / f"{stem}.crt").read_bytes(), (d / f"{stem}.key").read_bytes())
    short = make_domain_cert(ca, name, ["127.0.0.1"], days, (d / f"{name}.key").read_bytes(),
                             passphrase)
    (d / f"{name}.crt").write_bytes(short.cert_pem)
    return fingerprint_pem(short.cert_pem)


def test_renew_within_renews_what_ends_soon_and_keeps_the_rest(tmp_path, capsys, secret):
    d = tmp_path / "pki"
    pw = ["--ca-passphrase-file", str(secret)]
    assert _certs(capsys, "--dir", str(d), "--domain", "a=127.0.0.1", "--domain", "b", *pw)[0] == 0
    fp_b = fingerprint_pem((d / "b.crt").read_bytes())
    old = _expiring(d, "a", 10, secret.read_text().strip().encode())
    key = (d / "a.key").read_bytes()
    rc, out, _err = _certs(capsys, "--dir", str(d), "--domain", "a=127.0.0.1", "--domain", "b",
                           "--renew-within", "30", *pw)
    a_line, b_line = out.splitlines()
    name, new, made, was = a_line.split("\t")
    assert rc == 0 and (name, made, was) == ("a", "renewed", old) and new != old
    assert b_line.split("\t") == ["b", fp_b, "kept"]
    assert (d / "a.key").read_bytes() == key and not_after((d / "a.crt").read_bytes()) > time.time() + 800 * 86400
    # nothing near expiry: nothing changes
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    rc, out, _err = _certs(capsys, "--dir", str(d), "--domain", "a=127.0.0.1", "--domain", "b",
                           "--renew-within", "30", *pw)
    assert rc == 0 and [line.split("\t")[2] for line in out.splitlines()] == ["kept", "kept"]
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    # a renewal that is due needs the passphrase
    _expiring(d, "b", 5, secret.read_text().strip().encode())
    rc, _out, err = _certs(capsys, "--dir", str(d), "--domain", "b", "--renew-within", "30")
    assert rc == 2 and "is encrypted and no passphrase" in err


def test_renew_within_does_not_renew_for_ever_when_the_ca_itself_ends(tmp_path, capsys):
    d = tmp_path / "pki"
    d.mkdir()
    make_ca("short", days=10).write(d / "ca.crt", d / "ca.key")
    assert _certs(capsys, "--dir", str(d), "--domain", "a")[0] == 0
    rc, out, err = _certs(capsys, "--dir", str(d), "--domain", "a", "--renew-within", "30")
    assert rc == 0 and out.split("\t")[2].strip() == "kept"
    assert "and so does its CA" in err and "make a new CA" in err


def test_own_ca_reissues_a_certificate_of_the_deployment_ca_with_the_same_key(tmp_path, capsys, secret):
    d = tmp_path / "pki"
    pw = ["--ca-passphrase-file", str(secret)]
    assert _certs(capsys, "--dir", str(d), "--domain", "a=127.0.0.1", *pw)[0] == 0
    old = fingerprint_pem((d / "a.crt").read_bytes())
    key = (d / "a.key").read_bytes()
    rc, out, _err = _certs(capsys, "--dir", str(d), "--own-ca", "--domain", "a=127.0.0.1", *pw)
    name, new, made, was = out.strip().split("\t")
    assert rc == 0 and (name, made, was) == ("a", "renewed", old)
    assert issued_by((d / "a.crt").read_bytes(), (d / "a-ca.crt").read_bytes())
    assert is_encrypted_key((d / "a-ca.key").read_bytes()) and (d / "a.key").read_bytes() == key
    rc, out, _err = _certs(capsys, "--dir", str(d), "--own-ca", "--domain", "a=127.0.0.1", *pw)
    assert rc == 0 and out.strip().split("\t") == ["a", new, "kept"]
