"""The Prefect events atoma-ops emits for what an operator must act on, and the one way they are emitted.

Each event names one resource (a stack, an address) as ``atoma.<kind>.<id>`` with the network it lives on
(``atoma.network``: the label of ``tasks.labels.network_label``) and the node concerned as a related resource, so an
automation can match on the event name alone or narrow it to one node, stack or network. The payload carries the
facts a person needs to act (epochs, amounts, the reason); docs/orchestration.md ("Alerts") lists them.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from blocks import AtomaNetwork

from .labels import network_label

#: every event name, with what an operator should do about it (the automations' notification text)
EVENTS: dict[str, str] = {
    "atoma.ticket.claimable": "A settlement ticket's dispute window has passed: the node can claim its fee.",
    "atoma.attestation.requested": "The contract asked one of our nodes to attest a stack: replay and attest it "
                                   "before its last accepted epoch.",
    "atoma.attestation.window-closing": "An attestation our node owes closes soon (or has closed) and is not made.",
    "atoma.dispute.opened": "A dispute was opened on a stack one of our nodes served or attested (terminal: the "
                            "stack is never claimable).",
    "atoma.claim.refused": "The chain refused a claim of one of our nodes.",
    "atoma.treasury.short": "The fee treasury holds less than a claim pays out: the claim waits until it is "
                            "funded (see the protocol's Sampling Consensus payout).",
    "atoma.balance.low": "An address in use holds less SUI (gas) or USDC than its threshold.",
    "atoma.settlement.in-doubt": "A settlement run found chain writes a crash left in doubt and resolved them by "
                                 "digest: check that they landed as intended.",
}


def emit(
    event: str,
    network: AtomaNetwork,
    *,
    kind: str,
    id: Any,
    name: str,
    payload: dict[str, Any],
    node: str | None = None,
) -> None:
    """Emit ``event`` about the resource ``atoma.<kind>.<id>`` (shown as ``name``), with ``node`` (an alias or
    address of the wallet) as a related resource. Unknown event names are a programming error."""
    if event not in EVENTS:
        raise ValueError(f"unknown atoma-ops event {event!r}")
    related = []
    if node is not None:
        related.append({"prefect.resource.id": f"atoma.node.{node}", "prefect.resource.role": "node",
                        "prefect.resource.name": node})
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"atoma.{kind}.{id}", "prefect.resource.name": name,
                  "atoma.network": network_label(network)},
        related=related,
        payload={**payload, "what_to_do": EVENTS[event]},
    )
