# -*- coding: utf-8 -*-
# Apache-2.0
"""What an existing Slurm cluster lacks for borrowing.

Imported as ansible.module_utils.viocluster_adopt.

Plain functions, no I/O: the slurm_adopt_check module feeds them what ``scontrol show config``,
``scontrol show partition -o``, ``scontrol show node -o``, the site's slurm.conf (and the files
it includes) and the versions say, and they return the gaps, each with its fix in one line, and
the lines VioCluster's own include file (``Include viocluster.conf``, one marked line at the end
of the site's slurm.conf) must hold.

Each gap says how it is closed:

- ``reconfigure``: the role adds the line to the include file; ``scontrol reconfigure`` applies
  it (a partition of borrowed nodes, TreeWidth, AuthInfo cred_expire, ...).
- ``restart``: the line takes effect only when slurmctld restarts (MaxNodeCount,
  enable_configless). slurmctld 22.05 even exits when ``scontrol reconfigure`` meets a changed
  MaxNodeCount, so the role writes such a line only when it may restart slurmctld at once.
- ``site``: the site sets the key itself; its administrator changes the site's line (the role
  never edits a site's line).
- ``info``: works, but worth knowing (not blocking).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field

#: The include file's name. Configless nodes (borrowed VMs) receive an included file only when
#: it sits beside slurm.conf and is named relative to it, so the line is relative.
INCLUDE_NAME = "viocluster.conf"
MARK = "# VioCluster (adopt): remove this line and viocluster.conf beside it to undo"
#: Slurm releases in order: a slurmd may be up to two releases older than slurmctld, never newer.
RELEASES = ["17.11", "18.08", "19.05", "20.02", "20.11", "21.08", "22.05", "23.02", "23.11",
            "24.05", "24.11", "25.05", "25.11", "26.05"]
#: Slurm's defaults for keys a site may leave out (slurm.conf(5), 22.05).
DEFAULT_CRED_EXPIRE = 120


class AdoptError(Exception):
    """Input that cannot be read (not Slurm's output, a bad setting); the message says why."""


@dataclass(frozen=True)
class Gap:
    what: str  # the setting or part: "MaxNodeCount", "partition borrowed", "slurm version", ...
    have: str  # what is there now
    fix: str  # what closes the gap, one line
    how: str  # reconfigure | restart | site | info
    line: str = ""  # the include file's line(s) for reconfigure and restart gaps
    blocking: bool = True

    def text(self, restart_allowed: bool = False) -> str:
        """The gap in one line, with what site.yml does about it."""
        lines = " / ".join(self.line.splitlines())
        if self.how == "reconfigure":
            act = f"site.yml adds `{lines}` to {INCLUDE_NAME} and runs scontrol reconfigure"
        elif self.how == "restart" and restart_allowed:
            act = (f"site.yml adds `{lines}` to {INCLUDE_NAME} and restarts slurmctld "
                   "(viocluster_adopt_restart is true)")
        elif self.how == "restart":
            act = (f"needs a restart of slurmctld: set viocluster_adopt_restart: true to let "
                   f"site.yml add `{lines}` and restart it, or add it and restart slurmctld "
                   "yourself")
        else:
            act = self.fix
        kind = "gap" if self.blocking else "note"
        return f"{kind}: {self.what}: {self.have}; fix: {act}"

    def as_dict(self, restart_allowed: bool = False) -> dict:
        return {**asdict(self), "text": self.text(restart_allowed)}


@dataclass
class Want:
    """What borrowing needs, from the role's variables."""

    controller_name: str  # the head node's inventory name: the VMs know the controller by it
    virtual_subnet: str  # where borrowed VMs are (10.210.1.0/24)
    partition: str = "borrowed"
    feature: str = "borrowed"
    nodeset: str = "viocluster_borrowed"
    partition_tier: int = 1
    max_borrowed: int = 16  # room for this many dynamic nodes
    cred_expire: int = 10  # at most: a requeued job waits this long
    fence_s: int = 10  # a borrowed VM cut off from slurmctld this long fences itself (borrow.yml)


@dataclass
class SiteLine:
    key: str
    value: str
    file: str
    lineno: int

    @property
    def where(self) -> str:
        return f"{self.file} line {self.lineno}"


@dataclass
class SiteConf:
    """Keys the site's own files set (VioCluster's include file left out)."""

    lines: list[SiteLine] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)  # what Include lines name
    has_mark: bool = False  # the site's slurm.conf holds VioCluster's Include line

    def get(self, key: str) -> SiteLine | None:
        for line in self.lines:
            if line.key.lower() == key.lower():
                return line
        return None

    def all(self, key: str) -> list[SiteLine]:
        return [line for line in self.lines if line.key.lower() == key.lower()]


# ------------------------------------------------------------------------------------ parsing
def parse_show_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Key = value`` lines (plugin sections kept flat)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        m = re.match(r"^(\S+)\s+=\s?(.*)$", raw)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    if "ClusterName" not in out or "SlurmctldPort" not in out:
        raise AdoptError("this is not the output of `scontrol show config` (no ClusterName, no "
                         "SlurmctldPort): is slurmctld running and scontrol the site's?")
    return out


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol show partition -o`` / ``show node -o``: one record a line, ``Key=value`` pairs."""
    records = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("No "):
            continue
        rec: dict[str, str] = {}
        # values hold no spaces in -o output, except a few free-text fields that come last
        for m in re.finditer(r"(\w+)=(\S*)", raw):
            rec.setdefault(m.group(1), m.group(2))
        if rec:
            records.append(rec)
    return records


def parse_slurm_conf(text: str, file: str, conf: SiteConf | None = None) -> SiteConf:
    """Keys one site file sets, in order; Include lines are recorded (the caller reads them)."""
    conf = conf or SiteConf()
    for lineno, raw in enumerate(text.splitlines(), 1):
        if MARK in raw:
            conf.has_mark = True
            continue
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^include\s+(\S+)", line, re.IGNORECASE)
        if m:
            conf.includes.append(m.group(1))
            continue
        # NodeName=x CPUs=.. lines: the first pair names the record; keep it as the key
        m = re.match(r"^([A-Za-z]\w*)\s*=\s*(.*)$", line)
        if m:
            conf.lines.append(SiteLine(m.group(1), m.group(2).strip(), file, lineno))
    return conf


def parse_version(text: str) -> str:
    """``slurm 22.05.8``, ``slurm-wlm 22.05.8`` or ``22.05.8-4+deb12u3`` -> 22.05.8."""
    m = re.search(r"(\d{2})\.(\d{2})(?:\.(\d+))?", text or "")
    if not m:
        raise AdoptError(f"no Slurm version in {text.strip()[:80]!r}")
    return ".".join(g for g in m.groups() if g is not None)


def release(version: str) -> str:
    return ".".join(version.split(".")[:2])


def dpkg_status_version(status: str, package: str = "slurmd") -> str:
    """The installed version of ``package`` from a dpkg status file (read from an image)."""
    for stanza in re.split(r"\n\s*\n", status):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.MULTILINE):
            m = re.search(r"^Version: (\S+)$", stanza, re.MULTILINE)
            if m and "install ok installed" in stanza:
                return m.group(1)
    return ""


# -------------------------------------------------------------------------------------- checks
def _site_fix(line: SiteLine | None, key: str, value: str, restart: bool) -> str:
    then = ", then restart slurmctld" if restart else ", then run scontrol reconfigure"
    if line is None:
        return f"set {key}={value} in slurm.conf{then}"
    return f"change {line.key}={line.value} ({line.where}) to {key}={value}{then}"


def _num(value: str, default: int = 0) -> int:
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else default


def slurm_gaps(config: dict[str, str], partitions: list[dict[str, str]],
               nodes: list[dict[str, str]], site: SiteConf, want: Want) -> list[Gap]:
    """Every gap of the running configuration for borrowing, in slurm.conf's order of concerns."""
    gaps: list[Gap] = []
    try:
        subnet = ipaddress.ip_network(want.virtual_subnet, strict=False)
    except ValueError as exc:
        raise AdoptError(f"virtual subnet {want.virtual_subnet!r}: {exc}") from None

    auth = config.get("AuthType", "")
    if auth != "auth/munge":
        fix = _site_fix(site.get("AuthType"), "AuthType", "auth/munge", True)
        gaps.append(Gap("AuthType", f"{auth or 'unset'}",
                        fix + " (borrowed VMs authenticate with the domain's munge key)", "site"))
    select = config.get("SelectType", "")
    if select != "select/cons_tres":
        gaps.append(Gap("SelectType",
                        f"{select or 'unset'} (dynamic nodes need select/cons_tres in 22.05)",
                        _site_fix(site.get("SelectType"), "SelectType", "select/cons_tres", True),
                        "site"))

    # The controller: borrowed VMs find it by the name site.yml gives them (the head node's
    # inventory name), at its address on the virtual network.
    ctl = config.get("SlurmctldHost[0]", "")
    m = re.match(r"^([^(\s]+)(?:\(([^)]*)\))?", ctl)
    ctl_name, ctl_addr = (m.group(1), m.group(2) or "") if m else ("", "")
    if ctl_name and ctl_name != want.controller_name:
        gaps.append(Gap("SlurmctldHost", f"{ctl_name}, but the inventory names the head node "
                        f"{want.controller_name}",
                        f"name the head node {ctl_name} in the inventory, exactly (borrowed VMs "
                        "know the controller only by the inventory name)", "site"))
    if ctl_addr:
        try:
            outside = ipaddress.ip_address(ctl_addr) not in subnet
        except ValueError:
            outside = False  # a name: each host resolves it (the VMs from their /etc/hosts)
        if outside:
            gaps.append(Gap("SlurmctldHost",
                            f"{ctl} gives the address {ctl_addr}, which borrowed VMs "
                            f"(on {subnet}) cannot reach",
                            _site_fix(site.get("SlurmctldHost"), "SlurmctldHost", ctl_name, True)
                            + " (each host then resolves the name: the site's nodes as now, "
                            "the VMs to the virtual address)", "site"))

    params = [p.strip() for p in config.get("SlurmctldParameters", "").split(",")
              if p.strip() and p.strip() != "(null)"]
    if "enable_configless" not in params:
        site_line = site.get("SlurmctldParameters")
        if site_line is None:
            gaps.append(Gap("SlurmctldParameters", "no enable_configless (borrowed VMs fetch "
                            "slurm.conf from slurmctld)", "", "restart",
                            "SlurmctldParameters=enable_configless"))
        else:
            gaps.append(Gap("SlurmctldParameters", f"{site_line.value} has no enable_configless "
                            "(borrowed VMs fetch slurm.conf from slurmctld)",
                            f"add enable_configless to SlurmctldParameters ({site_line.where}), "
                            "then restart slurmctld", "site"))

    static = [n for n in nodes if n.get("NodeName") and "DYNAMIC" not in n.get("State", "")]
    count = len(static)
    max_nodes = _num(config.get("MaxNodeCount", ""), count)
    wanted = count + want.max_borrowed
    if max_nodes < wanted:
        have = (f"{max_nodes} for {count} nodes: room for {max(0, max_nodes - count)} borrowed, "
                f"not {want.max_borrowed}")
        line = site.get("MaxNodeCount")
        if line is None:
            gaps.append(Gap("MaxNodeCount", have, "", "restart", f"MaxNodeCount={wanted}"))
        else:
            gaps.append(Gap("MaxNodeCount", have,
                            _site_fix(line, "MaxNodeCount", str(wanted), True), "site"))

    tree = _num(config.get("TreeWidth", ""), 50)
    if tree < wanted:
        line = site.get("TreeWidth")
        have = (f"{tree}, fewer than the {wanted} nodes the cluster may hold (dynamic nodes "
                "are not in the other nodes' tree)")
        if line is None:
            gaps.append(Gap("TreeWidth", have, "", "reconfigure", "TreeWidth=65533"))
        else:
            gaps.append(Gap("TreeWidth", have, _site_fix(line, "TreeWidth", "65533", False),
                            "site"))

    if config.get("JobRequeue", "1").strip() != "1":
        gaps.append(Gap("JobRequeue", f"{config.get('JobRequeue')} (jobs on a reclaimed VM would "
                        "be lost, not requeued)",
                        _site_fix(site.get("JobRequeue"), "JobRequeue", "1", False), "site"))

    auth_info = config.get("AuthInfo", "")
    auth_info = "" if auth_info == "(null)" else auth_info
    m = re.search(r"cred_expire=(\d+)", auth_info)
    expire = int(m.group(1)) if m else DEFAULT_CRED_EXPIRE
    if expire > want.cred_expire:
        have = f"cred_expire is {expire} s: a job requeued off a reclaimed VM waits that long"
        line = site.get("AuthInfo")
        if line is None:
            gaps.append(Gap("AuthInfo", have, "", "reconfigure",
                            f"AuthInfo=cred_expire={want.cred_expire}", blocking=False))
        else:
            gaps.append(Gap("AuthInfo", have, f"add cred_expire={want.cred_expire} to AuthInfo "
                            f"({line.where}), then run scontrol reconfigure", "site",
                            blocking=False))

    # A borrowed VM cut off from its controller fences itself after fence_s (its watchdog); the
    # scheduler must not requeue its jobs before it is gone: W + 5 <= SlurmdTimeout - max(T/3, M).
    timeout = _num(config.get("SlurmdTimeout", ""), 300)
    message = _num(config.get("MessageTimeout", ""), 10)
    if want.fence_s + 5 > timeout - max(timeout // 3, message):
        least = next(t for t in range(1, 100000) if want.fence_s + 5 <= t - max(t // 3, message))
        have = (f"SlurmdTimeout {timeout} s with MessageTimeout {message} s: the jobs of a "
                "borrowed VM cut off from slurmctld may be requeued before it fences itself "
                f"({want.fence_s} s + 5 s)")
        line = site.get("SlurmdTimeout")
        if line is None:
            gaps.append(Gap("SlurmdTimeout", have, "", "reconfigure", f"SlurmdTimeout={least}"))
        else:
            gaps.append(Gap("SlurmdTimeout", have,
                            _site_fix(line, "SlurmdTimeout", str(least), False), "site"))

    if _num(config.get("ReturnToService", "0")) == 2:
        gaps.append(Gap("ReturnToService", "2: a reclaimed node whose slurmd still answers "
                        "comes back before it is deleted",
                        _site_fix(site.get("ReturnToService"), "ReturnToService", "1", False),
                        "site", blocking=False))

    task = config.get("TaskPlugin", "")
    if "task/cgroup" in task:
        gaps.append(Gap("TaskPlugin", f"{task}: borrowed VMs (UML guests) have cgroup v1 "
                        "freezer and memory controllers, no cpuset; task/cgroup was not tried "
                        "there",
                        "if jobs fail on borrowed nodes, use task/affinity or task/none", "info",
                        blocking=False))

    gaps.extend(partition_gaps(partitions, site, want))
    return gaps


def partition_gaps(partitions: list[dict[str, str]], site: SiteConf, want: Want) -> list[Gap]:
    gaps: list[Gap] = []
    ours = next((p for p in partitions if p.get("PartitionName") == want.partition), None)
    nodeset_feature = {}
    for line in site.all("NodeSet"):
        m = re.search(r"\bFeature=(\S+)", line.value, re.IGNORECASE)
        nodeset_feature[line.value.split()[0]] = m.group(1) if m else ""
    if ours is None:
        gaps.append(Gap(f"partition {want.partition}", "none (borrowed VMs join as dynamic "
                        f"nodes with the feature {want.feature} and need a partition of their own)",
                        "", "reconfigure", include_partition_lines(want, max_time(partitions))))
    else:
        sets = [s for s in ours.get("NodeSets", "").split(",") if s and s != "(null)"]
        good = want.nodeset in sets or any(nodeset_feature.get(s) == want.feature for s in sets)
        if not good:
            gaps.append(Gap(f"partition {want.partition}", f"the site's partition {want.partition} "
                            f"is not made of the nodes with the feature {want.feature} "
                            f"(Nodes={ours.get('Nodes', '')})",
                            "give VioCluster's partition another name (viocluster_adopt_partition) "
                            f"or make this one Nodes=<a NodeSet with Feature={want.feature}>",
                            "site"))
    for part in partitions:
        name = part.get("PartitionName", "")
        if name != want.partition and part.get("Nodes", "") == "ALL":
            gaps.append(Gap(f"partition {name}", "Nodes=ALL takes borrowed VMs too, so its "
                            "jobs may mix borrowed and physical nodes",
                            f"list partition {name}'s nodes instead of ALL", "site",
                            blocking=False))
    return gaps


def max_time(partitions: list[dict[str, str]]) -> str:
    """MaxTime for the borrowed partition: the site's default partition's. A job without --time
    gets its partition's MaxTime as its limit; one requeued off a reclaimed VM must still fit the
    site's partition (a longer limit keeps it pending there, Reason=PartitionConfig)."""
    default = next((p for p in partitions if p.get("Default") == "YES"), None)
    value = (default or {}).get("MaxTime", "UNLIMITED")
    return "INFINITE" if value in ("UNLIMITED", "", "INFINITE") else value


def include_partition_lines(want: Want, maxtime: str = "INFINITE") -> str:
    return (f"NodeSet={want.nodeset} Feature={want.feature}\n"
            f"PartitionName={want.partition} Nodes={want.nodeset} "
            f"PriorityTier={want.partition_tier} MaxTime={maxtime} State=UP")


def version_gap(site_version: str, image_version: str, image_source: str) -> Gap | None:
    """The VMs' slurmd against the site's slurmctld: at most two releases older, never newer."""
    if not image_version:
        return Gap("Slurm version", f"slurmctld {site_version}; the node image's slurmd is unknown",
                   "build the node image (cow_base_image) and run the check again", "info",
                   blocking=False)
    if site_version == image_version:
        return None
    site_rel, image_rel = release(site_version), release(image_version)
    have = f"slurmctld {site_version}, the node image's slurmd {image_version} ({image_source})"
    what = "build the node image with slurmd of release " + site_rel + (
        " (images/build_image.py installs the slurmd of Debian 12, 22.05)")
    if site_rel == image_rel:
        return Gap("Slurm version", have + ": same release, other patch level", "none needed; "
                   + what + " to match exactly", "info", blocking=False)
    if site_rel not in RELEASES or image_rel not in RELEASES:
        return Gap("Slurm version", have + ": releases unknown to this check", what, "site")
    apart = RELEASES.index(site_rel) - RELEASES.index(image_rel)
    if apart < 0:
        return Gap("Slurm version", have + ": a slurmd newer than slurmctld cannot register", what
                   + ", or upgrade slurmctld", "site")
    if apart > 2:
        return Gap("Slurm version", have + f": slurmd is {apart} releases older (at most 2 work)",
                   what, "site")
    return Gap("Slurm version", have + f": slurmd {apart} release(s) older, which Slurm supports",
               what + " to match", "info", blocking=False)


def include_text(gaps: list[Gap], restart_allowed: bool, keep: list[str] | None = None) -> str:
    """The include file: what the gaps add (restart lines only when restarts are allowed), plus
    lines the file holds already that the running configuration now satisfies (``keep``)."""
    lines = list(keep or [])
    for gap in gaps:
        if gap.how == "reconfigure" or (gap.how == "restart" and restart_allowed):
            for line in gap.line.splitlines():
                if line not in lines:
                    lines.append(line)
    head = ("# Managed by VioCluster (roles/adopt): what this cluster lacked for borrowing.\n"
            "# slurm.conf includes it with one marked line; remove both to undo.\n")
    return head + "".join(f"{line}\n" for line in lines)


def include_lines(text: str) -> list[str]:
    """The setting lines of an include file VioCluster wrote."""
    lines = (raw.strip() for raw in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


RESTART_KEYS = ("maxnodecount", "slurmctldparameters")


def keep_lines(current: list[str], site: SiteConf, gaps: list[Gap],
               restart_allowed: bool) -> list[str]:
    """The lines of the include file that stay: not those the site now sets itself, and not a
    restart-only line that is not in effect when no restart is allowed (slurm.conf must never
    hold a MaxNodeCount that a reconfigure would meet: slurmctld exits then)."""
    pending = {g.what.lower() for g in gaps if g.how == "restart"}
    out = []
    for line in current:
        key = line.split("=", 1)[0].strip()
        if key.lower() not in ("nodeset", "partitionname") and site.get(key) is not None:
            continue
        if key.lower() in RESTART_KEYS and key.lower() in pending and not restart_allowed:
            continue
        out.append(line)
    return out


def needs_restart(lines: list[str]) -> bool:
    return any(line.split("=", 1)[0].strip().lower() in RESTART_KEYS for line in lines)


# ------------------------------------------------------------------------------- shared files
def export_gap(server: str, path: str, exports_text: str, subnet: str,
               error: str = "") -> Gap | None:
    """``showmount -e SERVER``: is PATH exported to clients that cover the virtual subnet?"""
    if error:
        return Gap("shared filesystem",
                   f"cannot ask {server} for its exports ({error.strip()[:160]})",
                   f"make {server}'s NFS server answer showmount from the head node, and allow "
                   f"{subnet} to mount {path}", "site")
    net = ipaddress.ip_network(subnet, strict=False)
    for raw in exports_text.splitlines():
        parts = raw.split()
        if not parts or not parts[0].startswith("/"):
            continue
        if parts[0].rstrip("/") != path.rstrip("/") and not (path == "/" and parts[0] == "/"):
            continue
        clients = [c for part in parts[1:] for c in part.split(",") if c]
        if _clients_cover(clients, net):
            return None
        return Gap("shared filesystem",
                   f"{server} exports {path} to {','.join(clients) or 'nobody'}, "
                   f"not to the virtual subnet {subnet} the borrowed VMs mount it from",
                   f"allow {subnet} in {server}'s export of {path} (nfs-ganesha: its CLIENT "
                   "block's Clients; the kernel server: /etc/exports), then reload the server",
                   "site")
    return Gap("shared filesystem", f"{server} does not export {path}",
               f"export {path} on {server} to {subnet}, or set viocluster_adopt_shared_fs to the "
               "SERVER:PATH that holds the users' homes", "site")


def _clients_cover(clients: list[str], net: ipaddress.IPv4Network) -> bool:
    for client in clients:
        client = client.strip("()")
        if client in ("*", "(everyone)", "everyone", "0.0.0.0/0"):
            return True
        try:
            if net.subnet_of(ipaddress.ip_network(client, strict=False)):
                return True
        except (ValueError, TypeError):
            continue
    return False
