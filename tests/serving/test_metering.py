"""Metering (atoma-protocol.md §9) and the node store: estimates by hand, reservations, refusals, concurrency,
the single-transaction settle + history append, stale reservations.

Estimates use the real SmolLM2 tokenizer (the session ``engine``); the expected values are the §9 formula written
out by hand over the per-text token counts.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from atoma_ops.protocol.compute_units import DEFAULT_MAX_TOKENS
from atoma_ops.serving.engines.base import Sampling, completion
from atoma_ops.serving.metering import (
    TEMPLATE_MARGIN,
    TEMPLATE_MARGIN_PER_MESSAGE,
    BadRequest,
    InsufficientUnits,
    NothingToCommit,
    StackBusy,
    StackSettling,
    estimate,
    sampling_of,
    validate_request,
)
from atoma_ops.serving.store import NodeStore, Reservation, Settlement, StackFacts

from tests.serving.test_kit import stub_engine  # noqa: E402


def facts(stack: int = 1, units: int = 1_000) -> StackFacts:
    return StackFacts(stack, units, 1, 1, "0x" + "ab" * 32, 1_000_000)


def response(prompt: int, completion_tokens: int, text: str = "ok") -> dict:
    return completion("m", text, "stop", prompt, completion_tokens)


def req(text: str = "hello", max_tokens: int = 8) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


# ====================================================================== estimates (§9) by hand
def test_atoma_estimate_and_reservation_by_hand(engine):
    n = engine.count_tokens
    request = {
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
        "max_tokens": 16,
    }
    e = estimate(request, engine)
    assert e.atoma == (n("You are terse.") + 3) + (n("Name a color.") + 3) + 16
    assert e.output_budget == 16
    assert e.templated_prompt == engine.prompt_tokens(request)
    assert e.method == "templated"
    assert e.bound == e.templated_prompt + 16
    assert e.reserved == max(e.atoma, e.bound)


def test_default_system_prompt_makes_the_prompt_longer_than_the_atoma_estimate(engine):
    """The trap: SmolLM2's template adds a default system prompt; reserving the bare §9 estimate would under-reserve."""
    request = req("Hi", max_tokens=16)
    e = estimate(request, engine)
    assert e.atoma == (engine.count_tokens("Hi") + 3) + 16
    assert e.templated_prompt > engine.count_tokens("Hi") + 3 + 15  # the default system prompt is ~20 tokens
    assert e.reserved == e.templated_prompt + 16 > e.atoma
    (resp,) = engine.chat([request])
    assert resp["usage"]["prompt_tokens"] == e.templated_prompt
    assert resp["usage"]["prompt_tokens"] + resp["usage"]["completion_tokens"] > e.atoma - 16  # the prompt alone
    assert resp["usage"]["prompt_tokens"] + resp["usage"]["completion_tokens"] <= e.reserved


def test_output_budget_precedence_and_content_parts(engine):
    n = engine.count_tokens
    base = [{"role": "user", "content": "one two three"}]
    assert estimate({"messages": base, "max_completion_tokens": 5, "max_tokens": 50}, engine).atoma == n("one two three") + 3 + 5
    assert estimate({"messages": base, "max_tokens": 50}, engine).atoma == n("one two three") + 3 + 50
    no_budget = estimate({"messages": base}, engine)
    assert no_budget.atoma == n("one two three") + 3 + DEFAULT_MAX_TOKENS
    assert no_budget.reserved == no_budget.templated_prompt + DEFAULT_MAX_TOKENS
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a cat"},
                                                       {"type": "image_url", "image_url": {"url": "x"}},
                                                       {"type": "text", "text": "be brief"}]}], "max_tokens": 4}
    stub = stub_engine()
    assert estimate(parts, stub).atoma == (2 + 3) + 0 + (2 + 3) + 4  # images count 0, +3 per text part


def test_margin_when_the_engine_cannot_count_the_templated_prompt():
    stub = stub_engine(under_report=True)  # prompt_tokens() -> None
    request = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}],
               "max_tokens": 7}
    e = estimate(request, stub)
    assert e.atoma == (2 + 3) + (3 + 3) + 7
    assert e.method == "margin" and e.templated_prompt is None
    assert e.reserved == e.atoma + TEMPLATE_MARGIN + 2 * TEMPLATE_MARGIN_PER_MESSAGE


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": -3},
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "8"},
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": True},
        {"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
        {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
        {"messages": [{"role": "user", "content": "x"}], "n": 2},
        {"messages": [{"role": "user", "content": "x"}], "temperature": float("nan")},
        {"messages": [{"role": "user", "content": "x"}], "temperature": float("inf")},
        {"messages": [{"role": "user", "content": "x"}], "temperature": -0.1},
        {"messages": [{"role": "user", "content": "x"}], "top_p": 0},
        {"messages": [{"role": "user", "content": "x"}], "seed": 2**63},
        {"messages": [{"role": "user", "content": "x"}], "seed": 1.5},
        {"messages": [{"role": "user", "content": "x"}], "stop": ""},
        {"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]},
        {"messages": [{"role": "user", "content": "x"}], "tools": []},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True},
        {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5},
        {"messages": [{"role": "user", "content": "x"}], "frobnicate": 1},
        {"messages": [{"role": "user", "content": "x"}], "model": 7},
        {"messages": [{"role": "user", "content": "x"}], "user": 7},
    ],
)
def test_bad_requests(body):
    with pytest.raises(BadRequest):
        validate_request(body)


TEXT = frozenset({"text"})
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.mark.parametrize(
    "message,parts,why",
    [
        ({"role": "banana", "content": "x"}, None, "role 'banana'"),
        ({"role": "tool", "content": "x", "tool_call_id": "c1"}, None, "no tool calling"),
        ({"role": "user", "content": None}, None, "needs a 'content'"),
        ({"role": "system"}, None, "needs a 'content'"),
        ({"role": "user", "content": ["hello"]}, None, "content[0] must be an object"),
        ({"role": "user", "content": [{"text": "no type"}]}, None, "content[0] must be an object"),
        ({"role": "user", "content": [{"type": "text", "text": 5}]}, None, "string 'text'"),
        ({"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}, TEXT, "'image_url' part"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, TEXT, "'input_audio' part"),
        ({"role": "assistant", "content": "x", "tool_calls": [{"id": "c1"}]}, None, "tool_calls is not supported"),
        ({"role": "user", "content": "x", "name": 7}, None, "name must be a string"),
        ({"role": "user", "content": "x", "colour": "red"}, None, "unknown field 'colour'"),
    ],
)
def test_messages_the_model_cannot_read_are_refused_by_name(message, parts, why):
    """Roles, fields and content parts: what a text model would drop or misread (and charge) is a 400 naming it."""
    with pytest.raises(BadRequest, match=re.escape(why)) as info:
        validate_request({"messages": [{"role": "user", "content": "first"}, message]}, content_parts=parts)
    assert info.value.fields["param"] == "messages" and "messages[1]" in str(info.value)


@pytest.mark.parametrize(
    "message,parts",
    [
        ({"role": "developer", "content": "be brief"}, TEXT),
        ({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"}, TEXT),
        # an answer's message as the SDK dumps it, appended to the conversation: its null fields are no tool call
        ({"role": "assistant", "content": "hi", "refusal": None, "annotations": [], "audio": None,
          "function_call": None, "tool_calls": None}, TEXT),
        ({"role": "assistant", "content": None}, TEXT),
        # a parsed answer's model_dump() (openai's ParsedChatCompletionMessage) and vLLM's reasoning field, both null
        ({"role": "assistant", "content": "hi", "parsed": None, "reasoning_content": None}, TEXT),
        ({"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}, None),  # relayed: the server decides
    ],
)
def test_messages_the_model_reads_pass(message, parts):
    body = {"messages": [message]}
    assert validate_request(body, content_parts=parts) is body


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": True, "stream_options": {"include_usage": True}},
        {"stream": False},
        {"temperature": 0, "top_p": 1, "seed": -5, "stop": "\n", "n": 1, "user": "u-1"},
        {"temperature": 2.0, "top_p": 0.5, "seed": 2**63 - 1, "stop": ["a", "b", "c", "d"]},
        {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "tool_choice": "none",
         "response_format": {"type": "text"}, "logit_bias": {}},
        {"max_completion_tokens": 5, "max_tokens": 2**32 - 1, "model": "anything-checked-later"},
    ],
)
def test_honoured_parameters_pass(extra):
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    assert validate_request(body) is body


@pytest.mark.parametrize(
    "extra,expected",
    [
        ({}, Sampling(max_tokens=8192)),
        ({"max_tokens": 9, "temperature": 0, "seed": 3}, Sampling(max_tokens=9)),  # greedy: no seed
        ({"max_tokens": 9, "temperature": 0.7, "seed": 3, "top_p": 0.9, "stop": "x"},
         Sampling(max_tokens=9, temperature=0.7, top_p=0.9, seed=3, stop=("x",))),
        ({"max_completion_tokens": 4, "max_tokens": 9, "temperature": 1}, Sampling(max_tokens=4, temperature=1.0, seed=11)),
        # below vLLM's 1e-5 a temperature is greedy (logits / 1e-39 overflow float32: inf, nan, a 500)
        ({"max_tokens": 9, "temperature": 1e-39, "seed": 3}, Sampling(max_tokens=9)),
        ({"max_tokens": 9, "temperature": 9.99e-6}, Sampling(max_tokens=9)),
        ({"max_tokens": 9, "temperature": 1e-5}, Sampling(max_tokens=9, temperature=1e-5, seed=11)),
    ],
)
def test_sampling_of(extra, expected):
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    assert sampling_of(validate_request(body), default_seed=11) == expected


def test_unseeded_sampling_draws_a_fresh_seed():
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 1.0}
    seeds = {sampling_of(body).seed for _ in range(8)}
    assert None not in seeds and len(seeds) == 8


# ====================================================================== the store
def test_reserve_settle_release_arithmetic(tmp_path):
    with NodeStore(tmp_path / "s.sqlite") as store:
        (r1, r2) = store.reserve([(facts(units=100), 40), (facts(units=100), 50)])
        assert isinstance(r1, Reservation) and isinstance(r2, Reservation)
        u = store.usage(1)
        assert (u.used_units, u.reserved_units, u.units_left, u.in_flight) == (0, 90, 10, 2)
        # 100 - 0 used - 90 reserved = 10 left < 11
        (refused,) = store.reserve([(facts(units=100), 11)])
        assert isinstance(refused, InsufficientUnits)
        assert refused.fields == {"stack_small_id": 1, "units_left": 10, "estimate": 11, "reserved_in_flight": 90}
        assert not refused.final  # the 90 units held by requests in flight come back: it may fit then
        assert "stack 1" in str(refused) and "10 compute units left" in str(refused) and "estimate is 11" in str(refused)
        # settle r1 to its actual usage 30 (< 40 reserved): the 10 unused come back
        (s1,) = store.settle([Settlement(r1, req("a"), response(20, 10))])
        assert s1.entry.units == 30 and s1.entry.index == 0 and s1.entry.reserved_units == 40
        u = store.usage(1)
        assert (u.used_units, u.reserved_units, u.units_left, u.num_requests) == (30, 50, 20, 1)
        store.release([r2])
        u = store.usage(1)
        assert (u.used_units, u.reserved_units, u.units_left, u.num_requests, u.in_flight) == (30, 0, 70, 1, 0)
        store.release([r2])  # releasing twice is harmless
        assert store.usage(1).reserved_units == 0
        assert len(store.history(1)) == 1


def test_usage_is_capped_at_the_stack_and_the_overrun_recorded(tmp_path):
    """An engine that under-reports its prompt could settle above its reservation: charge at most what the stack
    still has, never past its units."""
    with NodeStore(tmp_path / "s.sqlite") as store:
        (r,) = store.reserve([(facts(units=100), 60)])
        (s,) = store.settle([Settlement(r, req(), response(500, 20))])
        assert s.entry.usage_units == 520 and s.entry.units == 100
        u = store.usage(1)
        assert (u.used_units, u.units_left, u.overrun_units) == (100, 0, 420)
        assert isinstance(store.reserve([(facts(units=100), 1)])[0], InsufficientUnits)


def test_check_constraint_backs_the_arithmetic(tmp_path):
    with NodeStore(tmp_path / "s.sqlite") as store:
        store.reserve([(facts(units=100), 10)])
        with pytest.raises(sqlite3.IntegrityError):
            store.conn.execute("UPDATE stacks SET used_units = 95 WHERE stack_small_id = 1")


def test_settle_and_history_append_are_one_transaction(tmp_path):
    """If the history record cannot be written, the usage is not charged either (and vice versa)."""
    with NodeStore(tmp_path / "s.sqlite") as store:
        (r,) = store.reserve([(facts(), 50)])
        store.conn.execute("CREATE TRIGGER no_history BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(sqlite3.IntegrityError, match="disk full"):
            store.settle([Settlement(r, req(), response(20, 5))])
        u = store.usage(1)
        assert (u.used_units, u.reserved_units, u.num_requests, u.in_flight) == (0, 50, 0, 1)  # all rolled back
        assert len(store.history(1)) == 0
        store.conn.execute("DROP TRIGGER no_history")
        store.conn.execute(
            "CREATE TRIGGER no_usage BEFORE UPDATE OF used_units ON stacks BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        with pytest.raises(sqlite3.IntegrityError):
            store.settle([Settlement(r, req(), response(20, 5))])
        assert len(store.history(1)) == 0 and store.usage(1).used_units == 0


def test_settlement_state_blocks_reservations_and_waits_for_in_flight(tmp_path):
    with NodeStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(NothingToCommit):
            store.begin_settlement(1)
        (r,) = store.reserve([(facts(), 50)])
        store.settle([Settlement(r, req(), response(20, 5))])
        (r2,) = store.reserve([(facts(), 50)])
        with pytest.raises(StackBusy):
            store.begin_settlement(1)
        store.release([r2])
        assert store.begin_settlement(1) == "open"
        (refused,) = store.reserve([(facts(), 1)])
        assert isinstance(refused, StackSettling)
        store.abort_settlement(1)
        assert isinstance(store.reserve([(facts(), 1)])[0], Reservation)


def test_an_aborted_settlement_drops_the_refusals_it_caused_and_only_those(tmp_path):
    """While the store settles a stack its requests are refused (423 stack_in_settlement) and the node records those
    refusals; when the chain refuses the settlement and the stack reopens, they are no longer true: dropped with the
    reopening. Other refusals, other stacks' and a settled stack's stay."""
    with NodeStore(tmp_path / "s.sqlite") as store:
        for stack in (1, 2, 3):
            (r,) = store.reserve([(facts(stack), 50)])
            store.settle([Settlement(r, req(), response(20, 5))])
        assert store.begin_settlements([1, 2, 3]) == ["open", "open", "open"]
        for stack in (1, 2, 3):
            (refused,) = store.reserve([(facts(stack), 1)])
            assert isinstance(refused, StackSettling)
            store.record_refusal(stack, "line-0", refused.type, str(refused))
        store.record_refusal(1, "line-1", "invalid_request_error", "unknown model")
        store.finish_settlement(3, {"digest": "0x3"})
        assert store.find_request(1, "line-0")["type"] == "stack_in_settlement"

        store.abort_settlement(1)  # the chain refused stack 1's settlement
        assert store.usage(1).state == "open" and store.find_request(1, "line-0") is None
        assert store.find_request(1, "line-1")["type"] == "invalid_request_error"  # still true: stays
        assert store.find_request(2, "line-0")["type"] == "stack_in_settlement"  # still settling
        store.abort_settlements([3])  # settled: not reopened, its refusal stays
        assert store.usage(3).state == "settled" and store.find_request(3, "line-0")["type"] == "stack_in_settlement"
        # a settling refusal that lands after the reopening (the abort in between) is not recorded either
        store.record_refusal(1, "line-2", "stack_in_settlement", "stack 1 is being settled by this node")
        assert store.find_request(1, "line-2") is None
        assert store.request_ids(1) == {"line-1": "refused"}


def test_reserve_now_reserves_at_once_or_not_at_all(tmp_path):
    """The event loop's fast path: it reserves when nothing holds the store, and otherwise says so (None) at once,
    reserving nothing, instead of waiting on this process's lock or another process's transaction."""
    path = tmp_path / "s.sqlite"
    with NodeStore(path) as store, NodeStore(path) as other:
        (r,) = store.reserve_now([(facts(units=100), 40)])
        assert isinstance(r, Reservation) and store.usage(1).reserved_units == 40
        (refused,) = store.reserve_now([(facts(units=100), 61)])  # a refusal is an answer too, not a "not now"
        assert isinstance(refused, InsufficientUnits)

        held, release = threading.Event(), threading.Event()

        def hold_lock() -> None:  # this store's own connection busy in a worker thread (a charge being written)
            with store._tx():
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert held.wait(10)
        started = time.monotonic()
        assert store.reserve_now([(facts(units=100), 10)]) is None
        assert time.monotonic() - started < 1.0  # did not wait for the lock
        release.set()
        holder.join()

        other.conn.execute("BEGIN IMMEDIATE")  # another process's write transaction on the same file
        try:
            started = time.monotonic()
            assert store.reserve_now([(facts(units=100), 10)]) is None
            assert time.monotonic() - started < 1.0  # did not wait out the busy timeout
        finally:
            other.conn.execute("ROLLBACK")
        u = store.usage(1)
        assert (u.reserved_units, u.in_flight) == (40, 1)  # neither "not now" reserved anything
        (later,) = store.reserve_now([(facts(units=100), 10)])  # and the busy timeout is back for the thread path
        assert isinstance(later, Reservation) and store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000


def test_group_commit_runs_inline_when_it_can_and_in_its_thread_otherwise():
    """GroupCommit's ``now``: a write alone runs in the caller's thread; one ``now`` declines, or one submitted while
    another is in progress, goes to the worker thread (where concurrent writes share a call)."""
    import asyncio

    from atoma_ops.serving.serve import GroupCommit

    where: list[tuple[str, list, bool]] = []
    main = threading.get_ident()
    decline = {"on": False}

    def fn(items: list) -> list:
        where.append(("thread", items, threading.get_ident() == main))
        time.sleep(0.05)
        return [f"t{i}" for i in items]

    def now(items: list) -> list | None:
        if decline["on"]:
            return None
        where.append(("inline", items, threading.get_ident() == main))
        return [f"n{i}" for i in items]

    async def scenario() -> list:
        commit = GroupCommit(fn, now=now)
        first = await commit.submit(1)
        decline["on"] = True
        declined = asyncio.get_running_loop().create_task(commit.submit(2))
        await asyncio.sleep(0.01)  # 2 is being written in the thread
        decline["on"] = False
        during = await asyncio.gather(commit.submit(3), commit.submit(4))
        return [first, await declined, *during]

    assert asyncio.run(scenario()) == ["n1", "t2", "t3", "t4"]
    assert where == [("inline", [1], True), ("thread", [2], False), ("thread", [3, 4], False)]


def test_threads_never_over_serve(tmp_path):
    """8 threads, each with its own store connection, reserve and settle until the stack is spent."""
    path = tmp_path / "s.sqlite"
    NodeStore(path).close()
    units = 2_000
    served: list[int] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with NodeStore(path) as store:
            while True:
                need = rng.randint(5, 60)
                (r,) = store.reserve([(facts(units=units), need)])
                if isinstance(r, InsufficientUnits):
                    if r.fields["units_left"] < 5:
                        return
                    continue
                actual = rng.randint(1, need)
                store.settle([Settlement(r, req(str(seed)), response(actual - 1 if actual > 1 else 0, min(1, actual)))])
                with lock:
                    served.append(actual)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with NodeStore(path) as store:
        u = store.usage(1)
        history = store.history(1)
    assert u.used_units <= units and u.reserved_units == 0 and u.in_flight == 0
    assert u.used_units == sum(served) == history.units
    assert len(history) == u.num_requests == len(served)
    assert [e.index for e in history.entries] == list(range(len(history)))
    assert u.used_units > units - 60  # it did fill the stack


def test_reservations_whose_lease_expired_are_recovered_whoever_holds_them(tmp_path):
    """A reservation is a lease: its holder renews it while the request runs. One whose lease ran out is released
    by whoever looks, whether its process is gone or not (liveness is never judged by a pid)."""
    path = tmp_path / "s.sqlite"
    with NodeStore(path, lease_s=10) as lapsing, NodeStore(path, lease_s=10) as renewing, \
            NodeStore(path, lease_s=10) as store:
        (lapsed,) = lapsing.reserve([(facts(), 300)])  # a holder that stops renewing (dead, hung, or cut off)
        (renewed,) = renewing.reserve([(facts(), 200)])
        (own,) = store.reserve([(facts(), 100)])
        assert store.usage(1).reserved_units == 600
        expiry = store.lease_expiry_ms()  # when the last of the three 10 s leases runs out

        assert store.recover(now_ms=expiry - 10_001) == 0  # every lease still running
        assert renewing.renew(now_ms=expiry - 5_000) == 0  # renewed 5 s before: its lease lasts 5 s past ``expiry``
        # 1 s after the first leases ran out: ``lapsing``'s is stale, ``renewing``'s renewed, ``store``'s own kept
        assert store.recover(now_ms=expiry + 1_000) == 1
        u = store.usage(1)
        assert (u.reserved_units, u.in_flight, u.used_units) == (300, 2, 0)
        lapsing.release([lapsed])  # the lapsed holder coming back has nothing left to give back
        assert store.usage(1).reserved_units == 300
        assert store.recover(now_ms=expiry + 5_001) == 1  # ``renewing`` stopped renewing too
        assert store.usage(1).reserved_units == 100  # ``store``'s own: never stale to itself
        renewing.release([renewed])
        store.release([own])
        assert store.usage(1).reserved_units == 0


def test_an_expired_lease_does_not_block_settlement(tmp_path):
    path = tmp_path / "s.sqlite"
    with NodeStore(path, lease_s=0.05) as crashed:
        crashed.reserve([(facts(), 30)])
    with NodeStore(path) as store:
        (r,) = store.reserve([(facts(), 20)])
        store.settle([Settlement(r, req(), response(5, 5))])
        deadline = store.lease_expiry_ms()
        while time.time() * 1000 <= deadline:  # the crashed holder's 50 ms lease runs out
            time.sleep(0.02)
        assert store.begin_settlement(1) == "open"  # not StackBusy: the stale reservation was released
        u = store.usage(1)
        assert (u.reserved_units, u.in_flight, u.used_units) == (0, 0, 10)


def test_a_425_short_only_of_other_holders_reservations_says_when_their_first_lease_ends(tmp_path):
    """Units short only because of reservations another holder keeps (a killed process's, until their lease runs
    out): the 425 names the seconds until the earliest of those leases ends (``Retry-After``), rounded up, at least
    1. Short because of this store's own requests in flight, or short even without the others: no such hint."""
    from atoma_ops.serving.server import _from_error

    path = tmp_path / "s.sqlite"
    with NodeStore(path, lease_s=7.5) as dead, NodeStore(path, lease_s=20) as other:
        dead.reserve([(facts(), 800)])  # its holder is gone: never renewed, never released
        other.reserve([(facts(), 100)])  # a later lease (20 s): not the earliest
    with NodeStore(path) as store:
        (own,) = store.reserve([(facts(), 50)])  # left: 1000 - 800 - 100 - 50 = 50
        (refused,) = store.reserve([(facts(), 60)])  # fits once the others' 900 come back
        assert isinstance(refused, InsufficientUnits) and not refused.final
        # the dead lease ends 7.5 s after it was taken, a few ms ago: 7.4.. s left, rounded up
        assert refused.fields == {"stack_small_id": 1, "units_left": 50, "estimate": 60, "reserved_in_flight": 950,
                                  "retry_after_s": 8}
        assert _from_error(refused).headers["retry-after"] == "8"
        (too_big,) = store.reserve([(facts(), 951)])  # 1000 - 50 of its own: never fits while ``own`` runs
        assert "retry_after_s" not in too_big.fields and "retry-after" not in _from_error(too_big).headers


def test_an_expired_lease_gives_its_units_back_to_the_next_reservation(tmp_path):
    """A dead holder's reservation whose lease ran out is released by the reservation it blocks, with nothing else
    running (no renewing process, no restart). Before it runs out the 425 says to retry in 1 s (0.3 s left)."""
    path = tmp_path / "s.sqlite"
    with NodeStore(path, lease_s=0.3) as dead:
        dead.reserve([(facts(), 990)])
    with NodeStore(path) as store:
        (early,) = store.reserve([(facts(), 20)])
        assert isinstance(early, InsufficientUnits) and early.fields["retry_after_s"] == 1
        deadline = store.lease_expiry_ms()
        while time.time() * 1000 <= deadline:
            time.sleep(0.02)
        (r,) = store.reserve([(facts(), 20)])
        assert isinstance(r, Reservation)
        u = store.usage(1)
        assert (u.reserved_units, u.in_flight, u.units_left) == (20, 1, 980)
        (short,) = store.reserve([(facts(), 990)])  # short only of its own request in flight: it ends when it ends
        assert short.fields == {"stack_small_id": 1, "units_left": 980, "estimate": 990, "reserved_in_flight": 20}


def test_a_store_belongs_to_one_node(tmp_path):
    with NodeStore(tmp_path / "s.sqlite") as store:
        store.bind_node(1, "0xa")
        store.bind_node(1, "0xa")
        with pytest.raises(ValueError, match="belongs to node 1"):
            store.bind_node(2, "0xb")
