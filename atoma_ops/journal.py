"""The intent journal: every chain write is persisted (signed bytes + digest) before it is submitted.

A chain write is an :class:`Intent`: an idempotency key, the entry function, the sender, and two callbacks — a
*preflight* that says whether the chain already shows the write as done (a ticket exists, a stack is claimed), and a
*resolver* that computes the arguments at send time (e.g. the commitment, recomputed from the stack's history just
before signing). :func:`execute_intents` runs a batch of intents:

1. rows already journaled as finished are returned as they are;
2. rows journaled as ``pending`` (signed and possibly submitted, outcome unknown: the process died or the network
   dropped) are resolved by digest: found ⇒ record its outcome; not found ⇒ submit the *identical* bytes again, so
   the chain executes the write at most once (Sui forbids re-signing a different transaction with the same gas coin
   until the first is known to have failed);
3. for the rest: preflight (done ⇒ ``already_done``), resolve the arguments, prepare and sign every intent, journal
   the whole batch as ``pending`` in one transaction, submit them one by one, journal the outcomes. Journaling is a
   *claim* (:meth:`JournalStore.claim_actions`): a key another writer (another process, another host on a shared
   PostgreSQL journal) claimed first is not submitted here; its outcome is awaited and taken from the journal.
   So each key has one signed transaction, which the chain executes at most once.

Errors fall in three classes (:func:`atoma_ops.core.errors.classify`) that drive retries: *retryable* (a busy file, a dropped connection
before anything was submitted), *in doubt* (submitted, outcome unknown: retrying resolves it by digest) and
*terminal* (the chain refused: a Move abort, a bad argument; retrying cannot help).

Failpoints (:mod:`atoma_ops.core.failpoints`) at every step boundary let tests prove that a re-run converges: ``journal:before-write``, ``journal:after-write`` (journaled, not
submitted), ``journal:after-submit`` (executed, outcome not recorded).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, Sequence

from .core.errors import ErrorClass, classify
from .core.failpoints import failpoint
from .chain.errors import (
    ChainError,
    ExecutionFailure,
    InvalidArgument,
    MoveAbort,
    MoveArithmeticError,
    TransactionRejected,
)
from .chain.port import Chain
from .chain.types import PreparedTransaction, TxResult

log = logging.getLogger("atoma_ops.journal")

# journal statuses
PENDING = "pending"  # signed and journaled; submitted or not, the outcome is unknown
SUCCESS = "success"  # executed by this journal
ALREADY_DONE = "already_done"  # the chain showed the write as done before anything was signed
FAILED = "failed"  # the chain refused it (terminal)
FINISHED = (SUCCESS, ALREADY_DONE)


# ----------------------------------------------------------------------------------------------- error taxonomy
class InDoubt(ChainError):
    """A transaction was submitted and its outcome is unknown. Retrying looks it up by digest and, if it never
    arrived, submits the identical bytes again."""

    kind = "InDoubt"
    error_class = ErrorClass.IN_DOUBT

    def __init__(self, message: str, digest: str):
        super().__init__(message)
        self.digest = digest


class ActionFailed(ChainError):
    """One or more intents of a batch were refused by the chain (terminal). ``failures`` maps key → error."""

    kind = "ActionFailed"

    def __init__(self, failures: dict[str, ChainError], results: list["ActionResult"]):
        self.failures = failures
        self.results = results
        detail = "; ".join(f"{k}: {e}" for k, e in list(failures.items())[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} chain write(s) refused: {detail}{more}")


# ----------------------------------------------------------------------------------------------- intents
class JournalStore(Protocol):
    """Where intents are journaled: the DuckDB ledger's ``chain_actions`` table (the embedded default,
    :class:`atoma_ops.ledger.Ledger`) or PostgreSQL, shared by several hosts
    (:class:`atoma_ops.journal_postgres.PostgresJournal`). The contract tests run against both."""

    def actions(self, keys: list[str] | None = None, *, statuses: list[str] | None = None) -> dict[str, dict]: ...

    def record_actions(self, rows: list[dict]) -> None: ...

    def claim_actions(self, rows: list[dict]) -> list[str]:
        """Journal ``rows`` as ``pending`` in one transaction, each only where its key is free (no row; or a row
        not ``pending`` that is ``failed``, or finished and the row says ``repeatable``); the keys claimed. Two
        writers claiming one key at once: exactly one gets it."""
        ...


class WrittenElsewhere(ChainError):
    """Another writer (a process or host sharing the journal) claimed this intent's key and the chain refused its
    transaction (terminal here: a later run tries the key afresh)."""

    kind = "WrittenElsewhere"


#: how long an intent whose key another writer claimed waits for that writer's outcome before it is in doubt
#: (a retry then resolves the other writer's row by digest, as after a crash)
CLAIM_WAIT_S = 30.0


Preflight = Callable[[], Awaitable[bool]]
Resolver = Callable[[], Awaitable[dict]]


@dataclass
class Intent:
    """One chain write to make exactly once.

    Args:
        key: the idempotency key (stable across re-runs: built from what the write *means*, e.g.
            ``try_settle_stack:42``).
        function: the ``atoma::db`` entry function.
        sender: the acting address or alias.
        args: the call's arguments when known up front.
        resolve: computes the arguments at send time instead (overrides ``args``).
        done: preflight; True when the chain already shows this write as done.
        stack_small_ids: the stacks the write covers, kept in the journal row's ``stack_small_ids`` column (one for a
            try-settle or an attestation, a batch for a claim), so recovering a row never parses its key.
        repeatable: a *set-to-value* write (a subscription price, an admin setting): a finished journal row does
            not stand on its own, the preflight decides, so going back to an earlier value is written again.
    """

    key: str
    function: str
    sender: str
    args: dict = field(default_factory=dict)
    resolve: Resolver | None = None
    done: Preflight | None = None
    stack_small_ids: tuple[int, ...] = ()
    repeatable: bool = False

    @property
    def stack_small_id(self) -> int | None:
        """The stack of a single-stack write (None for none or several): the row's ``stack_small_id`` column."""
        return self.stack_small_ids[0] if len(self.stack_small_ids) == 1 else None


@dataclass
class ActionResult:
    """What became of an intent. ``status``: success | already_done | failed; ``recovered``: it was resolved from a
    ``pending`` journal row left by an earlier, interrupted attempt; ``resent``: recovered by submitting the journaled
    bytes again (the chain had never seen them), which the journal counts as one more attempt."""

    key: str
    function: str
    status: str
    digest: str | None = None
    tx: TxResult | None = None
    error: ChainError | None = None
    recovered: bool = False
    args: dict = field(default_factory=dict)
    resent: bool = False
    stack_small_ids: tuple[int, ...] = ()  # the stacks the write covers (its journal row's column)

    @property
    def ok(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "function": self.function,
            "status": self.status,
            "digest": self.digest,
            "recovered": self.recovered,
            "error": None if self.error is None else (
                self.error.to_json() if hasattr(self.error, "to_json") else {"kind": _error_code(self.error), "message": str(self.error)}
            ),
        }


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, MoveAbort):
        return f"{exc.module}:{exc.code}"
    return getattr(exc, "kind", None) or getattr(exc, "type", None) or type(exc).__name__


def _jsonable_args(args: dict) -> dict:
    return {k: ("0x" + v.hex() if isinstance(v, (bytes, bytearray)) else v) for k, v in args.items()}


async def execute_intents(
    chain: Chain, journal: JournalStore, intents: Sequence[Intent], *, raise_on_failure: bool = True
) -> list[ActionResult]:
    """Run ``intents`` exactly once each (see the module docstring). Results come back in the intents' order.

    Raises:
        InDoubt: a submission's outcome is unknown (the batch stops there; every outcome known so far is recorded).
        ActionFailed: when ``raise_on_failure``, after the whole batch ran, if any intent was refused.
    """
    keys = [i.key for i in intents]
    if len(set(keys)) != len(keys):
        raise InvalidArgument("two intents of one batch share an idempotency key")
    journaled = await asyncio.to_thread(journal.actions, keys)
    results: dict[str, ActionResult] = {}
    outcomes: list[dict] = []

    # 1-2: finished rows stand; pending rows are resolved by digest.
    for intent in intents:
        row = journaled.get(intent.key)
        if row is None or row["status"] == FAILED:
            continue  # a refused write may be tried again with arguments resolved afresh
        if row["status"] in FINISHED:
            if not intent.repeatable:
                results[intent.key] = ActionResult(intent.key, intent.function, row["status"], row["digest"])
            continue
        result = await _recover(chain, intent, row)
        results[intent.key] = result
        outcomes.append(_outcome_row(intent, result))

    # 3: preflight, resolve, sign, journal, submit.
    fresh: list[tuple[Intent, dict]] = []
    for intent in intents:
        if intent.key in results:
            continue
        # a refusal found while checking or resolving (a ticket with another proof, a stack gone) fails this
        # intent only; the others of the batch go on
        try:
            if intent.done is not None and await intent.done():
                result = ActionResult(intent.key, intent.function, ALREADY_DONE)
                results[intent.key] = result
                outcomes.append(_outcome_row(intent, result))
                continue
            args = await intent.resolve() if intent.resolve is not None else dict(intent.args)
        except Exception as exc:
            if classify(exc) is not ErrorClass.TERMINAL:
                raise
            # never signed, so nothing to journal: a refused bad input leaves the ledger as it was
            results[intent.key] = ActionResult(intent.key, intent.function, FAILED, error=exc)  # type: ignore[arg-type]
            continue
        fresh.append((intent, args))

    # On a chain whose transactions pin object versions (Sui: the gas coin, owned badges), a second transaction of
    # the same sender cannot be built until the first has run: sign, journal and submit one at a time there.
    groups = [[f] for f in fresh] if getattr(chain, "sequential_writes", False) else [fresh]
    for group in groups:
        await _sign_journal_submit(chain, journal, group, results, outcomes)
    if outcomes:  # preflight and recovery outcomes when nothing was left to sign
        await asyncio.to_thread(journal.record_actions, outcomes)

    ordered = [results[k] for k in keys]
    for intent in intents:
        results[intent.key].stack_small_ids = intent.stack_small_ids
    failures = {r.key: r.error for r in ordered if r.status == FAILED and r.error is not None}
    if failures and raise_on_failure:
        raise ActionFailed(failures, ordered)
    return ordered


async def _sign_journal_submit(
    chain: Chain, journal: JournalStore, fresh: list[tuple[Intent, dict]], results: dict, outcomes: list[dict]
) -> None:
    """Prepare and sign ``fresh``, journal them as ``pending`` in one write, submit them, record the outcomes."""
    prepared: list[tuple[Intent, dict, PreparedTransaction, str]] = []
    for intent, args in fresh:
        try:
            p = await chain.prepare(intent.sender, intent.function, args)
        except ChainError as exc:  # refused before signing (Sui's dry run): nothing to journal
            results[intent.key] = ActionResult(intent.key, intent.function, FAILED, error=exc, args=args)
            continue
        prepared.append((intent, args, p, chain.sign(p)))

    if not prepared:
        return
    # named by entry function: "journal:after-write:claim_funds"
    where = ":" + "+".join(sorted({intent.function for intent, *_ in prepared}))
    failpoint("journal:before-write" + where)
    claimed = set(await asyncio.to_thread(
        journal.claim_actions,
        [
            {
                "idempotency_key": intent.key,
                "kind": intent.function,
                "status": PENDING,
                "stack_small_id": intent.stack_small_id,
                "stack_small_ids": list(intent.stack_small_ids),
                "sender": p.sender,
                "args": _jsonable_args(args),
                "signed_tx_bytes": p.tx_bytes,
                "signature": sig,
                "digest": p.digest,
                "attempt": True,
                "repeatable": intent.repeatable,
            }
            for intent, args, p, sig in prepared
        ],
    ))
    failpoint("journal:after-write" + where)
    # a key another writer claimed first is theirs to submit: these bytes are never sent, the outcome is theirs
    # (awaited once this writer's own keys are submitted and recorded)
    lost = [intent for intent, *_ in prepared if intent.key not in claimed]
    prepared = [x for x in prepared if x[0].key in claimed]

    try:
        for i, (intent, args, p, sig) in enumerate(prepared):
            if i:  # some of the batch submitted, the rest not
                failpoint("journal:between-submits" + where)
            result = await _submit(chain, intent, p, sig)
            result.args = args
            results[intent.key] = result
            outcomes.append(_outcome_row(intent, result))
        failpoint("journal:after-submit" + where)
    finally:
        if outcomes:
            await asyncio.to_thread(journal.record_actions, outcomes)
            del outcomes[:]  # recorded; the caller's final write must not repeat them
    if lost:
        await _await_other_writer(journal, lost, results)


async def _await_other_writer(journal: JournalStore, intents: list[Intent], results: dict) -> None:
    """The outcome of intents whose keys another writer claimed: wait (up to :data:`CLAIM_WAIT_S`) until its rows
    leave ``pending`` and take what they say; still pending then ⇒ :class:`InDoubt` (a retry resolves the row by
    digest, as after a crash)."""
    keys = [i.key for i in intents]
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + CLAIM_WAIT_S, 0.05
    while True:
        rows = await asyncio.to_thread(journal.actions, keys)
        pending = [k for k in keys if rows.get(k, {}).get("status") == PENDING]
        if not pending:
            break
        if loop.time() >= deadline:
            row = rows[pending[0]]
            raise InDoubt(f"{row['kind']} ({pending[0]}) is being written by another writer, outcome unknown", row["digest"])
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    for intent in intents:
        row = rows.get(intent.key)
        if row is not None and row["status"] in FINISHED:
            log.info("journal: %s was written by another writer (%s)", intent.key, row["status"])
            results[intent.key] = ActionResult(intent.key, intent.function, row["status"], row["digest"])
        else:  # refused when the other writer sent it (or its row vanished): a later run tries afresh
            detail = (row or {}).get("last_error") or "its row is gone"
            error = WrittenElsewhere(f"{intent.function} ({intent.key}) was refused when another writer sent it: {detail}")
            results[intent.key] = ActionResult(intent.key, intent.function, FAILED, (row or {}).get("digest"), error=error)


async def execute_intent(chain: Chain, journal: JournalStore, intent: Intent) -> ActionResult:
    """One intent (see :func:`execute_intents`); a refusal raises the chain's own error (e.g. ``MoveAbort``)."""
    try:
        (result,) = await execute_intents(chain, journal, [intent])
    except ActionFailed as exc:
        raise exc.failures[intent.key] from None
    return result


async def resolve_pending(
    chain: Chain, journal: JournalStore, *, sender: str | None = None, kinds: Sequence[str] | None = None,
    keys: Sequence[str] | None = None, resend: bool = True,
) -> list[ActionResult]:
    """Resolve every ``pending`` row (of ``sender``, of the entry functions ``kinds``, among ``keys``) by digest,
    re-sending the identical bytes where the chain never saw them. Stages whose intents are rebuilt from chain state
    (a claim batch, whose stacks vanish once claimed) call this first, so a write made just before a crash is still
    recorded. ``resend=False`` is for a stage that found its effect already on chain: bytes the chain never saw are
    recorded as ``already_done`` and never sent (they would do it twice)."""
    rows = await asyncio.to_thread(journal.actions, list(keys) if keys is not None else None, statuses=[PENDING])
    out: list[ActionResult] = []
    outcomes: list[dict] = []
    try:
        for key, row in sorted(rows.items()):
            if sender is not None and row["sender"] != sender:
                continue
            if kinds is not None and row["kind"] not in kinds:
                continue
            intent = Intent(key, row["kind"], row["sender"], stack_small_ids=_row_stacks(row))
            result = await _recover(chain, intent, row, resend=resend)
            result.stack_small_ids = intent.stack_small_ids
            out.append(result)
            outcomes.append(_outcome_row(intent, result))
    finally:
        if outcomes:
            await asyncio.to_thread(journal.record_actions, outcomes)
    return out


async def _submit(chain: Chain, intent: Intent, p: PreparedTransaction, signature: str) -> ActionResult:
    try:
        tx = await chain.execute(p, signature)
    except (MoveAbort, MoveArithmeticError, ExecutionFailure, TransactionRejected) as exc:
        if intent.done is not None and await intent.done():
            return ActionResult(intent.key, intent.function, ALREADY_DONE, p.digest, error=exc)
        return ActionResult(intent.key, intent.function, FAILED, p.digest, error=exc)
    except ChainError:
        raise
    except Exception as exc:  # the bytes may or may not have arrived
        raise InDoubt(f"{intent.function} ({intent.key}) submitted, outcome unknown: {exc!r}", p.digest) from exc
    return ActionResult(intent.key, intent.function, SUCCESS, tx.digest, tx)


async def _recover(chain: Chain, intent: Intent, row: dict, *, resend: bool = True) -> ActionResult:
    """Resolve a ``pending`` row: look its digest up; if the chain never saw it, submit the identical bytes (or,
    without ``resend``, record it as done by other means)."""
    digest = row["digest"]
    try:
        tx = await chain.get_transaction(digest)
    except Exception as exc:
        raise InDoubt(f"{intent.function} ({intent.key}): cannot look up {digest}: {exc!r}", digest) from exc
    if tx is not None:
        log.info("journal: %s was executed before the interruption (%s)", intent.key, tx.status)
        if tx.ok:
            return ActionResult(intent.key, intent.function, SUCCESS, digest, tx, recovered=True)
        from .chain.errors import abort_from_json

        error = abort_from_json(tx.error or {})
        error.digest = digest
        status = ALREADY_DONE if intent.done is not None and await intent.done() else FAILED
        return ActionResult(intent.key, intent.function, status, digest, error=error, recovered=True)
    if not resend:
        log.info("journal: %s never reached the chain and its effect is there: not sent", intent.key)
        return ActionResult(intent.key, intent.function, ALREADY_DONE, digest, recovered=True)
    log.info("journal: %s never reached the chain; submitting the identical bytes again", intent.key)
    prepared = PreparedTransaction(
        tx_bytes=row["signed_tx_bytes"], digest=digest, sender=row["sender"], function=row["kind"]
    )
    result = await _submit(chain, intent, prepared, row["signature"])
    result.recovered = True
    result.resent = True
    return result


def _row_stacks(row: dict) -> tuple[int, ...]:
    """The stacks a journal row covers: its ``stack_small_ids`` column (rows journaled before it existed: their
    ``stack_small_id``)."""
    ids = row.get("stack_small_ids")
    if ids is not None and len(ids):
        return tuple(int(i) for i in ids)
    single = row.get("stack_small_id")
    return () if single is None else (int(single),)


def _outcome_row(intent: Intent, result: ActionResult) -> dict:
    row: dict[str, Any] = {
        "idempotency_key": intent.key,
        "kind": intent.function,
        "status": result.status,
        "stack_small_id": intent.stack_small_id,
        "stack_small_ids": list(intent.stack_small_ids) or None,
        "digest": result.digest,
    }
    if result.resent:
        row["attempt"] = True  # the journaled bytes were submitted once more
    if result.error is not None:
        row["last_error_code"] = _error_code(result.error)
        row["last_error"] = str(result.error)
    return row
