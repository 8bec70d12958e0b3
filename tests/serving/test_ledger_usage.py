"""Served requests reach the DuckDB ledger's ``usage`` table: real engine, real localnet, real node store, real
DuckDB."""

from __future__ import annotations


from atoma_ops.ledger import Ledger
from atoma_ops.testing.serve_all import serve_all

from tests.serving.test_kit import NO_SECURITY, PRICE, ask, market, net, open_node  # noqa: E402,F401


def test_node_usage_is_imported_once_with_its_hashes(engine, net, localnet_home, tmp_path):
    t = market(net, NO_SECURITY)
    s = net.buy(t, 10_000, PRICE, draw=0)  # node 1
    node = open_node(net, localnet_home, "node-1", engine)
    outcomes = net.run(serve_all(node, s, [ask(0, 4), ask(1, 5)]))
    assert all(o.ok for o in outcomes)

    ledger = Ledger(tmp_path / "ledger.duckdb")
    assert ledger.import_node_usage(localnet_home.path) == 2
    rows = ledger.usage(s).sort_values("request_index").reset_index(drop=True)
    assert list(rows["request_index"]) == [0, 1]
    for i, o in enumerate(outcomes):
        usage = o.response["usage"]
        assert rows.loc[i, "prompt_tokens"] == usage["prompt_tokens"]
        assert rows.loc[i, "completion_tokens"] == usage["completion_tokens"]
        assert rows.loc[i, "actual_units"] == o.units == usage["prompt_tokens"] + usage["completion_tokens"]
        assert rows.loc[i, "estimated_units"] == o.estimate.reserved
    history = node.history(s)
    assert [bytes(h) for h in rows["payload_hash"]] == [e.payload_hash for e in history.entries]

    # Importing again adds nothing; serving one more request adds exactly that one.
    assert ledger.import_node_usage(localnet_home.path) == 0
    assert all(o.ok for o in net.run(serve_all(node, s, [ask(2, 3)])))
    assert ledger.import_node_usage(localnet_home.path) == 1
    assert len(ledger.usage(s)) == 3
