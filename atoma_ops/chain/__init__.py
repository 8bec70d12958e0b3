"""The Chain port: one async interface to the Atoma contract, with a localnet and a Sui adapter."""

from .errors import (
    ChainError,
    ExecutionFailure,
    InvalidArgument,
    MoveAbort,
    MoveArithmeticError,
    NotFound,
    TransactionRejected,
)
from .port import Chain
from .types import (
    Badge,
    Coin,
    DbConfig,
    EventId,
    EventPage,
    ChainEvent,
    Node,
    ObjectChange,
    PreparedTransaction,
    Stack,
    Subscription,
    Task,
    Ticket,
    TxResult,
)

__all__ = [
    "Badge",
    "Chain",
    "ChainError",
    "ChainEvent",
    "ExecutionFailure",
    "Coin",
    "DbConfig",
    "EventId",
    "EventPage",
    "InvalidArgument",
    "MoveAbort",
    "MoveArithmeticError",
    "Node",
    "NotFound",
    "ObjectChange",
    "PreparedTransaction",
    "Stack",
    "Subscription",
    "Task",
    "Ticket",
    "TransactionRejected",
    "TxResult",
]
