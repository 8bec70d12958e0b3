"""The workload reader: every file it cannot serve is one named, terminal error that says which file and line.
And re-runs of a workload whose lines a passing state refused (a settlement the chain refused, a killed run's
reservation): served by the next run, not stuck or given up on."""

from __future__ import annotations

import json
import re
import time

import pytest

from atoma_ops.core.errors import ErrorClass, classify, is_retryable
from atoma_ops.serving.workload import SAMPLE, WorkloadError, load_workload
from tests.serving.test_kit import net  # noqa: F401 (fixture)

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_the_sample_and_crlf_lines_load(tmp_path):
    assert len(load_workload(SAMPLE)) > 5
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(f"# two requests, Windows line ends\r\n{GOOD}\r\n\r\n{GOOD}\r\n".encode())
    assert [r["messages"][0]["content"] for r in load_workload(path)] == ["hi", "hi"]


def test_bytes_that_are_not_utf8_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    # line 3 is a request whose content was saved as Latin-1: "café" ends in the byte 0xe9, not UTF-8's c3 a9
    path.write_bytes(f"# comment\n{GOOD}\n".encode() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(WorkloadError) as raised:
        load_workload(path)
    # column of the byte: '{"messages": [{"role": "user", "content": "caf' is 46 characters, the byte is the 47th
    assert str(raised.value) == f"{path}:3: not UTF-8 (byte 0xe9 at column 47)"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no UnicodeDecodeError chained in


def test_a_line_counted_past_multibyte_characters_and_lone_cr(tmp_path):
    path = tmp_path / "mixed.jsonl"
    # line 1 holds two-byte characters, line 2 ends with a lone CR (a line end when read as text), line 3 is bad
    path.write_bytes("# héllo wörld\n".encode() + GOOD.encode() + b"\r" + b"\x80\n")
    with pytest.raises(WorkloadError, match=r":3: not UTF-8 \(byte 0x80 at column 1\)$"):
        load_workload(path)


def test_not_json_and_not_a_request_name_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(f"{GOOD}\n\n{{oops\n")
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(path))}:3: not JSON \("):
        load_workload(path)
    path.write_text(f"{GOOD}\n{json.dumps({'max_tokens': 4})}\n")
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(path))}:2: .*messages"):
        load_workload(path)
    path.write_text("# nothing but a comment\n")
    with pytest.raises(WorkloadError, match="holds no requests"):
        load_workload(path)


def test_a_bad_workload_is_terminal_in_the_retry_taxonomy(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(WorkloadError) as raised:
        load_workload(path)
    assert classify(raised.value) is ErrorClass.TERMINAL and not is_retryable(raised.value)
    assert raised.value.kind == "InvalidWorkload"


# ====================================================================== re-runs that must not stick or give up
def test_lines_refused_during_a_settlement_the_chain_refused_are_served_once_by_the_rerun(net, localnet_home):
    """Lines sent while this node settles the stack are refused (423 stack_in_settlement) and recorded; the chain
    refuses the settlement, the stack takes requests again, and the re-run serves those lines (once, charged once)
    instead of answering them 'already refused' forever."""
    from atoma_ops import lifecycle
    from tests.serving.buyer_kit import buyer
    from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, open_node, stub_engine

    t = market(net, NO_SECURITY)
    s = net.buy(t, 50_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine())
    user = buyer(net)
    workload = [ask(i, 3) for i in range(3)]
    before, _ = net.run(lifecycle.serve_workload(node, user, s, [ask(9, 3)]))  # something to settle
    assert node.store.begin_settlement(s) == "open"  # try-settle closed the stack in the store

    first, _ = net.run(lifecycle.serve_workload(node, user, s, workload))
    assert (first.served, first.failed, first.units_charged) == (0, [], 0)
    assert [(r["index"], r["status"], r["type"]) for r in first.refused] == [
        (i, 423, "stack_in_settlement") for i in range(3)]
    key = first.workload_id
    assert node.store.request_ids(s, key) == {f"{key}-{i}": "refused" for i in range(3)}

    node.store.abort_settlement(s)  # what try-settle does when the chain refuses the settlement
    assert node.store.usage(s).state == "open" and node.store.request_ids(s, key) == {}

    again, outcomes = net.run(lifecycle.serve_workload(node, user, s, workload))
    assert (again.served, again.refused, again.failed, again.already_refused, again.already_served) == (3, [], [], 0, 0)
    assert sorted(o.index for o in outcomes if o.ok and not o.replayed) == [0, 1, 2]
    u = node.store.usage(s)
    assert u.num_requests == 4 and u.used_units == before.units_charged + again.units_charged
    assert again.units_charged == sum(o.units for o in outcomes) > 0
    assert sorted(e.request_id for e in node.history(s).entries if e.request_id.startswith(key)) == [
        f"{key}-{i}" for i in range(3)]

    third, outcomes = net.run(lifecycle.serve_workload(node, user, s, workload))  # served once: now recorded
    assert (third.served, third.already_served, third.units_charged, outcomes) == (0, 3, 0, [])
    assert node.store.usage(s).used_units == u.used_units
    net.run(node.close())


@pytest.mark.slow
def test_a_rerun_right_after_a_kill_waits_out_the_dead_reservation_on_a_nearly_full_stack(net, localnet_home):
    """A killed run leaves its request's reservation, its lease renewed just before the kill (~25 s left, more than
    the 20 one-second retries a 425 used to get). The re-run right away is told when that lease ends (Retry-After),
    waits it out, and serves every line (the units the dead reservation held come back at the retry): no third
    run, nothing charged twice."""
    from atoma_ops import lifecycle
    from atoma_ops.serving.store import NodeStore
    from tests.serving.buyer_kit import buyer
    from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, open_node, stub_engine

    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)
    node = open_node(net, localnet_home, "node-1", stub_engine())
    user = buyer(net)
    warm, _ = net.run(lifecycle.serve_workload(node, user, s, [ask(99, 3)]))
    left = 10_000 - warm.units_used
    # the killed process: another holder of the same store, its reservation leaving 10 units, its lease 24.5 s
    with NodeStore(NodeStore.path_for(localnet_home.path, "node-1"), lease_s=24.5) as killed:
        killed.reserve([(node.store.facts(s), left - 10)])
    assert node.store.usage(s).units_left == 10  # fewer than any line's estimate

    started = time.monotonic()
    again, outcomes = net.run(lifecycle.serve_workload(node, user, s, [ask(i, 3) for i in range(2)], concurrency=2))
    took = time.monotonic() - started
    assert (again.served, again.failed, again.refused) == (2, [], [])
    # one 425 each, then served after the Retry-After (25 s: 24.5 s rounded up, less the few ms since the reserve)
    assert [o.attempts for o in outcomes] == [2, 2]
    assert 24.4 < took < 24.5 + 10
    u = node.store.usage(s)
    assert (u.num_requests, u.in_flight, u.reserved_units) == (3, 0, 0)
    assert u.used_units == warm.units_used + again.units_charged == warm.units_used + sum(o.units for o in outcomes)
    net.run(node.close())


def test_the_workload_client_honours_retry_after_and_retries_a_425_for_a_while_but_not_forever():
    """Against a node that answers 425 (not final) to everything: each retry comes after the Retry-After it named,
    the retries go on past ``retries`` until ``retry_for_s`` has passed, and then stop."""
    import asyncio

    import uvicorn

    from atoma_ops.client import send_workload
    from atoma_ops.client.workload import retry_after_s
    from atoma_ops.serving.server import _in_loop_server, free_socket

    arrivals: list[float] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        arrivals.append(asyncio.get_running_loop().time())
        await send({"type": "http.response.start", "status": 425, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", b"0.4")]})
        await send({"type": "http.response.body", "body": json.dumps(
            {"error": {"type": "insufficient_compute_units", "message": "held by requests in flight"}}).encode()})

    class Signer:
        address = "0x" + "ab" * 32

        def sign(self, body):
            return body, "c2lnbmF0dXJl", b"\0" * 32

    async def main():
        sock = free_socket()
        server = _in_loop_server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off"))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.005)
        try:
            return await send_workload(f"http://127.0.0.1:{sock.getsockname()[1]}", Signer(), 1,
                                       [{"messages": [{"role": "user", "content": "hi"}]}], retries=1, retry_for_s=1.9)
        finally:
            server.should_exit = True
            await task

    (sent,) = asyncio.run(main()).sent
    assert (sent.status, sent.ok, sent.final, sent.error["type"]) == (425, False, False, "insufficient_compute_units")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(g >= 0.39 for g in gaps), gaps  # each retry after the 0.4 s asked for (not the default 1 s)
    assert all(g < 0.9 for g in gaps), gaps
    # sent again while the next try starts within 1.9 s of the first: at ~0, 0.4, 0.8, 1.2, 1.6 (then 2.0: stop)
    assert sent.attempts == len(arrivals) == 5 and arrivals[-1] - arrivals[0] < 1.9
    # the wait asked for, read as delay-seconds, capped, at least 0.25 s (a node answering 0 gets no flood); what is
    # not a number of seconds means 1 s
    assert [retry_after_s(v, 60.0) for v in ("25", "0.4", None, "", "Wed, 21 Oct 2015 07:28:00 GMT", "nan", "-3",
                                             "0")] == [25.0, 0.4, 1.0, 1.0, 1.0, 1.0, 0.25, 0.25]
    assert retry_after_s("3600", 60.0) == 60.0
