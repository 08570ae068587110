"""VioCluster: machine brokers that let independently run clusters lend idle machines.

Planes, by sub-package:

- ``broker.policy``: demand, lending, borrowing and reclamation policy (plain objects, no I/O);
- ``broker.negotiation``: broker-to-broker messages and contracts;
- ``broker.provisioning``: the executor that runs playbooks through ansible-runner;
- ``broker.scheduler``: adapters to each domain's batch scheduler;
- ``broker.simulator``: the trace-driven simulator that drives the same policy objects.

The data plane (the VIOLIN switch daemon) is its own distribution under ``switch/``.
"""

__version__ = "0.1.0"
