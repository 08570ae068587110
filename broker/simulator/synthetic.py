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
    scale = (1.0 / rate) / float(np.mean(gaps))
    gaps *= scale
    submit = np.cumsum(gaps)
    if submit[-1] < span:  # a long or busy span: more jobs, their gaps scaled alike
        parts_sub, parts_size, parts_run = [submit], [sizes], [runs]
        t = float(submit[-1])
        while t < span:
            m = max(n, int(1.1 * (span - t) * rate) + 1)
            more_sizes, more_runs = _jobs(rng, m, capacity, model)
            more = t + np.cumsum(np.exp(rng.gamma(model.aarr, model.barr, m)) * scale)
            parts_sub.append(more)
            parts_size.append(more_sizes)
            parts_run.append(more_runs)
            t = float(more[-1])
        submit = np.concatenate(parts_sub)
        sizes = np.concatenate(parts_size)
        runs = np.concatenate(parts_run)
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


def generated_workloads(
    domains: int,
    capacity: int,
    days: float,
    seed: int,
    load: float | tuple[float, float] = (0.3, 0.6),
    bursts: BurstSpec | None = None,
) -> list[Workload]:
    """``domains`` generated domains ``d1``, ``d2``, ... of ``capacity`` nodes for ``days``.

    Base loads are spread evenly from ``load[0]`` (d1) to ``load[1]`` (the last); every other
    domain (d1, d3, ...) also has the bursts of ``bursts`` (default: 6 h at 6x, every 5 days on
    average), the others none. Domain i draws from seed ``seed + 1000 * i``.
    """
    low, high = (load, load) if isinstance(load, (int, float)) else load
    burst = bursts or BurstSpec(burst_every_s=5 * 86400, burst_len_s=6 * 3600, burst_factor=6)
    out = []
    for i in range(domains):
        frac = i / (domains - 1) if domains > 1 else 0.0
        base = low + (high - low) * frac
        if i % 2 == 0:
            spec = BurstSpec(load=base, days=days, burst_every_s=burst.burst_every_s,
                             burst_len_s=burst.burst_len_s, burst_factor=burst.burst_factor)
        else:
            spec = BurstSpec(load=base, days=days, burst_every_s=10**12, burst_len_s=0,
                             burst_factor=1)
        out.append(synthetic_workload(f"d{i + 1}", capacity, seed + 1000 * i, spec))
    return out
