"""Contracts, their transition log and the ids of messages already handled, in SQLite.

The database runs in WAL mode with ``synchronous=FULL``: a transition that :meth:`Store.save`
returned from is on disk, so a broker killed right after loses nothing. Every change of a
contract and the log line that explains it are written in one transaction; a save whose
``from`` state no longer matches the row (someone else moved the contract) is refused.

Refused attempts do not pile up: a proposal that ends without an agreement (the peer declined,
did not answer, or nobody accepted the offer in time) is removed with its log, and counted in
one row per peer and role (:meth:`Store.drop_refused`, :meth:`Store.refusals`). Closed and
failed contracts are removed once they are older than the retention period, and message ids
after a day (:meth:`Store.compact`).

The VM addresses a borrower gave a contract (from its pool, ``broker.service.addresses``) are
kept in the contract's row; a contract holds them while it is open. A write that would let two
open contracts hold one address is refused.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from broker.errors import UserError
from broker.negotiation.contracts import Contract, ContractState, Role, Transition
from broker.negotiation.messages import HostOffer, Needs, Terms
from broker.service.addresses import address_of

SCHEMA_VERSION = 4
# schema 1 had no addresses column; a database of schema 1 gets it (empty lists) on opening.
# schema 2 had no refusals table, schema 3 no drains table (SCHEMA below makes them).
MIGRATIONS = {
    1: "ALTER TABLE contracts ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]'",
    2: "SELECT 1",
    3: "SELECT 1",
}
# A message id is remembered this long (seconds) so that a resent message is answered once;
# a peer resends within its request timeout, so a day is ample.
MESSAGE_ID_RETENTION_S = 86400.0
COLUMNS = ("id, role, borrower, lender, state, created_at, updated_at, requested, needs, terms, "
           "offered, nodes, reason, addresses")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contracts (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    borrower TEXT NOT NULL,
    lender TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    requested INTEGER NOT NULL,
    needs TEXT NOT NULL,
    terms TEXT NOT NULL,
    offered TEXT NOT NULL,
    nodes TEXT NOT NULL,
    reason TEXT NOT NULL,
    addresses TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS contracts_state ON contracts(state);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    contract_id TEXT NOT NULL REFERENCES contracts(id),
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_contract ON transitions(contract_id);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    digest TEXT NOT NULL,
    received_at REAL NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received_at);
CREATE TABLE IF NOT EXISTS refusals (
    peer TEXT NOT NULL,
    role TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    last_reason TEXT NOT NULL,
    PRIMARY KEY (peer, role)
);
-- The lender's loans (one lent host of a contract each) that drain: the borrower keeps new
-- jobs off them and they come back when their job ends, or at the drain's deadline, counted
-- from since (kept across restarts, so a restart does not move the deadline).
CREATE TABLE IF NOT EXISTS drains (
    loan TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
"""


class StoreError(UserError):
    """The contract database cannot be opened or used as it is."""


class StaleContract(StoreError):
    """A contract changed under us: the save was based on a state it is no longer in."""


class AddressInUse(StoreError):
    """A VM address would be held by two open contracts at once."""


@dataclass(frozen=True)
class Refusals:
    """Proposals with one peer, on one side, that ended without an agreement."""

    peer: str
    role: Role
    count: int
    first_at: float
    last_at: float
    last_reason: str


@dataclass(frozen=True)
class Compacted:
    contracts: int
    messages: int


@dataclass(frozen=True)
class SeenMessage:
    id: str
    sender: str
    type: str
    digest: str
    status: int
    response: dict[str, Any]


class Store:
    """One broker's contract database (a single SQLite file)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            fresh = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE name='contracts'").fetchone()[0] == 0
            row = None if fresh else self._db.execute(
                "SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) in MIGRATIONS:
                row = self._migrate()
            self._db.executescript(SCHEMA)
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: contract database has schema {row[0]}, this broker "
                    f"reads {SCHEMA_VERSION}; migrate it or point state_dir elsewhere"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: cannot open the contract database ({exc}); check the path "
                "and its permissions, or move a damaged file aside"
            ) from None
        self._depth = 0

    def _migrate(self) -> tuple[str]:
        """Bring an older database up to :data:`SCHEMA_VERSION` in one transaction (another
        process may have done it meanwhile: the version is read again under the lock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])
            while version in MIGRATIONS:
                self._db.execute(MIGRATIONS[version])
                version += 1
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return (str(version),)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside happen together or not at all; nests."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    # ------------------------------------------------------------------ contracts

    def create(self, contract: Contract, transition: Transition) -> None:
        with self.transaction():
            try:
                self._db.execute(
                    f"INSERT INTO contracts({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    _contract_row(contract),
                )
            except sqlite3.IntegrityError:
                raise StaleContract(f"contract {contract.id} exists already") from None
            self._check_addresses(contract)
            self._log(transition)

    def save(self, contract: Contract, transition: Transition) -> None:
        """Write ``contract`` if it is still in ``transition.from_state``; log the step."""
        with self.transaction():
            row = _contract_row(contract)
            cur = self._db.execute(
                "UPDATE contracts SET role=?, borrower=?, lender=?, state=?, created_at=?, "
                "updated_at=?, requested=?, needs=?, terms=?, offered=?, nodes=?, reason=?, "
                "addresses=? WHERE id=? AND state=?",
                (*row[1:], row[0], transition.from_state.value if transition.from_state else ""),
            )
            if cur.rowcount != 1:
                now = self.get(contract.id)
                raise StaleContract(
                    f"contract {contract.id} is "
                    f"{now.state.value if now else 'unknown'}, not "
                    f"{transition.from_state.value if transition.from_state else 'new'}"
                )
            self._check_addresses(contract)
            self._log(transition)

    def _check_addresses(self, contract: Contract) -> None:
        """Refuse (and so roll back) a write that would give an open contract a VM address
        another open contract holds."""
        if contract.state.final or not contract.addresses:
            return
        held = self.addresses_in_use(exclude=contract.id)
        for node, address in contract.addresses:
            other = held.get(address_of(address))
            if other is not None:
                raise AddressInUse(
                    f"contract {contract.id}: address {address} of {node} is held by the open "
                    f"contract {other}"
                )

    def addresses_in_use(self, exclude: str | None = None) -> dict[str, str]:
        """VM address (bare, ``10.210.1.70``) -> the open contract holding it.

        Every contract not ``closed`` or ``failed`` holds its addresses; ending it frees them.
        """
        final = tuple(s.value for s in ContractState if s.final)
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, addresses FROM contracts WHERE addresses != '[]' "
                f"AND state NOT IN ({','.join('?' * len(final))})",
                final,
            ).fetchall()
        return {address_of(a): cid for cid, addresses in rows if cid != exclude
                for _node, a in json.loads(addresses)}

    def _log(self, t: Transition) -> None:
        self._db.execute(
            "INSERT INTO transitions(contract_id, at, from_state, to_state, reason) "
            "VALUES (?,?,?,?,?)",
            (t.contract_id, t.at, t.from_state.value if t.from_state else None, t.to_state.value, t.reason),
        )

    def get(self, contract_id: str) -> Contract | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM contracts WHERE id=?", (contract_id,)).fetchone()
        return _contract(row) if row else None

    def contracts(self, *, open_only: bool = False, peer: str | None = None) -> list[Contract]:
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM contracts ORDER BY created_at, id").fetchall()
        found = [_contract(r) for r in rows]
        if open_only:
            found = [c for c in found if not c.state.final]
        if peer is not None:
            found = [c for c in found if c.peer == peer]
        return found

    def history(self, contract_id: str) -> list[Transition]:
        with self._lock:
            rows = self._db.execute(
                "SELECT contract_id, at, from_state, to_state, reason FROM transitions "
                "WHERE contract_id=? ORDER BY seq",
                (contract_id,),
            ).fetchall()
        return [
            Transition(r[0], r[1], ContractState(r[2]) if r[2] else None, ContractState(r[3]), r[4])
            for r in rows
        ]

    # ------------------------------------------------------------------ hygiene

    def drop_refused(self, contract: Contract, at: float, reason: str) -> None:
        """A ``proposed`` contract ended without an agreement: remove it and its log, and
        count it in the peer's refusals, in one transaction. Refused if it is no longer
        ``proposed`` (someone moved it on)."""
        with self.transaction():
            cur = self._db.execute("DELETE FROM transitions WHERE contract_id=? AND EXISTS "
                                   "(SELECT 1 FROM contracts WHERE id=? AND state=?)",
                                   (contract.id, contract.id, ContractState.PROPOSED.value))
            cur = self._db.execute("DELETE FROM contracts WHERE id=? AND state=?",
                                   (contract.id, ContractState.PROPOSED.value))
            if cur.rowcount != 1:
                now = self.get(contract.id)
                raise StaleContract(f"contract {contract.id} is "
                                    f"{now.state.value if now else 'unknown'}, not proposed")
            self._db.execute(
                "INSERT INTO refusals(peer, role, count, first_at, last_at, last_reason) "
                "VALUES (?,?,1,?,?,?) ON CONFLICT(peer, role) DO UPDATE SET "
                "count=count+1, last_at=excluded.last_at, last_reason=excluded.last_reason",
                (contract.peer, contract.role.value, at, at, reason),
            )

    def refusals(self) -> list[Refusals]:
        with self._lock:
            rows = self._db.execute(
                "SELECT peer, role, count, first_at, last_at, last_reason FROM refusals "
                "ORDER BY peer, role").fetchall()
        return [Refusals(r[0], Role(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def compact(self, now: float, retention_s: float,
                message_retention_s: float = MESSAGE_ID_RETENTION_S) -> Compacted:
        """Remove closed and failed contracts (and their logs) last changed more than
        ``retention_s`` ago, and message ids older than ``message_retention_s``."""
        final = tuple(s.value for s in ContractState if s.final)
        marks = ",".join("?" * len(final))
        with self.transaction():
            old = f"SELECT id FROM contracts WHERE state IN ({marks}) AND updated_at < ?"
            args = (*final, now - retention_s)
            self._db.execute(f"DELETE FROM transitions WHERE contract_id IN ({old})", args)
            gone = self._db.execute(
                f"DELETE FROM contracts WHERE state IN ({marks}) AND updated_at < ?", args).rowcount
            messages = self._db.execute("DELETE FROM messages WHERE received_at < ?",
                                        (now - message_retention_s,)).rowcount
        return Compacted(gone, messages)

    # ------------------------------------------------------------------ message ids

    # -- the lender's drains ------------------------------------------------------------
    def drains(self) -> dict[str, tuple[str, float]]:
        """loan -> (why it drains, since when)."""
        with self._lock:
            rows = self._db.execute("SELECT loan, reason, since FROM drains").fetchall()
        return {loan: (reason, float(since)) for loan, reason, since in rows}

    def set_drain(self, loan: str, reason: str, since: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO drains(loan, reason, since) VALUES (?, ?, ?)",
                             (loan, reason, since))

    def drop_drains(self, loans: Iterable[str]) -> None:
        with self._lock, self.transaction():
            self._db.executemany("DELETE FROM drains WHERE loan=?", [(loan,) for loan in loans])

    def seen(self, message_id: str) -> SeenMessage | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, sender, type, digest, status, response FROM messages WHERE id=?",
                (message_id,),
            ).fetchone()
        if row is None:
            return None
        return SeenMessage(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def remember(
        self, message_id: str, sender: str, kind: str, digest: str, at: float, status: int,
        response: dict[str, Any],
    ) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?)",
                (message_id, sender, kind, digest, at, status, json.dumps(response)),
            )

    def message_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])


def _contract_row(c: Contract) -> tuple[Any, ...]:
    return (
        c.id,
        c.role.value,
        c.borrower,
        c.lender,
        c.state.value,
        c.created_at,
        c.updated_at,
        c.requested,
        json.dumps(asdict(c.needs)),
        json.dumps(asdict(c.terms)),
        json.dumps([asdict(h) for h in c.offered]),
        json.dumps([list(n) for n in c.nodes]),
        c.reason,
        json.dumps([list(a) for a in c.addresses]),
    )


def _contract(row: tuple[Any, ...]) -> Contract:
    return Contract(
        id=row[0],
        role=Role(row[1]),
        borrower=row[2],
        lender=row[3],
        state=ContractState(row[4]),
        created_at=row[5],
        updated_at=row[6],
        requested=row[7],
        needs=Needs(**json.loads(row[8])),
        terms=Terms(**json.loads(row[9])),
        offered=tuple(HostOffer(**h) for h in json.loads(row[10])),
        nodes=tuple((h, n) for h, n in json.loads(row[11])),
        reason=row[12],
        addresses=tuple((n, a) for n, a in json.loads(row[13])),
    )
