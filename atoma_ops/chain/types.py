"""Typed values of the Chain port. Field names follow the contract (atoma-protocol.md §2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EventId:
    """Sui's event id: the transaction digest and the event's position in it."""

    tx_digest: str
    event_seq: int

    def to_json(self) -> dict:
        return {"txDigest": self.tx_digest, "eventSeq": str(self.event_seq)}

    @classmethod
    def from_json(cls, data: dict) -> "EventId":
        return cls(data["txDigest"], int(data["eventSeq"]))


@dataclass(frozen=True)
class ChainEvent:
    """An event in Sui's JSON-RPC shape; ``parsed_json`` uses Sui's encodings (u64 as decimal strings,
    small ids as ``{"inner": "…"}``, ``vector<u8>`` as arrays of numbers)."""

    id: EventId
    type: str
    name: str
    parsed_json: dict
    sender: str
    package_id: str
    timestamp_ms: int
    epoch: int

    def to_json(self) -> dict:
        return {
            "id": self.id.to_json(),
            "packageId": self.package_id,
            "transactionModule": "db",
            "sender": self.sender,
            "type": self.type,
            "parsedJson": self.parsed_json,
            "timestampMs": str(self.timestamp_ms),
        }


@dataclass(frozen=True)
class ObjectChange:
    object_id: str
    type: str
    owner: str  # an address, or "shared" / "immutable" / "wrapped"
    version: int
    change: str  # created | mutated | deleted

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TxResult:
    """Effects of an executed transaction (success or a recorded failure)."""

    digest: str
    status: str  # "success" | "failure"
    sender: str
    epoch: int
    timestamp_ms: int
    events: list[ChainEvent] = field(default_factory=list)
    object_changes: list[ObjectChange] = field(default_factory=list)
    balance_changes: dict[str, int] = field(default_factory=dict)  # address -> USDC base units delta
    error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def created(self, type_suffix: str | None = None) -> list[ObjectChange]:
        return [
            c
            for c in self.object_changes
            if c.change == "created" and (type_suffix is None or c.type.endswith(type_suffix))
        ]

    def event(self, name: str) -> ChainEvent:
        for e in self.events:
            if e.name == name:
                return e
        raise KeyError(f"no {name} in transaction {self.digest}")

    def to_json(self) -> dict:
        return {
            "digest": self.digest,
            "status": self.status,
            "sender": self.sender,
            "epoch": self.epoch,
            "timestampMs": str(self.timestamp_ms),
            "events": [e.to_json() for e in self.events],
            "objectChanges": [c.to_json() for c in self.object_changes],
            "balanceChanges": [{"owner": a, "amount": str(v)} for a, v in self.balance_changes.items()],
            "error": self.error,
        }


@dataclass(frozen=True)
class PreparedTransaction:
    """Transaction bytes ready to sign; ``digest`` is known before submission (for the intent journal)."""

    tx_bytes: bytes
    digest: str
    sender: str
    function: str


@dataclass(frozen=True)
class EventPage:
    events: list[ChainEvent]
    next_cursor: EventId | None
    has_next_page: bool


@dataclass(frozen=True)
class DbConfig:
    """AtomaDb's scalar fields."""

    db_id: str
    package_id: str
    next_node_small_id: int
    next_task_small_id: int
    next_stack_small_id: int
    fee_treasury: int
    communal_treasury: int
    cross_validation_probability_permille: int
    cross_validation_extra_nodes_count: int
    sampling_consensus_charge_permille: int
    cross_validation_extra_nodes_charge_permille: int
    is_registration_disabled: bool
    registration_collateral_in_protocol_token: int
    permille_to_slash_node_on_timeout: int
    permille_for_oracle_on_dispute: int
    permille_for_honest_nodes_on_dispute: int
    key_rotation_counter: int
    nonce: int


@dataclass(frozen=True)
class Node:
    node_small_id: int
    was_disabled_in_epoch: int | None
    collateral: int
    last_fee_epoch: int
    last_fee_epoch_amount: int
    available_fee_amount: int
    reputation_score: int


@dataclass(frozen=True)
class Task:
    task_small_id: int
    task_id: str
    role: int
    model_name: str | None
    is_deprecated: bool
    deprecated_at_epoch: int | None
    security_level: int
    minimum_reputation_score: int
    is_public: bool
    whitelisted_nodes: list[int]
    subscribed_nodes_small_ids: list[int]


@dataclass(frozen=True)
class Subscription:
    task_small_id: int
    node_small_id: int
    price_per_one_million_compute_units: int
    max_num_compute_units: int


@dataclass(frozen=True)
class Stack:
    stack_small_id: int
    owner: str
    price_per_one_million_compute_units: int
    num_compute_units: int
    selected_node_id: int
    task_small_id: int
    is_claimed: bool


@dataclass(frozen=True)
class Ticket:
    stack_small_id: int
    ticket_id: str
    selected_node_id: int
    num_claimed_compute_units: int
    requested_attestation_nodes: list[int]
    dispute_settled_at_epoch: int
    committed_stack_proof: bytes
    stack_merkle_leaves_vector: bytes
    already_attested_nodes: list[int]
    is_in_dispute: bool


@dataclass(frozen=True)
class Coin:
    object_id: str
    balance: int
    version: int


@dataclass(frozen=True)
class Badge:
    object_id: str
    kind: str  # AtomaManagerBadge | NodeBadge | TaskBadge | StackBadge
    small_id: int | None
    version: int
