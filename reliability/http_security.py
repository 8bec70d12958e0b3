"""Part 4, section 5 of the reliability harness: who may spend a stack on the node's HTTP surface
(atoma-protocol.md §17).

The scene's second stack (bought by ``user``, served by its node) is offered to that node's real HTTP server on
127.0.0.1 (``atoma_ops.serving.server``, a stub engine: nothing here depends on the model) with requests that must
all be refused: a forged signature, a valid signature by another address, a signature over another body, a
signature under the wrong scheme flag, no signature, an oversized body, and the owner's request for a stack another
owner bought. Each row passes when the status and error type are the Atoma node's, the refusal is final
(``x-should-retry: false``), the chain, histories and ledger digests (:mod:`reliability.digests`) and the stack's
usage are unchanged, and nothing was reserved. The control, last: the owner's own signed request is served and its
answer carries the node's valid signature. Every log record of the run is scanned for the wallet's keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from pathlib import Path
from typing import Any

from atoma_ops.protocol.events import small_id

MAX_BODY = 64 * 1024


def _request(text: str = "hello") -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 4}).encode()


async def _foreign_stack(home: Path, task: int, node_small_id: int, units: int, price: int) -> int:
    """A stack ``admin`` buys on ``task`` until one is sold to ``node_small_id`` (the contract draws the node)."""
    from atoma_ops.home import LocalnetHome

    chain = LocalnetHome(home).open()
    try:
        admin = chain.wallet.resolve("admin")
        await chain.faucet_mint(admin, 20 * units * price // 1_000_000 + 1_000_000)
        for _ in range(20):
            tx = await chain.acquire_new_stack_entry(admin, task_small_id=task, num_compute_units=units, price=price)
            event = tx.event("StackCreatedEvent").parsed_json
            if small_id(event["selected_node_id"]) == node_small_id:
                return small_id(event["stack_small_id"])
        raise RuntimeError(f"no stack of admin's was sold to node {node_small_id} in 20 purchases")
    finally:
        await chain.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot format is still not a key
            self.lines.append(str(record.msg))


def run(scene: Any, *, units: int, price: int) -> dict:
    """The rows, the control and the log scan of this section (see the module doc)."""
    import httpx

    from atoma_ops.client import RequestSigner, ResponseSignatureError, verify_response
    from atoma_ops.home import LocalnetHome
    from atoma_ops.protocol.node_http import SIGNATURE_HEADER, STACK_HEADER
    from atoma_ops.serving.node import NodeService
    from atoma_ops.serving.server import BackgroundServer, create_app
    from atoma_ops.serving.store import NodeStore
    from atoma_ops.testing.stub_engine import StubEngine
    from atoma_ops.wallet import Wallet

    from .digests import state_digests
    from .keyscan import KeyScanner, find_keystores

    home = Path(scene.home)
    wallet = Wallet.load(LocalnetHome(home).client_yaml)
    stack = scene.unsettled_stack

    async def facts() -> tuple[int, str]:
        chain = LocalnetHome(home).open()
        try:
            s = await chain.get_stack(stack)
            for alias in ("node-1", "node-2"):
                badges = await chain.badges(chain.wallet.resolve(alias))
                if any(b.kind == "NodeBadge" and b.small_id == s.selected_node_id for b in badges):
                    return s.selected_node_id, alias
            raise RuntimeError(f"no wallet key holds node {s.selected_node_id}'s badge")
        finally:
            await chain.close()

    node_small_id, node = asyncio.run(facts())
    theirs = asyncio.run(_foreign_stack(home, scene.task, node_small_id, units, price))
    owner, other = RequestSigner(wallet, "user"), RequestSigner(wallet, "admin" if node != "admin" else "node-2")
    body = _request()
    raw_sig = base64.b64decode(owner.sign(body)[1])
    forged = base64.b64encode(bytes([0]) + secrets.token_bytes(64) + wallet.public_key("user")).decode()
    rows_spec = [
        ("forged signature (the owner's key, random bytes)", stack, body, forged, 401, "invalid_signature"),
        ("a valid signature by another address", stack, body, other.sign(body)[1], 400, "stack_not_found"),
        ("the owner's signature over another body", stack, body, owner.sign(_request("another"))[1], 401,
         "invalid_signature"),
        ("the owner's signature under the secp256k1 flag", stack, body,
         base64.b64encode(bytes([1]) + raw_sig[1:]).decode(), 400, "invalid_signature_header"),
        ("no signature", stack, body, None, 400, "invalid_signature_header"),
        (f"a body past the node's limit ({MAX_BODY} bytes)", stack, b'{"pad": "' + b"x" * MAX_BODY + b'"}',
         owner.sign(body)[1], 400, "invalid_request_error"),
        ("the owner's request for another owner's stack", theirs, body, owner.sign(body)[1], 400, "stack_not_found"),
    ]

    records = _Records()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    service = asyncio.run(NodeService.open(home, node, StubEngine()))
    rows: list[dict] = []
    control: dict = {}
    try:
        with BackgroundServer(create_app(service, max_body_bytes=MAX_BODY)) as server, \
                httpx.Client(base_url=server.url, timeout=60) as http:
            for case, sid, content, signature, status, type_ in rows_spec:
                before = state_digests(home)
                usage_before = service.store.usage(sid)
                headers = {STACK_HEADER: str(sid), "content-type": "application/json"}
                if signature is not None:
                    headers[SIGNATURE_HEADER] = signature
                r = http.post("/v1/chat/completions", content=content, headers=headers)
                try:
                    error = r.json().get("error") or {}
                except ValueError:
                    error = {}
                changed = before.changed(state_digests(home))
                usage_after = service.store.usage(sid)
                if usage_before != usage_after:
                    changed.append("stack usage")
                final = r.headers.get("x-should-retry") == "false"
                ok = r.status_code == status and error.get("type") == type_ and final and not changed
                rows.append({"case": case, "expected": f"{status} {type_}", "status": r.status_code,
                             "error": error.get("type"), "final": final, "changed": changed, "ok": ok})
            r = http.post("/v1/chat/completions", content=body,
                          headers={STACK_HEADER: str(stack), SIGNATURE_HEADER: owner.sign(body)[1],
                                   "content-type": "application/json"})
            try:
                signer = verify_response(r.json(), service.address) if r.status_code == 200 else None
            except ResponseSignatureError as exc:
                signer = f"bad signature: {exc}"
            control = {"case": "the owner's signed request (control)", "status": r.status_code, "signed_by": signer,
                       "ok": r.status_code == 200 and signer == service.address}
    finally:
        asyncio.run(service.close())
        root.removeHandler(records)
        root.setLevel(previous)
    with NodeStore(NodeStore.path_for(home, node)) as store:
        reserved = store.usage(stack).reserved_units if store.usage(stack) else 0
    scanner = KeyScanner.for_roots([], find_keystores([home]))
    hits = scanner.scan_text("\n".join(records.lines), "log records of the HTTP section")
    return {"node": node, "stack": stack, "other_owners_stack": theirs, "rows": rows, "control": control,
            "log_records": len(records.lines), "key_hits": [h.place for h in hits], "reserved_after": reserved,
            "ok": all(r["ok"] for r in rows) and control.get("ok", False) and not hits and reserved == 0}


def markdown(section: dict) -> list[str]:
    out = ["", "**5. Who may spend a stack** (node "
           f"`{section['node']}`'s HTTP server on 127.0.0.1, stack {section['stack']} of `user`; atoma-protocol.md "
           "§17): each request must be refused with the Atoma node's status and error, final "
           "(`x-should-retry: false`), with the chain, history and ledger digests and the stack's usage unchanged.",
           "", "| request | expected | got | verdict |", "|---|---|---|---|"]
    for r in section["rows"]:
        got = f"{r['status']} {r['error']}" + ("" if r["final"] else ", not final")
        verdict = "pass; nothing changed" if r["ok"] else f"**FAIL**{' changed ' + ', '.join(r['changed']) if r['changed'] else ''}"
        out.append(f"| {r['case']} | {r['expected']} | {got} | {verdict} |")
    c = section["control"]
    out.append(f"| {c.get('case')} | 200, signed by the node | {c.get('status')}, signed by {c.get('signed_by')} | "
               f"{'pass' if c.get('ok') else '**FAIL**'} |")
    out += ["", f"Log records of the section: {section['log_records']}, key hits: **{len(section['key_hits'])}** "
                f"(must be 0); units reserved after: {section['reserved_after']}."]
    return out
