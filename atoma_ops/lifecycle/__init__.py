"""The stack lifecycle's stages as idempotent operations over the Chain port and the intent journal: the one place
that writes each stage to the chain. The flows (through the Prefect tasks in ``tasks/``) and the CLI's
``stack try-settle`` / ``stack attest`` call these; nothing here imports Prefect.

Each stage may be run again after any interruption: a chain write goes through :mod:`atoma_ops.journal`
(preflight, resolve at send time, journal, submit, record), and a stage whose effect is already visible on chain
returns what is there. One module per stage, as ``flows/stages.py`` has one flow per stage:

:mod:`.mint`, :mod:`.task`, :mod:`.nodes`, :mod:`.stack`, :mod:`.serve`, :mod:`.settle`, :mod:`.wait`,
:mod:`.attest`, :mod:`.claim`; :mod:`.common` holds what they share.
"""

from .common import StageError, as_rows, checked_args, node_small_ids, small_id_in, tx_of
from .mint import MintReport, mint_usdc
from .task import DbConfigChange, create_task, set_cross_validation
from .nodes import register_node, subscribe_node
from .stack import BoughtStack, alias_of_node, buy_stack
from .serve import (
    ServeReport, WORKLOAD_ID_PREFIX, buyer_signer, serve_batch, serve_workload, workload_id, workload_request_id,
)
from .settle import SettleCandidate, Settled, settle_candidates, split_confidential, try_settle_stack, try_settle_stacks
from .attest import (
    Attested, attest_stack, attestation_position, attestation_requests, fetch_history, find_history, replay_history,
    submit_attestation,
)
from .wait import wait_for_epoch
from .claim import ClaimFacts, ClaimPlan, Claimed, claim_confidential, claim_tickets, plan_claims, recover_claims

__all__ = [
    "Attested",
    "BoughtStack",
    "ClaimFacts",
    "ClaimPlan",
    "Claimed",
    "DbConfigChange",
    "MintReport",
    "ServeReport",
    "SettleCandidate",
    "Settled",
    "StageError",
    "WORKLOAD_ID_PREFIX",
    "alias_of_node",
    "as_rows",
    "attest_stack",
    "attestation_position",
    "attestation_requests",
    "buy_stack",
    "buyer_signer",
    "checked_args",
    "claim_confidential",
    "claim_tickets",
    "create_task",
    "fetch_history",
    "find_history",
    "mint_usdc",
    "node_small_ids",
    "plan_claims",
    "recover_claims",
    "register_node",
    "replay_history",
    "serve_batch",
    "serve_workload",
    "set_cross_validation",
    "settle_candidates",
    "small_id_in",
    "split_confidential",
    "submit_attestation",
    "subscribe_node",
    "try_settle_stack",
    "try_settle_stacks",
    "tx_of",
    "wait_for_epoch",
    "workload_id",
    "workload_request_id",
]
