"""The node's HTTP server through the official ``openai`` SDK (sync and async, streamed and not), on the real
localnet, the real store and the session CPU engine; a stub engine only where a property needs a slow engine
(overload). Each refusal is mapped to the SDK's exception and charges nothing; concurrent streams are metered
exactly; a dropped stream is charged what was produced and its history still replays to the same hash."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atoma_ops.client import AtomaAuth, openai_client
from atoma_ops.protocol.commitments import response_hash
from atoma_ops.protocol.node_http import SIGNATURE_HEADER, STACK_HEADER
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.replay import replay
from atoma_ops.serving.server import BackgroundServer, create_app

from tests.serving.buyer_kit import buyer, signed_headers
from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, net, stub_engine  # noqa: E402,F401

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the task's model (test_kit.market)
FAILED = "atoma_total_failed_requests_total"
#: the Atoma node's counter of refusals per status (chat_completions.rs @ c5e7a0a; its 400 counter is in capitals)
REFUSED_BY_STATUS = {
    400: "atoma_TOTAL_BAD_REQUESTS_total", 401: "atoma_total_unauthorized_requests_total",
    423: "atoma_total_locked_requests_total", 425: "atoma_total_too_early_requests_total",
    429: "atoma_total_too_many_requests_total",
}
REQUESTS = "atoma_chat_completions_num_requests_total"
#: the Atoma node's LATENCY_HISTOGRAM_BUCKETS (atoma-node atoma-service/src/handlers/metrics.rs @ c5e7a0a, l. 10-12)
NODE_LATENCY_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]


class Node:
    """node-1's server on 127.0.0.1 and what a test needs to look behind it."""

    def __init__(self, net, home, engine, keepalive_s: float = 15.0, **options):
        self.net = net
        self.signer = buyer(net)  # the stacks' owner: every request is signed with its key
        self.service = net.run(NodeService.open(home.path, "node-1", engine, **options))
        self.server = BackgroundServer(create_app(self.service, keepalive_s=keepalive_s)).start()
        self.url = self.server.url

    def client(self, stack: int, **options) -> openai.OpenAI:
        return openai_client(self.url + "/v1", self.signer, stack, max_retries=options.pop("max_retries", 2), **options)

    def aclient(self, stack: int) -> openai.AsyncOpenAI:
        return openai_client(self.url + "/v1", self.signer, stack, asynchronous=True, max_retries=0)

    def auth(self, stack: int) -> AtomaAuth:
        return AtomaAuth(self.signer, stack)

    def usage(self, stack: int):
        return self.service.store.usage(stack)

    def charged(self, stack: int) -> tuple[int, int, int, int]:
        """(used, reserved, requests, history length) of a stack on this node (zeros when never served)."""
        u = self.usage(stack)
        history = len(self.service.history(stack))
        return (0, 0, 0, history) if u is None else (u.used_units, u.reserved_units, u.num_requests, history)

    def samples(self, name: str) -> list:
        """The samples named ``name`` on ``GET /metrics`` (Prometheus text format, parsed)."""
        text = httpx.get(self.url + "/metrics").text
        return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]

    def metric(self, name: str, **labels) -> float | None:
        """The value of the series ``name`` with exactly ``labels``; None when the node exposes no such series (so
        ``== 0`` cannot pass for a metric that is missing or renamed)."""
        want = {k: str(v) for k, v in labels.items()}
        values = [s.value for s in self.samples(name) if s.labels == want]
        assert len(values) <= 1, (name, labels, values)
        return values[0] if values else None

    def settled(self, stack: int, timeout: float = 30.0):
        """Wait until nothing is in flight on the stack (a dropped stream is recorded by its own task)."""
        deadline = time.monotonic() + timeout
        while True:
            u = self.usage(stack)
            if u is not None and u.in_flight == 0 and self.service.pending == 0:
                return u
            if time.monotonic() > deadline:
                raise AssertionError(f"stack {stack} still has requests in flight: {u}")
            time.sleep(0.05)

    def close(self):
        self.server.stop()
        self.net.run(self.service.close())


@pytest.fixture
def stacks(net):
    t = market(net, NO_SECURITY)
    return {
        "own": net.buy(t, 50_000, PRICE, draw=0),
        "other": net.buy(t, 50_000, PRICE, draw=0),
        "tiny": net.buy(t, 40, PRICE, draw=0),
        "foreign": net.buy(t, 10_000, PRICE, draw=1),
    }


@pytest.fixture
def node(engine, net, localnet_home, stacks):
    n = Node(net, localnet_home, engine)
    yield n
    n.close()


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ====================================================================== the happy paths
def test_sync_non_streaming_and_streaming_agree_and_are_metered(node, stacks):
    client = node.client(stacks["own"])
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages("Name a fruit."), max_tokens=12)
    plain = raw.parse()
    usage = plain.usage
    assert int(raw.headers["x-compute-units"]) == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-history-index"] == "0"

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages("Name a fruit."), max_tokens=12,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.usage is not None]
    assert len(finals) == 1 and finals[0] is chunks[-1] and finals[0].choices == []  # usage forced, in the last chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason
    ]
    assert text == plain.choices[0].message.content  # greedy: the same answer streamed or not
    assert (finals[0].usage.prompt_tokens, finals[0].usage.completion_tokens) == (usage.prompt_tokens,
                                                                                 usage.completion_tokens)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # relayed piece by piece

    history = node.service.history(stacks["own"])
    assert len(history) == 2
    assert history.entries[0].response_hash == history.entries[1].response_hash  # same deterministic answer
    u = node.usage(stacks["own"])
    assert u.used_units == history.units == 2 * (usage.prompt_tokens + usage.completion_tokens)
    assert u.reserved_units == 0
    entry = history.entries[1]
    assert entry.arrived_ms <= entry.first_token_ms <= entry.served_at_ms  # latency recorded per request


def test_async_streams_16_at_once_on_one_stack_metered_exactly(node, stacks):
    async def one(client, i: int) -> tuple[str, int, int]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages(f"Count to {i + 2}."), max_tokens=6 + i % 5, stream=True,
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        return text, usage.prompt_tokens, usage.completion_tokens

    async def all16():
        client = node.aclient(stacks["own"])
        try:
            return await asyncio.gather(*(one(client, i) for i in range(16)))
        finally:
            await client.close()

    results = asyncio.run(all16())
    history = node.service.history(stacks["own"])
    u = node.usage(stacks["own"])
    charged = sum(p + c for _, p, c in results)
    assert len(history) == 16 and u.num_requests == 16
    assert u.used_units == charged == history.units and u.reserved_units == 0 and u.in_flight == 0
    recorded = sorted(e.response["choices"][0]["message"]["content"] for e in history.entries)
    assert recorded == sorted(text for text, _, _ in results)  # the history holds exactly what the clients received
    assert node.metric("atoma_chat_completions_num_requests_total", model=node.service.engine.model,
                       outcome="served") == 16


def test_stop_and_seeded_sampling_are_honoured_and_unseeded_sampling_is_random(node, stacks):
    client = node.client(stacks["own"])
    base = client.chat.completions.create(model=MODEL, messages=messages("List three colors, comma separated."),
                                          max_tokens=24)
    content = base.choices[0].message.content
    words = content.split()
    assert len(words) >= 3, content
    stop = words[2]  # a word in the middle of the greedy answer: the same request with it as a stop must end before it
    cut = client.chat.completions.create(model=MODEL, messages=messages("List three colors, comma separated."),
                                         max_tokens=24, stop=["@@never@@", stop])
    assert cut.choices[0].message.content == content[: content.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < base.usage.completion_tokens

    def sample(**extra) -> str:
        return client.chat.completions.create(model=MODEL, messages=messages("Tell me a story."), max_tokens=16,
                                              temperature=1.0, **extra).choices[0].message.content

    assert sample(seed=5) == sample(seed=5)
    unseeded = [sample() for _ in range(3)]
    assert len(set(unseeded)) > 1  # random, not seed 0 every time
    entries = node.service.history(stacks["own"]).entries[-3:]
    seeds = [e.seed for e in entries]
    assert None not in seeds and len(set(seeds)) == 3  # the node drew a seed for each and recorded it
    assert replay(node.service.history(stacks["own"]), node.service.engine).equal  # so replays reproduce them


def test_a_request_id_is_served_once(node, stacks):
    model = node.service.engine.model
    client = node.client(stacks["own"])
    first = client.chat.completions.create(model=MODEL, messages=messages("Hi."), max_tokens=5,
                                           extra_headers={"X-Request-Id": "abc-1"})
    used = node.usage(stacks["own"]).used_units
    assert (node.metric(FAILED, model=model), node.metric(REQUESTS, model=model, outcome="duplicate")) == (0, 0)
    again = client.chat.completions.create(model=MODEL, messages=messages("Hi."), max_tokens=5,
                                           extra_headers={"X-Request-Id": "abc-1"})
    assert again.choices[0].message.content == first.choices[0].message.content
    assert node.usage(stacks["own"]).used_units == used and len(node.service.history(stacks["own"])) == 1
    # the replay is the recorded answer (200), not a failure: a duplicate, and atoma_total_failed_requests unmoved
    assert node.metric(REQUESTS, model=model, outcome="duplicate") == 1
    assert node.metric(REQUESTS, model=model, outcome="served") == 1
    assert node.metric(FAILED, model=model) == 0


# ====================================================================== refusals
REFUSALS = [
    # (what, request overrides, stack key, SDK exception, status, param)
    ("unknown model", {"model": "gpt-4o"}, "own", openai.BadRequestError, 400, "model"),
    ("unknown parameter", {"extra_body": {"frobnicate": 1}}, "own", openai.BadRequestError, 400, "frobnicate"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "own",
     openai.BadRequestError, 400, "tools"),
    ("json mode", {"response_format": {"type": "json_object"}}, "own", openai.BadRequestError, 400, "response_format"),
    ("logprobs", {"logprobs": True}, "own", openai.BadRequestError, 400, "logprobs"),
    ("n = 2", {"n": 2}, "own", openai.BadRequestError, 400, "n"),
    ("temperature 3", {"temperature": 3}, "own", openai.BadRequestError, 400, "temperature"),
    ("top_p 0", {"top_p": 0}, "own", openai.BadRequestError, 400, "top_p"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "own", openai.BadRequestError, 400, "stop"),
    ("stack of another node", {}, "foreign", openai.BadRequestError, 400, None),
    ("no such stack", {}, 999, openai.BadRequestError, 400, None),
    ("too few units left", {"max_tokens": 30}, "tiny", openai.APIStatusError, 425, None),
]


def test_refusals_map_to_the_sdks_exceptions_and_charge_nothing(node, stacks):
    """One node for the whole table (a node per case would cost seconds each)."""
    model = node.service.engine.model
    for what, overrides, stack, exc, status, param in REFUSALS:
        sid = stacks.get(stack, stack)
        before = node.charged(sid)
        # no series before the node's first request ended: 0
        refused_before = node.metric(REFUSED_BY_STATUS[status], model=model) or 0.0
        failed_before = node.metric(FAILED, model=model) or 0.0
        client = node.client(sid)  # the SDK's default retries: a final refusal must not be sent again
        kwargs = {"model": MODEL, "messages": messages("Hello."), "max_tokens": 5, **overrides}
        with pytest.raises(exc) as info:
            client.chat.completions.create(**kwargs)
        assert info.value.status_code == status, what
        body = info.value.body
        assert body["type"] and body["message"], what
        if param is not None:
            assert body["param"] == param and param in body["message"], (what, body)
        assert info.value.response.headers["x-should-retry"] == "false", what
        assert node.charged(sid) == before, what  # nothing reserved, charged or recorded
        # sent once: the SDK honoured x-should-retry (one more refusal of its status counted, not three); a refusal
        # is not a failure
        assert node.metric(REFUSED_BY_STATUS[status], model=model) == refused_before + 1, what
        assert (node.metric(FAILED, model=model) or 0.0) == failed_before, what
    assert node.metric(REQUESTS, model=model, outcome="refused") == len(REFUSALS)


def test_a_bad_signature_and_a_stack_in_settlement_reach_the_sdk_as_401_and_423(node, stacks, net):
    sid = stacks["own"]
    # the owner's valid signature, but over another body: the node answers 401, the SDK's AuthenticationError
    other_body = b'{"messages":[{"role":"user","content":"Another body."}]}'
    forged = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, default_headers={
        STACK_HEADER: str(sid), SIGNATURE_HEADER: signed_headers(node.signer, None, other_body)[SIGNATURE_HEADER]})
    with pytest.raises(openai.AuthenticationError) as info:
        forged.chat.completions.create(model=MODEL, messages=messages("Hello."), max_tokens=5)
    assert info.value.status_code == 401 and info.value.body["type"] == "invalid_signature"
    assert node.charged(sid) == (0, 0, 0, 0)
    model = node.service.engine.model  # refused before admission, and still counted as the Atoma node counts it
    assert node.metric(REFUSED_BY_STATUS[401], model=model) == 1

    # a stack whose settlement ticket is open on chain (its settle period): 423, which the SDK has no subclass for
    settling = stacks["other"]
    net.settle("node-1", settling, 1)
    with pytest.raises(openai.APIStatusError) as info:
        node.client(settling, max_retries=0).chat.completions.create(model=MODEL, messages=messages("Hello."),
                                                                       max_tokens=5)
    assert type(info.value) is openai.APIStatusError
    assert info.value.status_code == 423 and info.value.body["type"] == "stack_in_settlement"
    assert node.charged(settling) == (0, 0, 0, 0) and node.metric(REFUSED_BY_STATUS[423], model=model) == 1
    # the owner's own signature on the open stack is served: the 401 was the signature, not the stack
    assert node.client(sid, max_retries=0).chat.completions.create(model=MODEL, messages=messages("Hello."),
                                                                    max_tokens=5).usage.completion_tokens > 0


def test_async_non_streaming_usage_is_what_the_stack_was_charged(node, stacks):
    sid = stacks["other"]

    async def once():
        client = node.aclient(sid)  # openai.AsyncOpenAI, no retries
        try:
            return await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages("Name a color."), max_tokens=8)
        finally:
            await client.close()

    raw = asyncio.run(once())
    reply = raw.parse()
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    u = node.usage(sid)
    assert (u.used_units, u.reserved_units, u.num_requests) == (usage.prompt_tokens + usage.completion_tokens, 0, 1)
    assert int(raw.headers["x-compute-units"]) == u.used_units
    (entry,) = node.service.history(sid).entries
    assert entry.units == u.used_units
    assert entry.response["choices"][0]["message"]["content"] == reply.choices[0].message.content


@pytest.mark.parametrize("body", [
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
])
def test_non_finite_numbers_are_refused_at_admission_and_affect_no_other_request(node, stacks, body):
    sid = stacks["own"]
    with httpx.Client(base_url=node.url, timeout=120) as http:
        async def both():
            async with httpx.AsyncClient(base_url=node.url, timeout=120) as a:
                headers = {**signed_headers(node.signer, sid, body), "content-type": "application/json"}
                return await asyncio.gather(
                    a.post("/v1/chat/completions", content=body, headers=headers),
                    a.post("/v1/chat/completions", json={"messages": messages("Hi."), "max_tokens": 4},
                           auth=node.auth(sid)),
                )

        bad, good = asyncio.run(both())
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error", bad.text
        assert good.status_code == 200, good.text
        u = node.settled(sid)
        assert u.reserved_units == 0 and u.num_requests == 1
        assert node.service.store.begin_settlement(sid) == "open"  # nothing left held: try-settle is not refused
        assert http.get("/health").status_code == 200


def test_overload_answers_429_with_retry_after(net, localnet_home, stacks):
    slow = Node(net, localnet_home, stub_engine(delay=3.0), max_pending=2)
    try:
        async def three():
            async with httpx.AsyncClient(base_url=slow.url, timeout=60, auth=slow.auth(stacks["own"])) as a:
                body = {"messages": messages("Hi."), "max_tokens": 3}
                first = [asyncio.create_task(a.post("/v1/chat/completions", json=body)) for _ in range(2)]
                while slow.service.pending < 2:
                    await asyncio.sleep(0.01)
                third = await a.post("/v1/chat/completions", json=body)
                # the official SDK, signed, no retries, while the two are still running: the 429 is its RateLimitError
                sdk = slow.aclient(stacks["own"])
                try:
                    with pytest.raises(openai.RateLimitError) as info:
                        await sdk.chat.completions.create(model=slow.service.engine.model, messages=messages("Hi."),
                                                          max_tokens=3)
                finally:
                    await sdk.close()
                busy = not any(t.done() for t in first)
                return third, info.value, busy, await asyncio.gather(*first)

        third, sdk_error, busy, first = asyncio.run(three())
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["type"] == "overloaded"
        assert busy  # both slots were still taken when the SDK's request came
        assert sdk_error.status_code == 429 and sdk_error.body["type"] == "overloaded"
        assert sdk_error.response.headers["retry-after"] == "1"
        assert [r.status_code for r in first] == [200, 200]
        assert slow.usage(stacks["own"]).num_requests == 2
        model = slow.service.engine.model
        assert slow.metric(REQUESTS, model=model, outcome="overloaded") == 2  # the httpx one and the SDK's, once
        assert slow.metric(REFUSED_BY_STATUS[429], model=model) == 2
        assert slow.metric(FAILED, model=model) == 0 and slow.metric(REQUESTS, model=model, outcome="served") == 2
        assert slow.metric("atoma_total_completed_requests_total", model=model) == 2
    finally:
        slow.close()


def test_a_silent_engine_gets_keep_alive_comments_and_the_stream_still_ends_metered(net, localnet_home, stacks):
    """While the engine sends no text (1.1 s before its first token, 0.5 s between tokens) the stream carries
    ': keep-alive' comments every ``keepalive_s`` (0.2 s here), and the SDK reads through them to the usage chunk."""
    slow = Node(net, localnet_home, stub_engine(delay=0.6, completion_tokens=3, token_delay=0.5), keepalive_s=0.2)
    try:
        sid = stacks["own"]
        body = {"messages": messages("Hi."), "max_tokens": 3, "stream": True}
        with httpx.Client(base_url=slow.url, timeout=60, auth=slow.auth(sid)) as http:
            started = time.monotonic()
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                lines = [line for line in r.iter_lines() if line]
            elapsed = time.monotonic() - started
        first_content = next(i for i, line in enumerate(lines) if '"content":"' in line and '"content":""' not in line)
        before = lines[:first_content].count(": keep-alive")
        after = lines[first_content:].count(": keep-alive")
        # 1.1 s of silence / 0.2 s: 5 before the first token, and two gaps of 0.5 s: 2 each after it. A loaded box
        # stretches the engine's sleeps (more keep-alives fit) or delays the timer (fewer), so: some in each silence,
        # and never more than one per 0.2 s of the whole stream
        assert before >= 3 and after >= 2
        assert before + after <= elapsed / 0.2
        assert lines[-1] == "data: [DONE]"
        # the SDK skips the comments: the same answer, metered
        chunks = list(slow.client(sid).chat.completions.create(model=MODEL, messages=messages("Hi."), max_tokens=3,
                                                                stream=True))
        assert chunks[-1].usage.completion_tokens == 3
        assert slow.usage(sid).num_requests == 2
    finally:
        slow.close()


# ====================================================================== a dropped stream
def test_a_dropped_stream_is_charged_what_was_produced_and_replays(node, stacks):
    sid = stacks["other"]
    body = {"model": MODEL, "messages": messages("Write a long story about the sea."), "max_tokens": 200, "stream": True}
    received = ""
    with httpx.Client(base_url=node.url, timeout=120, auth=node.auth(sid)) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            pieces = 0
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    pieces += 1
                    if pieces == 5:
                        break  # the client goes away mid-answer
    u = node.settled(sid)
    history = node.service.history(sid)
    (entry,) = history.entries
    response = entry.response
    produced = response["usage"]["completion_tokens"]
    assert response["choices"][0]["finish_reason"] == "abort"
    assert 5 <= produced < 200  # generation stopped well before its budget
    assert entry.units == response["usage"]["prompt_tokens"] + produced == u.used_units <= entry.reserved_units
    assert u.reserved_units == 0 and u.in_flight == 0
    report = replay(history, node.service.engine)  # bounded by the recorded length: the same answer, the same hash
    assert report.equal and response_hash(report.replayed_responses[0]) == entry.response_hash
    assert node.metric(REQUESTS, model=node.service.engine.model, outcome="aborted") == 1
    assert node.metric(FAILED, model=node.service.engine.model) == 0  # an abort is not a failure


def test_metrics_are_served_in_prometheus_text_format(node, stacks):
    usage = node.client(stacks["own"]).chat.completions.create(model=MODEL, messages=messages("Hi."),
                                                               max_tokens=4).usage
    r = httpx.get(node.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    model = node.service.engine.model
    # the Atoma node's names (atoma-node atoma-service/src/handlers/metrics.rs @ c5e7a0a)
    for name in ("atoma_chat_completions_time_to_first_token", "atoma_chat_completions_token_latency"):
        assert node.metric(name + "_count", model=model) == 1
        # ... and its LATENCY_HISTOGRAM_BUCKETS, as it uses them for both
        bounds = [float(s.labels["le"]) for s in node.samples(name + "_bucket") if s.labels["model"] == model]
        assert bounds == NODE_LATENCY_BUCKETS + [float("inf")], name
    assert node.metric("atoma_chat_completions_intra_token_generation_time_count", model=model) is not None
    assert node.metric("atoma_chat_completions_input_tokens_metrics_total", model=model) == usage.prompt_tokens
    assert node.metric("atoma_chat_completions_output_tokens_metrics_total", model=model) == usage.completion_tokens
    for old in ("atoma_chat_completions_latency_count", "atoma_chat_completions_completions_tokens_total"):
        assert node.samples(old) == [], old  # renamed after the node's
    assert node.metric("atoma_compute_units_charged_total", model=model) == node.usage(stacks["own"]).used_units
    assert node.metric("atoma_num_running_requests", model=model) == 0
