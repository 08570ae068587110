"""Built-in synthetic workload, so the simulator runs with no trace at hand.

Jobs follow the batch-job model of Lublin & Feitelson (2003), "The workload on parallel
supercomputers: modeling the characteristics of rigid jobs", JPDC 63(11):

- size: serial with probability ``serial_prob``; else log2(size) drawn from a two-stage uniform
  (U[ulow, umed] with probability ``uprob``, else U[umed, uhi], uhi = log2(capacity)), rounded
  to a power of two with probability ``pow2_prob``;
- run time: ln(run time) from a hyper-Gamma, Gamma(a1, b1) with probability p and Gamma(a2, b2)
  otherwise, where p = pa * size + pb (wider jobs run longer);
- inter-arrival: ln(gap) Gamma(aarr, barr); the gaps are then scaled so the base load is
  ``load`` of the domain's capacity (the model's daily cycle is left out).

Bursts are added on top: at Poisson times (mean ``burst_every_s`` apart) the arrival rate rises
``burst_factor`` times for ``burst_len_s`` seconds. Everything comes from one seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from broker.simulator.workload import Workload


@dataclass(frozen=True, slots=True)
class ModelParams:
    serial_prob: float = 0.244
    pow2_prob: float = 0.576
    ulow: float = 0.8
    umed: float = 4.5
    uprob: float = 0.86
    a1: float = 4.2
    b1: float = 0.94
    a2: float = 312.0
    b2: float = 0.03
    pa: float = -0.0054
    pb: float = 0.78
    aarr: float = 10.23
    barr: float = 0.4871
    max_runtime_s: float = 36 * 3600.0


@dataclass(frozen=True, slots=True)
class BurstSpec:
    load: float = 0.5
    days: float = 30.0
    burst_every_s: float = 4 * 86400.0
    burst_len_s: float = 8 * 3600.0
    burst_factor: float = 8.0


def _sizes(rng: np.random.Generator, n: int, capacity: int, m: ModelParams) -> np.ndarray:
    uhi = math.log2(capacity)
    umed = min(m.umed, uhi)
    ulow = min(m.ulow, umed)
    first = rng.random(n) < m.uprob
    logs = np.where(first, rng.uniform(ulow, umed, n), rng.uniform(umed, uhi, n))
    pow2 = rng.random(n) < m.pow2_prob
    sizes = np.where(pow2, 2.0 ** np.round(logs), np.round(2.0 ** logs))
    sizes = np.clip(sizes, 1, capacity)
    serial = rng.random(n) < m.serial_prob
    return np.where(serial, 1, sizes).astype(np.int64)


def _runtimes(rng: np.random.Generator, sizes: np.ndarray, m: ModelParams) -> np.ndarray:
    n = len(sizes)
    p = np.clip(m.pa * sizes + m.pb, 0.0, 1.0)
    short = rng.random(n) < p
    logs = np.where(short, rng.gamma(m.a1, m.b1, n), rng.gamma(m.a2, m.b2, n))
    return np.clip(np.round(np.exp(logs)), 1, m.max_runtime_s)


def _jobs(rng, n, capacity, m):
    sizes = _sizes(rng, n, capacity, m)
    runs = _runtimes(rng, sizes, m)
    return sizes, runs


def synthetic_workload(
    name: str,
    capacity: int,
    seed: int,
    spec: BurstSpec = BurstSpec(),
    model: ModelParams = ModelParams(),
) -> Workload:
    """A seeded workload of ``spec.days`` days for a domain of ``capacity`` nodes."""
    rng = np.random.default_rng(seed)
    span = spec.days * 86400.0
    # base stream: draw more gaps than needed, scale them to the target load, cut at span
    n = 4096
    sizes, runs = _jobs(rng, n, capacity, model)
    gaps = np.exp(rng.gamma(model.aarr, model.barr, n))
    work_per_job = float(np.mean(sizes * runs))
    rate = spec.load * capacity / work_per_job  # jobs per second for the target load
    gaps *= (1.0 / rate) / float(np.mean(gaps))
    submit = np.cumsum(gaps)
    keep = submit < span
    submit, sizes, runs = submit[keep], sizes[keep], runs[keep]
    # bursts
    b_sub, b_size, b_run = [submit], [sizes], [runs]
    t = rng.exponential(spec.burst_every_s)
    while t < span:
        count = rng.poisson(rate * spec.burst_factor * spec.burst_len_s)
        if count:
            bs, br = _jobs(rng, count, capacity, model)
            b_sub.append(t + np.sort(rng.uniform(0, spec.burst_len_s, count)))
            b_size.append(bs)
            b_run.append(br)
        t += spec.burst_len_s + rng.exponential(spec.burst_every_s)
    submit = np.round(np.concatenate(b_sub))
    sizes = np.concatenate(b_size)
    runs = np.concatenate(b_run)
    # users over-estimate: requested time = run time times U[1, 3]
    estimate = np.round(runs * rng.uniform(1.0, 3.0, len(runs)))
    return Workload.from_arrays(
        name, capacity, submit, runs, sizes, estimate, unix_start=0,
        source=f"synthetic (Lublin-Feitelson 2003, seed {seed})",
    )
