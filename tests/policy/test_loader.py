import pytest

from broker.errors import ConfigError
from broker.policy import Mode, load_policy, parse_policy


def test_example_policy_loads(repo):
    policy = load_policy(repo / "docs" / "examples" / "policy.yml")
    assert policy.lending.fraction_idle == 0.5
    assert policy.lending.min_reserve == 2
    assert policy.borrowing.max_borrowed == 64
    assert policy.borrowing.require.memory_mb == 512
    assert policy.reclamation.mode is Mode.IMMEDIATE
    assert len(policy.lending.windows) == 2


def test_empty_file_gives_paper_defaults(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("")
    policy = load_policy(path)
    assert policy.lending.fraction_idle == 0.5
    assert policy.reclamation.mode is Mode.IMMEDIATE


def test_full_policy_values():
    policy = parse_policy({
        "timezone": "Europe/Paris",
        "lending": {"peers": ["ctc"], "max_lent": 8},
        "borrowing": {"accept_reclamation": ["lease"], "min_lease_s": 600},
        "reclamation": {"mode": "gradual", "per_interval": 3},
    })
    assert policy.lending.peers == frozenset({"ctc"})
    assert policy.borrowing.accept_reclamation == frozenset({Mode.LEASE})
    assert policy.reclamation.terms.per_interval == 3
    assert str(policy.tz) == "Europe/Paris"


@pytest.mark.parametrize(
    "data, words",
    [
        ({"lending": {"fraction_idl": 0.5}}, ["lending.fraction_idl", "fraction_idle"]),
        ({"lendin": {}}, ["'lendin'", "lending, borrowing, reclamation"]),
        ({"lending": {"fraction_idle": 1.5}}, ["lending.fraction_idle", "1.5", "0 to 1"]),
        ({"lending": {"fraction_idle": "half"}}, ["lending.fraction_idle", "'half'"]),
        ({"lending": {"min_reserve": -1}}, ["lending.min_reserve", "-1", ">= 0"]),
        ({"lending": {"enabled": "yes"}}, ["lending.enabled", "true or false"]),
        ({"lending": {"windows": ["8-18"]}}, ["lending.windows[0]", "HH:MM-HH:MM"]),
        ({"lending": "all"}, ["lending", "mapping"]),
        ({"borrowing": {"require": {"gpus": 1}}}, ["borrowing.require.gpus", "cpus"]),
        ({"borrowing": {"require": {"cpus": 0}}}, ["borrowing.require.cpus", ">= 1"]),
        ({"borrowing": {"accept_reclamation": ["never"]}},
         ["borrowing.accept_reclamation[0]", "immediate, lease, drain, gradual"]),
        ({"reclamation": {"mode": "polite"}}, ["reclamation.mode", "'polite'", "immediate"]),
        ({"reclamation": {"per_interval": 0}}, ["reclamation.per_interval"]),
        # a lease must fit in a message's terms.lease_s, or peers refuse every offer
        ({"reclamation": {"lease_s": float("nan")}}, ["reclamation.lease_s", "NaN", "0 to 10000000000"]),
        ({"reclamation": {"lease_s": float("inf")}}, ["reclamation.lease_s", "Infinity"]),
        ({"reclamation": {"lease_s": 10**11}}, ["reclamation.lease_s", "0 to 10000000000"]),
        ({"borrowing": {"min_lease_s": -1}}, ["borrowing.min_lease_s", "-1"]),
        ({"timezone": "Mars/Olympus"}, ["timezone", "Mars/Olympus"]),
        ([1, 2], ["(top level)", "mapping"]),
    ],
)
def test_wrong_key_type_or_value_names_the_key(data, words):
    with pytest.raises(ConfigError) as info:
        parse_policy(data, "site.yml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("site.yml")
    for word in words:
        assert word in message


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "absent.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("lending:\n  fraction_idle: [0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yml is not valid YAML at line \d+"):
        load_policy(bad)
    # Python reads no integer of more than 4300 digits: one line, not a traceback
    huge = tmp_path / "huge.yml"
    huge.write_text("lending:\n  min_reserve: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="huge.yml: a number in it has thousands of digits"):
        load_policy(huge)


def test_drain_deadline():
    policy = parse_policy({"reclamation": {"mode": "drain", "drain_deadline_s": 900}})
    assert policy.reclamation.terms.drain_deadline_s == 900
    assert parse_policy({}).reclamation.terms.drain_deadline_s is None
    with pytest.raises(ConfigError, match=r"reclamation.drain_deadline_s: got -1; expected a "
                                          r"number of seconds from 0 to .*or null"):
        parse_policy({"reclamation": {"drain_deadline_s": -1}})


def test_location_and_disk_watch():
    policy = parse_policy({
        "lending": {"min_free_disk_gb": 3},
        "borrowing": {"location": {"max_rtt_ms": 5, "sites": ["rack1"], "co_located": True,
                                   "lenders": {"b": {"max_rtt_ms": 50, "sites": "all"}}}},
    })
    loc = policy.borrowing.location
    assert (loc.max_rtt_ms, loc.sites, loc.co_located) == (5, frozenset({"rack1"}), True)
    assert loc.of("b").max_rtt_ms == 50 and loc.of("b").sites is None
    assert loc.of("c") is loc
    assert policy.lending.min_free_disk_gb == 3


@pytest.mark.parametrize("data, words", [
    ({"borrowing": {"location": {"max_rtt_ms": -1}}},
     "borrowing.location.max_rtt_ms: got -1; expected a number of milliseconds"),
    ({"borrowing": {"location": {"sites": "rack1"}}},
     "borrowing.location.sites: got 'rack1'; expected 'all' or a list of site names"),
    ({"borrowing": {"location": {"lenders": ["b"]}}},
     "borrowing.location.lenders: got a list; expected a mapping of lender domain names"),
    ({"borrowing": {"location": {"lenders": {"b": {"co_located": True}}}}},
     "unknown key 'borrowing.location.lenders.b.co_located'; allowed under "
     "borrowing.location.lenders.b: max_rtt_ms, sites"),
    ({"lending": {"min_free_disk_gb": -2}}, "lending.min_free_disk_gb: got -2"),
])
def test_location_and_disk_errors_name_the_key(data, words):
    with pytest.raises(ConfigError) as err:
        parse_policy(data)
    assert words in str(err.value)
