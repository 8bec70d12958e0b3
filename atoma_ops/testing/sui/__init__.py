"""A loopback Sui full node (a TEST DOUBLE): Sui's gRPC API served on 127.0.0.1 from a localnet chain file, so the
Sui adapter runs against pysui's real client where no Sui node can run.

Modules, lowest first (none imports one listed after it):

- :mod:`.objects`: constants, virtual gas coins, object digests, canonical types, read masks, Move signatures;
- :mod:`.entries` and :mod:`.tables`: AtomaDb's tables as dynamic field objects;
- :mod:`.txdecode`: transaction bytes back into calls (what a node does before executing);
- :mod:`.reads`: the read RPCs; :mod:`.effects`, :mod:`.events`, :mod:`.execute`: the write side;
- :mod:`.node`: :class:`LoopbackSuiNode` serving both, :class:`BackgroundLoopbackNode` for synchronous code.
"""

from .effects import COMPUTATION_COST, STORAGE_COST
from .node import BackgroundLoopbackNode, LoopbackSuiNode
from .objects import (
    GAS_COIN_BALANCE,
    GAS_COIN_TYPE,
    REFERENCE_GAS_PRICE,
    gas_coin_id,
    gas_coin_ref,
)

__all__ = [
    "COMPUTATION_COST",
    "GAS_COIN_BALANCE",
    "GAS_COIN_TYPE",
    "REFERENCE_GAS_PRICE",
    "STORAGE_COST",
    "BackgroundLoopbackNode",
    "LoopbackSuiNode",
    "gas_coin_id",
    "gas_coin_ref",
]
