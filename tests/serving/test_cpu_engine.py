"""The CPU engine's scheduler: concurrent requests share forward passes, yet each gets exactly what it would get alone.

Attestation replays a history one request at a time, so a request's tokens must not depend on what else ran beside
it: greedy and seeded outputs are compared alone vs concurrent (with requests joining mid-flight), and the decode
step's logits are compared bitwise at the model level. Then the ``Sampling`` semantics (stop strings, max_tokens,
context), cancellation, failures confined to their requests, and the scheduler thread's life (exits when idle,
restarts, forks).

Generation on this machine's CPU is slow: every request keeps ``max_tokens`` small and the one-at-a-time results are
computed once for the module.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from atoma_ops.serving.engines.base import Delta, EngineError, Generation, Sampling

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Why is the sky blue? Answer in one sentence.",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
    "Give one tip for cooking rice.",
    "How many legs does an octopus have?",
    "List two uses of copper.",
    "Describe a cat in five words.",
]
BUDGETS = [10, 14, 6, 12, 16, 8, 12, 10, 14, 9]
GREEDY = [({"messages": [{"role": "user", "content": q}]}, Sampling(max_tokens=n)) for q, n in zip(QUESTIONS, BUDGETS)]
GREEDY.append(({"messages": [{"role": "system", "content": "You are terse."},  # no default system prompt: no prefix
                             {"role": "user", "content": "Name a planet."}]}, Sampling(max_tokens=8)))
STORY = {"messages": [{"role": "user", "content": "Tell me a short story about a dragon."}]}
SEEDED = [(STORY, Sampling(max_tokens=10, temperature=0.9, top_p=0.95, seed=seed)) for seed in (1, 2, 3)]
SCHEDULER_THREAD = "cpu-engine-scheduler"


@pytest.fixture(scope="module", autouse=True)
def cpu_only(engine):
    if engine.kind != "cpu":
        pytest.skip("CPU-engine specific")


async def collect(engine, request: dict, sampling: Sampling, deltas: list | None = None,
                  started: asyncio.Event | None = None) -> Generation:
    """Run one stream to its end; ``deltas`` receives every delta, ``started`` is set after the second one."""
    gen = Generation()
    async for delta in engine.stream(request, sampling):
        gen.add(delta)
        if deltas is not None:
            deltas.append(delta)
        if started is not None and gen.deltas >= 2:
            started.set()
    return gen


def outcome(gen: Generation) -> tuple[str, int, int, str | None]:
    return gen.content, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason


@pytest.fixture(scope="module")
def alone(engine) -> dict:
    """Every request of GREEDY and SEEDED run one at a time (nothing else in the engine)."""
    assert engine.wait_idle(120)
    return {i: outcome(asyncio.run(collect(engine, r, s))) for i, (r, s) in enumerate(GREEDY + SEEDED)}


@pytest.fixture
def passes(engine, monkeypatch) -> list[tuple[int, int]]:
    """``(decode rows, prompts)`` of each forward pass run during a test (the model's step, wrapped, unchanged)."""
    seen: list[tuple[int, int]] = []
    step = engine.llama.step

    def recording(tokens, caches, prompts):
        seen.append((len(tokens), len(prompts)))
        return step(tokens, caches, prompts)

    monkeypatch.setattr(engine.llama, "step", recording)
    return seen


# --------------------------------------------------------------------------------------------------- invariance
def prefill_alone(llama, ids: list[int]):
    """A prompt prefilled alone into a cache with room for 4 more tokens: (cache, its greedy first token)."""
    cache = llama.new_cache(len(ids) + 4, len(ids) + 4)
    return cache, int(llama.prefill(ids, cache).argmax())


def clone(llama, cache):
    """A copy of a sequence's KV cache (a step on it leaves the original as it was)."""
    copy = llama.new_cache(cache.data.shape[3], cache.limit)
    copy.data.copy_(cache.data)
    copy.length = cache.length
    return copy


@pytest.mark.parametrize("mode", ["loaded", "serial"])
def test_decode_rows_are_bitwise_what_the_sequence_gets_alone(engine, mode, monkeypatch):
    """The model level: two decode steps of one sequence give the same logits, bit for bit, alone and as any row of
    batches of other sequences (other prompts, other lengths, other positions), in the batching mode the load-time
    check chose and in the "serial" fallback."""
    import torch

    llama = engine.llama
    if mode == "serial":
        monkeypatch.setattr(llama, "mode", "serial")
    prompts = [engine._prompt_ids(r) for r, _ in GREEDY[:5]]

    def two_steps(rows: list[int], probe_at: int):
        caches, tokens = [clone(llama, prefilled[i][0]) for i in rows], [prefilled[i][1] for i in rows]
        first = llama.decode(tokens, caches)
        second = llama.decode(first.argmax(-1).tolist(), caches)
        return first[probe_at], second[probe_at]

    with torch.inference_mode():
        prefilled = [prefill_alone(llama, ids) for ids in prompts]
        alone = two_steps([0], 0)
        for rows, probe_at in (([0, 1], 0), ([1, 0, 2], 1), ([3, 2, 1, 4, 0], 4), ([2, 4, 0, 1, 3, 1, 2, 4, 3], 2)):
            batched = two_steps(rows, probe_at)
            assert torch.equal(batched[0], alone[0]) and torch.equal(batched[1], alone[1]), (rows, probe_at)


@pytest.mark.parametrize("mode", ["loaded", "serial"])
def test_prompts_joining_a_decode_pass_get_what_they_get_alone(engine, mode, monkeypatch):
    """The model level: one pass over decode rows and whole prompts (with and without the shared prefix, one
    longer than the rest) gives every row, and every prompt's cache, bit for bit what it gets alone."""
    import torch

    llama = engine.llama
    if mode == "serial":
        monkeypatch.setattr(llama, "mode", "serial")
    running = [engine._prompt_ids(r) for r, _ in GREEDY[:3]]
    joining = [engine._prompt_ids(r) for r, _ in GREEDY[3:5]] + [
        engine._prompt_ids({"messages": [{"role": "system", "content": "Answer in one word."},
                                         {"role": "user", "content": "Summarize: " + " ".join(f"item {i}," for i in range(12))}]})
    ]
    assert len({len(ids) for ids in joining}) == 3

    with torch.inference_mode():
        states = [prefill_alone(llama, ids) for ids in running]
        decoded_alone = [llama.decode([t], [clone(llama, c)])[0] for c, t in states]
        prompt_alone = []
        for ids in joining:
            cache = llama.new_cache(len(ids) + 4, len(ids) + 4)
            prompt_alone.append((llama.prefill(ids, cache), cache))
        caches = [clone(llama, c) for c, _ in states]
        fresh = [llama.new_cache(len(ids) + 4, len(ids) + 4) for ids in joining]
        starts = [llama.begin(ids, cache) for ids, cache in zip(joining, fresh)]
        assert starts[0] > 0 and starts[2] == 0  # one prompt starts from the shared prefix, one does not
        mixed = llama.step([t for _, t in states], caches, list(zip(joining, fresh, starts)))
    assert mixed.shape[0] == len(running) + len(joining)
    for i, row in enumerate(decoded_alone):
        assert torch.equal(mixed[i], row), i
    for j, (logits, cache) in enumerate(prompt_alone):
        assert torch.equal(mixed[len(running) + j], logits), j
        assert fresh[j].length == cache.length == len(joining[j])
        assert torch.equal(fresh[j].data[:, :, :, : cache.length], cache.data[:, :, :, : cache.length]), j


def test_the_load_time_check_catches_a_batch_dependent_kernel(engine, monkeypatch):
    """The check that picks the batching mode at load fails a linear whose rows change with the batch size."""
    real = engine.llama.layers[0]["down"]
    assert engine.llama._rows_invariant()
    monkeypatch.setitem(engine.llama.layers[0], "down", lambda x: real(x) + 1e-6 * (x.shape[0] > 4))
    assert not engine.llama._rows_invariant()


def test_prompts_sharing_the_template_prefix_start_from_it_bit_for_bit(engine):
    """The default system prompt's keys and values are computed once; a prompt starting with them runs only the
    rest, with the very logits and cache of a full prefill (else the load would have dropped the prefix)."""
    import torch

    llama = engine.llama
    if llama._prefix is None:
        pytest.skip("the prefix was not kept on this machine (not bitwise equal to a full prefill)")
    prefix = llama._prefix[0]
    # ~270 tokens: several times the prefix, past any short-prompt kernel (longer prompts only cost the suite time)
    long_question = "Summarize: " + " ".join(f"item {i}," for i in range(50))
    with torch.inference_mode():
        for content in ("Hi", QUESTIONS[2], long_question):
            ids = engine._prompt_ids({"messages": [{"role": "user", "content": content}]})
            assert ids[: len(prefix)] == prefix and len(ids) > len(prefix)
            caches = [llama.new_cache(len(ids), len(ids)) for _ in range(2)]
            reused, full = llama.prefill(ids, caches[0]), llama.prefill(ids, caches[1], reuse_prefix=False)
            assert torch.equal(reused, full) and torch.equal(caches[0].data, caches[1].data)


def test_a_changed_thread_count_is_checked_again_before_the_next_run(engine, alone, monkeypatch):
    import torch

    mode = engine.batch_mode
    monkeypatch.setattr(engine.llama, "mode", mode)  # restored after the test, whatever the checks set
    assert engine.wait_idle(120)  # the check runs when a scheduler thread starts
    monkeypatch.setattr(engine.llama, "checked_threads", -1)  # as if torch.set_num_threads ran since the load
    assert outcome(asyncio.run(collect(engine, *GREEDY[1]))) == alone[1]
    assert (engine.llama.checked_threads, engine.batch_mode) == (torch.get_num_threads(), mode)

    assert engine.wait_idle(120)
    monkeypatch.setattr(engine.llama, "checked_threads", -1)
    monkeypatch.setattr(engine.llama, "_rows_invariant", lambda: False)  # and now the rows would not be invariant
    assert outcome(asyncio.run(collect(engine, *GREEDY[1]))) == alone[1]
    assert engine.batch_mode == "serial"


def test_the_fixed_width_fallback_always_multiplies_8_rows(monkeypatch):
    """MKL's products change with the row count, so the fallback pads every call to 8 rows and keeps the real ones."""
    import torch

    from atoma_ops.serving.engines.cpu import FALLBACK_WIDTH, Linear

    weight = torch.randn(96, 64)
    linear, calls = Linear(weight, "fixed"), []
    real = torch.nn.functional.linear

    def recording(x, w):
        calls.append(x.shape[0])
        return real(x, w)

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    for rows in (1, 3, 8, 11, 17):
        x = torch.randn(rows, 64)
        assert torch.allclose(linear(x), x @ weight.T, atol=1e-5)
    assert set(calls) == {FALLBACK_WIDTH} and len(calls) == 1 + 1 + 1 + 2 + 3


def test_greedy_alone_equals_concurrent_with_requests_joining_mid_flight(engine, alone, passes):
    async def concurrent():
        started = asyncio.Event()
        first = [asyncio.create_task(collect(engine, r, s, started=started if i == 0 else None))
                 for i, (r, s) in enumerate(GREEDY[:6])]
        await started.wait()  # the first six are decoding: the other four join between steps
        later = [asyncio.create_task(collect(engine, r, s)) for r, s in GREEDY[6:]]
        return await asyncio.gather(*first, *later)

    results = asyncio.run(concurrent())
    assert [outcome(g) for g in results] == [alone[i] for i in range(len(GREEDY))]
    rows = [r for r, _ in passes]
    assert max(rows) >= 8  # they really shared decode steps
    assert any(a < b for a, b in zip(rows, rows[1:]))  # and some joined a running batch
    assert any(r and p for r, p in passes)  # with their prompts in the running sequences' pass


def test_seeded_sampling_alone_equals_concurrent_and_seeds_differ(engine, alone):
    mixed = SEEDED + GREEDY[:5]

    async def concurrent():
        return await asyncio.gather(*(collect(engine, r, s) for r, s in mixed))

    results = [outcome(g) for g in asyncio.run(concurrent())]
    offset = len(GREEDY)
    assert results[: len(SEEDED)] == [alone[offset + i] for i in range(len(SEEDED))]
    assert results[len(SEEDED):] == [alone[i] for i in range(5)]
    texts = [alone[offset + i][0] for i in range(len(SEEDED))]
    assert len(set(texts)) == len(texts)  # seeds 1, 2, 3 draw different stories


def test_a_tiny_top_p_keeps_only_the_most_likely_token(engine, alone):
    request, sampling = GREEDY[1]
    nucleus = Sampling(max_tokens=sampling.max_tokens, temperature=1.5, top_p=1e-6, seed=7)
    assert outcome(asyncio.run(collect(engine, request, nucleus))) == alone[1]


def test_streams_from_several_event_loops_at_once(engine, alone):
    """Engine.chat runs asyncio.run per call and the HTTP server has its own loop: each stream relays to its own."""
    results: dict[int, tuple] = {}

    def in_thread(i: int) -> None:
        results[i] = outcome(asyncio.run(collect(engine, *GREEDY[i])))

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in (2, 3)]
    for thread in threads:
        thread.start()
    results[5] = outcome(asyncio.run(collect(engine, *GREEDY[5])))
    for thread in threads:
        thread.join()
    assert results == {i: alone[i] for i in (2, 3, 5)}


# --------------------------------------------------------------------------------------------------- deltas
def test_first_delta_carries_the_prompt_tokens_and_deltas_add_up(engine, alone):
    request, sampling = GREEDY[4]
    deltas: list[Delta] = []
    gen = asyncio.run(collect(engine, request, sampling, deltas))
    assert deltas[0].prompt_tokens == engine.prompt_tokens(request) == gen.prompt_tokens
    assert all(d.prompt_tokens is None for d in deltas[1:])
    assert sum(d.tokens for d in deltas) == gen.completion_tokens == alone[4][2]
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason in ("stop", "length")
    assert "".join(d.text for d in deltas) == alone[4][0]


def test_max_tokens_ends_with_length(engine):
    request = {"messages": [{"role": "user", "content": "Write a long poem about the sea."}]}
    gen = asyncio.run(collect(engine, request, Sampling(max_tokens=5)))
    assert (gen.completion_tokens, gen.finish_reason) == (5, "length")


def test_end_of_sequence_counts_as_a_token_and_shows_no_text(engine):
    request = {"messages": [{"role": "user", "content": "Reply with one word: yes or no. Is the sky blue?"}]}
    deltas: list[Delta] = []
    gen = asyncio.run(collect(engine, request, Sampling(max_tokens=12), deltas))
    assert gen.finish_reason == "stop" and gen.completion_tokens < 12  # the model ended it (SmolLM2: "Yes" + EOS)
    assert deltas[-1].tokens == 1 and "<|im_end|>" not in gen.content
    assert gen.completion_tokens == engine.count_tokens(gen.content) + 1


def test_a_prompt_beyond_the_context_raises_before_streaming(engine):
    request = {"messages": [{"role": "user", "content": "word " * (engine.max_context + 10)}]}
    stream = engine.stream(request, Sampling(max_tokens=4))
    with pytest.raises(EngineError, match="no room"):
        asyncio.run(stream.__anext__())


# --------------------------------------------------------------------------------------------------- stop strings
def test_stop_strings_end_the_text_before_the_first_one(engine, alone):
    request, sampling = GREEDY[1]
    full, _, full_tokens, _ = alone[1]
    assert len(full) > 20
    late, early = full[len(full) // 2: len(full) // 2 + 6], full[5:9]  # likely spanning several tokens
    cases = [((late,), full[: full.index(late)]), ((late, early), full[: full.index(early)]), ((full[:3],), "")]
    for stops, expected in cases:
        deltas: list[Delta] = []
        gen = asyncio.run(collect(engine, request, Sampling(max_tokens=sampling.max_tokens, stop=stops), deltas))
        assert (gen.content, gen.finish_reason) == (expected, "stop"), stops
        assert gen.completion_tokens <= full_tokens
        assert sum(d.tokens for d in deltas) == gen.completion_tokens
    never = asyncio.run(collect(engine, request, Sampling(max_tokens=sampling.max_tokens, stop=("\u2603\u2603",))))
    assert outcome(never) == alone[1]


def test_text_stream_never_releases_a_possible_stop_string(engine):
    from atoma_ops.serving.engines.cpu_scheduler import TextStream

    text = "Hello world. Goodbye, cruel world. naïve café 東京 🚀 The end."
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    held_back = 0
    for stops, expected in [((), text), (("Goodbye",), "Hello world. "),
                            (("東京",), "Hello world. Goodbye, cruel world. naïve café "),
                            (("end!", "cruel w"), "Hello world. Goodbye, "), (("🚀",), text[: text.index("🚀")])]:
        stream, released = TextStream(engine.tokenizer, stops), ""
        for n, token in enumerate(ids, start=1):
            released += stream.push(token)
            assert expected.startswith(released)  # nothing of a stop string is ever released, nor half a character
            if stream.stopped:
                break
            if stream.settled:  # a stream cut here got exactly what its n tokens decode to (what a replay bounded
                assert released == engine.tokenizer.decode(ids[:n])  # by n tokens produces)
            else:
                held_back += 1
        released += stream.finish()
        assert released == expected and stream.stopped == bool(stops), stops
    assert held_back  # some tokens did wait (half characters, possible stop strings): the check above was not idle


# --------------------------------------------------------------------------------------------------- cancellation
def test_cancelling_a_stream_frees_its_slot_and_the_others_finish_the_same(engine, alone):
    long = {"messages": [{"role": "user", "content": "Write a very long essay about the history of Rome."}]}

    async def scenario():
        others = [asyncio.create_task(collect(engine, r, s)) for r, s in GREEDY[:3]]
        stream, produced = engine.stream(long, Sampling(max_tokens=4000)), 0
        async for delta in stream:
            produced += delta.tokens
            if produced >= 3:
                break
        await stream.aclose()  # closing it: the scheduler drops it at its next step

        started = asyncio.Event()
        consumer = asyncio.create_task(collect(engine, long, Sampling(max_tokens=4000), started=started))
        await started.wait()
        consumer.cancel()  # cancelling the task that reads a stream does the same
        with pytest.raises(asyncio.CancelledError):
            await consumer
        return produced, await asyncio.gather(*others)

    produced, results = asyncio.run(scenario())
    assert 3 <= produced < 4000
    assert [outcome(g) for g in results] == [alone[i] for i in range(3)]
    # neither 4000-token stream is still generating: the scheduler ran out of work and its thread exited
    assert engine.wait_idle(120)
    assert not any(t.name == SCHEDULER_THREAD for t in threading.enumerate())


# --------------------------------------------------------------------------------------------------- failures
def test_a_malformed_request_fails_alone(engine, alone):
    async def scenario():
        return await asyncio.gather(
            collect(engine, *GREEDY[0]),
            collect(engine, {"messages": [{"content": "no role"}]}, Sampling(max_tokens=4)),
            collect(engine, {"messages": []}, Sampling(max_tokens=4)),
            collect(engine, *GREEDY[5]),
            return_exceptions=True,
        )

    good, bad, empty, other = asyncio.run(scenario())
    assert isinstance(bad, EngineError) and isinstance(empty, EngineError)
    assert (outcome(good), outcome(other)) == (alone[0], alone[5])


def test_a_failing_step_fails_only_its_sequences_and_the_scheduler_goes_on(engine, alone, monkeypatch):
    from atoma_ops.serving.engines import cpu_scheduler

    llama = engine.llama
    step, sample = llama.step, cpu_scheduler.sample
    doomed = engine._prompt_ids(GREEDY[3][0])

    def failing_prefill(tokens, caches, prompts):  # any pass with that prompt in it fails
        if any(ids == doomed for ids, _, _ in prompts):
            raise RuntimeError("injected prefill fault")
        return step(tokens, caches, prompts)

    def failing_sample(torch, logits, sampling, generator):
        if sampling.seed == 2:
            raise RuntimeError("injected sampling fault")
        return sample(torch, logits, sampling, generator)

    monkeypatch.setattr(llama, "step", failing_prefill)
    monkeypatch.setattr(cpu_scheduler, "sample", failing_sample)

    async def run(pairs):
        return await asyncio.gather(*(collect(engine, r, s) for r, s in pairs), return_exceptions=True)

    # the five prompts share a pass, which fails: run again split, only the doomed prompt fails again
    results = asyncio.run(run([GREEDY[0], GREEDY[3], SEEDED[0], SEEDED[1], GREEDY[5]]))
    assert isinstance(results[1], EngineError) and "injected prefill fault" in str(results[1])
    assert isinstance(results[3], EngineError) and "injected sampling fault" in str(results[3])
    offset = len(GREEDY)
    assert [outcome(results[i]) for i in (0, 2, 4)] == [alone[0], alone[offset], alone[5]]

    steps = []

    def failing_decode(tokens, caches, prompts):
        steps.append(len(tokens))
        if len(steps) == 3:  # the prompts' pass, a decode step, then this decode step of both
            raise RuntimeError("injected decode fault")
        return step(tokens, caches, prompts)

    monkeypatch.setattr(llama, "step", failing_decode)
    results = asyncio.run(run([GREEDY[4], GREEDY[6]]))
    assert all(isinstance(r, EngineError) and "injected decode fault" in str(r) for r in results)
    monkeypatch.undo()
    assert outcome(asyncio.run(collect(engine, *GREEDY[2]))) == alone[2]  # later requests are served as before


# --------------------------------------------------------------------------------------------------- thread life
def test_the_scheduler_thread_exits_when_idle_and_restarts_on_demand(engine, alone):
    assert outcome(asyncio.run(collect(engine, *GREEDY[2]))) == alone[2]
    assert engine.wait_idle(120)
    assert not any(t.name == SCHEDULER_THREAD for t in threading.enumerate())
    assert outcome(asyncio.run(collect(engine, *GREEDY[5]))) == alone[5]
    assert engine.wait_idle(120)


def test_a_forked_child_resets_the_inherited_scheduler(engine, alone):
    """A child forked while the parent's scheduler ran inherits its state but not its thread: the at-fork hook
    resets it, so the child starts a scheduler of its own (simulated here: the hook runs in this process)."""
    from atoma_ops.serving.engines import cpu_scheduler

    assert engine.wait_idle(120)
    scheduler = engine._scheduler
    scheduler._thread = threading.Thread(target=lambda: None)  # as inherited: a thread that never runs here
    scheduler._waiting.append(object())
    cpu_scheduler._after_fork_in_child()
    assert not scheduler.running and not scheduler._waiting
    assert outcome(asyncio.run(collect(engine, *GREEDY[3]))) == alone[3]


# The fork below runs in a fresh interpreter: a test process may hold other threads (Prefect's event-loop threads,
# once a flow test ran in it), and forking beside threads is unsafe. Set up as reliability/crash.py sets up the
# process it forks from: single-threaded torch, the engine loaded once, every other thread ended.
FORK_CHILD = """
import os
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import asyncio, json, threading
import torch, tqdm
tqdm.tqdm.monitor_interval = 0
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
from blocks import InferenceEngine
from tasks.runtime import shared_engine
from tests.serving.test_cpu_engine import GREEDY, collect, outcome

engine = shared_engine(InferenceEngine())
for thread in threading.enumerate():
    if thread is not threading.main_thread():
        thread.join(timeout=30)
parent = outcome(asyncio.run(collect(engine, *GREEDY[0])))[0]  # the scheduler thread has run, and exits when idle
assert engine.wait_idle(120)
assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: serve one request, write its text, exit at once
    os.close(read)
    code = 1
    try:
        os.write(write, outcome(asyncio.run(collect(engine, *GREEDY[0])))[0].encode())
        code = 0
    finally:
        os._exit(code)
os.close(write)
with os.fdopen(read, "rb") as pipe:
    child = pipe.read().decode()
_, status = os.waitpid(pid, 0)
print(json.dumps({"parent": parent, "child": child, "child_exit": os.waitstatus_to_exitcode(status)}))
"""


def test_a_forked_child_serves_like_its_parent(alone):
    """As reliability/crash.py does: load once, fork while idle (no thread), serve in the child."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["child_exit"] == 0
    assert result["child"] == result["parent"] == alone[0][0]



def test_an_engine_around_a_model_in_memory_batches_it_alike(engine):
    """``CpuEngine.from_model`` (the path of ``bench/cpu_engine.py --shape``: a model of SmolLM2's shape with random
    weights): a tiny random Llama with the engine's tokenizer is checked like the GGUF's, and its greedy answers run
    together are the answers run alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from atoma_ops.serving.engines.cpu import CpuEngine

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(engine.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    tiny = CpuEngine.from_model(engine.tokenizer, LlamaForCausalLM(config).eval(), model="tiny", max_batch=4)
    assert tiny.model == "tiny" and tiny.batch_mode == engine.batch_mode != "serial"
    requests = GREEDY[:4]
    alone = [outcome(asyncio.run(collect(tiny, r, s))) for r, s in requests]

    async def together():
        return await asyncio.gather(*(collect(tiny, r, s) for r, s in requests))

    assert [outcome(g) for g in asyncio.run(together())] == alone
    assert tiny.wait_idle(30)
