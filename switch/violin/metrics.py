"""Prometheus text exposition of a switch's counters (prometheus-client custom collector)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class SwitchCollector:
    def __init__(self, switch, network: str) -> None:
        self.switch = switch
        self.network = network

    def collect(self):
        s = self.switch.stats()
        net = self.network
        frames = CounterMetricFamily("violin_frames", "Frames through the TAP",
                                     labels=["network", "direction"])
        frames.add_metric([net, "from_tap"], s["tap_rx_frames"])
        frames.add_metric([net, "to_tap"], s["tap_tx_frames"])
        yield frames
        nbytes = CounterMetricFamily("violin_frame_bytes", "Bytes of frames through the TAP "
                                     "(with the 10-byte vnet header)", labels=["network", "direction"])
        nbytes.add_metric([net, "from_tap"], s["tap_rx_bytes"])
        nbytes.add_metric([net, "to_tap"], s["tap_tx_bytes"])
        yield nbytes
        sent = CounterMetricFamily("violin_forwarded_frames", "Frames from the TAP by forwarding "
                                   "decision", labels=["network", "decision"])
        sent.add_metric([net, "unicast"], s["tx_unicast_frames"])
        sent.add_metric([net, "flooded"], s["tx_flooded_frames"])
        yield sent
        dgrams = CounterMetricFamily("violin_datagrams", "UDP datagrams", labels=["network", "direction"])
        dgrams.add_metric([net, "sent"], s["tx_datagrams"])
        dgrams.add_metric([net, "received"], s["rx_datagrams"])
        yield dgrams
        drops = CounterMetricFamily("violin_drops", "Frames or datagrams dropped, by reason",
                                    labels=["network", "reason"])
        for reason, count in sorted(s["drops"].items()):
            drops.add_metric([net, reason], count)
        yield drops
        yield _gauge("violin_fdb_entries", "MAC addresses learnt", net, s["fdb_entries"])
        yield _gauge("violin_peers", "Peers of this daemon", net, s["peers"])


def _gauge(name: str, doc: str, network: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=["network"])
    gauge.add_metric([network], value)
    return gauge


def registry_for(switch, network: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(switch, network))
    return registry


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()
