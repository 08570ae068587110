"""Generated workloads: N domains, long spans (more than the first draw of jobs), and the
figures' naming after the paper."""

import numpy as np

from broker.simulator.figures import signed_borrowed

from broker.simulator.presets import demo_workloads
from broker.simulator.synthetic import generated_workloads


def test_demo_workload_unchanged_by_longer_spans():
    assert [len(w) for w in demo_workloads(1)] == [1233, 927]


def test_generated_domains_span_long_and_are_seeded():
    ws = generated_workloads(3, 16, 700, seed=5, load=(0.3, 0.6))
    assert [w.name for w in ws] == ["d1", "d2", "d3"]
    for w in ws:
        submit = np.asarray(w.submit)
        assert (np.diff(submit) >= 0).all()
        assert submit[-1] > 600 * 86400  # jobs all along, past the first 4,096 drawn
        assert max(w.nodes) <= 16 and w.largest_job <= w.capacity
    assert max(len(w) for w in ws) > 4096
    again = generated_workloads(3, 16, 700, seed=5, load=(0.3, 0.6))
    assert [w.submit for w in again] == [w.submit for w in ws]
    # offered load rises from d1 to d3 (base loads 0.3 to 0.6; d1 and d3 bursty, d2 not)
    work = [np.dot(w.nodes, w.runtime) for w in ws]
    assert work[1] < work[2]


def test_fig4_signed_series_positive_when_the_first_borrows():
    first = [(0, 0, 0, 0, 5, 0, 0, 0.0), (3600, 0, 0, 0, 0, 3, 0, 0.0)]
    second = [(0, 0, 0, 0, 0, 5, 0, 0.0), (3600, 0, 0, 0, 3, 0, 0, 0.0)]
    assert signed_borrowed(first, second) == [5, -3]
