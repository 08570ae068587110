"""The broker role applied for real to this machine (no systemd here: the unit tasks skip)."""

from __future__ import annotations

import sys
from pathlib import Path

import ansible_runner
import yaml

from broker.service.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _play(tmp: Path) -> Path:
    play = [{
        "name": "Broker role on this machine",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": [{
            "role": "broker",
            "broker_domain": "vbka",
            "broker_create_user": False,
            "broker_user": "root",
            "broker_group": "root",
            "broker_venv": str(Path(sys.executable).parent.parent),
            "broker_config_dir": str(tmp / "etc"),
            "broker_state_dir": str(tmp / "state"),
            "broker_pki_dir": str(tmp / "pki"),
            "broker_listen_host": "127.0.0.1",
            "broker_peers": [{"name": "vbkb", "url": "https://127.0.0.1:18443",
                              "fingerprint": "sha256:" + "0" * 64}],
            "broker_policy": {"lending": {"fraction_idle": 0.5}},
        }],
    }]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(play))
    return path


def _run(play: Path) -> dict:
    bindir = str(Path(sys.executable).parent)
    (play.parent / "runner").mkdir(exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(play.parent / "runner"), playbook=str(play), inventory="localhost",
        envvars={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
                 "PATH": f"{bindir}:/usr/bin:/bin"},
        quiet=True, timeout=300,
    )
    assert runner.rc == 0, runner.stdout.read()[-4000:]
    return {k: v.get("localhost", 0) for k, v in runner.stats.items() if isinstance(v, dict)}


def test_role_writes_a_valid_config_with_pinned_peers_and_is_idempotent(tmp_path):
    play = _play(tmp_path)
    first = _run(play)
    assert first["changed"] > 0
    config = load_config(tmp_path / "etc" / "broker.yml")
    assert config.domain == "vbka" and config.peers["vbkb"].fingerprint == "sha256:" + "0" * 64
    assert (tmp_path / "etc" / "vbka.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "pki" / "ca.key").exists()
    config.tls.check("test")
    second = _run(play)
    assert second["changed"] == 0 and second["failures"] == 0
