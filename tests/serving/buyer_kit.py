"""The buyer's side in the serving tests: signers from the localnet wallet and signed request headers (the node
admits no request its stack's owner did not sign). No tests here."""

from __future__ import annotations

from atoma_ops.client import RequestSigner
from atoma_ops.protocol.node_http import SIGNATURE_HEADER, STACK_HEADER, blake2b256

__all__ = ["buyer", "signed_headers"]


def buyer(net, alias: str = "user") -> RequestSigner:
    """The signer of ``alias``'s requests (the localnet wallet holds every test key; ``user`` buys the stacks)."""
    return RequestSigner(net.chain.wallet, alias)


def signed_headers(signer: RequestSigner, stack, body, **extra) -> dict:
    """Headers of a request signed by ``signer`` (``stack`` None: no stack header). A body that is not JSON gets
    a well-formed signature over its raw bytes' hash (the node refuses the body before checking it)."""
    if isinstance(body, str):
        body = body.encode()
    try:
        _, signature, _ = signer.sign(body)
    except ValueError:
        signature = signer.sign_hash(blake2b256(body))
    h = {SIGNATURE_HEADER: signature}
    if stack is not None:
        h[STACK_HEADER] = str(stack)
    h.update(extra)
    return h
