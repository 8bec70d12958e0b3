"""Batched writes: rows → a typed pandas DataFrame → one ``INSERT … SELECT`` (never executemany in a loop)."""

from __future__ import annotations

from typing import Iterable, Sequence

import duckdb
import pandas as pd

# DuckDB column type → pandas dtype that keeps integers exact and NULLs as NULLs
_PANDAS_DTYPES = {
    "BIGINT": "Int64",
    "INTEGER": "Int64",
    "UBIGINT": "UInt64",
    "BOOLEAN": "boolean",
    "DOUBLE": "Float64",
}


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns, in order."""
    return [
        (r[0], r[1])
        for r in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]


def frame(columns: Sequence[tuple[str, str]], rows: Iterable[dict]) -> pd.DataFrame:
    rows = list(rows)
    data = {}
    for name, type_ in columns:
        values = [r.get(name) for r in rows]
        dtype = _PANDAS_DTYPES.get(type_)
        data[name] = pd.array(values, dtype=dtype) if dtype else pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, df, columns: Sequence[tuple[str, str]],
                 *, on_conflict: str = "") -> None:
    """``INSERT INTO table SELECT CAST(col AS type), … FROM df`` — one statement for the whole batch.

    The frame is read through DuckDB's replacement scan of the local variable ``_ledger_df`` (registering a view
    costs ~1.5 ms per call, more than a small insert itself).
    """
    if len(df) == 0:
        return
    _ledger_df = df  # noqa: F841 - read by name by DuckDB's replacement scan
    cols = ", ".join(f'"{c}"' for c, _ in columns)
    select = ", ".join(f'CAST("{c}" AS {t})' for c, t in columns)
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {select} FROM _ledger_df {on_conflict}")


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], columns=None) -> None:
    if not rows:
        return
    columns = columns or table_columns(con, table)
    insert_frame(con, table, frame(columns, rows), columns)


def int_list(values: Iterable[int]) -> str:
    """A SQL list literal of integers (each passed through ``int``, so nothing else can reach the SQL)."""
    return ", ".join(str(int(v)) for v in values) or "NULL"


def str_list(values: Iterable[str]) -> str:
    """A SQL list literal of strings, each quoted with ``'`` doubled."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) or "NULL"


def delete_keys(con: duckdb.DuckDBPyConnection, table: str, key_columns: Sequence[str], keys: Iterable[tuple]) -> None:
    """``DELETE FROM table WHERE (k1, k2…) IN keys`` for a batch of integer keys, in one statement."""
    keys = list(keys)
    if not keys:
        return
    if len(key_columns) == 1:
        con.execute(f'DELETE FROM {table} WHERE "{key_columns[0]}" IN ({int_list(k[0] for k in keys)})')
        return
    values = ", ".join("(" + int_list(k) + ")" for k in keys)
    names = ", ".join(f"k{i}" for i in range(len(key_columns)))
    cond = " AND ".join(f't."{c}" = v.k{i}' for i, c in enumerate(key_columns))
    con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM (VALUES {values}) v({names}) WHERE {cond})")
