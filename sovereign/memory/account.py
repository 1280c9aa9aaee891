"""An account's safety state: one owner at a time, tamper-evident, failing closed.

Three guarantees, each a way a HALT could otherwise be lost:

* **One owner.** A session holds the account's lock for as long as it runs
  (``AccountLock``): an OS file lock in the state directory (released by the kernel when
  the process dies, however it dies), or a Redis lease with an expiry that the session
  renews (when the state store is Redis, shared by a cluster). A second session on the
  same account is refused at start.
* **Tamper-evident state.** Every stored document (the guardian's trading state, a
  simulated account) is sealed with an HMAC under the audit key (``memory.audit``), and
  the guardian's state names the audit entry that recorded its last state change. At
  start the state is checked against the audit log (``check_guardian_state``): a missing
  state for an account whose audit log records a trading history, an edited document, or
  one older than the last state change the audit log records, is refused — never reset.
* **Guarded writes.** A write that would take a HALTED account out of HALTED without a
  resume, or undo a later state change, is refused by the store transaction itself
  (``guarded``), whoever the writer is.

The way out of a refused state is the operator's: ``sovereign resume --confirm``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from sovereign.core.guardian import GuardianState, TradingState, replacement_refusal
from sovereign.memory.audit import (
    AuditEntry,
    append_in_transaction,
    entry_mac,
    same_mac,
    state_changes,
)

MAC_FIELD = "mac"
_canonical = msgspec.json.Encoder(order="sorted")


class AccountRefusedError(RuntimeError):
    """A session may not start on this account; the message says why and what to do."""


class StateIntegrityError(AccountRefusedError):
    """The stored safety state is missing, edited or inconsistent with the audit log."""


class AccountBusyError(AccountRefusedError):
    """Another session owns the account."""


def guardian_state_key(scope: str) -> str:
    return f"guardian/{scope}"


def resume_hint(scope: str) -> str:
    flag = (
        f"--account {scope.split('/', 1)[1]}"
        if scope.startswith("account/")
        else (f"--run {scope.split('/', 1)[1]}")
    )
    return (
        f"review what happened (`sovereign audit verify`, `sovereign constitution {flag}`), "
        f"then `sovereign resume {flag} --confirm --reason ...` to start it again"
    )


# -- SEALS ----------------------------------------------------------------------------------


def _mac(key: bytes, kind: str, doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != MAC_FIELD}
    return hmac.new(key, _canonical.encode([kind, body]), "sha256").hexdigest()


def seal(key: bytes, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its MAC (``kind`` keeps a document of one kind from passing as
    another's)."""
    return {**doc, MAC_FIELD: _mac(key, kind, doc)}


def unseal(key: bytes, kind: str, doc: dict[str, Any], what: str) -> dict[str, Any]:
    """The document without its MAC, if the MAC holds; else ``StateIntegrityError``."""
    mac = doc.get(MAC_FIELD)
    if not isinstance(mac, str) or not mac:
        raise StateIntegrityError(
            f"{what} carries no seal (written by hand, or by a version of Sovereign before seals)"
        )
    if not same_mac(mac, _mac(key, kind, doc)):
        raise StateIntegrityError(f"{what} does not match its seal: it was edited")
    return {k: v for k, v in doc.items() if k != MAC_FIELD}


GUARDIAN_KIND = "guardian-state"
SIM_ACCOUNT_KIND = "sim-account"


# -- THE GUARDIAN'S STATE -------------------------------------------------------------------


def check_guardian_state(
    doc: dict[str, Any] | None,
    scope: str,
    audit: sqlite3.Connection,
    key: bytes,
) -> GuardianState | None:
    """The stored trading state of ``scope``, checked against its seal and the audit log.

    None when the account has no state and no recorded history (a new account). Raises
    ``StateIntegrityError`` naming the problem otherwise."""
    what = f"the stored trading state of {scope}"
    changes = state_changes(audit, scope)
    if doc is None:
        if changes:
            last = changes[-1]
            raise StateIntegrityError(
                f"{scope} has a recorded trading history (audit entry {last.seq}: "
                f"{last.action} -> {last.payload.get('to')}) but no stored trading state: the "
                f"state store was lost, truncated or edited. It is not reset silently; "
                + resume_hint(scope)
            )
        return None
    try:
        body = unseal(key, GUARDIAN_KIND, doc, what)
        state = GuardianState.from_dict(body)
    except StateIntegrityError as exc:
        raise StateIntegrityError(f"{exc}; " + resume_hint(scope)) from None
    except (TypeError, ValueError) as exc:
        raise StateIntegrityError(f"{what} is unreadable ({exc}); " + resume_hint(scope)) from None
    problem = _audit_disagreement(state, changes, key)
    if problem:
        raise StateIntegrityError(f"{what} {problem}; " + resume_hint(scope))
    return state


def _audit_disagreement(state: GuardianState, changes: list[AuditEntry], key: bytes) -> str:
    recorded = next((c for c in changes if c.seq == state.audit_seq), None)
    if (
        recorded is None
        or recorded.hash != state.audit_hash
        or not same_mac(recorded.mac, entry_mac(key, recorded.hash))
    ):
        return (
            f"names audit entry {state.audit_seq}, which the audit log does not hold "
            "(the audit log was truncated or replaced, or the state belongs elsewhere)"
        )
    if recorded.payload.get("to") != state.state:
        return (
            f"says {state.state} but its audit entry {recorded.seq} recorded "
            f"{recorded.payload.get('to')}"
        )
    later = [c for c in changes if c.seq > state.audit_seq]
    if later:
        last = later[-1]
        return (
            f"says {state.state} but the audit log recorded a later change (entry {last.seq}: "
            f"{last.action} -> {last.payload.get('to')})"
        )
    return ""


def guarded(key: bytes, new: GuardianState) -> Callable[[dict[str, Any] | None], Any]:
    """The store change that writes ``new`` unless ``replacement_refusal`` refuses it
    against what is stored (a stored document that does not unseal is overwritten by the
    guardian's own truth only if that is at least as strict: HALTED)."""
    sealed = seal(key, GUARDIAN_KIND, new.to_dict())

    def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
        if old is None:
            return sealed
        try:
            stored = GuardianState.from_dict(unseal(key, GUARDIAN_KIND, old, "stored state"))
        except (StateIntegrityError, TypeError, ValueError):
            return sealed if new.state == TradingState.HALTED.value else None
        return None if replacement_refusal(stored, new) else sealed

    return change


def read_guardian_state(
    doc: dict[str, Any] | None, key: bytes | None
) -> tuple[GuardianState | None, str]:
    """For display: the state and, if its seal does not hold, why (never raises)."""
    if doc is None:
        return None, ""
    problem = ""
    if key is None:
        problem = "the audit key is missing: the seal cannot be checked"
        body = {k: v for k, v in doc.items() if k != MAC_FIELD}
    else:
        try:
            body = unseal(key, GUARDIAN_KIND, doc, "the stored trading state")
        except StateIntegrityError as exc:
            problem = str(exc)
            body = {k: v for k, v in doc.items() if k != MAC_FIELD}
    try:
        return GuardianState.from_dict(body), problem
    except (TypeError, ValueError) as exc:
        return None, f"unreadable: {exc}"


# -- ONE OWNER --------------------------------------------------------------------------------


def _holder(scope: str, run_id: str) -> dict[str, Any]:
    return {
        "scope": scope,
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another session"
    return (
        f"session {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
    )


class AccountLock:
    """The account's single-owner lock, held for a session's lifetime.

    ``check()`` raises ``AccountBusyError`` if the lock was lost (a Redis lease that could
    not be renewed in time): the session must stop, since someone else may now own it."""

    LEASE_MS = 30_000

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._fd: int | None = None
        self._redis: Any = None
        self._name = ""
        self._lease_lock: Any = None
        self._holder_doc = ""
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self.lost = ""

    @classmethod
    def acquire(
        cls, state_dir: str | Path, scope: str, *, run_id: str = "", redis_url: str = ""
    ) -> AccountLock:
        lock = cls(scope)
        if redis_url:
            lock._lease(redis_url, run_id)
        else:
            lock._flock(Path(state_dir), run_id)
        return lock

    def _flock(self, state_dir: Path, run_id: str) -> None:
        import fcntl

        folder = state_dir / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (self.scope.replace("/", "__") + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            except (ValueError, OSError):
                holder = None
            os.close(fd)
            raise AccountBusyError(
                f"{self.scope} is in use by {_describe(holder)}: an account has one owner "
                "at a time. Stop that session first."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(self.scope, run_id)).encode(), 0)
        self._fd = fd

    def _lease(self, redis_url: str, run_id: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5.0)
        self._name = f"sovereign:lock:{self.scope}"
        # redis-py's lock: SET NX with an expiry and a random token, renewed and released
        # only by its owner (a Lua check of the token).
        self._lease_lock = self._redis.lock(
            self._name, timeout=self.LEASE_MS / 1000.0, blocking=False, thread_local=False
        )
        if not self._lease_lock.acquire(blocking=False):
            raw = self._redis.get(self._name + ":holder")
            holder = None
            with contextlib.suppress(ValueError, TypeError):
                holder = json.loads(raw) if raw else None
            raise AccountBusyError(
                f"{self.scope} is in use by {_describe(holder)} (Redis lease "
                f"{self._name}): an account has one owner at a time. Stop that session first "
                f"(a crashed session's lease expires within {self.LEASE_MS // 1000} s)."
            )
        self._holder_doc = json.dumps(_holder(self.scope, run_id))
        self._redis.set(self._name + ":holder", self._holder_doc, px=self.LEASE_MS)
        self._renewer = threading.Thread(target=self._renew, name="account-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        from redis.exceptions import LockError

        every = self.LEASE_MS / 3000.0
        last_ok = time.monotonic()
        while not self._stop.wait(every):
            try:
                self._lease_lock.reacquire()
                self._redis.set(self._name + ":holder", self._holder_doc, px=self.LEASE_MS)
            except LockError:
                self.lost = "the lease was taken over by another session"
                return
            except Exception as exc:
                if time.monotonic() - last_ok > self.LEASE_MS / 2000.0:
                    # Given up well before the lease can expire: by then another session
                    # may hold it, and this one must have stopped trading.
                    self.lost = f"renewing the lease failed: {exc}"
                    return
                continue
            last_ok = time.monotonic()

    def check(self) -> None:
        if self.lost:
            raise AccountBusyError(f"{self.scope}: the account's lock was lost ({self.lost})")

    def release(self) -> None:
        self._stop.set()
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the lock with the last descriptor
            self._fd = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._lease_lock.release()  # refused unless still ours
                self._redis.delete(self._name + ":holder")
            self._redis.close()
            self._redis = None

    def __enter__(self) -> AccountLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- THE SIMULATED ACCOUNT --------------------------------------------------------------------


def sim_account_key(account: str) -> str:
    return f"sim-account/{account}"


def check_sim_account(
    doc: dict[str, Any] | None, key: bytes, account: str, *, has_history: bool
) -> dict[str, Any] | None:
    """A named simulated account's stored book, checked against its seal. Missing is
    refused when the account has a trading history: a fresh simulated account (the
    configured capital, no positions) would hide the losses the history records."""
    scope = f"account/{account}"
    if doc is None:
        if has_history:
            raise StateIntegrityError(
                f"the simulated account {account} has a trading history but its book (cash "
                "and positions) is missing from the state store; it is not reset silently: "
                + resume_hint(scope)
            )
        return None
    try:
        return unseal(key, SIM_ACCOUNT_KIND, doc, f"the simulated account {account}")
    except StateIntegrityError as exc:
        raise StateIntegrityError(f"{exc}; " + resume_hint(scope)) from None


# -- A REAL BROKER'S ACCOUNT ------------------------------------------------------------------

BINDING_ACTION = "broker_account_bound"


def bind_broker_account(audit: Any, identity: str, account: str) -> str:
    """The Sovereign account (scope) that trades the broker account ``identity``.

    A real broker account has one trading state: the first session that trades it binds
    it to its scope (``account`` if named, else ``account/<identity>``), on the audit log,
    and every later session must use that scope. Refused (``AccountRefusedError``): a
    name other than the bound one, or a name already bound to another broker account."""
    conn = audit.connection
    key = audit.ledger.key(conn)
    # Read and bind in one transaction: two first sessions on one broker account cannot
    # bind it to two Sovereign accounts (and hold two locks on it).
    conn.execute("BEGIN IMMEDIATE")
    entry = None
    try:
        rows = conn.execute(
            "SELECT json_extract(payload, '$.broker_account'), json_extract(payload, '$.scope') "
            "FROM audit WHERE action = ? ORDER BY seq",
            (BINDING_ACTION,),
        ).fetchall()
        bound = {b: s for b, s in rows}
        scope_of = bound.get(identity)
        wanted = f"account/{account}" if account else (scope_of or f"account/{identity}")
        if scope_of is not None and scope_of != wanted:
            raise AccountRefusedError(
                f"the broker account {identity} belongs to the Sovereign account "
                f"{scope_of.split('/', 1)[1]} (its trading state, halts included, lives "
                f"there): use --account {scope_of.split('/', 1)[1]}, or no --account"
            )
        others = sorted(b for b, s in bound.items() if s == wanted and b != identity)
        if others:
            raise AccountRefusedError(
                f"{wanted} trades the broker account {others[0]}, not {identity}: a Sovereign "
                "account has one broker account; name another account for this one"
            )
        if scope_of is None:
            entry = append_in_transaction(
                conn,
                key,
                ts_ns=time.time_ns(),
                actor="session",
                action=BINDING_ACTION,
                payload={"broker_account": identity, "scope": wanted},
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if entry is not None:
        audit.ledger.anchor(conn, entry.seq, entry.hash)
    return wanted
