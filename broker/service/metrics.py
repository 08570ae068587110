"""Prometheus metrics of one broker (served on the status listener at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from broker.negotiation.contracts import ContractState


class Metrics:
    def __init__(self, domain: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"domain": domain}
        self.contracts = Gauge(
            "viocluster_contracts", "Contracts by state and role", ["state", "role"],
            registry=self.registry,
        )
        self.demand = Gauge("viocluster_demand_nodes", "d_a: nodes of waiting and running jobs",
                            registry=self.registry)
        self.need = Gauge("viocluster_need_nodes", "n_a", registry=self.registry)
        self.nodes = Gauge("viocluster_nodes", "Nodes by kind (physical, lent, borrowed)",
                           ["kind"], registry=self.registry)
        self.messages = Counter(
            "viocluster_messages_total", "Peer messages received, by type and HTTP status",
            ["type", "status"], registry=self.registry,
        )
        self.rejected = Counter(
            "viocluster_messages_rejected_total", "Peer requests refused, by reason",
            ["reason"], registry=self.registry,
        )
        self.playbooks = Counter(
            "viocluster_playbook_runs_total", "Playbook runs by playbook and result",
            ["playbook", "result"], registry=self.registry,
        )
        self.trade_seconds = Histogram(
            "viocluster_trade_seconds", "Agreement to node idle in the scheduler",
            buckets=(1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120), registry=self.registry,
        )
        self.reclaim_seconds = Histogram(
            "viocluster_reclaim_seconds", "Reclaim request to VM gone",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30), registry=self.registry,
        )
        self.repairs = Counter("viocluster_reconcile_repairs_total", "Repairs made by kind",
                               ["kind"], registry=self.registry)
        self.cert_expiry = Gauge(
            "viocluster_certificate_expiry_timestamp_seconds",
            "When a certificate ends (seconds since the epoch): ours (own), our CA (own_ca), "
            "a peer's last seen in a handshake (peer), a peer's CA (peer_ca)",
            ["domain", "kind"], registry=self.registry,
        )
        self.info = Gauge("viocluster_broker_info", "Broker identity", ["domain"],
                          registry=self.registry)
        self.info.labels(**labels).set(1)

    def set_contracts(self, counts: dict[tuple[str, str], int]) -> None:
        for state in ContractState:
            for role in ("borrower", "lender"):
                self.contracts.labels(state=state.value, role=role).set(
                    counts.get((state.value, role), 0)
                )

    def render(self) -> bytes:
        return generate_latest(self.registry)
