"""The broker config loader: every mistake gets one clear line naming the key."""

from __future__ import annotations

import pytest
import yaml

from broker.cli import main
from broker.errors import ConfigError
from broker.service.config import load_config
from broker.service.ratelimit import RateLimit
from broker_harness import make_pki


@pytest.fixture
def base(tmp_path):
    pki = make_pki(tmp_path / "pki")
    return {
        "domain": "a",
        "state_dir": str(tmp_path / "state"),
        "listen": {"host": "127.0.0.1", "port": 8443},
        "tls": pki.files("a"),
        "peers": {"b": {"url": "https://127.0.0.1:8444", "fingerprint": pki.fingerprints["b"]}},
    }


def _write(tmp_path, data) -> str:
    path = tmp_path / "broker.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_a_minimal_config_loads_with_defaults(tmp_path, base):
    config = load_config(_write(tmp_path, base))
    assert config.domain == "a" and config.site == "a" and config.interval_s == 10
    assert config.db_path == tmp_path / "state" / "contracts.db"
    assert not config.vm_probe.enabled
    assert (config.node_down_grace_s, config.peer_lost_timeout_s, config.contract_retention_days) == (
        20.0, 120.0, 30.0)


def test_the_reconciliation_settings_are_read(tmp_path, base):
    base.update(node_down_grace_s=5, peer_lost_timeout_s=40, contract_retention_days=0.5)
    config = load_config(_write(tmp_path, base))
    assert (config.node_down_grace_s, config.peer_lost_timeout_s, config.contract_retention_days) == (
        5.0, 40.0, 0.5)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: c.update(colour="red"), "broker.yml: unknown key 'colour'; allowed: contract_retention_days"),
        (lambda c: c.pop("tls"), "broker.yml: (top level): missing key(s) tls"),
        (lambda c: c.update(domain="a b"), "domain: got 'a b'"),
        (lambda c: c["peers"]["b"].update(fingerprint="abc"), "peers.b.fingerprint: got 'abc'"),
        (lambda c: c["peers"]["b"].update(url="http://x"), "peers.b.url: got 'http://x'; peers are reached over https://"),
        (lambda c: c["peers"].update(a=c["peers"]["b"]), "peers.a: a broker cannot be its own peer"),
        (lambda c: c["listen"].update(port=70000), "listen.port: got 70000"),
        (lambda c: c.update(interval_s=0), "interval_s: got 0"),
        (lambda c: c.update(needs={"cpus": -1}), "needs.cpus: got -1"),
        (lambda c: c.update(policy={"lending": {"fraction_idle": 3}}), "lending.fraction_idle"),
        (lambda c: c.update(probes={"vms": {"list": ["true"]}}), "probes.vms: a probe that lists must also say how to remove"),
        (lambda c: c.update(lending={"hosts": [{"node": "n1"}]}), "lending.hosts[0]: missing key(s) account, address"),
        (lambda c: c.update(vm_addresses="10.207.1.0/24"), "vm_addresses: got '10.207.1.0/24'; expected a mapping with keys pool, prefixlen"),
        (lambda c: c.update(vm_addresses={"prefixlen": 24}), "vm_addresses: missing key(s) pool"),
        (lambda c: c.update(vm_addresses={"pool": "10.207.1.0/24", "size": 3}),
         "unknown key 'vm_addresses.size'; allowed under vm_addresses: pool, prefixlen"),
        (lambda c: c.update(vm_addresses={"pool": "10.207.1.70/26"}),
         "vm_addresses.pool: got '10.207.1.70/26': host bits are set; did you mean 10.207.1.64/26?"),
        (lambda c: c.update(vm_addresses={"pool": "10.207.0.0/16", "prefixlen": 24}),
         "vm_addresses.pool: 10.207.0.0/16 does not fit in one /24 network"),
        (lambda c: c.update(vm_addresses={"pool": ["10.207.1.0/28", "10.207.1.10"]}),
         "vm_addresses.pool[1]: 10.207.1.10 overlaps pool[0] (10.207.1.0/28)"),
        (lambda c: c.update(vm_addresses={"pool": ["10.207.1.0/28", "10.207.2.0/28"]}),
         "vm_addresses.pool[1]: 10.207.2.0/28 is outside 10.207.1.0/24"),
        (lambda c: c.update(vm_addresses={"pool": "10.207.1.0/28", "prefixlen": 32}),
         "vm_addresses.prefixlen: got 32; expected an integer from 1 to 30"),
        (lambda c: c.update(node_down_grace_s=0), "node_down_grace_s: got 0; expected a number > 0"),
        (lambda c: c.update(contract_retention_days="forever"), "contract_retention_days: got 'forever'"),
        (lambda c: c.update(peer_lost_timeout_s=20),
         "peer_lost_timeout_s: got 20; expected at least 3 x interval_s (30)"),
        (lambda c: c.update(vm_addresses={"pool": "ten"}),
         "vm_addresses.pool: got 'ten'; expected an IPv4 network"),
        (lambda c: c.update(rate_limit={"per_s": 0}), "rate_limit.per_s: got 0; expected a number > 0"),
        (lambda c: c.update(rate_limit={"per_s": float("nan")}), "rate_limit.per_s: got NaN"),
        (lambda c: c.update(rate_limit={"per_s": 10**400}), "rate_limit.per_s: got an integer of 401 digits"),
        (lambda c: c.update(rate_limit={"burst": 0}),
         "rate_limit.burst: got 0; expected an integer from 1 to 1000000"),
        (lambda c: c.update(rate_limit={"burst": 2.5}), "rate_limit.burst: got 2.5"),
        (lambda c: c.update(rate_limit={"per_second": 5}), "unknown key 'rate_limit.per_second'; allowed under rate_limit: burst, per_s"),
        (lambda c: c.update(rate_limit=10), "rate_limit: got 10; expected a mapping with keys burst, per_s"),
        (lambda c: c.update(interval_s=float("inf")),
         "interval_s: got Infinity; expected a number > 0 and at most 1000000000"),
        (lambda c: c.update(interval_s=float("nan")), "interval_s: got NaN"),
        (lambda c: c.update(offer_ttl_s=10**400), "offer_ttl_s: got an integer of 401 digits"),
    ],
)
def test_mistakes_are_named(tmp_path, base, change, words):
    change(base)
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, base))
    assert words in str(err.value)


def test_the_rate_limit_is_read_with_defaults(tmp_path, base):
    assert load_config(_write(tmp_path, base)).rate_limit == RateLimit(per_s=20.0, burst=100)
    base["rate_limit"] = {"per_s": 0.5}
    assert load_config(_write(tmp_path, base)).rate_limit == RateLimit(per_s=0.5, burst=100)
    base["rate_limit"] = {"per_s": 5, "burst": 20}
    assert load_config(_write(tmp_path, base)).rate_limit == RateLimit(per_s=5.0, burst=20)


def test_a_number_of_thousands_of_digits_is_named(tmp_path, base):
    text = yaml.safe_dump(base) + "interval_s: " + "9" * 5000 + "\n"
    with pytest.raises(ConfigError, match="a number in it has thousands of digits"):
        load_config(_write(tmp_path, text))


def test_a_vm_address_pool_is_read(tmp_path, base):
    assert load_config(_write(tmp_path, base)).vm_pool is None
    base["vm_addresses"] = {"pool": ["10.207.1.64/26", "10.207.1.200-10.207.1.209"], "prefixlen": 24}
    pool = load_config(_write(tmp_path, base)).vm_pool
    assert pool.size == 74 and str(pool.network) == "10.207.1.0/24"
    base["vm_addresses"] = {"pool": "10.207.0.0/22", "prefixlen": 16}  # prefixlen: the VMs' subnet
    # never the network address
    assert load_config(_write(tmp_path, base)).vm_pool.allocate(1, []) == ("10.207.0.1/16",)


def test_yaml_errors_give_the_line(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line [23]"):
        load_config(_write(tmp_path, "domain: a\nlisten: {host: x\n  port: [1\n"))


def test_a_missing_file_says_to_pass_one(tmp_path):
    with pytest.raises(ConfigError, match=r"not found \(no such file\)"):
        load_config(tmp_path / "nope.yml")


def test_the_cli_prints_one_line_and_exits_2(tmp_path, base, capsys):
    base["peers"]["b"]["fingerprint"] = "nope"
    assert main(["broker", "check", "--config", _write(tmp_path, base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "peers.b.fingerprint" in err and "Traceback" not in err


def test_missing_certificates_are_reported_before_starting(tmp_path, base, capsys):
    base["tls"]["cert"] = str(tmp_path / "absent.crt")
    assert main(["broker", "run", "--config", _write(tmp_path, base)]) == 2
    assert "tls.cert" in capsys.readouterr().err
