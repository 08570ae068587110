"""Config file validation: every mistake is a ConfigError saying what to fix."""

from __future__ import annotations

import os

import pytest
import yaml

from violin.config import load, parse
from violin.daemon import main as switchd_main
from violin.errors import ConfigError, KeyFileError

GOOD = {
    "network": "red", "network_id": 201, "key_file": "/nonexistent", "tap": "vswr0",
    "listen": "10.201.0.1", "peers": [{"name": "h2", "address": "10.201.0.2"},
                                      {"name": "h3", "address": "10.201.0.3", "port": 5400}],
}


def test_good_config_and_defaults():
    cfg = parse(GOOD, "t.yml")
    assert cfg.port == 5300 and cfg.cipher == "aes-256-gcm" and cfg.offload
    assert cfg.peers == (("h2", "10.201.0.2", 5300), ("h3", "10.201.0.3", 5400))
    assert cfg.effective_sender_id() == parse(GOOD, "t.yml").effective_sender_id()
    assert cfg.effective_sender_id() != parse({**GOOD, "listen": "10.201.0.9"}, "t").effective_sender_id()


@pytest.mark.parametrize("change, words", [
    ({"network_id": 0}, "network_id: must be an integer"),
    ({"network_id": "x"}, "network_id"),
    ({"tap": "a-name-that-is-far-too-long"}, "tap: must be an interface name"),
    ({"listen": "example"}, "listen: must be this host's IPv4 address"),
    ({"cipher": "rot13"}, "cipher: must be one of"),
    ({"datapath": "rust"}, "datapath: must be one of c, python"),
    ({"port": 70000}, "port"),
    ({"colour": "blue"}, "unknown setting(s) colour"),
    ({"peers": [{"name": "h2", "address": "nowhere"}]}, "not an IP address"),
    ({"peers": [{"name": "h2", "address": "10.201.0.2"}, {"name": "h2", "address": "10.201.0.2"}]},
     "listed twice"),
    ({"peers": [{"name": "me", "address": "10.201.0.1"}]}, "own address"),
    ({"peers": "h2"}, "peers: must be a list"),
    ({"metrics": "9100"}, "ADDRESS:PORT"),
    ({"network": None}, "network: is required"),
])
def test_mistakes_are_named(change, words):
    with pytest.raises(ConfigError) as err:
        parse({**GOOD, **change}, "t.yml")
    assert words in str(err.value)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of settings"):
        load(path)
    path.write_text("network: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "absent.yml")


def test_key_file_checks(tmp_path):
    key = tmp_path / "k"
    cfg = parse({**GOOD, "key_file": str(key)}, "t")
    with pytest.raises(KeyFileError, match="violinctl genkey"):
        cfg.secret()
    key.write_text("abc\n")
    key.chmod(0o600)
    with pytest.raises(KeyFileError, match="64 hex digits"):
        cfg.secret()
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod"):
        cfg.secret()
    key.chmod(0o640)
    assert cfg.secret() == b"\xab" * 32


def test_switchd_check_and_error_exit(tmp_path, capsys):
    key = tmp_path / "k"
    key.write_text("cd" * 32)
    key.chmod(0o600)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({**GOOD, "key_file": str(key)}))
    assert switchd_main(["-c", str(path), "--check"]) == 0
    assert "ok: network red" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**GOOD, "key_file": str(key), "port": "x"}))
    assert switchd_main(["-c", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "port: must be an integer" in err and "Traceback" not in err
    assert os.path.exists(path)


def test_check_says_when_the_c_data_path_is_not_usable(tmp_path, capsys, monkeypatch):
    """As on a host where libsodium23 is missing: the import of violin._datapath failed."""
    from violin import daemon

    key = tmp_path / "k"
    key.write_text("cd" * 32)
    key.chmod(0o600)
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({**GOOD, "key_file": str(key)}))
    monkeypatch.setattr(daemon, "native_available", lambda: False)
    monkeypatch.setattr(daemon, "IMPORT_ERROR", "libsodium.so.23: cannot open shared object file")
    assert switchd_main(["-c", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "install libsodium23" in err and "datapath: python" in err and "Traceback" not in err
    path.write_text(yaml.safe_dump({**GOOD, "key_file": str(key), "datapath": "python"}))
    assert switchd_main(["-c", str(path), "--check"]) == 0
    assert "data path python" in capsys.readouterr().out
