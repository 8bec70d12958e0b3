"""Part 2 of the reliability harness: a table of bad inputs, each refused with a named error and its documented
status, leaving the chain, the stack histories and the ledger as they were.

Four surfaces, one table (``CASES``, data only):

- ``cli``: ``atoma-ops --json …`` run in process (``atoma_ops.cli.main``); the error is the JSON error's ``kind``
  (a Move abort by its constant's name) and the exit status is the README's: 1 abort or bad input, 2 usage error;
- ``flow``: the Prefect flows of ``flows/`` called with bad parameters under a Prefect API; the error is the
  exception the run failed with and the status the run's final state (``Failed``);
- ``http``: the node's OpenAI-compatible server (``atoma_ops.serving.server``) on 127.0.0.1; the error is the JSON
  body's ``error.type`` and the status the HTTP status of docs/serving.md;
- ``config``: broken configuration files of a localnet home (``client.yaml``, ``sui.keystore``, ``sui.aliases``,
  workloads) and Prefect blocks (``AtomaNetwork``, ``SuiWallet``, ``Ledger``), read through the CLI or a flow.

The state they run on is built once (a task, node-1 with served stacks, one settled, one claimed, one exhausted,
and a stack sold to node-2) and copied per case (a few milliseconds), so no case can see another's effects; the
HTTP cases share one server and compare digests around every request. "Unchanged" means
``reliability.digests.state_digests`` before == after (a refusal *by the chain* is recorded under its transaction
digest, as on Sui, and changes nothing else: the chain digest leaves refused transactions out).

    .venv/bin/python -m reliability.bad_inputs [--only ID,ID…] [--results DIR]

writes ``<results>/bad_inputs.json`` and ``bad_inputs.md`` (section ``## 2. Bad input``) and exits 0 iff every row
passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent

from reliability.digests import StateDigests, state_digests  # noqa: E402

RESULTS = ROOT / "data" / "reliability"
PART = "bad_inputs"
TITLE = "## 2. Bad input"
from atoma_ops.protocol.constants import U64_MAX  # noqa: E402
PRICE = 1_000_000


# ------------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    """One bad input.

    Args:
        id: stable row id (pytest's parameter id).
        surface: cli | flow | http | config.
        input: what is wrong, in words.
        error: the named error expected: a JSON error ``kind``, a Move abort constant's name, an HTTP error
            ``type``, or an exception class name.
        status: the exit status (CLI), the HTTP status, or the flow run's final state.
        call: how to run it: ``("cli", argv)``, ``("flow", name, params)``, ``("http", method, path, headers,
            body)``. ``{name}`` in a string is filled from the scenario (``{home}``, ``{foreign}``, …).
        address: the CLI's ``--address`` (who signs).
        breaks: config cases: the file to break and how (see ``BREAKS``).
    """

    id: str
    surface: str
    input: str
    error: str
    status: int | str
    call: tuple
    address: str | None = None
    breaks: tuple[str, ...] = ()


def _proof(byte: str, size: int = 32) -> str:
    return "0x" + byte * size


def _settle(stack: str, units: int = 10, proof: str | None = None, leaf: str | None = None) -> list[str]:
    return [
        "db", "try-settle-stack", "--stack-small-id", stack, "--num-claimed-compute-units", str(units),
        "--committed-stack-proof", proof or _proof("11"), "--stack-merkle-leaf", leaf or _proof("22"),
    ]


def _buy(task: str = "{task}", units: int | str = 10, price: int | str = PRICE) -> list[str]:
    return ["db", "acquire-new-stack-entry", "--task-small-id", task, "--num-compute-units", str(units), "--price", str(price)]


def _chat(content: str = "hi", **fields: Any) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def _post(stack: str | None, body: Any, sign: str | None = "user", **headers: str) -> tuple:
    """A chat request; ``sign`` says how run_http signs it: ``"<alias>"`` (that key over the body, the stack's buyer
    ``user`` by default), ``"other-body:<alias>"`` (over another body), ``"flag1:<alias>"`` (its bytes under the
    secp256k1 flag), ``"forged"`` (the buyer's public key, random signature bytes) or None (unsigned)."""
    if stack is not None:
        headers = {"X-Stack-Small-Id": stack, **headers}
    if sign is not None:
        headers = {SIGN: sign, **headers}
    return ("http", "POST", "/v1/chat/completions", headers, body)


SIGN = "x-sign-as"  # a marker run_http replaces with the X-Signature it asks for (never sent)


CLI, FLOW, HTTP, CONFIG = "cli", "flow", "http", "config"
SUI = dict(kind="sui", sui_preset="custom", home="{home}", sui_endpoint="http://127.0.0.1:9")
SUI_IDS = dict(package_id="0x" + "ab" * 32, db_id="0x" + "cd" * 32, usdc_coin_type="0x" + "ef" * 32 + "::usdc::USDC")
WALLET = {"client_yaml": "{home}/client.yaml"}
#: kind sui against the loopback Sui node (a test double on 127.0.0.1 over the case's own chain file)
LOOPBACK = dict(kind="sui", sui_preset="custom", home="{home}", sui_endpoint="{loopback}", package_id="{package_id}",
                db_id="{db_id}", usdc_coin_type="{usdc_type}")

CASES: tuple[Case, ...] = (
    # ---------------------------------------------------------------- the CLI (exit 1: abort or bad input; 2: usage)
    Case("cli-mint-negative", CLI, "negative USDC amount", "InvalidArgument", 1, (CLI, ["usdc", "mint", "--amount", "-5"])),
    Case("cli-mint-overflow", CLI, "USDC amount past u64", "InvalidArgument", 1, (CLI, ["usdc", "mint", "--amount", str(U64_MAX + 1)])),
    Case("cli-unknown-signer", CLI, "unknown alias as signer", "UnknownAddressError", 1, (CLI, ["db", "register-node"]), address="nobody"),
    Case("cli-foreign-signer", CLI, "an address with no key in the wallet signs", "UnknownAddressError", 1,
         (CLI, ["db", "register-node"]), address="0x" + "ab" * 32),
    Case("cli-unknown-recipient", CLI, "unknown alias as recipient", "UnknownAddressError", 1,
         (CLI, ["usdc", "mint", "--amount", "1", "--to", "nobody"])),
    Case("cli-proof-31-bytes", CLI, "try-settle with a 31-byte committed stack proof", "EInvalidCommittedStackProof", 1,
         (CLI, _settle("{open}", proof=_proof("11", 31))), address="node-1"),
    Case("cli-leaf-33-bytes", CLI, "try-settle with a 33-byte stack Merkle leaf", "EInvalidStackMerkleLeaf", 1,
         (CLI, _settle("{open}", leaf=_proof("22", 33))), address="node-1"),
    Case("cli-attest-proof-31-bytes", CLI, "attestation with a 31-byte committed stack proof", "EInvalidCommittedStackProof", 1,
         (CLI, ["db", "submit-stack-settlement-attestation", "--stack-small-id", "{settled}",
                "--committed-stack-proof", _proof("11", 31), "--stack-merkle-leaf", _proof("22")]), address="node-1"),
    Case("cli-proof-not-hex", CLI, "committed stack proof that is not hex", "InvalidArgument", 1,
         (CLI, _settle("{open}", proof="0xZZ")), address="node-1"),
    Case("cli-foreign-stack", CLI, "try-settle another node's stack", "ENodeNotSelectedForStack", 1,
         (CLI, _settle("{foreign}")), address="node-1"),
    Case("cli-claim-before-window", CLI, "claim before the dispute window has passed", "EStackDisputePeriodIsNotOver", 1,
         (CLI, ["db", "claim-funds", "--settled-ticket-ids", "{settled}"]), address="node-1"),
    Case("cli-second-claim", CLI, "a second claim of a claimed ticket (claim_funds deleted it)", "EFieldDoesNotExist", 1,
         (CLI, ["db", "claim-funds", "--settled-ticket-ids", "{claimed}"]), address="node-1"),
    Case("cli-second-settle", CLI, "try-settle a stack that already has a ticket", "EStackInSettlementDispute", 1,
         (CLI, _settle("{settled}")), address="node-1"),
    Case("cli-claim-too-many-units", CLI, "claim more units than the stack holds", "ETooManyComputedUnits", 1,
         (CLI, _settle("{open}", units=1001)), address="node-1"),
    Case("cli-exhausted-overclaim", CLI, "claim one unit past an exhausted stack", "ETooManyComputedUnits", 1,
         (CLI, _settle("{exhausted}", units=31)), address="node-1"),
    Case("cli-price-overflow", CLI, "price × units overflows u64", "ArithmeticError", 1, (CLI, _buy(units=2, price=2**63)), address="user"),
    Case("cli-price-past-u64", CLI, "price past u64", "InvalidArgument", 1, (CLI, _buy(price=U64_MAX + 1)), address="user"),
    Case("cli-zero-units", CLI, "a stack of zero compute units", "EInvalidComputeUnits", 1, (CLI, _buy(units=0)), address="user"),
    Case("cli-unknown-task", CLI, "buy a stack on a task that does not exist", "ETaskNotFound", 1, (CLI, _buy(task="99")), address="user"),
    Case("cli-no-usdc", CLI, "buyer without USDC", "InvalidArgument", 1, (CLI, _buy()), address="node-3"),
    Case("cli-non-admin-task", CLI, "a non-admin creates a task", "InvalidArgument", 1,
         (CLI, ["db", "create-task-entry", "--role", "0"]), address="user"),
    Case("cli-bad-role", CLI, "task role 8", "EInvalidTaskRole", 1, (CLI, ["db", "create-task-entry", "--role", "8"]), address="admin"),
    Case("cli-bad-security-level", CLI, "security level 3", "EInvalidSecurityLevel", 1,
         (CLI, ["db", "create-task-entry", "--role", "0", "--security-level", "3"]), address="admin"),
    Case("cli-zero-price", CLI, "subscription at price 0", "EInvalidPricePerComputeUnit", 1,
         (CLI, ["db", "update-node-subscription", "--task-small-id", "{task}", "--price-per-one-million-compute-units", "0"]),
         address="node-1"),
    Case("cli-serving-foreign-stack", CLI, "`stack try-settle` on another node's stack", "StackNotServedHere", 1,
         (CLI, ["stack", "try-settle", "--stack", "{foreign}", "--node", "node-1"])),
    Case("cli-usage-unknown-stack", CLI, "`stack usage` of a stack that does not exist", "StackNotFound", 1,
         (CLI, ["stack", "usage", "--stack", "99", "--node", "node-1"])),
    Case("cli-unknown-flag", CLI, "an unknown flag", "UsageError", 2, (CLI, ["db", "get-task", "--bogus"])),
    Case("cli-amount-not-int", CLI, "a non-integer amount", "UsageError", 2, (CLI, ["usdc", "mint", "--amount", "abc"])),
    Case("cli-missing-flag", CLI, "a required flag left out", "UsageError", 2, (CLI, ["db", "get-task"])),
    Case("cli-ticket-ids-not-int", CLI, "a ticket id list with a non-integer", "InvalidArgument", 1,
         (CLI, ["db", "claim-funds", "--settled-ticket-ids", "1,x"]), address="node-1"),
    # bounds, input files, exports and the ledger file: refused before anything is loaded or changed
    Case("cli-init-force-epoch-duration-2^64", CLI, "localnet init --force with an epoch length past u64 (the old home, "
         "keys included, stays)", "InvalidArgument", 1,
         (CLI, ["localnet", "init", "--force", "--epoch-duration-ms", str(2**64)])),
    Case("cli-init-seed-2^64", CLI, "localnet init --force with a seed past u64", "InvalidArgument", 1,
         (CLI, ["localnet", "init", "--force", "--seed", str(2**64)])),
    Case("cli-advance-epoch-2^64", CLI, "advance-epoch by 2^64 epochs", "InvalidArgument", 1,
         (CLI, ["localnet", "advance-epoch", "--count", str(2**64)])),
    Case("cli-advance-epoch-past-last", CLI, "advance-epoch past the last epoch the stores hold (2^63-1 less the "
         "contract's delays)", "InvalidArgument", 1, (CLI, ["localnet", "advance-epoch", "--count", str(2**63 - 5)])),
    Case("cli-seed-rng-2^64", CLI, "seed-rng with a seed past u64", "InvalidArgument", 1, (CLI, ["localnet", "seed-rng", "--seed", str(2**64)])),
    Case("cli-text-not-utf8", CLI, "a text value that is not UTF-8 (bytes 0xff 0xfe from the shell)", "UsageError", 2,
         (CLI, ["db", "get-transaction", "--digest", "\udcff\udcfe"])),
    Case("cli-workload-not-utf8", CLI, "a workload file with bytes that are not UTF-8", "NotUtf8", 1,
         (CLI, ["stack", "serve", "--stack", "{open}", "--node", "node-1", "--workload", "{home}/bytes.jsonl"]),
         breaks=("bytes.jsonl", "bytes", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}\n'.hex())),
    Case("cli-workload-fifo", CLI, "a workload that is a FIFO (reading it would block)", "NotAFile", 1,
         (CLI, ["stack", "serve", "--stack", "{open}", "--node", "node-1", "--workload", "{home}/fifo"]), breaks=("fifo", "fifo")),
    Case("cli-verify-response-fifo", CLI, "stack verify-response of a FIFO (reading it would block)", "NotAFile", 1,
         (CLI, ["stack", "verify-response", "{home}/fifo"]), breaks=("fifo", "fifo")),
    Case("cli-workload-directory", CLI, "a workload that is a directory", "NotAFile", 1,
         (CLI, ["stack", "serve", "--stack", "{open}", "--node", "node-1", "--workload", "{home}/nodes"])),
    Case("cli-history-not-utf8", CLI, "a history file with bytes that are not UTF-8 (replay, before the engine loads)",
         "NotUtf8", 1, (CLI, ["stack", "replay", "--stack", "{open}", "--node", "node-1", "--history", "{home}/bytes.jsonl"]),
         breaks=("bytes.jsonl", "bytes", b"\x80\x81\n".hex())),
    Case("cli-history-export-exists", CLI, "stack history --export onto an existing file", "FileExists", 1,
         (CLI, ["stack", "history", "--stack", "{open}", "--node", "node-1", "--export", "{home}/client.yaml"])),
    Case("cli-export-parquet-is-file", CLI, "ledger export --parquet naming an existing file", "NotADirectory", 1,
         (CLI, ["ledger", "export", "--parquet", "{home}/client.yaml"])),
    Case("cli-export-duckdb-exists", CLI, "ledger export --duckdb onto an existing file", "FileExists", 1,
         (CLI, ["ledger", "export", "--duckdb", "{home}/chain.sqlite"])),
    Case("cli-ledger-is-sqlite", CLI, "ledger --ledger naming a SQLite file (DuckDB would fetch sqlite_scanner)",
         "LedgerError", 1, (CLI, ["ledger", "--ledger", "{home}/chain.sqlite", "sync"])),
    Case("cli-ledger-is-directory", CLI, "ledger --ledger naming a directory", "LedgerError", 1,
         (CLI, ["ledger", "--ledger", "{home}/nodes", "earnings"])),
    # ``stack serve --url``: the node is asked who it is (GET /health) before anything is signed or sent
    Case("cli-serve-url-unreachable", CLI, "stack serve --url at a node nothing listens on (port 9 of 127.0.0.1: below "
         "1024, no unprivileged process can listen there)", "NodeUnreachable", 1,
         (CLI, ["stack", "serve", "--stack", "{open}", "--url", "http://127.0.0.1:9", "--workload", "{home}/work.jsonl"]),
         breaks=("work.jsonl", "text", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}\n')),
    Case("cli-serve-url-port-99999", CLI, "stack serve --url with port 99999 (refused before the chain is opened)",
         "InvalidNodeUrl", 1,
         (CLI, ["stack", "serve", "--stack", "{open}", "--url", "http://127.0.0.1:99999", "--workload", "{home}/work.jsonl"]),
         breaks=("work.jsonl", "text", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}\n')),
    Case("cli-chat-url-unreachable", CLI, "stack chat --url at a node nothing listens on", "NodeUnreachable", 1,
         (CLI, ["stack", "chat", "--stack", "{open}", "--url", "http://127.0.0.1:9", "hi"]), address="user"),
    # ``ledger sync --node-url`` / ``stack attest --history-url``: node servers read over HTTP, checked before the sync
    Case("cli-ledger-node-url-port-99999", CLI, "ledger sync --node-url with port 99999", "InvalidArgument", 1,
         (CLI, ["ledger", "sync", "--node-url", "http://127.0.0.1:99999"])),
    Case("cli-ledger-node-url-unreachable", CLI, "ledger sync --node-url where nothing listens (nothing synced)",
         "NodeUnreachable", 1, (CLI, ["ledger", "sync", "--node-url", "http://127.0.0.1:9"])),
    Case("cli-attest-history-url-not-http", CLI, "stack attest --history-url that is not http(s)", "InvalidArgument", 1,
         (CLI, ["stack", "attest", "--stack", "{open}", "--node", "node-2", "--history-url", "ftp://127.0.0.1/h"])),
    Case("cli-node-serve-port-99999", CLI, "node serve on port 99999 (refused before the model loads)", "InvalidArgument", 1,
         (CLI, ["node", "serve", "--node", "node-1", "--port", "99999"])),

    # ---------------------------------------------------------------- the flows' parameters (the run ends Failed)
    Case("flow-mint-negative", FLOW, "mint-usdc with a negative amount", "InvalidArgument", "Failed", (FLOW, "mint_usdc", {"amount": -1})),
    Case("flow-mint-overflow", FLOW, "mint-usdc past u64", "InvalidArgument", "Failed", (FLOW, "mint_usdc", {"amount": U64_MAX + 1})),
    Case("flow-mint-not-int", FLOW, "mint-usdc with a non-integer amount", "ParameterTypeError", "Failed",
         (FLOW, "mint_usdc", {"amount": "lots"})),
    Case("flow-mint-unknown-alias", FLOW, "mint-usdc to an unknown alias", "UnknownAddressError", "Failed",
         (FLOW, "mint_usdc", {"recipient": "nobody"})),
    Case("flow-task-unknown-level", FLOW, "create-task with an unknown security level", "StageError", "Failed",
         (FLOW, "create_task", {"security_level": "ultra", "key": "bad"})),
    Case("flow-task-negative-role", FLOW, "create-task with role -1", "InvalidArgument", "Failed",
         (FLOW, "create_task", {"role": -1, "key": "bad"})),
    Case("flow-task-non-ascii-model", FLOW, "create-task with a non-ASCII model name", "InvalidArgument", "Failed",
         (FLOW, "create_task", {"model_name": "modèle", "key": "bad"})),
    Case("flow-buy-negative-units", FLOW, "buy-stack of -5 compute units", "InvalidArgument", "Failed",
         (FLOW, "buy_stack", {"task_small_id": "{task}", "num_compute_units": -5, "price_per_one_million_compute_units": PRICE, "key": "bad"})),
    Case("flow-buy-price-overflow", FLOW, "buy-stack at a price past u64", "InvalidArgument", "Failed",
         (FLOW, "buy_stack", {"task_small_id": "{task}", "num_compute_units": 10, "price_per_one_million_compute_units": U64_MAX + 1, "key": "bad"})),
    Case("flow-buy-unknown-buyer", FLOW, "buy-stack by an unknown alias", "UnknownAddressError", "Failed",
         (FLOW, "buy_stack", {"task_small_id": "{task}", "num_compute_units": 10, "price_per_one_million_compute_units": PRICE, "buyer": "nobody", "key": "bad"})),
    Case("flow-buy-task-not-int", FLOW, "buy-stack with a task id that is not an integer", "ParameterTypeError", "Failed",
         (FLOW, "buy_stack", {"task_small_id": "first", "num_compute_units": 10, "price_per_one_million_compute_units": PRICE})),
    Case("flow-subscribe-unknown-node", FLOW, "register-and-subscribe an unknown alias", "UnknownAddressError", "Failed",
         (FLOW, "register_and_subscribe_node", {"node": "nobody", "task_small_id": "{task}", "price_per_one_million_compute_units": PRICE})),
    Case("flow-subscribe-negative-price", FLOW, "register-and-subscribe at price -1", "InvalidArgument", "Failed",
         (FLOW, "register_and_subscribe_node", {"node": "node-1", "task_small_id": "{task}", "price_per_one_million_compute_units": -1})),
    Case("flow-lifecycle-mismatched", FLOW, "stack-lifecycle with 1 node and 2 prices", "StageError", "Failed",
         (FLOW, "stack_lifecycle", {"nodes": ["node-1"], "node_prices": [PRICE, PRICE], "key": "bad"})),
    Case("flow-lifecycle-unknown-level", FLOW, "stack-lifecycle with an unknown security level (checked before the mint)",
         "StageError", "Failed", (FLOW, "stack_lifecycle", {"security_level": "ultra", "key": "bad"})),
    Case("flow-lifecycle-negative-bid", FLOW, "stack-lifecycle with bid price -1 (checked before the mint)",
         "InvalidArgument", "Failed", (FLOW, "stack_lifecycle", {"bid_price": -1, "key": "bad"})),
    Case("flow-subscribe-new-node-negative-price", FLOW, "register-and-subscribe an unregistered node at price -1 "
         "(checked before registering)", "InvalidArgument", "Failed",
         (FLOW, "register_and_subscribe_node", {"node": "node-3", "task_small_id": "{task}", "price_per_one_million_compute_units": -1})),
    Case("flow-claim-before-window", FLOW, "claim a ticket before its dispute window has passed", "StageError", "Failed",
         (FLOW, "claim", {"node": "node-1", "stack_small_ids": ["{settled}"]})),
    Case("flow-try-settle-foreign-stack", FLOW, "try-settle another node's stack", "StageError", "Failed",
         (FLOW, "try_settle", {"node": "node-1", "stack_small_ids": ["{foreign}"]})),
    Case("flow-try-settle-unknown-stack", FLOW, "try-settle a stack that does not exist", "StageError", "Failed",
         (FLOW, "try_settle", {"node": "node-1", "stack_small_ids": [999]})),
    Case("flow-claim-foreign-stack", FLOW, "claim another node's stack", "StageError", "Failed",
         (FLOW, "claim", {"node": "node-1", "stack_small_ids": ["{foreign}"]})),
    Case("flow-claim-open-stack", FLOW, "claim a stack that was never try-settled", "StageError", "Failed",
         (FLOW, "claim", {"node": "node-1", "stack_small_ids": ["{open}"]})),
    Case("flow-claim-unknown-node", FLOW, "claim as an unknown alias", "UnknownAddressError", "Failed",
         (FLOW, "claim", {"node": "nobody"})),
    Case("flow-settlement-unknown-node", FLOW, "settlement-run for an unknown alias", "UnknownAddressError", "Failed",
         (FLOW, "settlement_run", {"nodes": ["nobody"]})),
    Case("flow-serve-missing-workload", FLOW, "serve-stack with a workload file that does not exist", "FileNotFoundError", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "workload": "{home}/missing.jsonl"})),
    Case("flow-serve-url-unreachable", FLOW, "serve-stack with a node_url nothing listens on", "NodeUnreachable", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "node_url": "http://127.0.0.1:9"})),
    Case("flow-lifecycle-url-unreachable", FLOW, "stack-lifecycle with a node_url nothing listens on (checked before "
         "the mint)", "NodeUnreachable", "Failed", (FLOW, "stack_lifecycle", {"node_url": "http://127.0.0.1:9", "key": "bad"})),
    Case("flow-ledger-sync-url-unreachable", FLOW, "ledger-sync with node_urls where nothing listens (checked before "
         "the sync)", "NodeUnreachable", "Failed", (FLOW, "ledger_sync", {"node_urls": ["http://127.0.0.1:9"]})),
    Case("flow-serve-window-zero", FLOW, "serve-stack with windows of 0 requests", "InvalidArgument", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "window": 0})),

    # ---------------------------------------------------------------- the node's HTTP API (docs/serving.md)
    Case("http-not-json", HTTP, "request body that is not JSON", "invalid_request_error", 400, _post("{open}", b"{not json")),
    Case("http-not-object", HTTP, "JSON body that is a list", "invalid_request_error", 400, _post("{open}", [1, 2])),
    Case("http-not-utf8", HTTP, "request body that is not UTF-8", "invalid_request_error", 400, _post("{open}", b"\xff\xfe\xfa")),
    Case("http-no-messages", HTTP, "no messages", "invalid_request_error", 400, _post("{open}", {"max_tokens": 4})),
    Case("http-empty-messages", HTTP, "an empty messages list", "invalid_request_error", 400, _post("{open}", {"messages": []})),
    Case("http-message-not-object", HTTP, "a message that is a string", "invalid_request_error", 400, _post("{open}", {"messages": ["hi"]})),
    Case("http-content-int", HTTP, "message content that is a number", "invalid_request_error", 400,
         _post("{open}", {"messages": [{"role": "user", "content": 7}]})),
    Case("http-max-tokens-zero", HTTP, "max_tokens 0", "invalid_request_error", 400, _post("{open}", _chat(max_tokens=0))),
    Case("http-max-tokens-string", HTTP, "max_tokens as a string", "invalid_request_error", 400, _post("{open}", _chat(max_tokens="8"))),
    Case("http-stream-not-bool", HTTP, "stream: \"yes\"", "invalid_request_error", 400, _post("{open}", _chat(stream="yes"))),
    Case("http-temperature-nan", HTTP, "temperature NaN", "invalid_request_error", 400,
         _post("{open}", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}')),
    Case("http-unknown-model", HTTP, "a model this node does not serve", "invalid_request_error", 400,
         _post("{open}", _chat(model="gpt-4o"))),
    Case("http-unknown-parameter", HTTP, "a parameter OpenAI does not have", "invalid_request_error", 400,
         _post("{open}", _chat(frobnicate=1))),
    Case("http-tools", HTTP, "tools (no tool calling here)", "invalid_request_error", 400,
         _post("{open}", _chat(tools=[{"type": "function", "function": {"name": "f"}}]))),
    Case("http-n-2", HTTP, "n = 2", "invalid_request_error", 400, _post("{open}", _chat(n=2))),
    Case("http-no-stack-header", HTTP, "no X-Stack-Small-Id header", "missing_stack", 400, _post(None, _chat())),
    Case("http-stack-header-text", HTTP, "X-Stack-Small-Id that is not an integer", "missing_stack", 400, _post("seven", _chat())),
    Case("http-stack-header-negative", HTTP, "X-Stack-Small-Id -1", "missing_stack", 400, _post("-1", _chat())),
    Case("http-stack-header-overflow", HTTP, "X-Stack-Small-Id past u64", "missing_stack", 400, _post(str(2**70), _chat())),
    Case("http-unknown-stack", HTTP, "a stack that does not exist", "stack_not_found", 400, _post("99", _chat())),
    Case("http-foreign-stack", HTTP, "another node's stack", "stack_not_served_by_this_node", 400, _post("{foreign}", _chat())),
    Case("http-exhausted-stack", HTTP, "an exhausted stack", "insufficient_compute_units", 425, _post("{exhausted}", _chat())),
    Case("http-oversized-max-tokens", HTTP, "max_tokens larger than the stack", "insufficient_compute_units", 425,
         _post("{open}", _chat(max_tokens=1_000_000))),
    Case("http-overflowing-max-tokens", HTTP, "max_tokens past u64", "invalid_request_error", 400, _post("{open}", _chat(max_tokens=2**70))),
    Case("http-settled-stack", HTTP, "a stack in settlement", "stack_in_settlement", 423, _post("{settled}", _chat())),
    Case("http-claimed-stack", HTTP, "a claimed stack", "stack_claimed", 423, _post("{claimed}", _chat())),
    # who may spend a stack (atoma-protocol.md §17): the owner's valid signature over this very body, or nothing
    Case("http-unsigned", HTTP, "no X-Signature", "invalid_signature_header", 400, _post("{open}", _chat(), sign=None)),
    Case("http-signature-not-base64", HTTP, "X-Signature that is not base64", "invalid_signature_header", 400,
         _post("{open}", _chat(), sign=None, **{"X-Signature": "%%%"})),
    Case("http-forged-signature", HTTP, "a forged signature (the owner's key, random bytes)", "invalid_signature", 401,
         _post("{open}", _chat(), sign="forged")),
    Case("http-signature-other-body", HTTP, "the owner's signature over another body", "invalid_signature", 401,
         _post("{open}", _chat(), sign="other-body:user")),
    Case("http-signature-wrong-flag", HTTP, "a signature under the wrong scheme flag", "invalid_signature_header", 400,
         _post("{open}", _chat(), sign="flag1:user")),
    Case("http-signature-other-address", HTTP, "a valid signature by an address that owns no stack", "stack_not_found",
         400, _post("{open}", _chat(), sign="node-3")),
    Case("http-other-owners-stack", HTTP, "a request for another owner's stack", "stack_not_found", 400,
         _post("{theirs}", _chat(), sign="user")),
    Case("http-oversized-body", HTTP, "a body past the node's limit (4 MiB)", "invalid_request_error", 400,
         _post("{open}", b'{"messages": [], "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}')),
    Case("http-tx-digest-not-digest", HTTP, "X-Tx-Digest that is not a digest (unknown stack)", "invalid_request_error",
         400, _post("99", _chat(), **{"X-Tx-Digest": "not-a-digest"})),
    Case("http-wrong-method", HTTP, "GET on the chat endpoint", "method_not_allowed", 405, ("http", "GET", "/v1/chat/completions", {}, None)),
    Case("http-wrong-path", HTTP, "an unknown path", "not_found", 404, ("http", "POST", "/v1/completions", {}, _chat())),
    Case("http-usage-unknown-stack", HTTP, "usage of a stack that does not exist", "stack_not_found", 400, ("http", "GET", "/v1/stacks/99/usage", {}, None)),
    Case("http-usage-foreign-stack", HTTP, "usage of another node's stack", "stack_not_served_by_this_node", 400,
         ("http", "GET", "/v1/stacks/{foreign}/usage", {}, None)),
    Case("http-usage-overflow", HTTP, "usage of a stack id past u64", "stack_not_found", 400,
         ("http", "GET", f"/v1/stacks/{2**70}/usage", {}, None)),
    Case("http-usage-not-int", HTTP, "usage of a stack id that is not an integer", "invalid_request_error", 400,
         ("http", "GET", "/v1/stacks/seven/usage", {}, None)),

    # ---------------------------------------------------------------- configuration files and blocks
    Case("config-keystore-not-json", CONFIG, "sui.keystore is not JSON", "KeystoreError", 1, (CLI, ["usdc", "balance"]), breaks=("sui.keystore", "text", "{[")),
    Case("config-keystore-object", CONFIG, "sui.keystore is a JSON object, not a list", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("sui.keystore", "text", '{"key": "value"}')),
    Case("config-keystore-bad-key", CONFIG, "sui.keystore holds a key that is not base64", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("sui.keystore", "text", '["not a key!"]')),
    Case("config-keystore-short-key", CONFIG, "sui.keystore holds a truncated key", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("sui.keystore", "text", '["AAEC"]')),
    Case("config-keystore-missing", CONFIG, "sui.keystore is missing", "KeystoreError", 1, (CLI, ["usdc", "balance"]), breaks=("sui.keystore", "delete")),
    Case("config-client-yaml-invalid", CONFIG, "client.yaml is not YAML", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("client.yaml", "text", "keystore: [unclosed")),
    Case("config-client-yaml-missing", CONFIG, "client.yaml is missing", "NotFound", 1, (CLI, ["usdc", "balance"]), breaks=("client.yaml", "delete")),
    Case("config-client-yaml-no-keystore", CONFIG, "client.yaml names no keystore file", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("client.yaml", "text", "envs: []\n")),
    Case("config-active-address-invalid", CONFIG, "client.yaml's active_address is not an address", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("client.yaml", "yaml", "active_address", "0xnothex")),
    Case("config-active-address-unknown", CONFIG, "client.yaml's active_address has no key in the keystore", "UnknownAddressError", 1,
         (CLI, ["db", "register-node"]), breaks=("client.yaml", "yaml", "active_address", "0x" + "ab" * 32)),
    Case("config-keystore-damaged-entry", CONFIG, "sui.keystore entry 1 damaged, of the right length (it decodes to "
         "another key)", "KeystoreError", 1, (CLI, ["usdc", "balance"]), address="user", breaks=("sui.keystore", "flip-key", "1")),
    Case("config-node-store-empty", CONFIG, "a node store emptied to 0 bytes (ledger sync stops before indexing)",
         "LedgerError", 1, (CLI, ["ledger", "sync"]), breaks=("nodes/node-1/serving.sqlite", "empty")),
    Case("config-aliases-not-json", CONFIG, "sui.aliases is not JSON", "KeystoreError", 1, (CLI, ["usdc", "balance"]), breaks=("sui.aliases", "text", "[{")),
    Case("config-aliases-duplicate", CONFIG, "sui.aliases gives one alias to two keys", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("sui.aliases", "duplicate-alias")),
    Case("config-aliases-bad-key", CONFIG, "sui.aliases entry's public key is not base64", "KeystoreError", 1,
         (CLI, ["usdc", "balance"]), breaks=("sui.aliases", "text", '[{"alias": "admin", "public_key_base64": "%%%"}]')),
    Case("config-no-localnet", CONFIG, "AtomaNetwork home without a localnet", "NotFound", "Failed",
         (FLOW, "mint_usdc", {"network": {"home": "{home}/elsewhere"}})),
    Case("config-sui-no-wallet", CONFIG, "AtomaNetwork kind=sui without a SuiWallet", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS}})),
    Case("config-sui-bad-package-id", CONFIG, "AtomaNetwork kind=sui with a malformed package id", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS, "package_id": "0xnothex"}, "wallet": WALLET})),
    Case("config-sui-bad-db-id", CONFIG, "AtomaNetwork kind=sui with a db id past 32 bytes", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS, "db_id": "0x" + "1" * 65}, "wallet": WALLET})),
    Case("config-sui-bad-coin-type", CONFIG, "AtomaNetwork kind=sui with a USDC type that is no coin type", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS, "usdc_coin_type": "USDC"}, "wallet": WALLET})),
    Case("config-sui-missing-ids", CONFIG, "AtomaNetwork kind=sui custom without its ids", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": SUI, "wallet": WALLET})),
    Case("config-sui-bad-endpoint", CONFIG, "AtomaNetwork kind=sui with an endpoint that is no URL", "InvalidArgument", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS, "sui_endpoint": "fullnode:443"}, "wallet": WALLET})),
    Case("config-sui-wrong-db-id", CONFIG, "AtomaNetwork kind=sui naming another network's AtomaDb", "NotFound", "Failed",
         (FLOW, "claim", {"node": "node-1", "network": {**LOOPBACK, "db_id": "0x" + "cd" * 32}, "wallet": WALLET})),
    Case("config-sui-wrong-usdc-type", CONFIG, "AtomaNetwork kind=sui naming another network's USDC", "StageError", "Failed",
         (FLOW, "mint_usdc", {"network": {**LOOPBACK, "usdc_coin_type": "0x" + "ef" * 32 + "::usdc::USDC"}, "wallet": WALLET})),
    Case("config-sui-unknown-preset", CONFIG, "AtomaNetwork with an unknown network preset", "ParameterTypeError", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, "sui_preset": "mainnet"}, "wallet": WALLET})),
    Case("config-wallet-secret-not-json", CONFIG, "SuiWallet keystore secret that is not JSON", "KeystoreError", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS}, "wallet": {"keystore": "not json"}})),
    Case("config-wallet-yaml-missing", CONFIG, "SuiWallet client_yaml that does not exist", "KeystoreError", "Failed",
         (FLOW, "mint_usdc", {"network": {**SUI, **SUI_IDS}, "wallet": {"client_yaml": "{home}/nowhere/client.yaml"}})),
    Case("config-ledger-is-directory", CONFIG, "Ledger block path that is a directory", "LedgerError", "Failed",
         (FLOW, "mint_usdc", {"key": "bad", "ledger": {"path": "{home}/nodes"}})),
    Case("config-workload-not-json", CONFIG, "workload file with a line that is not JSON", "WorkloadError", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "workload": "{home}/broken.jsonl"}),
         breaks=("broken.jsonl", "text", '{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')),
    Case("config-workload-not-utf8", CONFIG, "serve-stack's workload file with bytes that are not UTF-8 (no CLI "
         "check before the flow)", "WorkloadError", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "workload": "{home}/bytes.jsonl"}),
         breaks=("bytes.jsonl", "bytes", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.hex())),
    Case("config-workload-bad-request", CONFIG, "workload file with a request that has no messages", "WorkloadError", "Failed",
         (FLOW, "serve_stack", {"stack_small_id": "{open}", "node": "node-1", "workload": "{home}/broken.jsonl"}),
         breaks=("broken.jsonl", "text", '{"max_tokens": 4}\n')),
)


# ------------------------------------------------------------------------------------------------------ the scenario
@dataclass
class Scenario:
    """A localnet home built once: task ``task`` (node-1 subscribed; recorded serving, no engine), stacks
    ``open`` (served, no ticket), ``settled`` (ticket opened in the current epoch: claimable from the next),
    ``claimed`` (settled and claimed), ``exhausted`` (every unit served), ``foreign`` (sold to node-2 on a
    second task) and ``theirs`` (node-1's, bought by admin); the ledger synced. Every stack but ``theirs`` is
    user's."""

    home: Path
    ids: dict[str, int]

    def fill(self, value: Any, home: Path, **extra: str) -> Any:
        """``value`` with ``{name}`` placeholders filled (ids become ints where the whole string is one)."""
        if isinstance(value, str):
            names = {**{k: str(v) for k, v in self.ids.items()}, "home": str(home), **extra}
            for name, text in names.items():
                if value == "{" + name + "}" and name in self.ids:
                    return self.ids[name]
                value = value.replace("{" + name + "}", text)
            return value
        if isinstance(value, list):
            return [self.fill(v, home, **extra) for v in value]
        if isinstance(value, tuple):
            return tuple(self.fill(v, home, **extra) for v in value)
        if isinstance(value, dict):
            return {k: self.fill(v, home, **extra) for k, v in value.items()}
        return value

    def fill_text(self, value: Any, home: Path) -> Any:
        """Like :meth:`fill`, but ids stay strings (CLI arguments, HTTP paths and headers)."""
        filled = self.fill(value, home)
        if isinstance(value, str) and isinstance(filled, int):
            return str(filled)
        if isinstance(value, (list, tuple)):
            out = [self.fill_text(v, home) for v in value]
            return out if isinstance(value, list) else tuple(out)
        if isinstance(value, dict):
            return {k: self.fill_text(v, home) for k, v in value.items()}
        return filled


async def _build(home: Path) -> dict[str, int]:
    from atoma_ops.testing.served import recorded_response, served_stacks_async

    from atoma_ops import lifecycle
    from atoma_ops.home import LocalnetHome
    from atoma_ops.ledger.api import Ledger, default_path
    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.store import NodeStore, Settlement, StackFacts

    served = await served_stacks_async(home, 3, requests_per_stack=2)
    opened, settled, claimed = served.stack_small_ids
    chain = LocalnetHome(home).open()
    journal = Ledger(default_path(home))
    try:
        user, admin, node2 = (chain.wallet.resolve(a) for a in ("user", "admin", "node-2"))
        await chain.faucet_mint(user, 10_000_000)
        # a stack of 30 units, served to the last unit (two recorded requests of 15)
        tx = await chain.acquire_new_stack_entry(user, task_small_id=served.task_small_id, num_compute_units=30, price=PRICE)
        exhausted = lifecycle.small_id_in(tx, "StackCreatedEvent", "stack_small_id")
        facts = StackFacts.of(await chain.get_stack(exhausted))
        with NodeStore(NodeStore.path_for(home, "node-1")) as store:
            pairs = [recorded_response(exhausted, i) for i in range(2)]
            reservations = store.reserve([(facts, 15), (facts, 15)])
            store.settle([Settlement(r, req, resp) for r, (req, resp) in zip(reservations, pairs)])
        # node-2 is the only subscriber of a second task: its stack is another node's stack for node-1
        tx = await chain.create_task_entry(admin, role=0, model_name="recorded", security_level=0)
        task2 = lifecycle.small_id_in(tx, "TaskRegisteredEvent", "task_small_id")
        await chain.register_node_entry(node2)
        await chain.subscribe_node_to_task(node2, task_small_id=task2, price_per_one_million_compute_units=PRICE)
        tx = await chain.acquire_new_stack_entry(user, task_small_id=task2, num_compute_units=1_000, price=PRICE)
        foreign = lifecycle.small_id_in(tx, "StackCreatedEvent", "stack_small_id")
        # a stack of node-1's that admin bought: another owner's stack for user's key
        await chain.faucet_mint(admin, 1_000_000)
        tx = await chain.acquire_new_stack_entry(admin, task_small_id=served.task_small_id, num_compute_units=1_000,
                                                 price=PRICE)
        theirs = lifecycle.small_id_in(tx, "StackCreatedEvent", "stack_small_id")
        # settle and claim one stack, then settle another in the next epoch (claimable one epoch later)
        service = await NodeService.open(home, "node-1", None, chain=chain)
        try:
            await lifecycle.try_settle_stacks(service, journal, [claimed])
            await chain.advance_epoch(1)
            await lifecycle.claim_tickets(service, journal, [claimed])
            await lifecycle.try_settle_stacks(service, journal, [settled])
        finally:
            await service.close()
        await journal.sync(chain)
    finally:
        await chain.close()
    return dict(task=served.task_small_id, open=opened, settled=settled, claimed=claimed, exhausted=exhausted,
                foreign=foreign, task2=task2, theirs=theirs)


def build_scenario(home: Path) -> Scenario:
    return Scenario(Path(home), asyncio.run(_build(Path(home))))


# ------------------------------------------------------------------------------------------------------ digests
@dataclass
class Snapshot:
    digests: StateDigests

    @classmethod
    def of(cls, home: Path) -> "Snapshot":
        return cls(state_digests(home))

    def compare(self, after: "Snapshot") -> tuple[bool, str]:
        """(unchanged, how it reads in the table)."""
        changed = self.digests.changed(after.digests)
        return (True, "yes") if not changed else (False, "no: " + ", ".join(changed) + " changed")


# ------------------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    id: str
    surface: str
    input: str
    expected_error: str
    expected_status: int | str
    observed_error: str | None
    observed_status: int | str | None
    unchanged: bool
    digests: str
    ok: bool
    seconds: float
    message: str = ""


def _named(error: dict) -> str:
    """The name a JSON error goes by: a Move abort's constant, else its kind."""
    return error.get("name") if error.get("kind") == "MoveAbort" else error.get("kind") or error.get("type")


def run_cli(scenario: Scenario, home: Path, case: Case) -> tuple[str | None, int, str]:
    from atoma_ops.cli import main

    argv = ["--home", str(home), "--json"]
    if case.address:
        argv += ["--address", case.address]
    argv += scenario.fill_text(list(case.call[1]), home)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # pragma: no cover - main returns its status
            rc = exc.code if isinstance(exc.code, int) else 1
    text = out.getvalue().strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return None, rc, f"not one JSON document on stdout: {text[:200]!r} {err.getvalue()[-300:]!r}"
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, rc, f"no error in {text[:200]!r}"
    return _named(error), rc, error.get("message", "")


@contextlib.contextmanager
def _loopback(home: Path, wanted: bool) -> Iterator[dict[str, str]]:
    """The loopback Sui node over ``home``'s chain file and the ids it serves, when ``wanted``."""
    if not wanted:
        yield {}
        return
    from atoma_ops.chain.localnet.engine import CHAIN_FILE, Localnet
    from atoma_ops.testing.sui import BackgroundLoopbackNode

    net = Localnet(home / CHAIN_FILE)
    try:
        ids = dict(package_id=net.package_id, db_id=net.db_id, usdc_type=net.usdc_type)
    finally:
        net.close()
    with BackgroundLoopbackNode(home / CHAIN_FILE) as node:
        yield {"loopback": node.url, **ids}


def run_flow(scenario: Scenario, home: Path, case: Case) -> tuple[str | None, str, str]:
    import flows

    _, name, params = case.call
    with _loopback(home, "{loopback}" in json.dumps(params)) as sui:
        params = scenario.fill(dict(params), home, **sui)
        params.setdefault("network", {"home": str(home)})
        state = asyncio.run(getattr(flows, name)(**params, return_state=True))
    if not state.is_failed():
        return None, state.name, f"the run ended {state.name}: {str(state.result(raise_on_failure=False))[:200]}"
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - the run's own exception is what we observe
        return type(exc).__name__, state.name, str(exc).splitlines()[0][:200] if str(exc) else ""
    return None, state.name, "failed without an exception"


def run_http(scenario: Scenario, url: str, case: Case, client: Any = None) -> tuple[str | None, int, str]:
    """One HTTP row; ``client``: an ``httpx.Client`` the rows share (a new one per call costs an SSL context)."""
    import httpx

    _, method, path, headers, body = case.call
    path, headers = scenario.fill_text(path, scenario.home), scenario.fill_text(dict(headers), scenario.home)
    content = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
    sign = headers.pop(SIGN, None)
    if sign is not None:
        headers["X-Signature"] = _signature(scenario.home, sign, content or b"")
    send = client.request if client is not None else httpx.request
    response = send(method, url + path, headers=headers, content=content, timeout=60)
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return None, response.status_code, f"no error object in {response.text[:200]!r}"
    return error.get("type"), response.status_code, error.get("message", "")


def _signature(home: Path, how: str, content: bytes) -> str:
    """The X-Signature a row asks for (see ``_post``), made with the home's wallet."""
    import base64
    import secrets

    from atoma_ops.client import RequestSigner
    from atoma_ops.home import LocalnetHome
    from atoma_ops.protocol.node_http import BodyError, blake2b256
    from atoma_ops.wallet import Wallet

    wallet = Wallet.load(LocalnetHome(home).client_yaml)
    if how == "forged":
        return base64.b64encode(bytes([0]) + secrets.token_bytes(64) + wallet.public_key("user")).decode()
    variant, _, alias = how.rpartition(":")
    signer = RequestSigner(wallet, alias)
    if variant == "other-body":
        return signer.sign({"messages": [{"role": "user", "content": "another body"}]})[1]
    try:
        signature = signer.sign(content)[1]
    except BodyError:  # a body that is not JSON: any well-formed signature (the node refuses the body first)
        signature = signer.sign_hash(blake2b256(content))
    if variant == "flag1":
        raw = base64.b64decode(signature)
        signature = base64.b64encode(bytes([1]) + raw[1:]).decode()
    return signature


def _break(home: Path, breaks: tuple[str, ...]) -> None:
    """Break one configuration file of ``home`` (see the config rows of ``CASES``)."""
    import yaml

    if not breaks:
        return
    path, how, *args = breaks
    target = home / path
    if how == "text":
        target.write_text(args[0])
    elif how == "delete":
        target.unlink()
    elif how == "yaml":
        doc = yaml.safe_load(target.read_text())
        doc[args[0]] = args[1]
        target.write_text(yaml.safe_dump(doc))
    elif how == "bytes":
        target.write_bytes(bytes.fromhex(args[0]))
    elif how == "fifo":
        os.mkfifo(target)
    elif how == "empty":
        for suffix in ("-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        target.write_bytes(b"")
    elif how == "flip-key":
        import base64

        entries = json.loads(target.read_text())
        raw = bytearray(base64.b64decode(entries[int(args[0])]))
        raw[7] ^= 0x01
        entries[int(args[0])] = base64.b64encode(bytes(raw)).decode()
        target.write_text(json.dumps(entries))
    elif how == "duplicate-alias":
        entries = json.loads(target.read_text())
        entries[1]["alias"] = entries[0]["alias"]
        target.write_text(json.dumps(entries))
    else:  # pragma: no cover - a typo in the table
        raise ValueError(f"unknown way to break a file: {how}")


def copy_home(source: Path, home: Path) -> None:
    """A copy of a localnet home whose client.yaml names the copy's keystore (Sui writes an absolute path)."""
    import yaml

    shutil.copytree(source, home)
    client = home / "client.yaml"
    doc = yaml.safe_load(client.read_text())
    doc["keystore"]["File"] = str(home / "sui.keystore")
    client.write_text(yaml.safe_dump(doc, sort_keys=False))


def _verdict(case: Case, observed: str | None, status: Any, unchanged: bool) -> bool:
    return observed == case.error and status == case.status and unchanged


def run_isolated(scenario: Scenario, case: Case, workdir: Path, before: Snapshot) -> Result:
    """A CLI, flow or config case on its own copy of the scenario; ``before``: the scenario's snapshot (a copy has
    the same rows, and the files a config case breaks are none of the digested ones)."""
    home = workdir / case.id
    copy_home(scenario.home, home)
    _break(home, case.breaks)
    if case.breaks and case.breaks[0].startswith("nodes/"):  # the broken file is a digested one: compare with it
        before = Snapshot.of(home)
    started = time.perf_counter()
    runner = run_cli if case.call[0] == CLI else run_flow
    try:
        observed, status, message = runner(scenario, home, case)
    except Exception as exc:  # noqa: BLE001 - an unnamed crash is a failed row, not a crashed harness
        observed, status, message = None, None, f"raised {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    unchanged, digests = before.compare(Snapshot.of(home))
    shutil.rmtree(home, ignore_errors=True)
    message = message.replace(str(workdir), "<tmp>")  # results hold no path of this machine
    return Result(case.id, case.surface, case.input, case.error, case.status, observed, status, unchanged, digests,
                  _verdict(case, observed, status, unchanged), seconds, message)


@contextlib.contextmanager
def node_server(scenario: Scenario, engine: Any = None) -> Iterator[str]:
    """node-1's HTTP server on the scenario's home (127.0.0.1, a free port), with the process's shared engine."""
    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.server import BackgroundServer, create_app

    if engine is None:
        from blocks import InferenceEngine
        from tasks.runtime import shared_engine

        engine = shared_engine(InferenceEngine())
    service = asyncio.run(NodeService.open(scenario.home, "node-1", engine))
    try:
        with BackgroundServer(create_app(service)) as server:
            yield server.url
    finally:
        asyncio.run(service.close())


def run_http_case(scenario: Scenario, url: str, case: Case, before: Snapshot,
                  client: Any = None) -> tuple[Result, Snapshot]:
    """One HTTP case on the shared home; returns the snapshot after it (the next case's before)."""
    started = time.perf_counter()
    try:
        observed, status, message = run_http(scenario, url, case, client)
    except Exception as exc:  # noqa: BLE001
        observed, status, message = None, None, f"raised {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    message = message.replace(str(scenario.home), "<home>")
    after = Snapshot.of(scenario.home)
    unchanged, digests = before.compare(after)
    result = Result(case.id, case.surface, case.input, case.error, case.status, observed, status, unchanged, digests,
                    _verdict(case, observed, status, unchanged), seconds, message)
    return result, after


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """A refused flow run logs its traceback at ERROR; the table says everything that matters. Levels are restored
    afterwards (a test session goes on)."""
    loggers = [logging.getLogger(n) for n in ("prefect", "prefect.flow_runs", "prefect.task_runs", "docket", "atoma_ops")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_cases(cases: Sequence[Case], scenario: Scenario, workdir: Path, engine: Any = None) -> list[Result]:
    """Every case, in table order (HTTP cases share one server)."""
    results: dict[str, Result] = {}
    pristine = Snapshot.of(scenario.home)
    for case in cases:
        if case.call[0] != "http":
            results[case.id] = run_isolated(scenario, case, workdir, pristine)
    http = [c for c in cases if c.call[0] == "http"]
    if http:
        import httpx

        with node_server(scenario, engine) as url, httpx.Client() as client:
            before = pristine
            for case in http:
                results[case.id], before = run_http_case(scenario, url, case, before, client)
    return [results[c.id] for c in cases]


# ------------------------------------------------------------------------------------------------------ the report
def _cell(value: Any) -> str:
    return "—" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown(results: Sequence[Result], seconds: float) -> str:
    passed = sum(r.ok for r in results)
    by_surface: dict[str, int] = {}
    for r in results:
        by_surface[r.surface] = by_surface.get(r.surface, 0) + 1
    lines = [
        TITLE,
        "",
        f"{len(results)} bad inputs ({', '.join(f'{n} {s}' for s, n in by_surface.items())}); **{passed} of "
        f"{len(results)} pass** in {seconds:.1f} s. A row passes when the observed error and status are the "
        "expected ones and the chain, the stack histories and the ledger are unchanged (`reliability.digests`, "
        "before and after; a refusal *by the chain* is recorded under its transaction digest, as on Sui, and "
        "changes nothing else: the chain digest leaves refused transactions out).",
        "",
        "Statuses: the CLI's exit status (README: 1 abort or bad input, 2 usage error), the HTTP status "
        "(docs/serving.md), a flow run's final state. Errors: the CLI's JSON `error.kind` (a Move abort by its "
        "constant's name), the HTTP body's `error.type`, the exception a flow run failed with.",
        "",
        "| id | surface | input | expected error | expected status | observed | digests unchanged | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        observed = f"{_cell(r.observed_error)} / {_cell(r.observed_status)}"
        lines.append(
            f"| `{r.id}` | {r.surface} | {_cell(r.input)} | `{r.expected_error}` | {r.expected_status} | {observed} | "
            f"{r.digests} | {'pass' if r.ok else '**FAIL**'} |"
        )
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failures:", ""] + [f"- `{r.id}`: {_cell(r.message)}" for r in failed]
    return "\n".join(lines) + "\n"


def write(results: Sequence[Result], seconds: float, out: Path, phases: dict[str, float] | None = None) -> bool:
    ok = bool(results) and all(r.ok for r in results)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "ok": ok,
        "rows": len(results),
        "passed": sum(r.ok for r in results),
        "seconds": round(seconds, 2),
        "phases_seconds": phases or {},
        "surfaces": sorted({r.surface for r in results}),
        "results": [{**asdict(r), "seconds": round(r.seconds, 3)} for r in results],
    }
    (out / f"{PART}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{PART}.md").write_text(markdown(results, seconds))
    return ok


def print_table(results: Sequence[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Bad inputs", show_lines=False)
    for column in ("id", "surface", "expected", "observed", "digests", "verdict"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.id, r.surface, f"{r.expected_error} / {r.expected_status}", f"{r.observed_error} / {r.observed_status}",
            r.digests, "[green]pass[/]" if r.ok else "[bold red]FAIL[/]",
        )
    console = Console(width=max(Console().width, 140))
    console.print(table)
    for r in results:
        if not r.ok:
            console.print(f"[red]{r.id}[/]: {r.message}", markup=True, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="comma-separated case ids (default: every case)")
    opts = parser.parse_args(argv)
    cases = [c for c in CASES if not opts.only or c.id in opts.only.split(",")]

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="atoma-ops-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    started = time.perf_counter()
    phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        phases[name] = round(time.perf_counter() - t, 2)

    with tempfile.TemporaryDirectory(prefix="atoma-ops-bad-inputs-") as tmp:
        with phase("scenario"):
            scenario = build_scenario(Path(tmp) / "scenario")
        engine = None
        if any(c.call[0] == "http" for c in cases):
            with phase("engine"):
                from blocks import InferenceEngine
                from tasks.runtime import shared_engine

                engine = shared_engine(InferenceEngine())
        with phase("prefect"), prefect_test_harness(server_startup_timeout=120), quiet_logs():
            with phase("rows"):
                results = run_cases(cases, scenario, Path(tmp), engine)
    seconds = time.perf_counter() - started
    phases["prefect"] = round(phases["prefect"] - phases["rows"], 2)  # the API's start and stop
    print_table(results)
    ok = write(results, seconds, opts.results, phases)
    print(f"{sum(r.ok for r in results)} of {len(results)} rows pass; wrote {opts.results / (PART + '.json')} and .md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
