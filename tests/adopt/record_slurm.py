"""Record what a real slurmctld 22.05 says about two configurations, for test_adopt_gaps.py.

``site``: a cluster set up by hand, without anything borrowing needs (no MaxNodeCount, no
configless, default TreeWidth and cred_expire, partitions of its own). ``adopted``: the same
after VioCluster's include file (``Include viocluster.conf``) and a restart, with a dynamic node
of the borrowed feature registered. Run as root: ``python tests/adopt/record_slurm.py``; it
writes tests/adopt/data/{site,adopted}.{config,partitions,nodes,conf} (temporary paths replaced
by /etc/slurm) and leaves nothing running.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "broker"))
import broker_slurm  # noqa: E402

#: A site's own slurm.conf: its own partitions and options, nothing for borrowing.
SITE_CONF = """\
ClusterName=north
SlurmctldHost={host}
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.socket
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port=17101 CPUs=1 RealMemory=500 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port=17102 CPUs=1 RealMemory=500 State=UNKNOWN
PartitionName=batch Nodes=n1,n2 Default=YES MaxTime=2-00:00:00 State=UP
PartitionName=debug Nodes=n1 MaxTime=01:00:00 State=UP
"""
INCLUDE = """\
MaxNodeCount=18
TreeWidth=65533
SlurmctldParameters=enable_configless
AuthInfo=socket={dir}/munge.socket,cred_expire=10
NodeSet=viocluster_borrowed Feature=borrowed
PartitionName=borrowed Nodes=viocluster_borrowed PriorityTier=1 MaxTime=INFINITE State=UP
"""


def main(out: Path = HERE / "data") -> None:
    broker_slurm.SLURM_CONF = SITE_CONF
    cluster = broker_slurm.start(prefix="adrec", name="north")
    tmp = str(cluster.dir)

    def save(tag: str) -> None:
        for part, argv in (("config", ["show", "config"]), ("partitions", ["show", "partition", "-o"]),
                           ("nodes", ["show", "node", "-o"])):
            text = cluster.run("scontrol", *argv)
            (out / f"{tag}.{part}").write_text(text.replace(tmp, "/etc/slurm"))
        (out / f"{tag}.conf").write_text((cluster.dir / "slurm.conf").read_text().replace(tmp, "/etc/slurm"))

    try:
        save("site")
        (cluster.dir / "viocluster.conf").write_text(INCLUDE.format(dir=tmp))
        conf = cluster.dir / "slurm.conf"
        conf.write_text(conf.read_text() + "Include viocluster.conf  # VioCluster (adopt): remove this "
                        "line and viocluster.conf beside it to undo\n")
        cluster.stop("slurmctld")
        cluster.spawn("slurmctld", "slurmctld", "-D")
        cluster.wait("slurmctld", lambda: "UP" in cluster.run("scontrol", "ping"), 30)
        cluster.start_dynamic_node("vm1")
        cluster.wait("vm1 idle", lambda: cluster.node_state("vm1") == "idle", 30)
        time.sleep(1)
        save("adopted")
    finally:
        broker_slurm.stop(cluster)


if __name__ == "__main__":
    main()
