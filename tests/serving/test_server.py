"""The OpenAI-compatible HTTP server for real: uvicorn on a free 127.0.0.1 port (in a thread), httpx clients, the
session CPU engine, the real localnet and store."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from atoma_ops.client import verify_response
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.replay import replay
from atoma_ops.serving.server import BackgroundServer, create_app

from tests.serving.buyer_kit import buyer, signed_headers
from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, net, open_node, try_settle  # noqa: E402,F401

SIGNER = None  # the buyer's signer, set by the ``served`` fixture


@pytest.fixture
def served(engine, net, localnet_home):
    """node 1's server; stacks: ``own`` (10 000 units), ``tiny`` (60), ``small`` (120), ``foreign`` (node 2's),
    ``spare``."""
    t = market(net, NO_SECURITY)
    stacks = {
        "own": net.buy(t, 10_000, PRICE, draw=0),
        "tiny": net.buy(t, 60, PRICE, draw=0),
        "small": net.buy(t, 120, PRICE, draw=0),
        "foreign": net.buy(t, 10_000, PRICE, draw=1),
        "spare": net.buy(t, 10_000, PRICE, draw=0),
    }
    global SIGNER
    SIGNER = buyer(net)
    service = net.run(NodeService.open(localnet_home.path, "node-1", engine))  # its own chain connection
    server = BackgroundServer(create_app(service)).start()
    client = httpx.Client(base_url=server.url, timeout=60)
    yield server, client, stacks
    client.close()
    server.stop()
    net.run(service.close())


def post(client, stack, body, **headers):
    """A request signed by the stack's buyer (the node admits no other)."""
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body).encode()
    h = signed_headers(SIGNER, stack, raw, **headers)
    return client.post("/v1/chat/completions", content=raw, headers={**h, "content-type": "application/json"})


def error_of(r, status: int, type_: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and body["error"]["type"] == type_, body
    assert body["error"]["message"]
    return body["error"]["message"]


def test_chat_models_health_usage_and_errors(served, engine, net, localnet_home):
    server, client, st = served
    assert client.get("/health").json() == {
        "status": "ok", "node_small_id": 1, "address": net.addr["node-1"], "engine": engine.kind, "model": engine.model,
    }
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [engine.model]

    r = post(client, st["own"], ask(0, 4, model=engine.model))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    units = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert int(r.headers["X-Compute-Units"]) == units
    assert int(r.headers["X-Stack-Units-Left"]) == 10_000 - units
    assert r.headers["X-History-Index"] == "0"
    assert verify_response(body, net.addr["node-1"]) == net.addr["node-1"]  # signed with the node's own key
    usage = client.get(f"/v1/stacks/{st['own']}/usage").json()
    assert (usage["used_units"], usage["units_left"], usage["num_requests"], usage["state"]) == (units, 10_000 - units, 1, "open")

    fresh = client.get(f"/v1/stacks/{st['spare']}/usage").json()  # never served: straight from the chain
    assert (fresh["used_units"], fresh["units_left"]) == (0, 10_000)
    error_of(client.get("/v1/stacks/999/usage"), 400, "stack_not_found")
    error_of(client.get(f"/v1/stacks/{st['foreign']}/usage"), 400, "stack_not_served_by_this_node")

    # no signature, or the signature of another address: refused, nothing charged (on the cpu engine)
    r = client.post("/v1/chat/completions", json=ask(5, 4), headers={"X-Stack-Small-Id": str(st["own"])})
    assert "X-Signature" in error_of(r, 400, "invalid_signature_header")
    raw = json.dumps(ask(5, 4)).encode()
    r = client.post("/v1/chat/completions", content=raw, headers=signed_headers(buyer(net, "node-2"), st["own"], raw))
    assert "does not exist for " + net.addr["node-2"] in error_of(r, 400, "stack_not_found")
    assert client.get(f"/v1/stacks/{st['own']}/usage").json()["used_units"] == units

    # errors: 4xx with a JSON error body, nothing charged
    error_of(post(client, st["own"], b"{not json"), 400, "invalid_request_error")
    error_of(post(client, st["own"], b"[1, 2]"), 400, "invalid_request_error")
    error_of(post(client, st["own"], {"messages": []}), 400, "invalid_request_error")
    error_of(post(client, st["own"], ask(0, 4, stream="yes")), 400, "invalid_request_error")
    # an image for a text model (it would be dropped and the request charged) and a tiny temperature (greedy, as in
    # vLLM: logits / 1e-39 overflow float32)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    look = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}],
            "max_tokens": 4}
    assert "'image_url' part" in error_of(post(client, st["own"], look), 400, "invalid_request_error")
    tiny, greedy = (post(client, st["small"], ask(6, 4, temperature=t)) for t in (1e-39, 0))
    assert tiny.status_code == greedy.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    error_of(post(client, None, ask(0, 4)), 400, "missing_stack")
    error_of(post(client, "abc", ask(0, 4)), 400, "missing_stack")
    assert "does not exist" in error_of(post(client, 999, ask(0, 4)), 400, "stack_not_found")
    assert "sold to node 2" in error_of(post(client, st["foreign"], ask(0, 4)), 400, "stack_not_served_by_this_node")
    error_of(client.get("/v1/nope"), 404, "not_found")
    error_of(client.get("/v1/chat/completions"), 405, "method_not_allowed")

    # exhausted: the tiny stack covers one short request (~40 units), not two
    assert post(client, st["tiny"], ask(1, 4)).status_code == 200
    left = client.get(f"/v1/stacks/{st['tiny']}/usage").json()["units_left"]
    r = post(client, st["tiny"], ask(2, 4))
    message = error_of(r, 425, "insufficient_compute_units")
    assert r.json()["error"]["units_left"] == left and f"stack {st['tiny']}" in message and "estimate" in message

    # settling: the node try-settles the stack (another service on the same store and chain)
    other = open_node(net, localnet_home, "node-1", None)
    try_settle(net, other, localnet_home, st["own"])
    error_of(post(client, st["own"], ask(3, 4)), 423, "stack_in_settlement")
    assert client.get(f"/v1/stacks/{st['own']}/usage").json()["state"] == "settled"

    # nothing of the refused requests was charged or recorded; the server keeps serving
    assert client.get(f"/v1/stacks/{st['own']}/usage").json()["used_units"] == units
    (entry,) = other.history(st["own"]).entries
    sent = json.dumps(ask(0, 4, model=engine.model), separators=(",", ":")).encode()
    assert entry.payload_hash == hashlib.blake2b(sent, digest_size=32).digest()  # the hash the buyer signed
    r = post(client, st["spare"], ask(4, 2))
    assert r.status_code == 200 and r.headers["X-History-Index"] == "0"


def test_concurrent_requests_never_over_serve(served):
    """Eight clients at once on a stack that holds only a few requests: some are served, the rest get 425, and the
    units charged add up to the stack's usage, never past it."""
    server, client, st = served
    stack = st["small"]  # 120 units; a 2-token request reserves ~40 and costs ~35-40

    def one(i: int):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return post(c, stack, ask(i, 2))

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert ok and refused
    assert all(r.status_code == 425 and r.json()["error"]["type"] == "insufficient_compute_units" for r in refused)
    usage = client.get(f"/v1/stacks/{stack}/usage").json()
    assert usage["used_units"] == sum(int(r.headers["X-Compute-Units"]) for r in ok) <= 120
    assert usage["num_requests"] == len(ok) and usage["reserved_units"] == 0
    assert sorted(int(r.headers["X-History-Index"]) for r in ok) == list(range(len(ok)))


def test_a_client_that_gives_up_on_an_answer_stops_it_and_is_charged_what_was_produced(served, engine, net,
                                                                                           localnet_home):
    """A non-streamed request whose client goes away (its timeout: the openai SDK then retries) stops the engine as
    a dropped stream does: charged what was produced, never the whole answer nobody reads (with retries, several
    times over), and its history replays to the same hash."""
    server, client, st = served
    sid, budget = st["spare"], 400  # ~40 s of the CPU engine: far longer than the client waits
    raw = json.dumps(ask("the sea, at great length", budget)).encode()
    with httpx.Client(base_url=server.url, timeout=3.0) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/chat/completions", content=raw,
                           headers={**signed_headers(SIGNER, sid, raw), "content-type": "application/json"})
    deadline = time.monotonic() + 20
    while (usage := client.get(f"/v1/stacks/{sid}/usage").json())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert usage["in_flight"] == 0 and usage["reserved_units"] == 0, usage  # stopped, well before its ~40 s
    history = open_node(net, localnet_home, "node-1", None).history(sid)
    (entry,) = history.entries
    produced = entry.response["usage"]["completion_tokens"]
    assert entry.response["choices"][0]["finish_reason"] == "abort" and 0 < produced < budget
    assert entry.units == entry.response["usage"]["prompt_tokens"] + produced == usage["used_units"]
    assert replay(history, engine).equal  # bounded by the recorded length: the same answer


def test_continuous_usage_stats_puts_the_usage_so_far_in_every_chunk(served):
    """``stream_options.continuous_usage_stats`` (vLLM's): each content chunk carries the usage so far, growing to
    the final usage chunk's; without it only that final chunk has usage."""
    server, client, st = served

    def chunks(options: dict) -> list[dict]:
        r = post(client, st["own"], ask(7, 12, stream=True, stream_options=options))
        assert r.status_code == 200, r.text
        return [json.loads(line[6:]) for line in r.text.splitlines()
                if line.startswith("data: {") and '"chat.completion.chunk"' in line]

    counted = chunks({"include_usage": True, "continuous_usage_stats": True})
    final = counted[-1]["usage"]
    assert counted[-1]["choices"] == [] and final["completion_tokens"] >= 1
    running = [c["usage"] for c in counted[:-1] if c["choices"][0]["delta"].get("content")]
    assert running and all(u["prompt_tokens"] == final["prompt_tokens"] for u in running)
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in running)
    steps = [u["completion_tokens"] for u in running]
    assert steps == sorted(steps) and 1 <= steps[0] and steps[-1] <= final["completion_tokens"]
    plain = chunks({"include_usage": True})
    assert [c["usage"] is None for c in plain] == [True] * (len(plain) - 1) + [False]


def test_a_stack_whose_task_is_for_another_model_is_not_served(served, engine, net):
    """A stack of a task whose model this node's engine does not run is refused whatever ``model`` the request
    names (the task's, the engine's, none): a 400 naming ``model``, nothing reserved or charged."""
    server, client, st = served
    other = "meta-llama/Llama-3.3-70B-Instruct"
    t = net.task(NO_SECURITY, model=other)
    net.sub("node-1", t, PRICE)
    sid = net.buy(t, 10_000, PRICE, draw=0)
    for body in (ask(0, 4), ask(0, 4, model=other), ask(0, 4, model=engine.model)):
        r = post(client, sid, body)
        assert other in error_of(r, 400, "invalid_request_error") and r.json()["error"]["param"] == "model"
    usage = client.get(f"/v1/stacks/{sid}/usage").json()
    assert (usage["used_units"], usage["reserved_units"], usage["num_requests"]) == (0, 0, 0)
    assert post(client, st["own"], ask(0, 4)).status_code == 200  # its own model's stacks are served as before
