"""Only a stack's owner spends it (atoma-protocol.md §17): the node's HTTP server on 127.0.0.1 with the real
localnet and store, the openai stand-in as engine (no model to load), the buyer's client kit and the official
``openai`` SDK as clients.

Every refused request is checked for its status, its JSON error body, ``x-should-retry: false`` where final, and
that nothing was reserved, charged or recorded; the test logs are checked for key material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets

import base58
import httpx
import openai
import pytest

from atoma_ops.client import AtomaClient, ResponseSignatureError, StreamCheck, openai_client, verify_response
from atoma_ops.protocol.node_http import SIGNATURE_HEADER, STACK_HEADER, TX_DIGEST_HEADER
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.server import BackgroundServer, create_app
from atoma_ops.testing.openai_standin import standin
from tests.serving.buyer_kit import buyer, signed_headers
from tests.serving.test_kit import NO_SECURITY, PRICE, market, net  # noqa: F401

CHAT = "/v1/chat/completions"
MAX_BODY = 64 * 1024


def hi(text: str = "Hello.", **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 6, **extra}


class HiddenStacks:
    """The chain as a node whose reads lag behind: stacks in ``hidden`` are not found by ``get_stack`` (a Sui
    fullnode that has not indexed a purchase yet, which the localnet, always up to date, cannot show)."""

    def __init__(self, chain, hidden: set[int]):
        self._chain, self.hidden = chain, hidden

    def __getattr__(self, name):
        return getattr(self._chain, name)

    async def get_stack(self, stack_small_id: int):
        return None if stack_small_id in self.hidden else await self._chain.get_stack(stack_small_id)


@pytest.fixture(scope="module")
def upstream():
    with standin() as server:
        yield server


@pytest.fixture
def world(net, localnet_home, upstream):
    """node-1 serving on 127.0.0.1; stacks ``own`` and ``tiny`` (user's), ``theirs`` (node-3's, on node-1),
    ``fresh`` (user's, hidden from the node's reads; its purchase digest in ``digests``)."""
    t = market(net, NO_SECURITY)
    net.mint("node-3", 10_000_000)
    stacks = {"own": net.buy(t, 50_000, PRICE, draw=0), "tiny": net.buy(t, 60, PRICE, draw=0),
              "theirs": net.buy(t, 50_000, PRICE, draw=0, sender="node-3")}
    net.draws.push(0)
    purchase = net.acquire_new_stack_entry("user", task_small_id=t, num_compute_units=50_000, price=PRICE)
    stacks["fresh"] = int(net.events(purchase, "StackCreatedEvent")[0]["stack_small_id"]["inner"])
    chain = HiddenStacks(localnet_home.open(), {stacks["fresh"]})
    service = net.run(NodeService.open(localnet_home.path, "node-1", upstream.client(), chain=chain))
    server = BackgroundServer(create_app(service, max_body_bytes=MAX_BODY)).start()
    http = httpx.Client(base_url=server.url, timeout=60)
    yield {"net": net, "service": service, "url": server.url, "http": http, "stacks": stacks,
           "digest": purchase.digest, "user": buyer(net), "node": net.addr["node-1"]}
    http.close()
    server.stop()
    net.run(service.close())
    net.run(chain._chain.close())


def charged(w, stack: int) -> tuple:
    u = w["service"].store.usage(stack)
    return (0, 0, 0, 0) if u is None else (u.used_units, u.reserved_units, u.num_requests, len(w["service"].history(stack)))


def refused(r: httpx.Response, status: int, type_: str, final: bool = True) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and body["error"]["type"] == type_ and body["error"]["message"], body
    assert (r.headers.get("x-should-retry") == "false") is final, dict(r.headers)
    return body["error"]


# ====================================================================== the owner
def test_the_owner_is_served_and_every_answer_is_signed_by_the_node(world):
    w, sid = world, world["stacks"]["own"]
    with AtomaClient(w["url"], w["user"], sid, node_address=w["node"]) as client:
        plain = client.chat(hi())
        pieces: list[str] = []
        streamed = client.stream_chat(hi("Tell me more."), on_text=pieces.append)
    assert plain.signer == streamed.signer == w["node"]
    assert streamed.content == "".join(pieces) and len(pieces) >= 2
    assert streamed.body["atoma"]["compute_units"] == streamed.usage["prompt_tokens"] + streamed.usage["completion_tokens"]
    history = w["service"].history(sid)
    # the payload hash recorded (and committed to) is the hash the buyer signed: blake2b-256 of the compact body
    expected = [hashlib.blake2b(json.dumps(b, separators=(",", ":")).encode(), digest_size=32).digest()
                for b in (hi(), {**hi("Tell me more."), "stream": True})]
    assert [e.payload_hash for e in history.entries] == expected == [plain.payload_hash, streamed.payload_hash]

    # the official SDK, signing through an httpx auth on its http client; the node's signature on the raw body
    sdk = openai_client(w["url"] + "/v1", w["user"], sid, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(messages=hi()["messages"], max_tokens=5, model=upstream_model(w))
    body = raw.http_response.json()
    assert verify_response(body, w["node"]) == w["node"] and raw.parse().choices[0].message.content
    chunks = [json.loads(line[6:]) for line in _sse_lines(w, sid, hi("Stream, please."))]
    check = StreamCheck()
    for chunk in chunks:
        check.add(chunk)
    assert check.verify(w["node"]) == w["node"]
    assert charged(w, sid)[2] == 4


def upstream_model(w) -> str:
    return w["service"].engine.model


def _sse_lines(w, sid, body) -> list[str]:
    raw = json.dumps({**body, "stream": True}).encode()
    r = w["http"].post(CHAT, content=raw, headers=signed_headers(w["user"], sid, raw))
    assert r.status_code == 200, r.text
    return [line for line in r.text.splitlines() if line.startswith("data: {")]


def test_a_changed_answer_or_another_signer_is_caught_by_the_buyer(world):
    w, sid = world, world["stacks"]["own"]
    with AtomaClient(w["url"], w["user"], sid) as client:
        body = client.chat(hi()).body
    assert verify_response(body) == w["node"]
    tampered = json.loads(json.dumps(body))
    tampered["choices"][0]["message"]["content"] += "!"
    with pytest.raises(ResponseSignatureError, match="changed after signing"):
        verify_response(tampered)
    with pytest.raises(ResponseSignatureError, match="not by the stack's node"):
        verify_response(body, w["net"].addr["node-2"])
    chunks = [json.loads(line[6:]) for line in _sse_lines(w, sid, hi())]
    check = StreamCheck()
    for chunk in chunks:
        check.add(chunk)
    check.pieces.append(" (injected)")  # a relay that adds text the node never sent
    with pytest.raises(ResponseSignatureError, match="content"):
        check.verify(w["node"])


# ====================================================================== everyone else
def _forged(w) -> str:
    """The buyer's public key under the ed25519 flag with 64 random bytes as the signature."""
    pub = w["net"].chain.wallet.public_key("user")
    return base64.b64encode(bytes([0]) + secrets.token_bytes(64) + pub).decode()


def _cases(w):
    s = w["stacks"]
    body = json.dumps(hi()).encode()
    other = json.dumps(hi("Another body.")).encode()
    good = signed_headers(w["user"], s["own"], body)
    sig = base64.b64decode(good[SIGNATURE_HEADER])
    return [
        # (what, stack, body, headers, status, type)
        ("no signature", s["own"], body, {STACK_HEADER: str(s["own"])}, 400, "invalid_signature_header"),
        ("signature not base64", s["own"], body, {**good, SIGNATURE_HEADER: "%%%"}, 400, "invalid_signature_header"),
        ("forged signature", s["own"], body, {**good, SIGNATURE_HEADER: _forged(w)}, 401, "invalid_signature"),
        ("signature over another body", s["own"], body,
         {**good, SIGNATURE_HEADER: signed_headers(w["user"], None, other)[SIGNATURE_HEADER]}, 401, "invalid_signature"),
        ("wrong scheme flag (secp256k1 on an ed25519 signature)", s["own"], body,
         {**good, SIGNATURE_HEADER: base64.b64encode(bytes([1]) + sig[1:]).decode()}, 400, "invalid_signature_header"),
        ("unsupported scheme flag (multisig)", s["own"], body,
         {**good, SIGNATURE_HEADER: base64.b64encode(bytes([3]) + sig[1:]).decode()}, 400, "invalid_signature_header"),
        ("a valid signature by another address", s["own"], body, signed_headers(buyer(w["net"], "node-2"), s["own"], body),
         400, "stack_not_found"),
        ("another owner's stack", s["theirs"], body, signed_headers(w["user"], s["theirs"], body), 400, "stack_not_found"),
        ("oversized body", s["own"], b'{"messages": [], "pad": "' + b"x" * MAX_BODY + b'"}', good, 400,
         "invalid_request_error"),
        ("stack header missing", None, body, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]}, 400, "missing_stack"),
    ]


def test_no_request_without_its_owners_valid_signature_spends_a_unit(world, caplog):
    w = world
    caplog.set_level(logging.DEBUG)
    stacks = list(w["stacks"].values())
    before = {sid: charged(w, sid) for sid in stacks}
    for what, stack, body, headers, status, type_ in _cases(w):
        r = w["http"].post(CHAT, content=body, headers={**headers, "content-type": "application/json"})
        refused(r, status, type_)
        assert {sid: charged(w, sid) for sid in stacks} == before, what
    # the signer's own stack is still spendable: the refusals held nothing
    assert w["http"].post(CHAT, content=json.dumps(hi()).encode(),
                          headers=signed_headers(w["user"], w["stacks"]["own"], json.dumps(hi()))).status_code == 200
    # no key material in any log record of the run
    keystore = json.loads((w["net"].chain.wallet.client_yaml.parent / "sui.keystore").read_text())
    assert keystore and not any(entry in caplog.text for entry in keystore)


def test_the_openai_sdk_sends_a_final_refusal_once(world):
    w = world
    failed = failed_requests(w)
    sdk = openai_client(w["url"] + "/v1", buyer(w["net"], "node-2"), w["stacks"]["own"])  # default: 2 retries
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(messages=hi()["messages"], max_tokens=4, model=upstream_model(w))
    assert info.value.status_code == 400 and info.value.response.headers["x-should-retry"] == "false"
    assert failed_requests(w) == failed + 1  # sent once, not three times
    small = openai_client(w["url"] + "/v1", w["user"], w["stacks"]["tiny"])
    with pytest.raises(openai.APIStatusError) as info:
        small.chat.completions.create(messages=hi()["messages"], max_tokens=200, model=upstream_model(w))
    assert info.value.status_code == 425 and info.value.body["type"] == "insufficient_compute_units"
    assert charged(w, w["stacks"]["tiny"]) == (0, 0, 0, 0) and failed_requests(w) == failed + 2


def failed_requests(w) -> float:
    """Requests refused by the node, as its metrics count them (the Atoma node's counter per status)."""
    text = w["http"].get("/metrics").text
    counters = ("atoma_TOTAL_BAD_REQUESTS_total{", "atoma_total_unauthorized_requests_total{",
                "atoma_total_locked_requests_total{", "atoma_total_too_early_requests_total{",
                "atoma_total_too_many_requests_total{", "atoma_total_failed_requests_total{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(counters))


def test_a_recorded_answer_goes_only_to_the_stacks_owner(world):
    w, sid = world, world["stacks"]["own"]
    raw = json.dumps(hi()).encode()
    first = w["http"].post(CHAT, content=raw, headers=signed_headers(w["user"], sid, raw, **{"X-Request-Id": "r-1"}))
    assert first.status_code == 200
    stolen = w["http"].post(CHAT, content=raw,
                            headers=signed_headers(buyer(w["net"], "node-2"), sid, raw, **{"X-Request-Id": "r-1"}))
    refused(stolen, 400, "stack_not_found")
    again = w["http"].post(CHAT, content=raw, headers=signed_headers(w["user"], sid, raw, **{"X-Request-Id": "r-1"}))
    assert again.json()["choices"] == first.json()["choices"] and charged(w, sid)[2] == 1


# ====================================================================== a stack bought moments ago
def test_a_just_bought_stack_is_found_through_its_purchase(world):
    w, sid = world, world["stacks"]["fresh"]
    raw = json.dumps(hi()).encode()

    def post(**extra):
        return w["http"].post(CHAT, content=raw, headers=signed_headers(w["user"], sid, raw, **extra))

    assert "X-Tx-Digest" in refused(post(), 400, "stack_not_found")["message"]
    unseen = base58.b58encode(secrets.token_bytes(32)).decode()
    r = post(**{TX_DIGEST_HEADER: unseen})
    refused(r, 425, "purchase_not_visible", final=False)
    assert r.headers["retry-after"] == "1"
    refused(post(**{TX_DIGEST_HEADER: "not-a-digest!"}), 400, "invalid_request_error")
    assert charged(w, sid) == (0, 0, 0, 0)
    # someone else's signature with the right digest: the purchase is not theirs
    stolen = w["http"].post(CHAT, content=raw, headers=signed_headers(buyer(w["net"], "node-2"), sid, raw,
                                                                     **{TX_DIGEST_HEADER: w["digest"]}))
    refused(stolen, 401, "purchase_not_found")
    ok = post(**{TX_DIGEST_HEADER: w["digest"]})
    assert ok.status_code == 200, ok.text
    assert verify_response(ok.json(), w["node"]) == w["node"]
    used, reserved, requests, history = charged(w, sid)
    assert requests == history == 1 and reserved == 0 and used == int(ok.headers["X-Compute-Units"]) > 0


# ====================================================================== a workload, as its buyer sends it
def test_a_workload_sent_by_its_buyer_is_served_once_and_signed(world):
    import asyncio

    from atoma_ops.client import send_workload

    w, sid = world, world["stacks"]["own"]
    bodies = [hi(f"Question {i}.") for i in range(6)]
    ids = [f"wl-test-{i}" for i in range(6)]
    first = asyncio.run(send_workload(w["url"], w["user"], sid, bodies, request_ids=ids, concurrency=3,
                                      node_address=w["node"]))
    assert first.served == 6 and {s.signer for s in first.sent} == {w["node"]}
    used = w["service"].store.usage(sid).used_units
    assert used == first.units > 0 and sorted(s.history_index for s in first.sent) == list(range(6))
    again = asyncio.run(send_workload(w["url"], w["user"], sid, bodies, request_ids=ids, concurrency=3))
    assert again.served == 6 and charged(w, sid)[:3] == (used, 0, 6)  # answered from the history, charged once
    assert all(s.replayed for s in again.sent) and not any(s.replayed for s in first.sent) and again.units == 0
    assert [s.response["choices"] for s in again.sent] == [s.response["choices"] for s in first.sent]
    # another key's workload on the same stack: every line refused, final, nothing charged
    stolen = asyncio.run(send_workload(w["url"], buyer(w["net"], "node-2"), sid, bodies[:2], concurrency=2))
    assert stolen.served == 0 and {s.error["type"] for s in stolen.sent} == {"stack_not_found"}
    assert all(s.attempts == 1 for s in stolen.sent) and charged(w, sid)[:3] == (used, 0, 6)


# ====================================================================== the model's server refuses
def test_the_model_servers_refusal_is_the_requests_fault_not_the_nodes(world, upstream):
    """The server behind the node answers 400 (a prompt its model cannot take) or 429 (overloaded): the SDK gets a
    400 it does not retry (the server asked once) or a 429 with Retry-After, never the node's 500; nothing charged."""
    w, sid = world, world["stacks"]["own"]
    sdk = openai_client(w["url"] + "/v1", w["user"], sid)  # default: 2 retries
    before = upstream.requests
    upstream.faults.append(400)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(messages=hi()["messages"], max_tokens=4, model=upstream_model(w))
    assert info.value.status_code == 400 and info.value.response.headers["x-should-retry"] == "false"
    assert "refused the request" in info.value.body["message"]
    assert upstream.requests == before + 1  # not retried: by the node's engine or by the SDK
    upstream.faults.append(429)
    raw = json.dumps(hi()).encode()
    r = w["http"].post(CHAT, content=raw, headers=signed_headers(w["user"], sid, raw))
    refused(r, 429, "overloaded", final=False)
    assert r.headers["Retry-After"] == "1" and upstream.requests == before + 2
    assert charged(w, sid) == (0, 0, 0, 0)
