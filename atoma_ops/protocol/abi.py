"""The entry functions of ``atoma::db`` and their parameters after ``&mut AtomaDb`` (atoma-protocol.md §11).

Both chain adapters encode calls from this one table; the CLI derives its flags from the parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

# Object parameter types.
MANAGER_BADGE = "&AtomaManagerBadge"
NODE_BADGE = "&NodeBadge"
NODE_BADGE_MUT = "&mut NodeBadge"
NODE_BADGE_VAL = "NodeBadge"
TASK_BADGE = "&TaskBadge"
TASK_BADGE_VAL = "TaskBadge"
USDC_COIN_MUT = "&mut Coin<USDC>"
RANDOM = "&Random"
OBJECT_TYPES = {MANAGER_BADGE, NODE_BADGE, NODE_BADGE_MUT, NODE_BADGE_VAL, TASK_BADGE, TASK_BADGE_VAL, USDC_COIN_MUT, RANDOM}

# Pure parameter types.
U8, U16, U64, BOOL = "u8", "u16", "u64", "bool"
OPTION_U8, OPTION_U16, OPTION_STRING = "Option<u8>", "Option<u16>", "Option<String>"
VECTOR_U8, VECTOR_U64 = "vector<u8>", "vector<u64>"

RANDOM_OBJECT_ID = "0x" + "0" * 63 + "8"


@dataclass(frozen=True)
class Param:
    name: str
    type: str

    @property
    def is_object(self) -> bool:
        return self.type in OBJECT_TYPES


def _p(*pairs: tuple[str, str]) -> tuple[Param, ...]:
    return tuple(Param(n, t) for n, t in pairs)


_ADMIN_SETTERS_U64 = (
    "set_cross_validation_probability_permille",
    "set_cross_validation_extra_nodes_count",
    "set_sampling_consensus_charge_permille",
    "set_cross_validation_extra_nodes_charge_permille",
    "set_permille_to_slash_node_on_timeout",
    "set_permille_for_oracle_on_dispute",
    "set_permille_for_honest_nodes_on_dispute",
    "set_required_registration_toma_collateral",
)
_ADMIN_TOGGLES = ("disable_registration", "enable_registration")

ENTRY_FUNCTIONS: dict[str, tuple[Param, ...]] = {
    "register_node_entry": (),
    "create_task_entry": _p(
        ("badge", MANAGER_BADGE),
        ("role", U16),
        ("model_name", OPTION_STRING),
        ("security_level", OPTION_U16),
        ("minimum_reputation_score", OPTION_U8),
        ("is_public", BOOL),
    ),
    "deprecate_task": _p(("task_badge", TASK_BADGE)),
    "remove_deprecated_task": _p(("task_badge", TASK_BADGE_VAL)),
    "remove_deprecated_task_by_admin": _p(("badge", MANAGER_BADGE), ("task_small_id", U64)),
    "whitelist_nodes_for_task": _p(("badge", MANAGER_BADGE), ("task_small_id", U64), ("nodes", VECTOR_U64)),
    "subscribe_node_to_task": _p(
        ("node_badge", NODE_BADGE_MUT), ("task_small_id", U64), ("price_per_one_million_compute_units", U64)
    ),
    "update_node_subscription": _p(
        ("node_badge", NODE_BADGE_MUT), ("task_small_id", U64), ("price_per_one_million_compute_units", U64)
    ),
    "unsubscribe_node_from_task": _p(("node_badge", NODE_BADGE_MUT), ("task_small_id", U64)),
    "acquire_new_stack_entry": _p(
        ("wallet", USDC_COIN_MUT),
        ("task_small_id", U64),
        ("num_compute_units", U64),
        ("price", U64),
        ("random", RANDOM),
    ),
    "try_settle_stack": _p(
        ("node_badge", NODE_BADGE),
        ("stack_small_id", U64),
        ("num_claimed_compute_units", U64),
        ("committed_stack_proof", VECTOR_U8),
        ("stack_merkle_leaf", VECTOR_U8),
        ("random", RANDOM),
    ),
    "submit_stack_settlement_attestation": _p(
        ("node_badge", NODE_BADGE),
        ("stack_small_id", U64),
        ("committed_stack_proof", VECTOR_U8),
        ("stack_merkle_leaf", VECTOR_U8),
    ),
    "start_attestation_dispute": _p(
        ("node_badge", NODE_BADGE), ("stack_small_id", U64), ("attestation_commitment", VECTOR_U8)
    ),
    "claim_funds": _p(("node_badge", NODE_BADGE), ("settled_ticket_ids", VECTOR_U64)),
    "claim_funds_for_stacks": _p(
        ("node_badge", NODE_BADGE),
        ("stack_small_ids", VECTOR_U64),
        ("num_compute_units_per_stack_to_claim", VECTOR_U64),
    ),
    "withdraw_fees": _p(("node_badge", NODE_BADGE)),
    "permanently_disable_node": _p(("node_badge", NODE_BADGE)),
    "destroy_disabled_node": _p(("node_badge", NODE_BADGE_VAL)),
    **{name: _p(("badge", MANAGER_BADGE), ("value", U64)) for name in _ADMIN_SETTERS_U64},
    **{name: _p(("badge", MANAGER_BADGE)) for name in _ADMIN_TOGGLES},
}

ADMIN_SETTERS = _ADMIN_SETTERS_U64 + _ADMIN_TOGGLES
BADGE_KINDS = ("AtomaManagerBadge", "NodeBadge", "TaskBadge", "StackBadge")


def badge_kind(param_type: str) -> str | None:
    """``"&mut NodeBadge"`` -> ``"NodeBadge"``; None for non-badge types."""
    bare = param_type.replace("&mut ", "").replace("&", "")
    return bare if bare in BADGE_KINDS else None
