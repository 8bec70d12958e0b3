"""The OpenAI HTTP engine (the production path, in front of ``vllm serve``) against the OpenAI-compatible stand-in
(atoma_ops.testing.openai_standin), and the stand-in itself. No model is loaded: every test here takes well under a
second or two, and none asserts on time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import httpx
import pytest

from atoma_ops.serving.engines import make_engine
from atoma_ops.serving.engines.base import Delta, EngineError, Generation, Sampling
from atoma_ops.serving.engines.openai_http import (
    DEFAULT_MAX_CONCURRENCY,
    ChunkRelay,
    OpenAIHttpEngine,
    request_body,
    response_delta,
    sse_data,
)
from atoma_ops.testing.openai_standin import STANDIN_MODEL, OpenAIServer, StandinEngine, standin

GREEDY = Sampling(max_tokens=64)


def ask(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


def collect(engine, request: dict, sampling: Sampling = GREEDY) -> list[Delta]:
    async def run() -> list[Delta]:
        return [delta async for delta in engine.stream(request, sampling)]

    return asyncio.run(run())


def fold(deltas: list[Delta]) -> Generation:
    gen = Generation()
    for delta in deltas:
        gen.add(delta)
    return gen


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll until ``condition()`` holds (the server's thread updates its counters on its own schedule)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def free_port_with_nothing_listening() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shared():
    with standin() as server:
        yield server


@pytest.fixture
def server(shared):
    shared.reset()
    return shared


def expected(request: dict, sampling: Sampling = GREEDY, **engine_options) -> dict:
    """What the stand-in's engine answers, run in process (no HTTP)."""
    return asyncio.run(StandinEngine(**engine_options).complete(request, sampling))


# --------------------------------------------------------------------------------------------------------------
# Streaming and usage
# --------------------------------------------------------------------------------------------------------------


def test_stream_relays_chunk_by_chunk_before_the_upstream_finishes():
    with standin(token_delay=0.3, answer_words=(4, 4)) as server, server.client() as http:
        request = ask("stream me four words")

        async def run():
            seen = []
            async for delta in http.stream(request, GREEDY):
                if not seen:  # the first word is here while the server is still producing the other three
                    seen.append((server.completed, server.in_flight, server.engine.streams_opened))
                seen.append(delta)
            return seen

        (state, *deltas) = asyncio.run(run())
    assert state == (0, 1, 1)
    assert len(deltas) == 4  # one delta per token chunk
    assert [d.tokens for d in deltas] == [1, 1, 1, 1]
    assert deltas[0].prompt_tokens == server.engine.prompt_tokens(request)
    assert all(d.prompt_tokens is None for d in deltas[1:])
    assert [d.finish_reason for d in deltas] == [None, None, None, "stop"]
    want = expected(request, answer_words=(4, 4))
    assert "".join(d.text for d in deltas) == want["choices"][0]["message"]["content"]


def test_usage_is_exact_with_running_usage(server):
    request, sampling = ask("count my tokens"), Sampling(max_tokens=5)
    with server.client() as http:
        deltas = collect(http, request, sampling)
    gen = fold(deltas)
    want = expected(request, sampling)
    assert gen.completion_tokens == want["usage"]["completion_tokens"] == 5
    assert gen.prompt_tokens == want["usage"]["prompt_tokens"]
    assert gen.finish_reason == "length" and gen.content == want["choices"][0]["message"]["content"]
    assert server.completion_tokens == 5


def test_usage_is_exact_without_running_usage_and_with_held_back_text():
    """A server with no per-chunk usage: 1 token per chunk with text, the last delta makes up the difference (here
    the chunks whose text is held back while it may still start a stop string carry no text)."""
    request = ask("held back")
    words = expected(request)["choices"][0]["message"]["content"].split()
    sampling = Sampling(max_tokens=64, stop=(f"{words[3]} {words[4]} never-there", f" {words[5]}"))
    with standin(continuous_usage=False) as server, server.client() as http:
        deltas = collect(http, request, sampling)
    want = expected(request, sampling)
    gen = fold(deltas)
    assert gen.content == want["choices"][0]["message"]["content"] == " ".join(words[:5])
    assert gen.completion_tokens == want["usage"]["completion_tokens"] == 6
    assert gen.finish_reason == "stop"
    assert deltas[-1].prompt_tokens == want["usage"]["prompt_tokens"]  # not known before the final usage
    assert all(d.tokens in (0, 1) for d in deltas[:-1])


def test_a_server_refusing_continuous_usage_is_asked_again_without_it_once():
    with standin(reject_continuous_usage=True) as server, server.client() as http:
        first = fold(collect(http, ask("one")))
        second = fold(collect(http, ask("two")))
        bodies = list(server.bodies)
    assert [("continuous_usage_stats" in b["stream_options"]) for b in bodies] == [True, False, False]
    assert all(b["stream_options"]["include_usage"] is True for b in bodies)
    assert first.completion_tokens == expected(ask("one"))["usage"]["completion_tokens"]
    assert second.finish_reason == "stop"


def test_a_server_that_ignores_stream_gives_one_delta():
    request = ask("no streaming here")
    with standin(ignore_stream=True) as server, server.client() as http:
        deltas = collect(http, request)
    want = expected(request)
    assert len(deltas) == 1
    (delta,) = deltas
    assert delta.text == want["choices"][0]["message"]["content"]
    assert (delta.prompt_tokens, delta.tokens) == (want["usage"]["prompt_tokens"], want["usage"]["completion_tokens"])
    assert delta.finish_reason == "stop"


def test_what_is_sent(server):
    with server.client() as http:
        http.chat(
            [
                {**ask("greedy"), "model": "gpt-4o", "user": "u1", "temperature": 0.9, "stream": False},
                ask("sampled"),
                ask("stopped"),
            ],
            [GREEDY, Sampling(max_tokens=7, temperature=0.7, top_p=0.9, seed=42), Sampling(max_tokens=3, stop=("x",))],
        )
    greedy, sampled, stopped = sorted(server.bodies, key=lambda b: b["messages"][0]["content"])
    options = {"include_usage": True, "continuous_usage_stats": True}
    assert greedy == {"model": STANDIN_MODEL, "messages": ask("greedy")["messages"], "max_tokens": 64,
                      "temperature": 0.0, "stream": True, "stream_options": options}  # decoding from Sampling only
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9 and sampled["seed"] == 42
    assert sampled["max_tokens"] == 7 and "stop" not in sampled
    assert stopped["stop"] == ["x"] and "seed" not in stopped and "top_p" not in stopped


def test_max_tokens_is_capped_by_the_context_the_server_reported():
    with standin(max_context=100) as server, server.client() as http:
        too_much = Sampling(max_tokens=500)
        with pytest.raises(EngineError, match="HTTP 400 .*max_tokens=500"):  # the server's own refusal
            collect(http, ask("hello"), too_much)
        http.count_tokens("learn the context")  # vLLM's /tokenize says max_model_len
        assert http.max_context == 100
        gen = fold(collect(http, ask("hello"), too_much))
    assert server.bodies[-1]["max_tokens"] == 100
    assert gen.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_unseeded_is_not(server):
    with server.client() as http:
        one, again, other = http.chat(
            [ask("a story")] * 3,
            [Sampling(max_tokens=64, temperature=1.0, seed=s) for s in (1, 1, 2)],
        )
    text = [r["choices"][0]["message"]["content"] for r in (one, again, other)]
    assert text[0] == text[1] != text[2]


# --------------------------------------------------------------------------------------------------------------
# Concurrency, cancellation, event loops
# --------------------------------------------------------------------------------------------------------------


def test_64_concurrent_requests_are_all_in_flight_at_once():
    """A 0.5 s stand-in with unlimited concurrency: 64 requests run together (no batch barrier, no small pool)."""
    requests = [ask(f"question {i}") for i in range(64)]
    with standin(latency=0.5) as server, server.client() as http:
        responses = http.chat(requests, [GREEDY] * 64)
    assert server.max_in_flight == 64
    assert server.completed == 64
    assert [r["choices"][0]["message"]["content"] for r in responses] == [
        expected(r)["choices"][0]["message"]["content"] for r in requests
    ]


def test_max_concurrency_bounds_requests_in_flight():
    with standin(latency=0.3) as server, server.client(max_concurrency=4) as http:
        http.chat([ask(f"q{i}") for i in range(12)], [GREEDY] * 12)
    assert 2 <= server.max_in_flight <= 4
    assert server.completed == 12
    assert OpenAIHttpEngine("http://127.0.0.1:9/v1", "m").max_concurrency == DEFAULT_MAX_CONCURRENCY >= 256


def test_closing_the_stream_mid_way_disconnects_the_upstream():
    with standin(token_delay=0.2, answer_words=(30, 30)) as server, server.client() as http:

        async def run():
            stream = http.stream(ask("a long answer"), GREEDY)
            got = [await stream.__anext__(), await stream.__anext__()]
            await stream.aclose()
            return got

        got = asyncio.run(run())
        assert wait_for(lambda: server.disconnects == 1)
        assert server.completed == 0
        assert wait_for(lambda: server.engine.streams_closed_early == 1)  # the engine behind it stopped too
        assert server.completion_tokens < 30
    assert sum(d.tokens for d in got) == 2


def test_cancelling_the_task_disconnects_the_upstream():
    with standin(token_delay=0.2, answer_words=(30, 30)) as server, server.client() as http:
        first = None

        async def consume():
            nonlocal first
            async for delta in http.stream(ask("cancel me"), GREEDY):
                first = first or delta

        async def run():
            task = asyncio.create_task(consume())
            while first is None:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run())
        assert wait_for(lambda: server.disconnects == 1)
        assert server.completed == 0


def test_stream_works_from_any_event_loop(server):
    http = server.client()
    results: dict[str, str] = {}

    def in_thread(name: str) -> None:
        async def run():
            return await http.complete(ask(name), GREEDY)

        results[name] = asyncio.run(run())["choices"][0]["message"]["content"]

    try:
        in_thread("main loop 1")
        states = list(http._states.values())
        assert len(states) == 1 and states[0].is_closed  # closed when its loop shut down
        threads = [threading.Thread(target=in_thread, args=(f"thread {i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        in_thread("main loop 2")
        for thread in threads:
            thread.join(timeout=30)
    finally:
        http.close()
    assert set(results) == {"main loop 1", "main loop 2", "thread 0", "thread 1"}
    assert all(results[name] == expected(ask(name))["choices"][0]["message"]["content"] for name in results)


def test_connections_are_kept_alive_and_reused(server):
    """Sequential requests on one loop use one connection: the body is read to its end after [DONE], so the
    connection goes back to the pool instead of being closed."""
    with server.client() as http:

        async def run():
            for i in range(5):
                await http.complete(ask(f"again {i}"), GREEDY)

        asyncio.run(run())
    assert server.requests == 5 and len(server.peers) == 1


def test_a_kept_connection_the_server_closed_is_not_reused():
    """A server that closes each connection after answering, without saying so (as uvicorn does with a connection
    idle past its keep-alive): the next request opens a new connection and is served, with no retry needed."""
    event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],' \
            b'"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(event)
              + event)
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> list[Delta]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        deltas = []
        async with server:
            with OpenAIHttpEngine(f"http://127.0.0.1:{port}/v1", "m", retries=0) as http:
                for _ in range(3):
                    deltas += [d async for d in http.stream(ask("hi"), GREEDY)]
                    await asyncio.sleep(0.05)  # the server's close reaches the client
                await http.aclose()
        return deltas

    deltas = asyncio.run(run())
    assert [(d.text, d.tokens, d.finish_reason) for d in deltas] == [("hi", 1, "stop")] * 3
    assert len(connections) == 3


def test_close_releases_everything_and_the_engine_works_again(server):
    http = server.client()
    http.close()  # nothing open yet: harmless
    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(http.complete(ask("before close"), GREEDY))
        (state,) = http._states.values()
        http.count_tokens("open the sync client too")
        http.close()
        assert state.is_closed and http._client is None and not http._states
        again = loop.run_until_complete(http.complete(ask("before close"), GREEDY))
        assert again["choices"][0]["message"] == first["choices"][0]["message"]
    finally:
        http.close()
        loop.close()


# --------------------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------------------


def test_4xx_is_not_retried(server):
    with server.client(model="no-such-model", retries=3) as http:
        with pytest.raises(EngineError, match=r"HTTP 404 .*The model `no-such-model` does not exist"):
            collect(http, ask("hi"))
        with pytest.raises(EngineError, match="HTTP 404"):  # vLLM's unknown-model 404 is an error, not "no route"
            http.count_tokens("hi")
    assert server.requests == 1


def test_the_servers_400_names_its_reason(server):
    with server.client(retries=3) as http:
        with pytest.raises(EngineError, match="HTTP 400 .*content must be a string"):
            collect(http, {"messages": [{"role": "user", "content": 5}]})
    assert server.requests == 1


def test_5xx_is_retried_then_succeeds(server):
    server.faults.extend([503, 500])
    with server.client(retries=2) as http:
        gen = fold(collect(http, ask("retry me")))
    assert gen.content == expected(ask("retry me"))["choices"][0]["message"]["content"]
    assert server.requests == 3


def test_5xx_retries_are_bounded(server):
    server.faults.extend([500, 500, 500, 500])
    with server.client(retries=2) as http:
        with pytest.raises(EngineError, match="HTTP 500 .*injected fault 500"):
            collect(http, ask("hi"))
    assert server.requests == 3


def test_connection_refused_is_retried_then_fails():
    port = free_port_with_nothing_listening()
    with OpenAIHttpEngine(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01) as http:
        with pytest.raises(EngineError, match=r"cannot reach .*after 3 attempt"):
            collect(http, ask("hi"))
        with pytest.raises(EngineError, match="cannot reach"):
            http.count_tokens("hi")


@pytest.mark.parametrize(
    "fault, message",
    [
        ("no-usage", "no usage"),
        ("bad-usage", r"usage\.completion_tokens: 'many'"),
        ("short-usage", "malformed usage"),
        ("no-finish", "without a finish_reason"),
        ("error-chunk", "failed while streaming: injected fault"),
        ("drop", "stream .* broke after"),
    ],
)
def test_a_stream_that_cannot_be_metered_is_an_error_and_never_retried(server, fault, message):
    server.faults.append(fault)
    with server.client(retries=3) as http:
        with pytest.raises(EngineError, match=message):
            collect(http, ask("meter me"))
    assert server.requests == 1


def test_a_non_streamed_answer_that_cannot_be_metered_is_an_error():
    with standin(ignore_stream=True) as server, server.client() as http:
        server.faults.append("no-usage")
        with pytest.raises(EngineError, match="no usage"):
            collect(http, ask("hi"))


def test_a_silent_server_times_out_without_retry():
    with standin(latency=3.0) as server, server.client(timeout=0.3, retries=3) as http:
        with pytest.raises(EngineError, match=r"(did not answer within|sent nothing for) 0\.3 s"):
            collect(http, ask("hi"))
        assert server.requests == 1


def test_the_api_key_is_sent_and_never_shown(caplog):
    secret = "sk-test-0123456789-secret"
    with standin(api_key=secret) as server:
        with server.client() as anonymous:
            with pytest.raises(EngineError, match="HTTP 401"):
                collect(anonymous, ask("hi"))
        server.faults.append(503)
        with caplog.at_level(logging.DEBUG):
            with server.client(api_key=secret, model="wrong-model") as wrong, server.client(api_key=secret) as http:
                assert fold(collect(http, ask("hi"))).finish_reason == "stop"  # after one retried 503
                assert http.count_tokens("a b c") == 3
                with pytest.raises(EngineError) as failure:
                    collect(wrong, ask("hi"))
                shown = repr(http) + str(http) + str(failure.value) + repr(wrong)
    assert "does not exist" in shown
    assert secret not in shown
    assert secret not in caplog.text
    assert "retrying" in caplog.text


def test_client_side_validation_sends_nothing():
    with OpenAIHttpEngine("http://127.0.0.1:9/v1", "m") as http:
        assert http.chat([]) == []
        with pytest.raises(EngineError, match="non-empty 'messages'"):
            collect(http, {"messages": []})
        with pytest.raises(EngineError, match="n=1"):
            collect(http, {**ask("hi"), "n": 2})


# --------------------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------------------


def test_tokens_via_tokenize(server):
    request = ask("how many tokens is this prompt")
    with server.client() as http:
        assert http.count_tokens("one two three four") == 4
        assert http.prompt_tokens(request) == server.engine.prompt_tokens(request)
        assert http.prompt_tokens(request) == fold(collect(http, request)).prompt_tokens  # = usage


def test_tokens_with_a_local_tokenizer(tmp_path):
    """With the served model's tokenizer the engine counts here (the server here has no /tokenize: a call would
    fail) and agrees with what the server counts and reports as usage."""
    from atoma_ops.testing.openai_standin import save_tokenizer

    folder = save_tokenizer(tmp_path / "tokenizer")
    request = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how many  words"}]}
    with standin(tokenize=False) as server, server.client(tokenizer=folder) as http:
        assert not http.remote_tokenizer
        assert http.count_tokens("one two  three\nfour") == 4
        # rendered: "<|im_start|>system be brief <|im_end|> <|im_start|>user how many words <|im_end|> <|im_start|>assistant"
        assert http.prompt_tokens(request) == 10 == server.engine.prompt_tokens(request)
        assert fold(collect(http, request)).prompt_tokens == 10  # the usage the server reported
        assert server.requests == 1  # the chat completion only


def test_the_cli_counts_with_the_models_tokenizer_from_the_huggingface_cache(tmp_path, monkeypatch):
    """``--tokenizer auto`` (the default of ``node serve``, and what ``stack`` commands use): the served model's
    tokenizer from the local HuggingFace cache, where ``vllm serve`` on the same host put it, counts here, so the
    server's /tokenize (absent from this stand-in: a call would fail) is never asked; ``remote`` asks it; a model
    not in the cache is counted by the server too."""
    from atoma_ops.cli.core import State
    from atoma_ops.cli.errors import CliInputError
    from atoma_ops.cli.serving import engine_loader
    from atoma_ops.testing.openai_standin import save_tokenizer

    repo = tmp_path / "hub" / "models--atoma-ops--openai-standin"  # the cache's layout for atoma-ops/openai-standin
    snapshot = save_tokenizer(repo / "snapshots" / "0f1e2d3c4b5a")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0f1e2d3c4b5a")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    st = State(json=True)
    request = {"messages": [{"role": "user", "content": "how many  words"}]}
    with standin(tokenize=False) as server:
        auto = engine_loader(st, "openai", server.base_url, STANDIN_MODEL)()
        remote = engine_loader(st, "openai", server.base_url, STANDIN_MODEL, "remote")()
        try:
            assert auto.tokenizer_path == snapshot and not auto.remote_tokenizer
            assert auto.count_tokens("one two  three") == 3
            # "<|im_start|>user how many words <|im_end|> <|im_start|>assistant": 6 words, as the server counts
            assert auto.prompt_tokens(request) == 6 == server.engine.prompt_tokens(request)
            assert remote.tokenizer_path is None and remote.remote_tokenizer
            assert remote.prompt_tokens(request) is None  # it asked /tokenize, which this server has not
        finally:
            auto.close()
            remote.close()
        (repo / "snapshots" / "0f1e2d3c4b5a" / "tokenizer_config.json").unlink()  # no chat template: not enough
        assert engine_loader(st, "openai", server.base_url, STANDIN_MODEL)().remote_tokenizer
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
        assert engine_loader(st, "openai", server.base_url, STANDIN_MODEL)().remote_tokenizer
    with pytest.raises(CliInputError, match="--tokenizer is for --engine openai"):
        engine_loader(st, "cpu", None, None, "remote")
    from atoma_ops.chain.errors import InvalidArgument
    from atoma_ops.serving.node import load_engine

    with pytest.raises(InvalidArgument, match="a tokenizer is for the openai engine"):  # before loading anything
        load_engine("cpu", tokenizer=snapshot)


def test_tokens_without_tokenize():
    with standin(tokenize=False) as server, server.client() as http:
        assert http.prompt_tokens(ask("hi")) is None
        with pytest.raises(EngineError, match="tokenize.*tokenizer="):
            http.count_tokens("hi")


def test_tokens_via_tokenize_on_the_event_loop(server):
    """The admission path's counts (acount_tokens / aprompt_tokens over the loop's connections, all of a request at
    once in metering.estimate_async) are the synchronous ones, and a server without /tokenize is the same
    refusal."""
    from atoma_ops.serving.metering import BadRequest, estimate, estimate_async

    request = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how many  words"},
                            {"role": "user", "content": "be brief"}], "max_tokens": 7}
    with server.client() as http:
        async def run():
            return (await http.acount_tokens("one two three four"), await http.aprompt_tokens(request),
                    await estimate_async(request, http))

        count, prompt, est = asyncio.run(run())
        assert count == 4 and prompt == server.engine.prompt_tokens(request) == http.prompt_tokens(request)
        # contents: 2 + 3 + 2 tokens, +3 each, + the 7 of max_tokens = 23; the bound: the templated prompt + 7
        assert est == estimate(request, http) and est.atoma == 23 and est.bound == prompt + 7
        assert est.reserved == max(23, prompt + 7)
    with standin(tokenize=False) as bare, bare.client() as http:
        with pytest.raises(BadRequest, match="tokenize.*tokenizer="):
            asyncio.run(estimate_async(request, http))


# --------------------------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------------------------


def chunk(text=None, finish=None, usage=None, role=False) -> dict:
    delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
    out = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    return out


def relay(chunks: list[dict]) -> list[Delta]:
    r = ChunkRelay()
    out = [d for d in (r.feed(c) for c in chunks) if d is not None]
    return out + [r.finish()]


def test_chunk_relay_with_running_usage():
    deltas = relay([
        chunk(role=True, usage=(9, 0)),
        chunk("Hel", usage=(9, 1)),
        chunk("lo wor", usage=(9, 3)),  # two tokens in one chunk
        chunk("", usage=(9, 4)),  # a token that completes no character yet
        chunk("ld", finish="stop", usage=(9, 5)),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}},
    ])
    assert [(d.text, d.tokens, d.prompt_tokens, d.finish_reason) for d in deltas] == [
        ("Hel", 1, 9, None), ("lo wor", 2, None, None), ("", 1, None, None), ("ld", 1, None, "stop"),
    ]


def test_chunk_relay_without_running_usage():
    deltas = relay([chunk(role=True), chunk("a"), chunk(""), chunk(" b"), chunk(None, finish="length"),
                    {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4}}])
    assert [(d.text, d.tokens) for d in deltas] == [("a", 1), (" b", 1), ("", 2)]
    assert deltas[0].prompt_tokens is None and deltas[-1].prompt_tokens == 4
    assert deltas[-1].finish_reason == "length"


@pytest.mark.parametrize(
    "chunks, message",
    [
        ([chunk("a", usage=(1, 2)), chunk("b", usage=(1, 1))], "went down"),
        ([chunk("a"), chunk("b"), chunk(None, "stop", usage=(1, 1))], "malformed usage"),
        ([chunk("a"), chunk(None, "stop")], "no usage"),
        ([chunk("a", usage=(1, 1))], "without a finish_reason"),
        ([chunk("a", usage=(1, -1))], "completion_tokens"),
        ([{"error": {"message": "boom"}}], "failed while streaming: boom"),
        (["not an object"], "not a JSON object"),
    ],
)
def test_chunk_relay_refuses_what_cannot_be_metered(chunks, message):
    with pytest.raises(EngineError, match=message):
        relay(chunks)


def test_response_delta():
    body = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    assert response_delta(body) == Delta("hi", 1, 3, "length")
    for bad in [[], {"usage": body["usage"]}, {**body, "usage": None}, {**body, "choices": [{"text": "x"}]}]:
        with pytest.raises(EngineError):
            response_delta(bad)


def test_sse_data_parsing():
    raw = (b": keep-alive\n\ndata: {\"a\": 1}\n\nevent: message\nid: 7\ndata: line one\ndata: line two\n\n"
           b"data:no-space\r\n\r\ndata: [DONE]")

    async def pieces(size: int):
        for i in range(0, len(raw), size):
            yield raw[i:i + size]

    async def run(size: int):
        return [d async for d in sse_data(pieces(size))]

    for size in (len(raw), 1, 7):  # whole, byte by byte, lines cut anywhere
        assert asyncio.run(run(size)) == ['{"a": 1}', "line one\nline two", "no-space", "[DONE]"]
    snowman = "data: \u2603\n\n".encode()  # a character split between two network reads is not cut
    assert asyncio.run(sse_list([snowman[:7], snowman[7:]])) == ["\u2603"]


async def sse_list(chunks: list[bytes]) -> list[str]:
    async def pieces():
        for piece in chunks:
            yield piece

    return [d async for d in sse_data(pieces())]


def test_request_body():
    body = request_body({**ask("hi"), "temperature": 2, "tools": []}, "m", Sampling(max_tokens=3),
                        continuous_usage=False)
    assert body == {"model": "m", "messages": ask("hi")["messages"], "max_tokens": 3, "temperature": 0.0,
                    "stream": True, "stream_options": {"include_usage": True}}


def test_make_engine_openai_defaults():
    with make_engine("openai", base_url="http://127.0.0.1:9/v1/", model="m", api_key="k") as http:
        assert isinstance(http, OpenAIHttpEngine)
        assert http.chat_url == "http://127.0.0.1:9/v1/chat/completions"
        assert http.max_concurrency == DEFAULT_MAX_CONCURRENCY
        assert "k" not in repr(http).replace("http", "")


# --------------------------------------------------------------------------------------------------------------
# The stand-in itself
# --------------------------------------------------------------------------------------------------------------


def test_standin_is_deterministic_and_honours_max_tokens_and_stop():
    engine = StandinEngine()
    request = ask("what is a stack?")
    full = asyncio.run(engine.complete(request, GREEDY))
    words = full["choices"][0]["message"]["content"].split()
    assert 8 <= len(words) <= 24 and full["usage"]["completion_tokens"] == len(words)
    assert full["choices"][0]["finish_reason"] == "stop"
    assert asyncio.run(engine.complete(request, GREEDY))["choices"] == full["choices"]
    cut = asyncio.run(engine.complete(request, Sampling(max_tokens=3)))
    assert cut["choices"][0]["message"]["content"] == " ".join(words[:3])
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
    stopped = asyncio.run(engine.complete(request, Sampling(max_tokens=64, stop=(" " + words[2],))))
    assert stopped["choices"][0]["message"]["content"] == " ".join(words[:2])
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] == 3
    other = asyncio.run(engine.complete(ask("something else entirely"), GREEDY))
    assert other["choices"][0]["message"]["content"] != full["choices"][0]["message"]["content"]


def test_standin_http_surface(server):
    with httpx.Client(base_url=server.url) as client:
        models = client.get("/v1/models").json()
        assert models["data"][0]["id"] == STANDIN_MODEL and models["data"][0]["max_model_len"] == 8192
        assert client.post("/tokenize", json={"prompt": "a b  c"}).json()["count"] == 3
        request = {"model": STANDIN_MODEL, **ask("plain"), "temperature": 0, "max_tokens": 5}
        plain = client.post("/v1/chat/completions", json=request).json()
        assert plain["object"] == "chat.completion" and plain["usage"]["completion_tokens"] == 5
        assert plain["usage"]["prompt_tokens"] == client.post("/tokenize", json=ask("plain")).json()["count"]
        answer = plain["choices"][0]["message"]["content"]
        assert client.post("/tokenize", json={"prompt": answer}).json()["count"] == 5
        assert client.post("/v1/chat/completions", json={**request, "model": "gpt-4o"}).status_code == 404
        assert client.post("/v1/chat/completions", json={**request, "n": 2}).status_code == 400
        with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
            lines = [line for line in response.iter_lines() if line]
        assert response.headers["content-type"].startswith("text/event-stream")
        assert lines[-1] == "data: [DONE]" and len(lines) == 1 + 5 + 1  # role, one chunk per token, [DONE]
    assert server.requests == 4 and server.completed == 2


def test_engine_openai_server_fronts_any_engine():
    """OpenAIServer relays whatever engine it is given: here a stand-in engine driven directly."""
    engine = StandinEngine("custom/model", answer_words=(3, 3))
    with OpenAIServer(engine) as server, server.client() as http:
        gen = fold(collect(http, ask("front")))
    assert http.model == "custom/model"
    assert gen.content == asyncio.run(engine.complete(ask("front"), GREEDY))["choices"][0]["message"]["content"]


def test_the_task_models_a_served_model_answers_to():
    """``vllm serve … --served-model-name smol``: the engine's model is "smol", and the task names the HuggingFace
    model; ``task_models`` says they are one (the node then serves that task's stacks), nothing else is."""
    smol = OpenAIHttpEngine("http://127.0.0.1:9/v1", "smol", task_models=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    plain = OpenAIHttpEngine("http://127.0.0.1:9/v1", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert smol.serves_model("HuggingFaceTB/SmolLM2-135M-Instruct") and smol.serves_model("smol")
    assert not smol.serves_model("meta-llama/Llama-3.3-70B-Instruct")
    assert plain.serves_model("HuggingFaceTB/SmolLM2-135M-Instruct") and not plain.serves_model("smol")
