"""The bytes a buyer signs and a node signs on the node's HTTP surface (atoma-protocol.md §17). Pure: no I/O.

The Atoma node parses the request body into a ``serde_json::Value`` (key order kept: its workspace builds serde_json
with ``preserve_order``), re-serialises it compactly (``to_string()``) and hashes those bytes with blake2b-256. The
buyer's ``X-Signature`` signs that 32-byte hash, and the same hash is the request's payload hash in the stack's
history and commitment. A client therefore signs the *compact re-serialisation* of its body in its own key order,
whatever spacing it sends; a client and the node agree byte for byte because both use :func:`compact_json`, which
writes what serde_json writes:

- no spaces; objects in their own key order (a duplicated key keeps its first place and its last value, as both
  Python's ``json`` and IndexMap do);
- strings: UTF-8 as is, escapes only for ``"``, ``\\``, ``\\b \\f \\n \\r \\t`` and other control characters
  (``\\u00XX``, lower-case hex);
- integers in u64/i64 range as integers, larger ones as floats (serde_json has no big integers);
- floats as Ryū prints them: the shortest round-trip digits, decimal notation for ``1e-5 <= |x| < 1e16`` with a
  ``.0`` on whole numbers, scientific notation outside it without a ``+`` or leading zeros (``1e16``, ``1e-6``).

A response is signed the same way: ``response_hash`` = blake2b-256 of the compact response body without its
``response_hash`` and ``signature`` fields, ``signature`` = the node's Sui signature over that hash.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

from .constants import U64_MAX

STACK_HEADER = "X-Stack-Small-Id"
SIGNATURE_HEADER = "X-Signature"
TX_DIGEST_HEADER = "X-Tx-Digest"
REQUEST_ID_HEADER = "X-Request-Id"
#: ``true`` on an answer recorded earlier under the request's ``X-Request-Id`` (served or refused then, not now;
#: the name and meaning of the IETF idempotency-key draft's and Stripe's header)
REPLAYED_HEADER = "Idempotent-Replayed"
#: fields a signed response body (and the final chunk of a stream) carries
RESPONSE_HASH_KEY = "response_hash"
SIGNATURE_KEY = "signature"

_I64_MIN = -(2**63)


class BodyError(ValueError):
    """A request body the Atoma node's JSON parser would refuse (not UTF-8, not JSON, NaN/Infinity, a number out of
    range, a lone surrogate)."""


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"the number {text} is out of range")
    return value


def parse_body(raw: bytes) -> Any:
    """Parse a request body as strictly as serde_json does (UTF-8 only, no NaN/Infinity, finite numbers).

    Raises:
        BodyError: the body is not such JSON.
    """
    try:
        text = bytes(raw).decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except BodyError:
        raise
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from None


def ryu_float(x: float) -> str:
    """A finite float as serde_json (Ryū) prints it."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign, digits_t, exp = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0")
    k = int(exp) + (len(digits_t) - len(digits))  # value = digits × 10^k
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= |x| < 10^kk
    if 0 <= k and kk <= 16:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * (-kk) + digits
    elif length == 1:
        out = f"{digits}e{kk - 1}"
    else:
        out = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return ("-" if sign else "") + out


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        out.append(str(value) if _I64_MIN <= value <= U64_MAX else ryu_float(float(value)))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BodyError(f"{value!r} is not JSON")
        out.append(ryu_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            if not isinstance(key, str):
                raise BodyError(f"object keys must be strings, got {key!r}")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise BodyError(f"{type(value).__name__} is not JSON")


def compact_json(value: Any) -> bytes:
    """``serde_json::Value::to_string()`` of ``value`` (module doc), as UTF-8 bytes.

    Raises:
        BodyError: the value holds something JSON cannot carry (NaN, a lone surrogate, a non-string key).
    """
    out: list[str] = []
    try:
        _write(value, out)
    except RecursionError:
        raise BodyError("the body is nested too deeply") from None
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError("the body holds a lone UTF-16 surrogate") from None


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def body_hash(body: Any) -> bytes:
    """The 32 bytes a buyer signs for a request body (already parsed): blake2b-256 of its compact form."""
    return blake2b256(compact_json(body))


def response_body_hash(body: dict) -> bytes:
    """The 32 bytes the node signs for a response body (or a stream's final chunk): blake2b-256 of its compact form
    without ``response_hash`` and ``signature``."""
    return blake2b256(compact_json({k: v for k, v in body.items() if k not in (RESPONSE_HASH_KEY, SIGNATURE_KEY)}))
