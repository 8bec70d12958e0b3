"""Plain JSON values of what the package returns, for ``--json`` output, Prefect results and reports: one converter
for dataclasses, objects with ``to_json``, bytes (``0x`` hex), numpy values and arrays, and pandas' missing values
and timestamps (recognised by shape, so neither is imported here)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any

__all__ = ["to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-ready values: dict keys become strings, tuples lists, NaN and pandas' NA/NaT None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "to_json"):
        return to_jsonable(value.to_json())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas.NA, pandas.NaT
        return None
    if isinstance(value, (_dt.datetime, _dt.date)):  # pandas.Timestamp is a datetime
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return value
