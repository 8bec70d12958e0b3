"""``atoma-ops stack chat`` and ``atoma-ops stack verify-response``: the buyer's side on the command line, against
node-1's HTTP server on 127.0.0.1 (the openai stand-in as its engine: nothing to load), on a home the CLI built."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from atoma_ops.client import RequestSigner
from atoma_ops.home import LocalnetHome
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.server import BackgroundServer, create_app
from atoma_ops.testing.openai_standin import standin
from atoma_ops.wallet import Wallet
from tests.cli.clikit import Cli, event, sid


@pytest.fixture
def market(tmp_path):
    """A home: node-1 the only subscriber of a task, a 50 000-unit stack bought by user; node-1 serving it."""
    c = Cli(tmp_path / "home")
    c.ok("localnet", "init", "--seed", "1")
    c.ok("usdc", "mint", "--amount", "10000000", "--to", "user")
    # the stand-in plays SmolLM2 (OpenAIServer.client): a task of that model, which the node serves
    c.ok("db", "create-task-entry", "--role", "0", "--model-name", "HuggingFaceTB/SmolLM2-135M-Instruct",
         "--security-level", "0", "--is-public")
    c.ok("db", "register-node", address="node-1")
    c.ok("db", "subscribe-node-to-task", "--task-small-id", "1", "--price-per-one-million-compute-units", "1000000",
         address="node-1")
    tx = c.ok("db", "acquire-new-stack-entry", "--task-small-id", "1", "--num-compute-units", "50000", "--price",
              "1000000", address="user")
    stack = sid(event(tx, "StackCreatedEvent")["stack_small_id"])
    with standin() as upstream:
        service = asyncio.run(NodeService.open(c.home, "node-1", upstream.client()))
        server = BackgroundServer(create_app(service)).start()
        try:
            yield c, server.url, stack, service
        finally:
            server.stop()
            asyncio.run(service.close())


def test_stack_chat_streams_a_signed_answer_and_refuses_what_it_cannot_check(market, tmp_path):
    c, url, stack, service = market
    doc = c.ok("stack", "chat", "--stack", str(stack), "--url", url, "--max-tokens", "6", "Name a colour.",
               address="user")
    assert doc["verified"] is True and doc["node_small_id"] == 1
    assert doc["signed_by"] == service.address and doc["content"]
    (entry,) = service.history(stack).entries
    assert doc["payload_hash"] == "0x" + entry.payload_hash.hex()  # the hash user signed is the one recorded
    assert entry.response["choices"][0]["message"]["content"] == doc["content"]

    human = c.human("stack", "chat", "--stack", str(stack), "--url", url, "--max-tokens", "4", "Hi.", address="user")
    assert service.history(stack).entries[-1].response["choices"][0]["message"]["content"] in human.stdout
    assert "signed by node 1" in human.stderr

    # another wallet key spends nothing: the node's refusal, named, exit 1
    error = c.fail("stack", "chat", "--stack", str(stack), "--url", url, "Hi.", address="node-2")
    assert error["kind"] == "NodeRefusal" and "does not exist for" in error["message"]
    assert len(service.history(stack)) == 2

    # a saved answer: verified, then refused once changed
    raw = json.dumps({"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}).encode()
    signer = RequestSigner(Wallet.load(LocalnetHome(c.home).client_yaml), "user")
    _, signature, _ = signer.sign(raw)
    r = httpx.post(url + "/v1/chat/completions", content=raw,
                   headers={"X-Signature": signature, "X-Stack-Small-Id": str(stack), "content-type": "application/json"})
    saved = tmp_path / "answer.json"
    saved.write_text(r.text)
    ok = c.ok("stack", "verify-response", str(saved), "--stack", str(stack))
    assert (ok["kind"], ok["signed_by"], ok["node_small_id"]) == ("body", service.address, 1)
    changed = json.loads(r.text)
    changed["usage"]["completion_tokens"] += 1
    saved.write_text(json.dumps(changed))
    assert c.fail("stack", "verify-response", str(saved))["kind"] == "ResponseSignatureError"

    # a stream saved as curl -N saves it: its signed final chunk covers every content piece
    raw = json.dumps({"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4, "stream": True}).encode()
    r = httpx.post(url + "/v1/chat/completions", content=raw, headers={
        "X-Signature": signer.sign(raw)[1], "X-Stack-Small-Id": str(stack), "content-type": "application/json"})
    saved.write_text(r.text)
    assert c.ok("stack", "verify-response", str(saved), "--node-address", service.address)["kind"] == "stream"
    saved.write_text(r.text.replace('"content":"', '"content":"X', 1))
    assert "content" in c.fail("stack", "verify-response", str(saved))["message"]
