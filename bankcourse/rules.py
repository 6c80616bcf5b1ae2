"""The four fraud rules, each written once, and the three ways the course evaluates them.

A rule's condition is a small expression built from :func:`field`, :func:`setting` and
plain values with ``>``, ``>=``, ``<``, ``<=``, ``==``, ``&``, ``|``, ``~`` and
:meth:`Expr.isin`. The expression is data, so one definition gives:

* :func:`evaluate_frame`: a whole pandas DataFrame at once (file mode);
* :func:`evaluate_record`: one dict, as a Kafka consumer sees it (Kafka mode);
* :func:`spark_flags`: PySpark Column expressions, no Python UDFs (Spark mode).

All three follow the same rule for missing data: a comparison with a missing value
(``None``, ``NaN``, an absent field, text where a number belongs) is false, so a rule
never fires on what it cannot see. Spark needs care here because it orders NaN above
every number; the Spark translation turns NaN into null first.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bankcourse.settings import Thresholds

if TYPE_CHECKING:
    from pyspark.sql import Column


class Severity(IntEnum):
    """How urgent an alert is; an alert takes the highest severity of its rules."""

    HIGH = 2
    CRITICAL = 3


# --- the expression language -----------------------------------------------------------


class Expr:
    """A node of a rule condition. Subclasses implement the three evaluations."""

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> Any:
        raise NotImplementedError

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> Any:
        raise NotImplementedError

    def spark(self, t: Thresholds) -> Column:
        raise NotImplementedError

    def settings(self) -> set[str]:
        """Names of the thresholds this expression reads."""
        return set()

    # Comparisons build expressions instead of answering; Expr is compared by identity.
    def __gt__(self, other: Any) -> Expr:
        return Compare(">", self, _wrap(other))

    def __ge__(self, other: Any) -> Expr:
        return Compare(">=", self, _wrap(other))

    def __lt__(self, other: Any) -> Expr:
        return Compare("<", self, _wrap(other))

    def __le__(self, other: Any) -> Expr:
        return Compare("<=", self, _wrap(other))

    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        if isinstance(other, str):
            return IsIn(self, (other,))
        return Compare("==", self, _wrap(other))

    __hash__ = object.__hash__

    def __and__(self, other: Expr) -> Expr:
        return Logic("&", (self, other))

    def __or__(self, other: Expr) -> Expr:
        return Logic("|", (self, other))

    def __invert__(self) -> Expr:
        return Not(self)

    def isin(self, values: Sequence[Any]) -> Expr:
        return IsIn(self, tuple(values))


def _wrap(value: Any) -> Expr:
    return value if isinstance(value, Expr) else Lit(value)


@dataclass(frozen=True, eq=False)
class Field(Expr):
    """A column of the transaction."""

    name: str

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> Any:
        return frame[self.name] if self.name in frame.columns else None

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> Any:
        return rec.get(self.name)

    def spark(self, t: Thresholds) -> Column:
        from pyspark.sql import functions as F

        return F.col(self.name)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Setting(Expr):
    """A threshold, looked up by name in :class:`~bankcourse.settings.Thresholds`."""

    name: str

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> Any:
        return getattr(t, self.name)

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> Any:
        return getattr(t, self.name)

    def spark(self, t: Thresholds) -> Column:
        from pyspark.sql import functions as F

        return F.lit(float(getattr(t, self.name)))

    def settings(self) -> set[str]:
        return {self.name}

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Lit(Expr):
    """A constant."""

    value: Any

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> Any:
        return self.value

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> Any:
        return self.value

    def spark(self, t: Thresholds) -> Column:
        from pyspark.sql import functions as F

        value = float(self.value) if isinstance(self.value, int) else self.value
        return F.lit(value)

    def __repr__(self) -> str:
        return repr(self.value)


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
}


def _as_float(value: Any) -> float | None:
    """A record value as a number, or None when it is missing or not numeric."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        number = float(value)
        return None if math.isnan(number) else number
    return None


def _numeric_array(value: Any, length: int) -> np.ndarray | float:
    """A pandas operand as floats: missing and non-numeric values become NaN."""
    if value is None:
        return np.full(length, np.nan)
    if isinstance(value, pd.Series):
        if pd.api.types.is_bool_dtype(value.dtype):
            return np.full(length, np.nan)
        if not pd.api.types.is_numeric_dtype(value.dtype):
            value = pd.to_numeric(value, errors="coerce")
        return value.to_numpy(dtype="float64", na_value=np.nan)
    number = _as_float(value)
    return np.nan if number is None else number


@dataclass(frozen=True, eq=False)
class Compare(Expr):
    """A numeric comparison; false whenever either side is missing."""

    op: str
    left: Expr
    right: Expr

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> np.ndarray:
        n = len(frame)
        left = _numeric_array(self.left.pandas(frame, t), n)
        right = _numeric_array(self.right.pandas(frame, t), n)
        result = _OPS[self.op](left, right)  # NaN compares false, as wanted
        return np.broadcast_to(np.asarray(result, dtype=bool), (n,))

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> bool:
        left = _as_float(self.left.record(rec, t))
        right = _as_float(self.right.record(rec, t))
        return left is not None and right is not None and _OPS[self.op](left, right)

    def spark(self, t: Thresholds) -> Column:
        from pyspark.sql import functions as F

        def number(expr: Expr) -> Column:
            # Text that is not a number becomes null; NaN becomes null, since Spark
            # would otherwise order NaN above every number and fire the rule.
            col = expr.spark(t).try_cast("double")
            return F.nanvl(col, F.lit(None).cast("double"))

        compared = _OPS[self.op](number(self.left), number(self.right))
        return F.coalesce(compared, F.lit(False))

    def settings(self) -> set[str]:
        return self.left.settings() | self.right.settings()

    def __repr__(self) -> str:
        return f"{self.left!r} {self.op} {self.right!r}"


@dataclass(frozen=True, eq=False)
class IsIn(Expr):
    """Membership of a text value in a fixed set; false when missing."""

    operand: Expr
    values: tuple[Any, ...]

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> np.ndarray:
        value = self.operand.pandas(frame, t)
        if value is None:
            return np.zeros(len(frame), dtype=bool)
        if isinstance(frame, _Columns) and isinstance(self.operand, Field):
            return frame.isin(self.operand.name, self.values)
        return value.isin(self.values).to_numpy(dtype=bool)

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> bool:
        value = self.operand.record(rec, t)
        return isinstance(value, str) and value in self.values

    def spark(self, t: Thresholds) -> Column:
        from pyspark.sql import functions as F

        col = self.operand.spark(t).cast("string")
        return F.coalesce(col.isin(list(self.values)), F.lit(False))

    def settings(self) -> set[str]:
        return self.operand.settings()

    def __repr__(self) -> str:
        return f"{self.operand!r} in {list(self.values)}"


@dataclass(frozen=True, eq=False)
class Logic(Expr):
    """``&`` or ``|`` of two conditions."""

    op: str
    parts: tuple[Expr, Expr]

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> np.ndarray:
        a, b = (np.asarray(p.pandas(frame, t), dtype=bool) for p in self.parts)
        return a & b if self.op == "&" else a | b

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> bool:
        a, b = self.parts
        if self.op == "&":
            return bool(a.record(rec, t)) and bool(b.record(rec, t))
        return bool(a.record(rec, t)) or bool(b.record(rec, t))

    def spark(self, t: Thresholds) -> Column:
        a, b = (p.spark(t) for p in self.parts)
        return (a & b) if self.op == "&" else (a | b)

    def settings(self) -> set[str]:
        return self.parts[0].settings() | self.parts[1].settings()

    def __repr__(self) -> str:
        return f"({self.parts[0]!r}) {'and' if self.op == '&' else 'or'} ({self.parts[1]!r})"


@dataclass(frozen=True, eq=False)
class Not(Expr):
    """Negation of a condition (missing data made the inner condition false)."""

    inner: Expr

    def pandas(self, frame: pd.DataFrame, t: Thresholds) -> np.ndarray:
        return ~np.asarray(self.inner.pandas(frame, t), dtype=bool)

    def record(self, rec: Mapping[str, Any], t: Thresholds) -> bool:
        return not self.inner.record(rec, t)

    def spark(self, t: Thresholds) -> Column:
        return ~self.inner.spark(t)

    def settings(self) -> set[str]:
        return self.inner.settings()

    def __repr__(self) -> str:
        return f"not ({self.inner!r})"


def field(name: str) -> Field:
    """Refer to a transaction column in a rule condition."""
    return Field(name)


def setting(name: str) -> Setting:
    """Refer to a threshold (a field of :class:`Thresholds`) in a rule condition."""
    if name not in Thresholds.__dataclass_fields__:
        known = ", ".join(Thresholds.__dataclass_fields__)
        raise ValueError(f"unknown threshold {name!r}; known: {known}")
    return Setting(name)


# --- the rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A named fraud rule: its severity, what it means, and its condition."""

    name: str
    severity: Severity
    description: str
    condition: Expr

    @property
    def settings(self) -> tuple[str, ...]:
        """The thresholds this rule reads, by name."""
        return tuple(sorted(self.condition.settings()))


amount, kind = field("amount"), field("type")

RULES: tuple[Rule, ...] = (
    Rule(
        "HIGH_AMOUNT", Severity.HIGH,
        "Any transaction whose amount is above high_amount.",
        amount > setting("high_amount"),
    ),
    Rule(
        "BALANCE_DRAIN", Severity.CRITICAL,
        "A TRANSFER or CASH_OUT that leaves the origin balance (newbalanceOrig) at or "
        "below drain_balance, that is, empties the account.",
        kind.isin(("TRANSFER", "CASH_OUT")) & (field("newbalanceOrig") <= setting("drain_balance")),
    ),
    Rule(
        "TRANSFER_SPIKE", Severity.HIGH,
        "A TRANSFER whose amount is above transfer_spike.",
        (kind == "TRANSFER") & (amount > setting("transfer_spike")),
    ),
    Rule(
        "DATASET_FRAUD", Severity.CRITICAL,
        "The dataset labels the transaction as fraud (isFraud is 1).",
        field("isFraud") == 1,
    ),
)
"""The course's four rules, in the order alerts list them."""

del amount, kind

RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}

ALERT_FIELDS: tuple[str, ...] = (
    "txn_id", "rules", "severity", "amount", "type", "account", "step", "event_time",
)
"""The fields of an alert, in the order every stage writes them."""


def _thresholds(thresholds: Thresholds | None) -> Thresholds:
    return thresholds if thresholds is not None else Thresholds()


class _Columns:
    """A DataFrame seen by the rules during one :func:`evaluate_frame` call.

    It remembers work shared between rules: a text column tested by several ``isin``
    conditions (``type`` by BALANCE_DRAIN and TRANSFER_SPIKE) is encoded once as codes
    into its few distinct values, and each test then only looks at those values.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.columns = frame.columns
        self._codes: dict[str, tuple[np.ndarray, list[Any]]] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, name: str) -> pd.Series:
        return self.frame[name]

    def isin(self, name: str, values: tuple[Any, ...]) -> np.ndarray:
        """Rows whose ``name`` is a text among ``values`` (missing values are not)."""
        if name not in self._codes:
            self._codes[name] = _encode(self.frame[name])
        codes, distinct = self._codes[name]
        # One more slot, False, for the code -1 that marks a missing value.
        member = np.array([isinstance(v, str) and v in values for v in distinct] + [False])
        return member[codes]


def _encode(series: pd.Series) -> tuple[np.ndarray, list[Any]]:
    """``series`` as integer codes into its distinct values; -1 where it is missing."""
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(pa.array(series))
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        return codes.astype(np.intp, copy=False), encoded.dictionary.to_pylist()
    codes, distinct = pd.factorize(series, use_na_sentinel=True)
    return codes, list(distinct)


def evaluate_frame(frame: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """Evaluate every rule on every row at once; one boolean column per rule, same index."""
    t = _thresholds(thresholds)
    columns = _Columns(frame)
    return pd.DataFrame(
        {r.name: r.condition.pandas(columns, t) for r in RULES}, index=frame.index
    )


def evaluate_record(record: Mapping[str, Any], thresholds: Thresholds | None = None) -> list[str]:
    """The names of the rules that fire on one record, in :data:`RULES` order."""
    t = _thresholds(thresholds)
    return [r.name for r in RULES if r.condition.record(record, t)]


def severity_of(fired: Sequence[str]) -> str | None:
    """The alert severity for a list of fired rule names (None when none fired)."""
    if not fired:
        return None
    return max(BY_NAME[name].severity for name in fired).name


def frame_severity(flags: pd.DataFrame) -> pd.Series:
    """Per row, the highest severity among the fired rules, or None."""
    level = np.zeros(len(flags), dtype=np.int8)
    for r in RULES:
        level = np.where(flags[r.name].to_numpy(), np.maximum(level, int(r.severity)), level)
    names = np.array([None, None] + [s.name for s in Severity], dtype=object)
    return pd.Series(names[level], index=flags.index, name="severity")


def fired_lists(flags: pd.DataFrame) -> pd.Series:
    """Per row, the list of fired rule names (lists are shared between equal rows)."""
    mask = np.zeros(len(flags), dtype=np.int64)
    for bit, r in enumerate(RULES):
        mask |= flags[r.name].to_numpy().astype(np.int64) << bit
    combos = np.empty(1 << len(RULES), dtype=object)
    for m in range(len(combos)):
        combos[m] = [r.name for bit, r in enumerate(RULES) if m >> bit & 1]
    return pd.Series(combos[mask], index=flags.index, name="rules")


def alerts_frame(frame: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The alert rows (those where any rule fired), with :data:`ALERT_FIELDS` columns."""
    hit = flags.to_numpy().any(axis=1)
    rows, hit_flags = frame.loc[hit], flags.loc[hit]
    return pd.DataFrame({
        "txn_id": rows["txn_id"],
        "rules": fired_lists(hit_flags),
        "severity": frame_severity(hit_flags),
        "amount": rows["amount"],
        "type": rows["type"],
        "account": rows["nameOrig"],
        "step": rows["step"],
        "event_time": rows["event_time"],
    })


def alert_record(record: Mapping[str, Any], fired: Sequence[str]) -> dict[str, Any]:
    """The alert for one record whose fired rules are ``fired``."""
    return {
        "txn_id": record.get("txn_id"),
        "rules": list(fired),
        "severity": severity_of(fired),
        "amount": record.get("amount"),
        "type": record.get("type"),
        "account": record.get("nameOrig"),
        "step": record.get("step"),
        "event_time": record.get("event_time"),
    }


def spark_flags(thresholds: Thresholds | None = None) -> dict[str, Column]:
    """One boolean Column expression per rule, built from the same definitions."""
    t = _thresholds(thresholds)
    return {r.name: r.condition.spark(t) for r in RULES}


def spark_rules_fired(thresholds: Thresholds | None = None) -> Column:
    """An array Column of the fired rule names, in :data:`RULES` order."""
    from pyspark.sql import functions as F

    flags = spark_flags(thresholds)
    return F.filter(
        F.array(*[F.when(flags[name], F.lit(name)) for name in RULE_NAMES]),
        lambda x: x.isNotNull(),
    )


def spark_severity(rules_fired: Column) -> Column:
    """The alert severity Column for an array Column of fired rule names."""
    from pyspark.sql import functions as F

    result = F.lit(None).cast("string")
    for level in sorted(Severity):
        names = [r.name for r in RULES if r.severity == level]
        # arrays_overlap, not F.exists with a lambda: PySpark counts a lambda's
        # parameters, so a default argument (names=names) made it a 2-argument lambda.
        has = F.arrays_overlap(rules_fired, F.array(*[F.lit(n) for n in names]))
        result = F.when(has, F.lit(level.name)).otherwise(result)
    return result
