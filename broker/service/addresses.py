"""The borrowing domain's pool of VM addresses in its virtual subnet (plain object, no I/O).

A pool is one or more IPv4 ranges (``10.210.1.64/26``, ``10.210.1.100-10.210.1.120`` or one
address) inside one network of ``prefixlen`` bits, the subnet every VM's interface gets. The
network and broadcast addresses of that network are never given. The pool holds no state:
what is taken is passed in (the addresses of the open contracts, which the store reads), so a
broker that restarts cannot hand out an address twice. :meth:`AddressPool.allocate` gives the
lowest free addresses, as ``"10.210.1.70/24"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from netaddr import AddrFormatError, IPAddress, IPNetwork, IPRange

_QUAD = r"\d{1,3}(?:\.\d{1,3}){3}"
_CIDR = re.compile(rf"^{_QUAD}/\d{{1,2}}$")
_RANGE = re.compile(rf"^({_QUAD})\s*-\s*({_QUAD})$")
_ONE = re.compile(rf"^{_QUAD}$")
EXAMPLES = "like 10.210.1.64/26, 10.210.1.100-10.210.1.120 or 10.210.1.70"


class PoolError(ValueError):
    """A wrong pool definition. ``where`` is the part it is about (``pool[1]``, ``prefixlen``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class PoolExhausted(Exception):
    """Fewer free addresses than asked for."""


def address_of(value: str) -> str:
    """The bare address of ``"10.210.1.70/24"`` or ``"10.210.1.70"``."""
    return value.split("/", 1)[0].strip()


def _parse_range(spec: object, where: str) -> tuple[int, int]:
    if not isinstance(spec, str):
        raise PoolError(where, f"got {spec!r}; expected an IPv4 network or range {EXAMPLES}")
    text = spec.strip()
    try:
        if _CIDR.match(text):
            net = IPNetwork(text)
            if net.ip != net.network:
                raise PoolError(where, f"got {spec!r}: host bits are set; did you mean {net.cidr}?")
            return net.first, net.last
        m = _RANGE.match(text)
        if m:
            first, last = IPAddress(m.group(1)), IPAddress(m.group(2))
            if first > last:
                raise PoolError(where, f"got {spec!r}: the range ends before it starts")
            return int(first), int(last)
        if _ONE.match(text):
            one = IPAddress(text)
            return int(one), int(one)
    except AddrFormatError:
        pass
    raise PoolError(where, f"got {spec!r}; expected an IPv4 network or range {EXAMPLES}")


def _show(first: int, last: int) -> str:
    if first == last:
        return str(IPAddress(first))
    cidrs = IPRange(first, last).cidrs()
    return str(cidrs[0]) if len(cidrs) == 1 else f"{IPAddress(first)}-{IPAddress(last)}"


@dataclass(frozen=True)
class AddressPool:
    """Ranges (first, last as integers, sorted) of one network of ``prefixlen`` bits."""

    ranges: tuple[tuple[int, int], ...]
    prefixlen: int

    @classmethod
    def parse(cls, pool: object, prefixlen: object = 24) -> AddressPool:
        """Read ``pool`` (one spec or a list) and ``prefixlen``; raise :class:`PoolError`."""
        if isinstance(prefixlen, bool) or not isinstance(prefixlen, int) \
                or not 1 <= prefixlen <= 30:
            raise PoolError("prefixlen", f"got {prefixlen!r}; expected an integer from 1 to 30 "
                                         "(the prefix length of the VMs' subnet)")
        if isinstance(pool, list):
            if not pool:
                raise PoolError("pool", "the list is empty; give at least one network or range")
            specs = [(f"pool[{i}]", s) for i, s in enumerate(pool)]
        else:
            specs = [("pool", pool)]
        parsed = [(where, spec, *_parse_range(spec, where)) for where, spec in specs]
        network = IPNetwork(f"{IPAddress(parsed[0][2])}/{prefixlen}").cidr
        for where, spec, first, last in parsed:
            if not (network.first <= first and last <= network.last):
                if where == parsed[0][0]:
                    raise PoolError(where, f"{spec} does not fit in one /{prefixlen} network "
                                           f"(prefixlen {prefixlen}); narrow the pool or lower prefixlen")
                raise PoolError(where, f"{spec} is outside {network}, the network of "
                                       f"{parsed[0][0]} with prefixlen {prefixlen}")
        for i, (where, spec, first, last) in enumerate(parsed):
            for other, ospec, ofirst, olast in parsed[:i]:
                if first <= olast and ofirst <= last:
                    raise PoolError(where, f"{spec} overlaps {other} ({ospec})")
        result = cls(tuple(sorted((f, l) for _w, _s, f, l in parsed)), prefixlen)
        if result.size == 0:
            raise PoolError("pool", f"no usable address: the network and broadcast addresses "
                                    f"of {network} are never given to a VM")
        return result

    @property
    def network(self) -> IPNetwork:
        return IPNetwork(f"{IPAddress(self.ranges[0][0])}/{self.prefixlen}").cidr

    def _reserved(self) -> tuple[int, int]:
        net = self.network
        return net.first, net.last

    def _addresses(self) -> Iterable[int]:
        reserved = self._reserved()
        for first, last in self.ranges:
            for value in range(first, last + 1):
                if value not in reserved:
                    yield value

    @property
    def size(self) -> int:
        reserved = self._reserved()
        total = sum(last - first + 1 for first, last in self.ranges)
        return total - sum(1 for r in reserved if self._in_ranges(r))

    def _in_ranges(self, value: int) -> bool:
        return any(first <= value <= last for first, last in self.ranges)

    def __contains__(self, address: object) -> bool:
        try:
            value = int(IPAddress(address_of(str(address))))
        except (AddrFormatError, ValueError):
            return False
        return self._in_ranges(value) and value not in self._reserved()

    def _taken(self, taken: Iterable[str]) -> set[int]:
        found = set()
        for t in taken:
            try:
                found.add(int(IPAddress(address_of(t))))
            except (AddrFormatError, ValueError):
                continue  # not an address of ours (cannot collide with one)
        return found

    def free(self, taken: Iterable[str]) -> int:
        """How many addresses are left when ``taken`` are in use."""
        held = {v for v in self._taken(taken) if self._in_ranges(v) and v not in self._reserved()}
        return self.size - len(held)

    def allocate(self, count: int, taken: Iterable[str]) -> tuple[str, ...]:
        """The ``count`` lowest free addresses, as ``"A.B.C.D/prefixlen"``."""
        held = self._taken(taken)
        got: list[str] = []
        if count <= 0:
            return ()
        for value in self._addresses():
            if value not in held:
                got.append(f"{IPAddress(value)}/{self.prefixlen}")
                if len(got) == count:
                    return tuple(got)
        raise PoolExhausted(f"the VM address pool {self} has {len(got)} free address(es), "
                            f"{count} wanted")

    def __str__(self) -> str:
        return f"{', '.join(_show(f, l) for f, l in self.ranges)} in {self.network}"
