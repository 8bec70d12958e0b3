"""Prefect Blocks: the configuration of atoma-ops and factories for the core's clients (no business logic).

``prefect block register -m blocks`` registers all four with a Prefect server.
"""

from .engine import InferenceEngine
from .ledger import Ledger
from .network import AtomaNetwork
from .wallet import SuiWallet

__all__ = ["AtomaNetwork", "InferenceEngine", "Ledger", "SuiWallet"]
