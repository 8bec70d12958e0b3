"""The ledger's usage import from a node's server over HTTP (``GET /v1/node/usage``): the same rows as the import
from the node's store on disk, idempotent, resumed from the cursor the ledger keeps per node. The node's real HTTP
server on 127.0.0.1, the real localnet, store and DuckDB; the ``ledger sync --node-url`` CLI too."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from atoma_ops.cli.ledger import app
from atoma_ops.client.node_data import NodeDataError
from atoma_ops.ledger import Ledger
from atoma_ops.ledger.node_usage import import_node_usage_http
from tests.serving.node_data_kit import node_world, reader, upstream  # noqa: F401
from tests.serving.test_kit import ask, net  # noqa: F401


def same_usage(x: Ledger, y: Ledger) -> None:
    a, b = x.usage().reset_index(drop=True), y.usage().reset_index(drop=True)
    assert len(a) and list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b)


def over_http(ledger: Ledger, world, **kwargs) -> dict:
    kwargs.setdefault("wallet", world.net.chain.wallet)
    return asyncio.run(import_node_usage_http(ledger, world.url, **kwargs))


def test_usage_over_http_equals_the_local_import_and_a_second_import_adds_nothing(node_world, tmp_path):
    w = node_world
    local, remote = Ledger(tmp_path / "local.duckdb"), Ledger(tmp_path / "remote.duckdb")
    assert local.import_node_usage(w.home.path) == 6
    first = over_http(remote, w, limit=4)
    assert first == {"url": w.url, "node_small_id": 1, "rows_added": 6, "pages": 2, "cursor": 6}
    same_usage(local, remote)
    assert remote.usage_feed(1)["cursor"] == 6 and remote.usage_feed(1)["node_address"] == w.service.address

    again = over_http(remote, w, limit=4)
    assert again["rows_added"] == 0 and again["pages"] == 1 and again["cursor"] == 6
    # one more request served: the import starts at the stored cursor and reads one page with one row
    w.serve("a", [ask(7)])
    assert local.import_node_usage(w.home.path) == 1
    more = over_http(remote, w, limit=4)
    assert (more["rows_added"], more["pages"], more["cursor"]) == (1, 1, 7)
    same_usage(local, remote)


class FailingKey:
    """The operator's key that stops signing after ``allowed`` reads (a crash of the importing host mid-import)."""

    def __init__(self, signer, allowed: int):
        self.signer, self.allowed, self.address = signer, allowed, signer.address

    def sign_hash(self, digest: bytes) -> str:
        if self.allowed <= 0:
            raise RuntimeError("the importing host went away")
        self.allowed -= 1
        return self.signer.sign_hash(digest)


def test_an_interrupted_import_resumes_at_the_page_it_stopped(node_world, tmp_path):
    w = node_world
    ledger = Ledger(tmp_path / "ledger.duckdb")
    with pytest.raises(RuntimeError, match="went away"):
        over_http(ledger, w, wallet=None, signer=FailingKey(reader(w.net, "node-1"), 2), limit=2)
    # two pages committed, each with its cursor; nothing of the third
    assert len(ledger.usage()) == 4 and ledger.usage_feed(1)["cursor"] == 4
    rest = over_http(ledger, w, limit=2)
    assert (rest["rows_added"], rest["pages"], rest["cursor"]) == (2, 1, 6)
    local = Ledger(tmp_path / "local.duckdb")
    local.import_node_usage(w.home.path)
    same_usage(local, ledger)


def test_another_feed_id_is_read_from_the_start(node_world, tmp_path):
    """A node whose store was replaced has another feed id: its cursor means nothing there, so the import starts
    at 0 (and adds only what the ledger lacks)."""
    w = node_world
    ledger = Ledger(tmp_path / "ledger.duckdb")
    assert over_http(ledger, w)["rows_added"] == 6
    feed = ledger.usage_feed(1)["feed"]
    with ledger.writer() as con:  # as if the rows and cursor came from a store the node no longer has
        con.execute("UPDATE usage_feeds SET feed = 'replaced', cursor = 6")
        con.execute("DELETE FROM usage WHERE request_index = 0")
    w.serve("a", [ask(8)])
    again = over_http(ledger, w, limit=3)
    # from 0: pages of 3 over 7 rows; the deleted first rows (3 stacks) and the new one come back
    assert (again["rows_added"], again["pages"], again["cursor"]) == (4, 3, 7)
    assert ledger.usage_feed(1)["feed"] == feed and len(ledger.usage()) == 7


def test_only_the_operators_key_imports(node_world, tmp_path):
    w = node_world
    ledger = Ledger(tmp_path / "ledger.duckdb")
    with pytest.raises(NodeDataError) as info:
        over_http(ledger, w, wallet=None, signer=reader(w.net, "user"))
    assert info.value.status == 403 and info.value.type == "not_allowed"
    assert ledger.usage_feed(1) is None and not ledger.path.exists()  # nothing written, not even a file


def test_ledger_sync_by_node_url(node_world, tmp_path):
    w = node_world
    runner = CliRunner()
    path = tmp_path / "ledger.duckdb"

    def sync(*args):
        full = ["--home", str(w.home.path), "--ledger", str(path), "--json", "sync", *args]
        return runner.invoke(app, full, env={"ATOMA_OPS_HOME": None})

    result = sync("--node-url", w.url + "/")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    doc = json.loads(result.stdout)
    assert doc["usage_rows_added"] == 6 and doc["node_imports"][0]["url"] == w.url
    local = Ledger(tmp_path / "local.duckdb")
    local.import_node_usage(w.home.path)
    same_usage(local, Ledger(path))
    assert json.loads(sync("--node-url", w.url).stdout)["usage_rows_added"] == 0

    bad = sync("--node-url", "ftp://example")
    assert bad.exit_code == 1
    error = json.loads(bad.stdout)["error"]
    assert error["kind"] == "InvalidArgument" and "--node-url" in error["message"]
