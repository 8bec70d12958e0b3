"""Replay of a stack's history (serving/replay.py) and the history fields it relies on (serving/history.py).

Three parts: the history format (version 2 fields, version 1 files still importing); replay's contract on a toy
engine whose output depends only on the messages and the seed (so what the replay passes to the engine is visible);
and the same properties on the real CPU engine (the session ``engine`` fixture): an aborted stream, a sampled
request whose seed the node drew, and a tampered response.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace

import pytest

from atoma_ops.protocol.commitments import merkle_root, payload_hash, request_leaf, response_hash
from atoma_ops.serving.engines.base import FINISH_ABORTED, Delta, Engine, EngineError, Generation
from atoma_ops.serving.history import (
    HistoryEntry,
    HistoryError,
    StackHistory,
    entries_from,
    export_jsonl,
    import_jsonl,
)
from atoma_ops.serving.metering import sampling_of
from atoma_ops.serving.replay import replay


def req(text: str, max_tokens: int = 8, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **extra}


def resp(content: str, finish: str, prompt: int, completion: int) -> dict:
    return {
        "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


# ============================================================================== history format
def test_build_and_json_carry_the_new_fields():
    e = HistoryEntry.build(0, req("hi"), resp("yo", "stop", 5, 1), units=6, usage_units=6, reserved_units=20,
                           served_at_ms=1_700_000_002_500, request_id="line-7", seed=1234,
                           arrived_ms=1_700_000_000_000, first_token_ms=1_700_000_000_400)
    doc = e.to_json()
    assert (doc["request_id"], doc["seed"], doc["arrived_ms"], doc["first_token_ms"], doc["served_at_ms"]) == (
        "line-7", 1234, 1_700_000_000_000, 1_700_000_000_400, 1_700_000_002_500)
    back = HistoryEntry.from_json(json.loads(json.dumps(doc)))
    assert back == e
    # the new fields are metadata: the leaf is still blake2b(payload ‖ response) and does not depend on them
    bare = HistoryEntry.build(0, req("hi"), resp("yo", "stop", 5, 1), units=6, usage_units=6, reserved_units=20)
    assert bare.leaf == e.leaf and bare.seed is None and bare.request_id is None and bare.arrived_ms is None


def test_export_import_version_2_keeps_the_fields(tmp_path):
    entries = entries_from([(req("a"), resp("x", "stop", 4, 1)), (req("b"), resp("y z", FINISH_ABORTED, 4, 2))])
    entries[0] = replace(entries[0], request_id="w-0", arrived_ms=100, first_token_ms=130, served_at_ms=180)
    entries[1] = replace(entries[1], seed=2**62 + 5, arrived_ms=110, first_token_ms=None, served_at_ms=200)
    path = export_jsonl(StackHistory(7, entries), tmp_path / "h.jsonl")
    header = json.loads(path.read_text().splitlines()[0])
    assert header["version"] == 2
    back = import_jsonl(path, expect_stack=7)
    assert back.entries == entries
    assert back.entries[1].aborted and back.entries[1].completion_tokens == 2 and not back.entries[0].aborted
    assert back.entries[1].seed == 2**62 + 5


def test_a_version_1_file_still_imports_with_the_new_fields_none(tmp_path):
    """Written as atoma-ops wrote it before version 2: no request_id / seed / arrived_ms / first_token_ms."""
    request, response = req("old"), resp("reply", "stop", 9, 1)
    p, r = payload_hash(request), response_hash(response)
    leaf = request_leaf(p, r)
    header = {"format": "atoma-ops/stack-history", "version": 1, "stack_small_id": 3, "node_small_id": 1,
              "task_small_id": 1, "model": "m", "num_requests": 1, "units": 10, "root": "0x" + leaf.hex()}
    record = {"index": 0, "request": request, "response": response, "units": 10, "usage_units": 10,
              "reserved_units": 12, "payload_hash": "0x" + p.hex(), "response_hash": "0x" + r.hex(),
              "leaf": "0x" + leaf.hex(), "served_at_ms": 1234}
    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")
    h = import_jsonl(path)
    e = h.entries[0]
    assert (e.request_id, e.seed, e.arrived_ms, e.first_token_ms, e.served_at_ms) == (None, None, None, None, 1234)
    assert h.root == leaf

    path.write_text(json.dumps({**header, "version": 3}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(HistoryError, match="version"):
        import_jsonl(path)


@pytest.mark.parametrize("field, value", [("seed", "7"), ("seed", 1.5), ("arrived_ms", True), ("request_id", 12)])
def test_malformed_new_fields_are_refused(field, value):
    doc = entries_from([(req("a"), resp("x", "stop", 4, 1))])[0].to_json()
    with pytest.raises(HistoryError, match=field):
        HistoryEntry.from_json({**doc, field: value})


# ============================================================================== replay's contract (toy engine)
VOCAB = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


class ToyEngine(Engine):
    """Greedy: the prompt's words in turn; sampled: words drawn by random.Random(seed). Answers naturally stop
    after 6 tokens. Each token is a yield point, so concurrent streams interleave and ``peak`` counts how many
    were in flight at once (no clocks involved)."""

    kind = "toy"
    model = "toy"
    NATURAL = 6

    def __init__(self) -> None:
        self.in_flight = self.peak = 0
        self.samplings: list = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(self, request, sampling):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.samplings.append(sampling)
        try:
            words = request["messages"][-1]["content"].split()
            if "fail" in words:
                raise EngineError("toy: cannot serve this")
            rng = None if sampling.greedy else random.Random(sampling.seed)
            n = min(self.NATURAL, sampling.max_tokens)
            yield Delta(prompt_tokens=len(words) + 3)
            for i in range(n):
                await asyncio.sleep(0)
                word = words[i % len(words)] if rng is None else rng.choice(VOCAB)
                finish = None if i < n - 1 else ("stop" if n == self.NATURAL else "length")
                yield Delta((" " if i else "") + word, 1, finish_reason=finish)
        finally:
            self.in_flight -= 1


def served(engine: Engine, request: dict, *, seed: int | None = None, abort_after: int | None = None) -> dict:
    """What the node records: the request run with the seed it drew; for ``abort_after``, the stream closed by the
    client once that many tokens were produced, recorded as "abort" with those tokens."""

    async def run() -> dict:
        gen = Generation()
        stream = engine.stream(request, sampling_of(request, default_seed=seed))
        try:
            async for delta in stream:
                gen.add(delta)
                if abort_after is not None and gen.completion_tokens >= abort_after:
                    break
        finally:
            await stream.aclose()
        return gen.completion(engine.model, FINISH_ABORTED if abort_after is not None else None)

    return asyncio.run(run())


def history_of(pairs, fields: dict[int, dict] | None = None) -> StackHistory:
    """A verified history of (request, recorded response) pairs; ``fields`` sets an entry's metadata (its seed)."""
    entries = entries_from(pairs)
    for i, extra in (fields or {}).items():
        entries[i] = replace(entries[i], **extra)
    return StackHistory(1, entries).verify()


def test_toy_replay_equal_in_order_and_bounded_by_batch_size():
    toy = ToyEngine()
    requests = [req(f"w{i} x{i} y{i}") for i in range(10)]
    h = history_of([(r, served(toy, r)) for r in requests])
    assert [e.content for e in h.entries][:2] == ["w0 x0 y0 w0 x0 y0", "w1 x1 y1 w1 x1 y1"]
    toy.peak = 0
    report = replay(h, toy, batch_size=3)
    assert report.equal and report.replayed_root == h.root and report.diverging == []
    assert [r["choices"][0]["message"]["content"] for r in report.replayed_responses] == [e.content for e in h.entries]
    assert toy.peak == 3  # concurrent, and never more than batch_size at once
    toy.peak = 0
    assert replay(h, toy, batch_size=1).equal and toy.peak == 1


def test_toy_aborted_entry_replays_to_the_recorded_length_and_marked_abort():
    toy = ToyEngine()
    r = req("one two three four five six seven")
    cut = served(toy, r, abort_after=2)
    assert cut["choices"][0]["message"]["content"] == "one two" and cut["usage"]["completion_tokens"] == 2
    assert cut["choices"][0]["finish_reason"] == FINISH_ABORTED
    h = history_of([(r, cut), (r, served(toy, r))])
    toy.samplings.clear()
    report = replay(h, toy)
    assert report.equal
    by_budget = sorted(s.max_tokens for s in toy.samplings)
    assert by_budget == [2, 8]  # the aborted one was bounded by its recorded 2 tokens, the other by its request
    assert report.replayed_responses[0]["choices"][0]["finish_reason"] == FINISH_ABORTED
    assert report.replayed_responses[1]["choices"][0]["finish_reason"] == "stop"


def test_toy_aborted_record_longer_than_the_request_allows_diverges():
    toy = ToyEngine()
    r = req("one two three four five six", 3)
    honest = served(toy, r, abort_after=3)  # stopped by the client as the budget of 3 ran out: 3 tokens
    assert replay(history_of([(r, honest)]), toy).equal
    padded = served(toy, {**r, "max_tokens": 5}, abort_after=5)  # a node that ran past the buyer's max_tokens
    assert padded["usage"]["completion_tokens"] == 5
    report = replay(history_of([(r, padded)]), toy)
    assert not report.equal and report.replayed_responses[0]["usage"]["completion_tokens"] == 3


def test_toy_abort_before_the_first_token_replays_equal():
    toy = ToyEngine()
    r = req("quiet please")
    nothing = served(toy, r, abort_after=0)  # the client left as the prompt was read
    assert nothing["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    report = replay(history_of([(r, nothing)]), toy)
    assert report.equal and report.replayed_responses[0]["choices"][0]["message"]["content"] == ""


def test_toy_recorded_seed_is_what_makes_a_sampled_replay_equal():
    toy = ToyEngine()
    r = req("pick some words", 6, temperature=1.0)  # sampled, no seed: the node drew 987654321 and recorded it
    response = served(toy, r, seed=987654321)
    assert response != served(toy, r, seed=0)  # else the check below could not fail
    assert replay(history_of([(r, response)], {0: {"seed": 987654321}}), toy).equal
    # without the recorded seed the replay falls back to the old node's seed 0, and diverges at that request
    report = replay(history_of([(req("a b"), served(toy, req("a b"))), (r, response)]), toy)
    assert not report.equal and report.diverging == [1]


def test_toy_request_with_its_own_seed_ignores_the_recorded_one():
    toy = ToyEngine()
    r = req("own seed", 6, temperature=0.7, seed=42)
    response = served(toy, r, seed=999)  # the node's draw plays no part: the request named its seed
    assert replay(history_of([(r, response)], {0: {"seed": 999}}), toy).equal
    assert toy.samplings[-1].seed == 42


def test_toy_tampered_response_diverges_at_its_index():
    toy = ToyEngine()
    pairs = [(req(f"p{i} q{i}"), served(toy, req(f"p{i} q{i}"))) for i in range(4)]
    forged = resp("forged", "stop", pairs[2][1]["usage"]["prompt_tokens"], 1)
    h = history_of(pairs[:2] + [(pairs[2][0], forged)] + pairs[3:])
    report = replay(h, toy)
    assert not report.equal and report.diverging == [2]
    d = report.first_divergence
    assert (d.index, d.stored_content, d.replayed_content) == (2, "forged", "p2 q2 p2 q2 p2 q2")
    honest = [request_leaf(payload_hash(p[0]), response_hash(p[1])) for p in pairs]
    assert report.replayed_root == merkle_root(honest) != h.root


def test_toy_engine_error_propagates():
    toy = ToyEngine()
    h = history_of([(req("fine"), resp("x", "stop", 4, 1)), (req("please fail"), resp("x", "stop", 5, 1))])
    with pytest.raises(EngineError, match="cannot serve"):
        replay(h, toy)
    assert toy.in_flight == 0  # nothing left running in the engine


def test_replay_from_inside_a_running_event_loop():
    toy = ToyEngine()
    r = req("loop inside")
    h = history_of([(r, served(toy, r))])

    async def caller():
        return replay(h, toy)  # e.g. a CLI command already in asyncio.run: replay runs on its own loop

    assert asyncio.run(caller()).equal


# ============================================================================== the real engine
@pytest.mark.slow
def test_engine_aborted_sampled_and_greedy_entries_replay_equal(engine):
    greedy = req("Name three colours.", 12)
    cut = req("Tell me a long story about a lighthouse.", 40)
    sampled = req("Write a word that rhymes with cat.", 10, temperature=0.9)  # no seed: the node draws one
    drawn = 7_340_012_345
    pairs = [
        (greedy, served(engine, greedy)),
        (cut, served(engine, cut, abort_after=5)),
        (sampled, served(engine, sampled, seed=drawn)),
    ]
    assert pairs[1][1]["choices"][0]["finish_reason"] == FINISH_ABORTED
    assert pairs[1][1]["usage"]["completion_tokens"] == 5  # what was produced when the client left
    h = history_of(pairs, {2: {"seed": drawn}})
    report = replay(h, engine)
    assert report.equal, report.to_json()
    assert report.replayed_root == h.root and report.replayed_units == h.units
    assert report.replayed_responses[1]["choices"][0]["finish_reason"] == FINISH_ABORTED


@pytest.mark.slow
def test_engine_sampled_entry_needs_its_recorded_seed(engine):
    sampled = req("Invent a name for a cat.", 12, temperature=1.0)
    response = served(engine, sampled, seed=20_240_611)
    assert replay(history_of([(sampled, response)], {0: {"seed": 20_240_611}}), engine).equal
    other = replay(history_of([(sampled, response)], {0: {"seed": 5}}), engine)
    assert not other.equal and other.diverging == [0]


@pytest.mark.slow
def test_engine_tampered_response_diverges(engine):
    requests = [req("What is 2 + 2?", 6), req("Say hello.", 6), req("Name a fruit.", 6)]
    pairs = [(r, served(engine, r)) for r in requests]
    real = pairs[1][1]
    forged = {**real, "choices": [{**real["choices"][0], "message": {"role": "assistant", "content": "forged"}}]}
    report = replay(history_of([pairs[0], (requests[1], forged), pairs[2]]), engine)
    assert not report.equal and report.diverging == [1]
    assert report.first_divergence.replayed_content == real["choices"][0]["message"]["content"]
