"""The one definition of a transaction: its columns, their types, and what makes a row valid.

Every stage reads its columns from :data:`COLUMNS`: the generator writes them, file mode
checks them, the Kafka detector validates each message against them, and Spark parses
JSON with :func:`spark_ddl`. A row that breaks the schema is not dropped: the cleaning
functions return it apart, with a reason, so it can be quarantined or dead-lettered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

TXN_TYPES: tuple[str, ...] = ("CASH_IN", "CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER")
"""The five transaction types of PaySim."""

DEBIT_TYPES: tuple[str, ...] = ("CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER")
"""Types that take money out of the origin account."""

REASON_COLUMN = "reason"
"""The column (or JSON field) that says why a row was quarantined."""


class SchemaError(ValueError):
    """A dataset does not have the columns the course needs."""


@dataclass(frozen=True)
class Column:
    """One column of a transaction.

    ``kind`` is one of ``string``, ``int``, ``float``, ``flag`` (0 or 1) and
    ``timestamp``; ``nullable`` columns may be empty (a missing balance) without
    making the row malformed.
    """

    name: str
    kind: str
    description: str
    nullable: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("txn_id", "string", "Unique transaction id, T followed by ten digits."),
    Column("step", "int", "Hour of the simulated month, 1 to 744."),
    Column("type", "string", "CASH_IN, CASH_OUT, DEBIT, PAYMENT or TRANSFER."),
    Column("amount", "float", "Amount moved, in local currency units; never negative."),
    Column("nameOrig", "string", "Origin account (C followed by digits)."),
    Column("oldbalanceOrg", "float", "Origin balance before the transaction.", nullable=True),
    Column("newbalanceOrig", "float", "Origin balance after the transaction.", nullable=True),
    Column("nameDest", "string", "Destination account (C for customers, M for merchants)."),
    Column("oldbalanceDest", "float", "Destination balance before.", nullable=True),
    Column("newbalanceDest", "float", "Destination balance after.", nullable=True),
    Column("isFraud", "flag", "1 when the simulator made this transaction as fraud."),
    Column("isFlaggedFraud", "flag", "1 when PaySim's own rule flags it: TRANSFER over 200,000."),
    Column("event_time", "timestamp", "When it happened (UTC), derived from step."),
)
"""Every column, in file order."""

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

_PANDAS_DTYPES = {
    "string": "str",
    "int": "int32",
    "float": "float64",
    "flag": "int8",
    "timestamp": "datetime64[us, UTC]",
}
_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "float": pa.float64(),
    "flag": pa.int8(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_SPARK_TYPES = {
    "string": "STRING",
    "int": "INT",
    "float": "DOUBLE",
    "flag": "INT",
    "timestamp": "TIMESTAMP",
}


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a transaction table (used for parquet and csv reading)."""
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.kind], nullable=True) for c in COLUMNS])


def pandas_dtypes() -> dict[str, str]:
    """Column name to pandas dtype, for building or casting a DataFrame."""
    return {c.name: _PANDAS_DTYPES[c.kind] for c in COLUMNS}


def spark_ddl() -> str:
    """The schema as a Spark DDL string, for ``from_json`` (explicit, never inferred)."""
    return ", ".join(f"`{c.name}` {_SPARK_TYPES[c.kind]}" for c in COLUMNS)


def missing_columns(names: Iterable[str]) -> list[str]:
    """The schema's columns that are not among ``names``, in schema order."""
    present = set(names)
    return [n for n in NAMES if n not in present]


def require_columns(names: Iterable[str], source: str) -> None:
    """Raise :class:`SchemaError` naming every column that ``source`` lacks."""
    missing = missing_columns(names)
    if missing:
        raise SchemaError(
            f"{source} is missing column(s): {', '.join(missing)}. "
            f"The course expects: {', '.join(NAMES)}. "
            "Regenerate the data with `python -m bankcourse generate` "
            "or rename the columns to match."
        )


# --- cleaning a whole DataFrame -------------------------------------------------------


def _is_blank(series: pd.Series) -> np.ndarray:
    """True where a raw value is missing or an empty string."""
    blank = series.isna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        try:
            text = pa.array(series, from_pandas=True, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # an object column holding non-text
            return blank | (series.astype("str").str.strip() == "").to_numpy()
        empty = pc.or_(pc.equal(pc.utf8_length(text), 0), pc.utf8_is_space(text))
        blank = blank | empty.fill_null(False).to_numpy(zero_copy_only=False)
    return blank


def clean_frame(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``raw`` into typed valid rows and quarantined rows.

    Returns ``(valid, quarantined)``. ``valid`` has the schema's dtypes; ``quarantined``
    keeps the original values of each bad row as text plus a ``reason`` naming the
    first problem found ("amount: not a number", "type: unknown value", ...).
    """
    require_columns(raw.columns, "the dataset")
    n = len(raw)
    flagged = np.zeros(n, dtype=bool)
    code = np.zeros(n, dtype=np.int16)
    messages = [""]

    def flag(bad: np.ndarray, message: str) -> None:
        fresh = bad & ~flagged
        if fresh.any():
            messages.append(message)
            code[fresh] = len(messages) - 1
            flagged[fresh] = True

    typed: dict[str, Any] = {}
    for col in COLUMNS:
        series = raw[col.name]
        if col.kind in ("int", "float", "flag"):
            if pd.api.types.is_numeric_dtype(series.dtype) and series.dtype != bool:
                values = series.to_numpy(dtype="float64", na_value=np.nan)
                unparsable = np.zeros(n, dtype=bool)
            else:
                values = pd.to_numeric(series, errors="coerce").to_numpy(
                    dtype="float64", na_value=np.nan)
                unparsable = np.isnan(values) & ~_is_blank(series)
            flag(unparsable, f"{col.name}: not a number")
            missing = np.isnan(values) & ~unparsable
            if not col.nullable:
                flag(missing, f"{col.name}: missing")
            flag(np.isinf(values), f"{col.name}: not finite")
            if col.kind == "float":
                flag(values < 0, f"{col.name}: negative")
            elif col.kind == "int":
                flag((values < 1) | (values != np.floor(values)), f"{col.name}: not a whole "
                     "number >= 1")
            else:
                flag(~np.isin(values, (0.0, 1.0)) & ~np.isnan(values),
                     f"{col.name}: must be 0 or 1")
            typed[col.name] = values
        elif col.kind == "timestamp":
            if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
                    series.dtype):
                parsed = pd.to_datetime(series, utc=True)
            else:
                parsed = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
            flag(parsed.isna().to_numpy() & ~_is_blank(series), f"{col.name}: not a timestamp")
            flag(parsed.isna().to_numpy(), f"{col.name}: missing")
            typed[col.name] = parsed
        else:
            flag(_is_blank(series), f"{col.name}: missing")
            typed[col.name] = series
    flag(~raw["type"].isin(TXN_TYPES).to_numpy() & ~flagged, "type: unknown value")

    bad = flagged
    reason = np.array(messages, dtype=object)[code]
    valid = pd.DataFrame(
        {name: (v.array if isinstance(v, pd.Series) else v) for name, v in typed.items()},
        index=raw.index,
    )
    quarantined = raw.loc[bad].astype("str")
    quarantined[REASON_COLUMN] = reason[bad]
    if bad.any():
        valid = valid.loc[~bad]
    return _with_schema_dtypes(valid), quarantined


def _with_schema_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast to the schema's dtypes; text columns already held as text are left as they are."""
    wanted = {
        name: dtype for name, dtype in pandas_dtypes().items()
        if dtype != "str" or frame[name].dtype == object
    }
    return frame.astype(wanted)


# --- cleaning one record --------------------------------------------------------------


def _float_or_nan(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool):
        raise ValueError("a boolean")
    return float(value)


def clean_record(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one transaction as a Kafka consumer sees it (a decoded JSON object).

    Returns ``(record, None)`` with numbers as float/int and ``event_time`` kept as
    its ISO text, or ``(None, reason)`` with the same reasons as :func:`clean_frame`.
    """
    if not isinstance(raw, Mapping):
        return None, f"not a JSON object (got {type(raw).__name__})"
    missing = [n for n in NAMES if n not in raw]
    if missing:
        return None, f"missing field(s): {', '.join(missing)}"
    record: dict[str, Any] = {}
    for col in COLUMNS:
        value = raw[col.name]
        name = col.name
        if col.kind in ("int", "float", "flag"):
            try:
                number = _float_or_nan(value)
            except (TypeError, ValueError):
                return None, f"{name}: not a number"
            if math.isnan(number):
                if not col.nullable:
                    return None, f"{name}: missing"
                record[name] = number
                continue
            if math.isinf(number):
                return None, f"{name}: not finite"
            if col.kind == "float":
                if number < 0:
                    return None, f"{name}: negative"
                record[name] = number
            elif col.kind == "int":
                if number < 1 or number != int(number):
                    return None, f"{name}: not a whole number >= 1"
                record[name] = int(number)
            else:
                if number not in (0.0, 1.0):
                    return None, f"{name}: must be 0 or 1"
                record[name] = int(number)
        elif col.kind == "timestamp":
            if value is None or value == "":
                return None, f"{name}: missing"
            if not isinstance(value, str):
                return None, f"{name}: not a timestamp"
            try:
                datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
            except ValueError:
                return None, f"{name}: not a timestamp"
            record[name] = value
        else:
            if value is None or (isinstance(value, str) and not value.strip()):
                return None, f"{name}: missing"
            if not isinstance(value, str):
                return None, f"{name}: not text"
            record[name] = value
    if record["type"] not in TXN_TYPES:
        return None, "type: unknown value"
    return record, None


def format_event_time(value: Any) -> str:
    """ISO 8601 text in UTC with a Z, as the JSON messages carry ``event_time``."""
    if isinstance(value, str):
        return value
    ts = pd.Timestamp(value)
    ts = ts.tz_localize(timezone.utc) if ts.tzinfo is None else ts.tz_convert(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
