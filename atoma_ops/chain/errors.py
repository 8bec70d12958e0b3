"""Errors of the Chain port. A failed call raises one of these and changes nothing on chain."""

from __future__ import annotations

from ..core.errors import ErrorClass
from ..protocol.aborts import DB_MODULE, code_of, name_of


class ChainError(Exception):
    """Base class. ``kind`` names the error in JSON output."""

    kind = "ChainError"
    #: refused or failed for good: retrying the same call cannot help (an in-doubt write says otherwise)
    error_class = ErrorClass.TERMINAL
    #: digest of the failed transaction, when it was executed and recorded (None for errors before submission)
    digest: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": str(self)}


class MoveAbort(ChainError):
    """The transaction aborted in Move: an ``atoma::db`` error constant or a framework abort."""

    kind = "MoveAbort"

    def __init__(self, module: str, code: int, name: str | None = None, function: str | None = None):
        self.module = module
        self.code = code
        self.name = name or name_of(module, code) or "UNKNOWN"
        self.function = function
        where = f" in {module}::{function}" if function and module == DB_MODULE else f" in {module}"
        super().__init__(f"MoveAbort {self.name} ({code}){where}")

    @classmethod
    def db(cls, name: str) -> "MoveAbort":
        return cls(DB_MODULE, code_of(name), name)

    def to_json(self) -> dict:
        return {"kind": self.kind, "module": self.module, "code": self.code, "name": self.name}


class MoveArithmeticError(ChainError):
    """A u64 overflow (or division by zero) during execution: Sui's ``ArithmeticError``, which has no code."""

    kind = "ArithmeticError"


class ExecutionFailure(ChainError):
    """Execution failed outside Move's abort codes: a resource limit Sui enforces with gas or object size."""

    kind = "ExecutionError"


class TransactionRejected(ChainError):
    """Refused before execution: bad signature, wrong sender, an object the sender does not own, a type mismatch,
    a transaction for another chain. Nothing is recorded."""

    kind = "TransactionRejected"


class InvalidArgument(ChainError):
    """A call argument that cannot be encoded (negative or overflowing integer, 31-byte proof is fine: the
    contract checks lengths; a non-ASCII model name, a missing badge …). Raised before anything is signed."""

    kind = "InvalidArgument"


class NotFound(ChainError):
    """A read for an object, digest or small id that does not exist."""

    kind = "NotFound"


def abort_from_json(data: dict) -> ChainError:
    """Rebuild the error recorded in a failed transaction's effects."""
    kind = data.get("kind")
    if kind == "MoveAbort":
        return MoveAbort(data["module"], int(data["code"]), data.get("name"), data.get("function"))
    if kind == "ArithmeticError":
        return MoveArithmeticError(data.get("message", "ArithmeticError"))
    if kind == "ExecutionError":
        return ExecutionFailure(data.get("message", "execution failed"))
    return ChainError(data.get("message", "transaction failed"))
