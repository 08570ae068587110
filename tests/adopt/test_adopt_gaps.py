"""The adopt check's gap logic (module_utils/viocluster_adopt.py), fed what a real slurmctld
22.05 said (tests/adopt/data, made by record_slurm.py): a cluster set up by hand, and the same
after VioCluster's include file and a restart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(REPO / "module_utils"))

import viocluster_adopt as va  # noqa: E402


def load(tag: str):
    config = va.parse_show_config((DATA / f"{tag}.config").read_text())
    partitions = va.parse_records((DATA / f"{tag}.partitions").read_text())
    nodes = va.parse_records((DATA / f"{tag}.nodes").read_text())
    site = va.parse_slurm_conf((DATA / f"{tag}.conf").read_text(), "/etc/slurm/slurm.conf")
    return config, partitions, nodes, site


WANT = va.Want(controller_name="vm", virtual_subnet="10.210.5.0/24")


def by_what(gaps):
    return {g.what: g for g in gaps}


def test_a_hand_made_cluster_lacks_what_borrowing_needs():
    gaps = by_what(va.slurm_gaps(*load("site"), WANT))
    assert set(gaps) == {"SlurmctldParameters", "MaxNodeCount", "AuthInfo", "partition borrowed"}
    assert gaps["SlurmctldParameters"].how == "restart"
    assert gaps["SlurmctldParameters"].line == "SlurmctldParameters=enable_configless"
    # two nodes, room for 16 borrowed ones
    assert gaps["MaxNodeCount"].how == "restart" and gaps["MaxNodeCount"].line == "MaxNodeCount=18"
    # the site sets AuthInfo (its munge socket) itself: its line is the site's to change
    assert gaps["AuthInfo"].how == "site" and not gaps["AuthInfo"].blocking
    assert "line 7" in gaps["AuthInfo"].fix and "cred_expire=10" in gaps["AuthInfo"].fix
    part = gaps["partition borrowed"]
    assert part.how == "reconfigure"
    # no longer than the site's default partition allows: a job requeued off a VM must fit there
    assert part.line.splitlines() == [
        "NodeSet=viocluster_borrowed Feature=borrowed",
        "PartitionName=borrowed Nodes=viocluster_borrowed PriorityTier=1 MaxTime=2-00:00:00 State=UP"]


def test_after_the_include_file_and_a_restart_nothing_is_missing():
    gaps = va.slurm_gaps(*load("adopted"), WANT)
    assert gaps == []


def test_each_gap_is_one_line_with_its_fix_and_what_site_yml_does():
    gaps = va.slurm_gaps(*load("site"), WANT)
    for gap in gaps:
        for allowed in (False, True):
            text = gap.text(allowed)
            assert "\n" not in text and "fix: " in text, text
    restart = by_what(gaps)["MaxNodeCount"]
    assert "set viocluster_adopt_restart: true" in restart.text(False)
    assert "restarts slurmctld" in restart.text(True)
    assert "scontrol reconfigure" in by_what(gaps)["partition borrowed"].text(False)


def test_the_include_file_holds_restart_lines_only_when_a_restart_is_allowed():
    gaps = va.slurm_gaps(*load("site"), WANT)
    without = va.include_lines(va.include_text(gaps, restart_allowed=False))
    assert without == ["NodeSet=viocluster_borrowed Feature=borrowed",
                       "PartitionName=borrowed Nodes=viocluster_borrowed PriorityTier=1 MaxTime=2-00:00:00 State=UP"]
    assert not va.needs_restart(without)
    with_restart = va.include_lines(va.include_text(gaps, restart_allowed=True))
    assert "MaxNodeCount=18" in with_restart and "SlurmctldParameters=enable_configless" in with_restart
    assert va.needs_restart(with_restart)
    # lines the file holds already stay, once each
    again = va.include_lines(va.include_text(gaps, restart_allowed=True, keep=with_restart))
    assert again == with_restart


def test_settings_the_site_set_itself_are_the_sites_to_change():
    config, partitions, nodes, _ = load("site")
    site = va.parse_slurm_conf("SlurmctldParameters=idle_on_node_suspend\nMaxNodeCount=4\n"
                               "JobRequeue=0\nReturnToService=2\nTreeWidth=3\n", "/etc/slurm/site.conf")
    config = dict(config, SlurmctldParameters="idle_on_node_suspend", MaxNodeCount="4",
                  JobRequeue="0", ReturnToService="2", TreeWidth="3")
    gaps = by_what(va.slurm_gaps(config, partitions, nodes, site, WANT))
    for what in ("SlurmctldParameters", "MaxNodeCount", "JobRequeue", "ReturnToService", "TreeWidth"):
        assert gaps[what].how == "site", what
        assert "/etc/slurm/site.conf line" in gaps[what].fix, gaps[what].fix
    assert "add enable_configless" in gaps["SlurmctldParameters"].fix
    assert "MaxNodeCount=18" in gaps["MaxNodeCount"].fix and "restart" in gaps["MaxNodeCount"].fix
    assert gaps["JobRequeue"].blocking and not gaps["ReturnToService"].blocking


def test_unset_auth_info_gets_a_short_cred_expire_by_reconfigure():
    config, partitions, nodes, _ = load("site")
    config = dict(config, AuthInfo="(null)")
    site = va.parse_slurm_conf((DATA / "site.conf").read_text().replace("AuthInfo=", "#AuthInfo="), "x")
    gap = by_what(va.slurm_gaps(config, partitions, nodes, site, WANT))["AuthInfo"]
    assert gap.how == "reconfigure" and gap.line == "AuthInfo=cred_expire=10" and "120 s" in gap.have


def test_controller_named_otherwise_or_at_an_address_the_vms_cannot_reach():
    config, partitions, nodes, site = load("site")
    gaps = va.slurm_gaps(dict(config, **{"SlurmctldHost[0]": "ctl01(10.203.5.10)"}), partitions, nodes,
                         site, WANT)
    texts = [g.text() for g in gaps if g.what == "SlurmctldHost"]
    assert len(texts) == 2
    assert "name the head node ctl01 in the inventory" in texts[0]
    assert "10.203.5.10" in texts[1] and "SlurmctldHost=ctl01" in texts[1]
    # an address in the virtual subnet is fine
    gaps = va.slurm_gaps(dict(config, **{"SlurmctldHost[0]": "vm(10.210.5.1)"}), partitions, nodes, site, WANT)
    assert not [g for g in gaps if g.what == "SlurmctldHost"]


def test_a_site_partition_of_that_name_or_with_every_node():
    config, partitions, nodes, site = load("site")
    parts = partitions + [{"PartitionName": "borrowed", "Nodes": "n1"},
                          {"PartitionName": "all", "Nodes": "ALL"}]
    gaps = by_what(va.slurm_gaps(config, parts, nodes, site, WANT))
    assert gaps["partition borrowed"].how == "site" and "viocluster_adopt_partition" in gaps["partition borrowed"].fix
    assert not gaps["partition all"].blocking and "Nodes=ALL" in gaps["partition all"].have
    # the site's own NodeSet of the feature is as good as VioCluster's
    site2 = va.parse_slurm_conf("NodeSet=vms Feature=borrowed\n", "x")
    parts = partitions + [{"PartitionName": "borrowed", "NodeSets": "vms", "Nodes": "(null)"}]
    assert "partition borrowed" not in by_what(va.slurm_gaps(config, parts, nodes, site2, WANT))


def test_other_auth_or_select_plugins_and_task_cgroup():
    config, partitions, nodes, site = load("site")
    config = dict(config, AuthType="auth/jwt", SelectType="select/linear", TaskPlugin="task/affinity,task/cgroup")
    gaps = by_what(va.slurm_gaps(config, partitions, nodes, site, WANT))
    assert gaps["AuthType"].blocking and "auth/munge" in gaps["AuthType"].fix
    assert gaps["SelectType"].blocking and "select/cons_tres" in gaps["SelectType"].fix
    assert gaps["TaskPlugin"].how == "info" and not gaps["TaskPlugin"].blocking


@pytest.mark.parametrize("site, image, kind", [
    ("22.05.8", "22.05.8", None),
    ("22.05.11", "22.05.8", "info"),
    ("23.11.4", "22.05.8", "info"),       # two releases older: supported
    ("24.05.1", "22.05.8", "site"),       # three
    ("21.08.8", "22.05.8", "site"),       # slurmd newer than slurmctld
    ("22.05.8", "", "info"),              # no image built yet
])
def test_version_of_the_node_image_against_the_sites(site, image, kind):
    gap = va.version_gap(site, image, "node image")
    if kind is None:
        assert gap is None
    else:
        assert gap.how == kind, gap
        assert gap.blocking == (kind == "site")
        if image and kind == "site":
            assert "build the node image with slurmd of release " + va.release(site) in gap.text()


def test_versions_from_the_tools_and_from_dpkg():
    assert va.parse_version("slurm-wlm 22.05.8\n") == "22.05.8"
    assert va.parse_version("slurm 23.11.4") == "23.11.4"
    assert va.parse_version("22.05.8-4+deb12u3") == "22.05.8"
    status = ("Package: slurm-client\nStatus: install ok installed\nVersion: 1\n\n"
              "Package: slurmd\nStatus: install ok installed\nPriority: optional\nVersion: 22.05.8-4+deb12u3\n")
    assert va.dpkg_status_version(status) == "22.05.8-4+deb12u3"
    with pytest.raises(va.AdoptError):
        va.parse_version("no version here")


def test_not_scontrol_output_is_refused_in_one_line():
    with pytest.raises(va.AdoptError, match="not the output of `scontrol show config`"):
        va.parse_show_config("slurm_load_ctl_conf error: Unable to contact slurm controller\n")


@pytest.mark.parametrize("exports, blocking", [
    ("/home 10.210.5.0/24,10.203.5.0/24\n", None),
    ("/home *\n", None),
    ("/home 10.0.0.0/8\n", None),
    ("/home 10.203.5.0/24\n", "not to the virtual subnet"),
    ("/srv 10.210.5.0/24\n", "does not export /home"),
])
def test_the_shared_export_must_let_the_virtual_subnet_mount(exports, blocking):
    gap = va.export_gap("north-ctl", "/home", exports, "10.210.5.0/24")
    if blocking is None:
        assert gap is None
    else:
        assert gap.blocking and blocking in gap.have
        assert "\n" not in gap.text()


def test_an_unreachable_server_is_a_gap_that_says_so():
    gap = va.export_gap("north-ctl", "/home", "", "10.210.5.0/24", "clnt_create: RPC: Unable to receive")
    assert gap.blocking and "cannot ask north-ctl" in gap.have


def test_the_site_keys_skip_viocluster_s_own_include_line():
    text = (DATA / "adopted.conf").read_text()
    site = va.parse_slurm_conf(text, "/etc/slurm/slurm.conf")
    assert site.has_mark and site.includes == []
    assert site.get("partitionname").value.startswith("batch")


def test_slurmd_timeout_must_outlast_the_borrowed_vms_fence_window():
    config, partitions, nodes, site = load("site")
    assert "SlurmdTimeout" not in by_what(va.slurm_gaps(config, partitions, nodes, site, WANT))
    short = dict(config, SlurmdTimeout="20 sec", MessageTimeout="10 sec")
    gap = by_what(va.slurm_gaps(short, partitions, nodes, site, WANT))["SlurmdTimeout"]
    assert gap.how == "reconfigure" and gap.line == "SlurmdTimeout=25" and gap.blocking
    site2 = va.parse_slurm_conf("SlurmdTimeout=20\n", "/etc/slurm/slurm.conf")
    gap = by_what(va.slurm_gaps(short, partitions, nodes, site2, WANT))["SlurmdTimeout"]
    assert gap.how == "site" and "SlurmdTimeout=25" in gap.fix


def test_the_controller_name_must_be_the_inventory_name_exactly():
    config, partitions, nodes, site = load("site")
    want = va.Want(controller_name="vm.example.net", virtual_subnet="10.210.5.0/24")
    gap = by_what(va.slurm_gaps(config, partitions, nodes, site, want))["SlurmctldHost"]
    assert gap.blocking and "name the head node vm in the inventory, exactly" in gap.fix


def test_a_restart_only_line_never_waits_in_the_include_file_for_a_reconfigure():
    # slurm.conf lost its Include line (the site regenerated it): the running slurmctld has no
    # room for dynamic nodes again. Without a restart allowed, MaxNodeCount must not come back
    # through a reconfigure (slurmctld 22.05 exits on it); the partition may.
    config, partitions, nodes, site = load("site")
    gaps = va.slurm_gaps(config, partitions, nodes, site, WANT)
    current = va.include_lines(va.include_text(gaps, restart_allowed=True))
    kept = va.keep_lines(current, site, gaps, restart_allowed=False)
    assert not va.needs_restart(kept) and any(line.startswith("PartitionName=borrowed") for line in kept)
    assert va.keep_lines(current, site, gaps, restart_allowed=True) == current
    # a key the site now sets itself leaves the include file
    site2 = va.parse_slurm_conf("TreeWidth=100\n", "x")
    assert va.keep_lines(["TreeWidth=65533", "NodeSet=x Feature=borrowed"], site2, [], False) == \
        ["NodeSet=x Feature=borrowed"]
