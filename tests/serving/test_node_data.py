"""The node's data over HTTP (serving/node_data.py, client/node_data.py): its served usage paged by a cursor, a
stack's history export, and who may read which. The node's real HTTP server on 127.0.0.1, the real localnet and
store, signed requests from the localnet wallet's keys; the openai stand-in as engine."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from atoma_ops import lifecycle
from atoma_ops.client.node_data import NodeDataError
from atoma_ops.protocol.commitments import commit
from atoma_ops.protocol.node_http import SIGNATURE_HEADER
from atoma_ops.protocol.node_reads import MAX_SKEW_MS, TIMESTAMP_HEADER, USAGE_PATH, read_hash
from atoma_ops.serving.node import NodeService
from atoma_ops.serving.history import export_jsonl, import_jsonl, parse_jsonl
from tests.cli.clikit import Cli
from tests.serving.node_data_kit import node_world, reader, run_client, upstream  # noqa: F401
from tests.serving.test_kit import ask, net, try_settle  # noqa: F401


def history_of(world, stack: str, alias: str):
    lines = run_client(world.url, reader(world.net, alias), lambda c: c.history_lines(world.stacks[stack]))
    return parse_jsonl(lines, "http", expect_stack=world.stacks[stack])


def refusal(world, alias: str, call) -> NodeDataError:
    with pytest.raises(NodeDataError) as info:
        run_client(world.url, reader(world.net, alias), call)
    return info.value


def test_usage_pages_follow_serving_order_and_resume_from_the_cursor(node_world):
    w = node_world
    a, b, c = w.stacks["a"], w.stacks["b"], w.stacks["c"]

    async def pages(client, after=0, limit=2):
        return [p async for p in client.usage_pages(after, limit)]

    got = run_client(w.url, reader(w.net, "node-1"), pages)
    # six served requests, two per page: 2 + 2 + 2, the last page says nothing more
    assert [len(p["rows"]) for p in got] == [2, 2, 2] and [p["has_more"] for p in got] == [True, True, False]
    rows = [r for p in got for r in p["rows"]]
    assert [(r["stack_small_id"], r["request_index"]) for r in rows] == [(b, 0), (a, 0), (b, 1), (a, 1), (a, 2), (c, 0)]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [p["next"] for p in got] == [2, 4, 6] and len({p["feed"] for p in got}) == 1
    assert all(p["node_small_id"] == 1 for p in got)
    # each row is what the store recorded
    for stack in (a, b):
        entries = w.service.store.history(stack).entries
        mine = [r for r in rows if r["stack_small_id"] == stack]
        assert [r["payload_hash"] for r in mine] == ["0x" + e.payload_hash.hex() for e in entries]
        assert [r["actual_units"] for r in mine] == [e.units for e in entries]
        assert [r["estimated_units"] for r in mine] == [e.reserved_units for e in entries]
        assert [r["prompt_tokens"] + r["completion_tokens"] for r in mine] == [e.usage_units for e in entries]
        assert all(r["arrived_ms"] <= r["first_token_ms"] <= r["served_at_ms"] for r in mine)

    # from the last cursor: nothing; one more request served: exactly that one
    last = run_client(w.url, reader(w.net, "node-1"), lambda cl: cl.usage_page(6, 2))
    assert last["rows"] == [] and last["next"] == 6 and last["has_more"] is False
    w.serve("b", [ask(9)])
    new = run_client(w.url, reader(w.net, "node-1"), lambda cl: cl.usage_page(6, 2))
    assert [(r["seq"], r["stack_small_id"], r["request_index"]) for r in new["rows"]] == [(7, b, 2)]


def test_the_operator_reads_usage_and_nobody_else(node_world):
    w = node_world
    for alias in ("user", "node-2", "admin"):
        err = refusal(w, alias, lambda c: c.usage_page())
        assert (err.status, err.type) == (403, "not_allowed"), alias


def test_the_buyer_reads_only_its_own_stacks_history(node_world):
    w = node_world
    history = history_of(w, "a", "user")
    assert history.root == w.service.store.history(w.stacks["a"]).root and len(history) == 3
    assert len(history_of(w, "c", "node-3")) == 1  # node-3 bought stack c
    for alias, stack in (("node-3", "a"), ("user", "c"), ("node-2", "a"), ("admin", "b")):
        err = refusal(w, alias, lambda cl, s=stack: cl.history_lines(w.stacks[s]))
        assert (err.status, err.type) == (403, "not_allowed"), (alias, stack)
    # the operator reads any stack's; one never served here is 404 (a stranger learns nothing: 403)
    assert len(history_of(w, "b", "node-1")) == 2
    err = refusal(w, "node-1", lambda cl: cl.history_lines(999))
    assert (err.status, err.type) == (404, "history_not_found")
    assert refusal(w, "user", lambda cl: cl.history_lines(999)).status == 403


def test_a_requested_attester_reads_the_history_and_attests_what_the_export_holds(node_world, upstream, tmp_path):
    w = node_world
    a = w.stacks["a"]
    assert refusal(w, "node-2", lambda cl: cl.history_lines(a)).status == 403  # not asked yet
    exported = import_jsonl(export_jsonl(w.service.history(a), tmp_path / "a.jsonl"), expect_stack=a)
    w.net.force_attestation()
    w.net.draws.push(0, 1)  # the lottery fires; the attester drawn is eligible[1] = node 2
    # settled through the test's chain connection, the one whose draws the test scripts
    node1 = w.net.run(NodeService.open(w.home.path, "node-1", w.engine, chain=w.net.chain))
    try:
        settled = try_settle(w.net, node1, w.home, a)
    finally:
        w.net.run(node1.close())
    assert settled.requested_attestation_nodes == [2]

    fetched = w.net.run(lifecycle.fetch_history(a, w.url, reader(w.net, "node-2")))  # node-2's own key
    assert fetched.leaves == exported.leaves and fetched.root == exported.root and fetched.units == exported.units
    extra = w.net.run(w.net.chain.db_config()).cross_validation_extra_nodes_count
    expected = commit(exported.leaves, extra, 1)
    assert commit(fetched.leaves, extra, 1) == expected
    # node-2 was asked for stack a only; node-3 for nothing
    assert refusal(w, "node-2", lambda cl: cl.history_lines(w.stacks["b"])).status == 403
    assert refusal(w, "node-3", lambda cl: cl.history_lines(a)).status == 403

    # the CLI: `stack attest --history-url` reads with the attesting node's key, replays, submits
    cli = Cli(w.home.path)
    engine = ["--engine", "openai", "--openai-base-url", upstream.base_url, "--model", upstream.model]
    err = cli.fail("stack", "attest", "--stack", str(a), "--history-url", w.url, "--node", "node-3", *engine)
    assert err["kind"] == "StageError" and "403 not_allowed" in err["message"]
    err = cli.fail("stack", "attest", "--stack", str(a), "--history-url", w.url, "--history", str(tmp_path / "a.jsonl"),
                   "--node", "node-2", *engine)
    assert err["kind"] == "InvalidArgument"
    err = cli.fail("stack", "attest", "--stack", str(a), "--history-url", "node-1:8000", "--node", "node-2", *engine)
    assert err["kind"] == "InvalidArgument" and "--history-url" in err["message"]
    assert w.net.get_ticket(a).already_attested_nodes == []  # none of that attested anything
    attested = cli.ok("stack", "attest", "--stack", str(a), "--history-url", w.url, "--node", "node-2", *engine)
    assert attested["replay"]["equal"] and attested["history_matches_ticket"] and attested["position"] == 1
    assert attested["committed_stack_proof"] == "0x" + expected.committed_stack_proof.hex()
    assert attested["stack_merkle_leaf"] == "0x" + expected.stack_merkle_leaf.hex()
    assert not attested["disputed"] and attested["attestations_complete"]


# ------------------------------------------------------------------------------------------- signatures
def signed_get(w, alias: str, path: str, query: dict, *, stamp: int | None = None, sign_query: dict | None = None,
               headers: dict | None = None) -> httpx.Response:
    stamp = int(time.time() * 1000) if stamp is None else stamp
    digest = read_hash("GET", path, sign_query if sign_query is not None else query, w.service.address, stamp)
    h = {SIGNATURE_HEADER: reader(w.net, alias).sign_hash(digest), TIMESTAMP_HEADER: str(stamp), **(headers or {})}
    return httpx.get(w.url + path, params=query, headers=h, timeout=30)


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["type"]


def test_forged_expired_and_missing_signatures_are_refused(node_world, caplog):
    w = node_world
    caplog.set_level(logging.DEBUG)
    q = {"after": "0", "limit": "2"}
    assert signed_get(w, "node-1", USAGE_PATH, q).status_code == 200
    # signed for another query (a forged page request), for another node, or by another key over the operator's
    assert error_of(signed_get(w, "node-1", USAGE_PATH, {"after": "0", "limit": "5"}, sign_query=q)) == (401, "invalid_signature")
    stamp = int(time.time() * 1000)
    other = read_hash("GET", USAGE_PATH, q, "0x" + "ab" * 32, stamp)
    forged = httpx.get(w.url + USAGE_PATH, params=q, timeout=30, headers={
        SIGNATURE_HEADER: reader(w.net, "node-1").sign_hash(other), TIMESTAMP_HEADER: str(stamp)})
    assert error_of(forged) == (401, "invalid_signature")
    # a signature captured more than the window ago (or dated ahead of it) is not accepted again
    old = int(time.time() * 1000) - MAX_SKEW_MS - 60_000
    assert error_of(signed_get(w, "node-1", USAGE_PATH, q, stamp=old)) == (401, "signature_expired")
    ahead = int(time.time() * 1000) + MAX_SKEW_MS + 60_000
    assert error_of(signed_get(w, "node-1", USAGE_PATH, q, stamp=ahead)) == (401, "signature_expired")
    # the same request moments old is fine
    assert signed_get(w, "node-1", USAGE_PATH, q, stamp=int(time.time() * 1000) - 60_000).status_code == 200
    # no signature, garbage, no timestamp
    assert error_of(httpx.get(w.url + USAGE_PATH, params=q)) == (400, "invalid_signature_header")
    garbage = signed_get(w, "node-1", USAGE_PATH, q, headers={SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"})
    assert error_of(garbage) == (400, "invalid_signature_header")
    no_time = httpx.get(w.url + USAGE_PATH, params=q, headers={SIGNATURE_HEADER: "AAAA"})
    assert error_of(no_time) == (400, "invalid_timestamp")
    # the history is guarded the same way
    path = f"/v1/stacks/{w.stacks['a']}/history"
    assert signed_get(w, "user", path, {}).status_code == 200
    assert error_of(signed_get(w, "user", path, {}, stamp=old)) == (401, "signature_expired")
    assert error_of(signed_get(w, "user", path, {"x": "1"}, sign_query={})) == (401, "invalid_signature")
    # no signature in the logs (what was refused included)
    sent = [r.request.headers[SIGNATURE_HEADER] for r in (forged, garbage)]
    sent.append(signed_get(w, "node-1", USAGE_PATH, q, stamp=old).request.headers[SIGNATURE_HEADER])
    assert all(s not in caplog.text for s in sent)


@pytest.mark.parametrize("query, param", [
    ({"after": "-1"}, "after"), ({"after": "x"}, "after"), ({"limit": "0"}, "limit"), ({"limit": "5001"}, "limit"),
    ({"limit": "2.5"}, "limit"), ({"page": "2"}, "page"),
])
def test_a_bad_cursor_or_limit_is_400_naming_it(node_world, query, param):
    response = signed_get(node_world, "node-1", USAGE_PATH, query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_parameter" and error["param"] == param and param in error["message"]


def test_a_repeated_parameter_is_400(node_world):
    w = node_world
    stamp = int(time.time() * 1000)
    digest = read_hash("GET", USAGE_PATH, {"after": "0"}, w.service.address, stamp)
    h = {SIGNATURE_HEADER: reader(w.net, "node-1").sign_hash(digest), TIMESTAMP_HEADER: str(stamp)}
    response = httpx.get(w.url + USAGE_PATH + "?after=0&after=3", headers=h)
    assert response.status_code == 400 and response.json()["error"]["param"] == "after"
