"""The three engines agree: Spark Column rules, pandas rules and record rules.

Hypothesis draws batches of records full of edge cases (an amount exactly at a
threshold, zero, missing and NaN balances, unknown types, isFraud 0/1/None, negative
and huge values) and thresholds of its own; each batch becomes ONE Spark DataFrame
with an explicit schema, and the fired rules and severity must be the same as
``rules.evaluate_record`` and ``rules.evaluate_frame`` give for every row.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bankcourse import rules, schema
from bankcourse.settings import Thresholds

pytestmark = pytest.mark.spark

SPECIAL_NUMBERS = [0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, -1e300, math.inf, -math.inf,
                   math.nan, None, 150_000.0, 200_000.0, 200_000.01, 199_999.99]
TYPES = [*schema.TXN_TYPES, "transfer", "LOAN", "", None]


def numbers(thresholds: Thresholds) -> st.SearchStrategy[float | None]:
    """Amounts and balances, with each threshold itself and its neighbours."""
    edges = []
    for value in (thresholds.high_amount, thresholds.transfer_spike, thresholds.drain_balance):
        edges += [value, math.nextafter(value, math.inf), math.nextafter(value, -math.inf)]
    return st.one_of(
        st.sampled_from(SPECIAL_NUMBERS + edges),
        st.floats(min_value=-1e7, max_value=1e7, allow_nan=False),
        st.floats(allow_nan=True, allow_infinity=True),
    )


thresholds_strategy = st.one_of(
    st.just(Thresholds()),
    st.builds(Thresholds,
              high_amount=st.floats(min_value=0, max_value=1e7, allow_nan=False),
              transfer_spike=st.floats(min_value=0, max_value=1e7, allow_nan=False),
              drain_balance=st.floats(min_value=0, max_value=1e5, allow_nan=False)),
)


@st.composite
def batches(draw: Any) -> tuple[Thresholds, list[dict[str, Any]]]:
    """Thresholds and 1..50 records drawn against them."""
    thresholds = draw(thresholds_strategy)
    number = numbers(thresholds)
    record = st.fixed_dictionaries({
        "type": st.sampled_from(TYPES),
        "amount": number,
        "newbalanceOrig": number,
        "oldbalanceOrg": number,
        "isFraud": st.sampled_from([0, 1, None]),
    })
    return thresholds, draw(st.lists(record, min_size=1, max_size=50))


def full_record(i: int, partial: dict[str, Any]) -> dict[str, Any]:
    """A record with every schema column (the ones rules do not read are fixed)."""
    return {
        "txn_id": f"T{i:010d}", "step": 1, "nameOrig": "C1", "nameDest": "M2",
        "oldbalanceDest": 0.0, "newbalanceDest": 0.0, "isFlaggedFraud": 0,
        "event_time": pd.Timestamp("2026-01-01T00:00:00Z").to_pydatetime(), **partial,
    }


def spark_results(spark: Any, records: list[dict[str, Any]],
                  thresholds: Thresholds) -> list[tuple[list[str], str | None]]:
    """Fired rules and severity per record, evaluated by Spark Column expressions."""
    from pyspark.sql import functions as F

    rows = [tuple(r[n] for n in schema.NAMES) for r in records]
    frame = spark.createDataFrame(rows, schema=schema.spark_ddl())
    fired = rules.spark_rules_fired(thresholds)
    result = frame.select(F.col("txn_id"), fired.alias("rules")) \
        .withColumn("severity", rules.spark_severity(F.col("rules"))).orderBy("txn_id")
    return [(list(r["rules"]), r["severity"]) for r in result.collect()]


def detector_results(spark: Any, records: list[dict[str, Any]],
                     thresholds: Thresholds) -> list[tuple[list[str], str | None]]:
    """Fired rules and severity per record, as the Spark detector computes them
    (``spark_mode.detect``: rule bits looked up in a table built from ``rules``)."""
    from pyspark.sql import functions as F

    from bankcourse import spark_mode

    rows = [tuple(r[n] for n in schema.NAMES) for r in records]
    frame = spark.createDataFrame(rows, schema=schema.spark_ddl()) \
        .withColumn(schema.REASON_COLUMN, F.lit(None).cast("string"))
    result = spark_mode.detect(frame, thresholds).orderBy("txn_id")
    return [(list(r["rules"]), r["severity"]) for r in result.collect()]


@hypothesis_settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_spark_rules_agree_with_pandas_and_record_rules_on_edge_cases(
        spark: Any, batch: tuple[Thresholds, list[dict[str, Any]]]) -> None:
    thresholds, partials = batch
    records = [full_record(i, p) for i, p in enumerate(partials)]

    by_record = [rules.evaluate_record(r, thresholds) for r in records]
    frame = pd.DataFrame.from_records(records, columns=list(schema.NAMES))
    flags = rules.evaluate_frame(frame, thresholds)
    by_frame = [[n for n in rules.RULE_NAMES if row[n]] for _, row in flags.iterrows()]
    by_spark = spark_results(spark, records, thresholds)

    for i, record in enumerate(records):
        spark_fired, spark_severity = by_spark[i]
        assert spark_fired == by_record[i], (record, thresholds)
        assert by_frame[i] == by_record[i], (record, thresholds)
        assert spark_severity == rules.severity_of(by_record[i]), record


@hypothesis_settings(max_examples=20, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_detector_s_rule_lookup_agrees_with_record_rules_on_edge_cases(
        spark: Any, batch: tuple[Thresholds, list[dict[str, Any]]]) -> None:
    thresholds, partials = batch
    records = [full_record(i, p) for i, p in enumerate(partials)]

    by_record = [rules.evaluate_record(r, thresholds) for r in records]
    by_detector = detector_results(spark, records, thresholds)

    assert by_detector == [(fired, rules.severity_of(fired)) for fired in by_record]


def test_an_invalid_row_fires_no_rule_in_the_detector(spark: Any) -> None:
    from pyspark.sql import functions as F

    from bankcourse import spark_mode

    record = full_record(0, {"type": "TRANSFER", "amount": 10.0, "newbalanceOrig": 0.0,
                             "oldbalanceOrg": 10.0, "isFraud": 1})
    frame = spark.createDataFrame([tuple(record[n] for n in schema.NAMES)],
                                  schema=schema.spark_ddl()) \
        .withColumn(schema.REASON_COLUMN, F.lit("amount: negative"))
    row = spark_mode.detect(frame).collect()[0]
    assert list(row["rules"]) == [] and row["severity"] is None


def test_an_amount_exactly_at_high_amount_does_not_fire_but_one_cent_above_does(
        spark: Any) -> None:
    t = Thresholds(high_amount=1000.0)
    records = [full_record(0, {"type": "PAYMENT", "amount": 1000.0, "newbalanceOrig": 5.0,
                               "oldbalanceOrg": 1005.0, "isFraud": 0}),
               full_record(1, {"type": "PAYMENT", "amount": 1000.01, "newbalanceOrig": 5.0,
                               "oldbalanceOrg": 1005.01, "isFraud": 0})]
    assert spark_results(spark, records, t) == [([], None), (["HIGH_AMOUNT"], "HIGH")]


def test_a_missing_or_nan_balance_never_fires_balance_drain_in_spark(spark: Any) -> None:
    records = [full_record(i, {"type": "TRANSFER", "amount": 10.0, "newbalanceOrig": value,
                               "oldbalanceOrg": 10.0, "isFraud": 0})
               for i, value in enumerate([None, math.nan, 0.0])]
    assert spark_results(spark, records, Thresholds()) == [
        ([], None), ([], None), (["BALANCE_DRAIN"], "CRITICAL")]
