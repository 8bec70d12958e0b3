"""Fast JSON for stored rows (orjson), as text so SQLite columns stay readable with any client."""

from __future__ import annotations

from typing import Any

import orjson

loads = orjson.loads


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
