"""The live broker service: contract store, mutual-TLS API, main loop, reconciliation, metrics.

Modules: :mod:`.config` (the service config file), :mod:`.store` (SQLite, WAL), :mod:`.tls`
(certificates and pinning), :mod:`.api` (aiohttp server), :mod:`.client` (calls to peers),
:mod:`.broker` (the negotiation and trade logic that drives everything), :mod:`.reconcile`
(what runs versus what the contracts say), :mod:`.addresses` (the borrower's VM address
pool), :mod:`.probes` (VMs and switch peers), :mod:`.metrics` (Prometheus), :mod:`.cli`
(``viocluster broker run``, ``status``, ``contracts``).
"""
