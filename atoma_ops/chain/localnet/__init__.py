"""The embedded Atoma localnet: ``atoma::db`` as a transactional state machine persisted in SQLite."""

from .engine import Localnet

__all__ = ["Localnet"]
