"""A PaySim-style generator of synthetic mobile-money transactions.

PaySim (Lopez-Rojas, Elmir and Axelsson, 2016) simulated a month of mobile-money
traffic, 744 hourly steps and 6,362,620 transactions, and published the result. This
module draws transactions whose shape follows that published dataset: the same five
types in the same proportions, per-type amounts tuned so that the overall median
and upper quartile match, balances that move consistently, and PaySim's fraud
pattern (a TRANSFER empties the victim's account into a mule account, then the mule
cashes the same amount out in the same hour).

Every row is a function of ``(seed, total rows, row index)`` only. Rows are drawn in
fixed blocks of :data:`BLOCK_ROWS`; block ``b`` draws from its own random stream,
``PCG64(SeedSequence(seed, spawn_key=(b,)))``, so however a caller chunks the work
the rows are the same, on any machine. The number of fraud pairs before row ``n`` is
fixed arithmetic (:func:`fraud_pairs_before`), so fraud totals are exact.

Typical use::

    frame = generate_frame(1_000, seed=7)          # a small DataFrame
    write_dataset("data/paysim.csv.gz", 200_000)   # the course file
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bankcourse import schema

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Which rows a seed gives. Bump it with any change that alters generated rows: cached
datasets are named after it (:func:`bankcourse.dataio.dataset_path`), so a changed
generator never reuses a file the old one wrote. ``tests/test_generator.py`` holds a
digest of a small sample that fails when the rows change and the version does not."""

BLOCK_ROWS = 100_000
"""Rows drawn from one random stream; fixed, so chunking never changes the rows."""

DRAW_THREADS = 2
"""Threads drawing blocks at once (the course machine has 2 cores); never changes rows."""

MAX_ROWS = 9_999_999_999
"""The largest dataset: ``txn_id`` has ten digits."""

STEPS = 744
"""Hours in the simulated month (31 days), as in PaySim."""

START_TIME = pd.Timestamp("2026-01-01T00:00:00Z")
"""``event_time`` of the start of step 1."""

TYPE_SHARE: dict[str, float] = {
    "CASH_IN": 0.21993,
    "CASH_OUT": 0.35166,
    "DEBIT": 0.00651,
    "PAYMENT": 0.33815,
    "TRANSFER": 0.08375,
}
"""Share of each transaction type in PaySim's published dataset."""

AMOUNT_LOGNORMAL: dict[str, tuple[float, float]] = {
    "CASH_IN": (128_000.0, 0.97),
    "CASH_OUT": (138_000.0, 0.97),
    "DEBIT": (3_000.0, 1.0),
    "PAYMENT": (9_000.0, 0.95),
    "TRANSFER": (450_000.0, 1.1),
}
"""Per type, (median, sigma of the log) of the amount. Tuned so that the overall
median is about 75,000 and the upper quartile about 209,000, as in PaySim."""

AMOUNT_MIN, AMOUNT_MAX = 1.0, 10_000_000.0
"""Amounts are clipped to this range (PaySim capped single transfers at 10 million)."""

FRAUD_RATE_PER_100K = 129
"""Fraud rows per 100,000 rows (PaySim: 8,213 of 6,362,620, 0.129 %); half TRANSFER,
half CASH_OUT."""

VICTIM_BALANCE = (440_000.0, 1.3)
"""(median, log sigma) of a fraud victim's balance; the fraud TRANSFER moves all of it."""

ORIGIN_ZERO_SHARE = 0.15
"""Share of non-merchant origin accounts that start with a zero balance."""

ACCOUNT_LOW, ACCOUNT_HIGH = 1_000_000_000, 2_000_000_000
"""Account numbers are drawn from this range: ten digits after C (customer) or M (merchant)."""

FLAG_TRANSFER_OVER = 200_000.0
"""isFlaggedFraud is 1 for a TRANSFER above this amount."""

_TYPE_CODE = {name: i for i, name in enumerate(schema.TXN_TYPES)}
_TYPE_NAMES = pa.array(schema.TXN_TYPES, type=pa.large_string())
_SHARES = np.array([TYPE_SHARE[t] for t in schema.TXN_TYPES])
_CUMULATIVE = np.cumsum(_SHARES / _SHARES.sum())
_LOG_MEDIAN = np.log([AMOUNT_LOGNORMAL[t][0] for t in schema.TXN_TYPES])
_LOG_SIGMA = np.array([AMOUNT_LOGNORMAL[t][1] for t in schema.TXN_TYPES])
_CASH_IN = _TYPE_CODE["CASH_IN"]
_CASH_OUT = _TYPE_CODE["CASH_OUT"]
_PAYMENT = _TYPE_CODE["PAYMENT"]
_TRANSFER = _TYPE_CODE["TRANSFER"]
_HOUR_US = 3_600_000_000
_START_US = START_TIME.value // 1_000  # pandas Timestamp.value is in nanoseconds


TABLE_SCHEMA = pa.schema([
    f.with_type(pa.large_string()) if f.type == pa.string() else f
    for f in schema.arrow_schema()
])
"""The schema of the generator's Arrow tables: :func:`bankcourse.schema.arrow_schema` with
``large_string`` text, the layout pandas' ``str`` dtype uses, so conversion copies nothing."""


def fraud_pairs_before(row: int) -> int:
    """Fraud pairs (TRANSFER + CASH_OUT) whose TRANSFER is among the first ``row`` rows.

    Half the fraud rate, rounded; a block holds ``fraud_pairs_before(end) -
    fraud_pairs_before(start)`` pairs, so a dataset of ``n`` rows holds exactly
    ``2 * fraud_pairs_before(n)`` fraud rows (1 fewer pair only if a tiny last
    block has no room for one).
    """
    return (row * FRAUD_RATE_PER_100K + 100_000) // 200_000


def step_of(rows: np.ndarray, total_rows: int) -> np.ndarray:
    """The step (1..744) of each row index when ``total_rows`` rows fill the month."""
    return (1 + (rows * STEPS) // total_rows).astype(np.int64)


def _first_row_of_step(steps: np.ndarray, total_rows: int) -> np.ndarray:
    return ((steps - 1) * total_rows + STEPS - 1) // STEPS


def _block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(block,))))


def _round_cents(values: np.ndarray) -> np.ndarray:
    return np.round(values, 2)


_FIVE_DIGITS = np.array([list(f"{i:05d}".encode()) for i in range(100_000)],
                        dtype=np.uint8).view("V5").ravel()
_ID_LAYOUT = np.dtype([("prefix", "u1"), ("high", "V5"), ("low", "V5")])


def _prefixed_digits(prefix: np.ndarray | int, high: np.ndarray, low: np.ndarray) -> pa.Array:
    """Text like ``C1234567890``: a prefix letter, then ``high`` and ``low`` as five digits each.

    Built as fixed-width bytes with numpy (two table lookups) and handed to Arrow
    without copying; many times faster than formatting numbers one by one. The array
    is ``large_string``, the layout of pandas' ``str`` dtype, so no copy follows either.
    """
    n = len(high)
    text = np.empty(n, dtype=_ID_LAYOUT)
    text["prefix"] = prefix
    text["high"] = _FIVE_DIGITS.take(high)
    text["low"] = _FIVE_DIGITS.take(low)
    offsets = np.arange(0, (n + 1) * 11, 11, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets),
                                            pa.py_buffer(text.view(np.uint8)))


def _id_halves(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) five-digit halves of the consecutive numbers ``first .. first + n - 1``.

    No division per row: ``n`` is at most one block, so the low half wraps at most once.
    """
    low = np.arange(first % 100_000, first % 100_000 + n, dtype=np.int64)
    wrapped = low >= 100_000
    low -= wrapped * 100_000
    return first // 100_000 + wrapped, low


def _account_numbers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten-digit account numbers in ``ACCOUNT_LOW .. ACCOUNT_HIGH - 1`` as (high, low) halves."""
    high = rng.integers(ACCOUNT_LOW // 100_000, ACCOUNT_HIGH // 100_000, n, dtype=np.int64)
    return high, rng.integers(0, 100_000, n, dtype=np.int64)


def _block_table(seed: int, block: int, total_rows: int) -> pa.Table:
    """Draw block ``block`` of a dataset of ``total_rows`` rows as an Arrow table."""
    start = block * BLOCK_ROWS
    n = min(BLOCK_ROWS, total_rows - start)
    rng = _block_rng(seed, block)
    rows = np.arange(start, start + n, dtype=np.int64)
    steps = step_of(rows, total_rows)

    # Legitimate traffic: a type, an amount from that type's distribution, balances.
    draw = rng.random(n)
    kind = np.zeros(n, dtype=np.int8)
    for cutoff in _CUMULATIVE[:-1]:  # the type index is how many cutoffs the draw passes
        kind += draw >= cutoff
    amount = np.exp(_LOG_MEDIAN[kind] + _LOG_SIGMA[kind] * rng.standard_normal(n))
    amount = _round_cents(np.clip(amount, AMOUNT_MIN, AMOUNT_MAX))

    # Origin balance: some accounts are empty; the rest hold about twice a typical
    # amount of their type, so some debits overdraw and are floored at 0, as in PaySim.
    zero = rng.random(n) < ORIGIN_ZERO_SHARE
    old_orig = np.exp(_LOG_MEDIAN[kind] + np.log(2.0) + 1.2 * rng.standard_normal(n))
    old_orig = _round_cents(np.where(zero, 0.0, old_orig))
    cash_in = kind == _CASH_IN
    new_orig = _round_cents(np.where(cash_in, old_orig + amount,
                                     np.maximum(old_orig - amount, 0.0)))

    merchant = kind == _PAYMENT
    dest_zero = rng.random(n) < 0.3
    old_dest = np.exp(np.log(500_000.0) + 1.5 * rng.standard_normal(n))
    old_dest = _round_cents(np.where(dest_zero | merchant, 0.0, old_dest))
    new_dest = np.where(cash_in, np.maximum(old_dest - amount, 0.0), old_dest + amount)
    new_dest = _round_cents(np.where(merchant, 0.0, new_dest))

    orig_high, orig_low = _account_numbers(rng, n)
    dest_high, dest_low = _account_numbers(rng, n)
    fraud = np.zeros(n, dtype=np.int8)

    # Fraud: pairs of adjacent rows in the same step. Row i: TRANSFER of the victim's
    # whole balance to a fresh mule account; row i + 1: the mule cashes it all out.
    pairs = fraud_pairs_before(start + n) - fraud_pairs_before(start)
    slots = np.flatnonzero(steps[0:n - 1:2] == steps[1:n:2])
    if pairs > len(slots):
        logger.warning("block %s has room for %s fraud pairs, not %s", block, len(slots), pairs)
        pairs = len(slots)
    if pairs:
        first = 2 * np.sort(rng.choice(slots, size=pairs, replace=False))
        second = first + 1
        stolen = np.exp(np.log(VICTIM_BALANCE[0]) + VICTIM_BALANCE[1]
                        * rng.standard_normal(pairs))
        stolen = _round_cents(np.clip(stolen, AMOUNT_MIN, AMOUNT_MAX))
        mule_high, mule_low = _account_numbers(rng, pairs)
        kind[first], kind[second] = _TRANSFER, _CASH_OUT
        merchant[first] = merchant[second] = False
        amount[first] = amount[second] = stolen
        old_orig[first], new_orig[first] = stolen, 0.0
        dest_high[first], dest_low[first] = mule_high, mule_low
        orig_high[second], orig_low[second] = mule_high, mule_low
        old_dest[first], new_dest[first] = 0.0, stolen
        old_orig[second], new_orig[second] = stolen, 0.0
        new_dest[second] = _round_cents(old_dest[second] + stolen)
        fraud[first] = fraud[second] = 1

    flagged = ((kind == _TRANSFER) & (amount > FLAG_TRANSFER_OVER)).astype(np.int8)

    # event_time: the hour of the step plus an offset that keeps rows in order.
    # Steps are sorted, so compute each step's first row once and look it up.
    lowest = int(steps[0]) if n else 1
    step_starts = _first_row_of_step(np.arange(lowest, int(steps[-1]) + 2 if n else 2), total_rows)
    first_row = step_starts[steps - lowest]
    rows_in_step = step_starts[steps - lowest + 1] - first_row
    position = (rows - first_row) + rng.random(n)
    offset_us = np.floor(position * _HOUR_US / rows_in_step).astype(np.int64)
    event_us = _START_US + (steps - 1) * _HOUR_US + offset_us

    dest_prefix = np.where(merchant, ord("M"), ord("C")).astype(np.uint8)
    columns = {
        "txn_id": _prefixed_digits(ord("T"), *_id_halves(start + 1, n)),
        "step": pa.array(steps, type=pa.int32()),
        "type": _TYPE_NAMES.take(pa.array(kind)),
        "amount": pa.array(amount),
        "nameOrig": _prefixed_digits(ord("C"), orig_high, orig_low),
        "oldbalanceOrg": pa.array(old_orig),
        "newbalanceOrig": pa.array(new_orig),
        "nameDest": _prefixed_digits(dest_prefix, dest_high, dest_low),
        "oldbalanceDest": pa.array(old_dest),
        "newbalanceDest": pa.array(new_dest),
        "isFraud": pa.array(fraud),
        "isFlaggedFraud": pa.array(flagged),
        "event_time": pa.array(event_us, type=pa.timestamp("us", tz="UTC")),
    }
    return pa.table([columns[name] for name in schema.NAMES], schema=TABLE_SCHEMA)


def _check(rows: int, seed: int, start_row: int = 0, total_rows: int | None = None) -> int:
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise ValueError(f"rows must be a whole number >= 0, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    if start_row < 0:
        raise ValueError(f"start_row must be >= 0, got {start_row!r}")
    total = start_row + rows if total_rows is None else int(total_rows)
    if total > MAX_ROWS:
        raise ValueError(f"at most {MAX_ROWS:,} rows (txn_id has ten digits), got {total:,}")
    if start_row + rows > total:
        raise ValueError(f"rows {start_row}..{start_row + rows} do not fit in total_rows={total}")
    return total


def iter_tables(rows: int, seed: int = 42, chunk_rows: int = BLOCK_ROWS, *,
                start_row: int = 0, total_rows: int | None = None) -> Iterator[pa.Table]:
    """Yield rows ``start_row`` .. ``start_row + rows`` of a dataset as Arrow tables.

    Args:
        rows: how many rows to yield.
        seed: the dataset's seed. Default: 42.
        chunk_rows: rows per yielded table (the last may be shorter). Default: 100,000.
        start_row: index of the first row to yield. Default: 0.
        total_rows: size of the whole dataset, which fixes each row's step.
            Default: ``start_row + rows``.
    """
    total = _check(rows, seed, start_row, total_rows)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    end = start_row + rows
    pending: list[pa.Table] = []
    pending_rows = 0
    for block_start, table in _drawn_blocks(seed, start_row, end, total):
        lo, hi = max(start_row - block_start, 0), min(end - block_start, table.num_rows)
        pending.append(table.slice(lo, hi - lo))
        pending_rows += hi - lo
        finished = block_start + hi >= end
        while pending_rows >= chunk_rows or (finished and pending_rows):
            joined = pa.concat_tables(pending)
            take = min(chunk_rows, pending_rows)
            yield joined.slice(0, take)
            rest = joined.slice(take)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows


def _drawn_blocks(seed: int, start_row: int, end: int,
                  total: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) of each block covering rows ``start_row .. end``, in order.

    Blocks are drawn on :data:`DRAW_THREADS` threads (numpy and Arrow release the GIL),
    at most that many ahead of the consumer, so memory stays bounded.
    """
    blocks = range(start_row // BLOCK_ROWS, (end + BLOCK_ROWS - 1) // BLOCK_ROWS)
    if len(blocks) <= 1:
        for block in blocks:
            yield block * BLOCK_ROWS, _block_table(seed, block, total)
        return
    with ThreadPoolExecutor(max_workers=DRAW_THREADS,
                            thread_name_prefix="bankcourse-generator") as pool:
        ahead: deque[tuple[int, Future[pa.Table]]] = deque()
        for block in blocks:
            ahead.append((block, pool.submit(_block_table, seed, block, total)))
            if len(ahead) >= DRAW_THREADS:
                first, future = ahead.popleft()
                yield first * BLOCK_ROWS, future.result()
        while ahead:
            first, future = ahead.popleft()
            yield first * BLOCK_ROWS, future.result()


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    dtypes = schema.pandas_dtypes()
    wrong = {name: dtypes[name] for name in frame.columns
             if frame[name].dtype != pd.Series(dtype=dtypes[name]).dtype}
    return frame.astype(wrong) if wrong else frame


def generate_frame(rows: int, seed: int = 42, start_row: int = 0, *,
                   total_rows: int | None = None) -> pd.DataFrame:
    """Generate rows as a pandas DataFrame with the schema's columns and dtypes.

    Args:
        rows: how many rows.
        seed: the dataset's seed; the same seed and sizes give the same rows. Default: 42.
        start_row: index of the first row (also its ``txn_id`` minus 1). Default: 0.
        total_rows: size of the whole dataset, which spreads the rows over the 744
            steps. Default: ``start_row + rows`` (the frame is the whole dataset).

    Returns:
        A DataFrame with index ``start_row .. start_row + rows - 1``.
    """
    total = _check(rows, seed, start_row, total_rows)
    tables = list(iter_tables(rows, seed, BLOCK_ROWS, start_row=start_row, total_rows=total))
    table = pa.concat_tables(tables) if tables else TABLE_SCHEMA.empty_table()
    frame = _to_pandas(table)
    frame.index = pd.RangeIndex(start_row, start_row + rows)
    return frame


def iter_chunks(rows: int, seed: int = 42, chunk_rows: int = BLOCK_ROWS) -> Iterator[pd.DataFrame]:
    """Yield a dataset of ``rows`` rows as DataFrames of ``chunk_rows`` rows.

    Concatenated, the chunks equal ``generate_frame(rows, seed)`` whatever
    ``chunk_rows`` is. Memory stays bounded by about one chunk plus one block.

    Args:
        rows: rows in the whole dataset.
        seed: the dataset's seed. Default: 42.
        chunk_rows: rows per DataFrame (the last may be shorter). Default: 100,000.
    """
    first = 0
    for table in iter_tables(rows, seed, chunk_rows):
        frame = _to_pandas(table)
        frame.index = pd.RangeIndex(first, first + len(frame))
        first += len(frame)
        yield frame


def write_dataset(path: str | Path, rows: int, seed: int = 42, fmt: str | None = None, *,
                  chunk_rows: int = BLOCK_ROWS,
                  on_chunk: Callable[[int], Any] | None = None) -> Path:
    """Generate a dataset and write it to ``path`` (atomically: a temporary file, then rename).

    Args:
        path: where to write; parent folders are created.
        rows: rows in the dataset.
        seed: the dataset's seed. Default: 42.
        fmt: ``csv.gz``, ``csv``, ``parquet`` or ``jsonl``. Default: from the suffix.
        chunk_rows: rows generated and written at a time (bounds memory). Default: 100,000.
        on_chunk: called with the row count after each chunk is written (progress bars).

    Returns:
        The path written.
    """
    from bankcourse import dataio

    path = Path(path)
    fmt = fmt or dataio.detect_format(path)
    _check(rows, seed)
    started = time.perf_counter()
    with dataio.atomic_writer(path, fmt) as writer:
        for table in iter_tables(rows, seed, chunk_rows):
            writer.write(table)
            if on_chunk is not None:
                on_chunk(table.num_rows)
    seconds = time.perf_counter() - started
    logger.info("wrote %s rows (seed %s, %s) to %s in %.2f s, %.0f rows/s", rows, seed, fmt,
                path, seconds, rows / seconds if seconds > 0 else float("inf"))
    return path


# --- command line ------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add the ``generate`` command to the course's command line."""
    parser = subparsers.add_parser(
        "generate", help="write a PaySim-style synthetic dataset",
        description="Generate PaySim-style transactions (seeded, deterministic) and write them "
                    "as csv.gz, csv, parquet or JSON lines.")
    parser.add_argument("--rows", type=int, default=200_000,
                        help="number of transactions (default: 200000, the course file)")
    parser.add_argument("--seed", type=int, default=42,
                        help="random seed; the same seed and rows give the same file "
                             "(default: 42)")
    parser.add_argument("--format", dest="fmt", choices=("csv.gz", "csv", "parquet", "jsonl"),
                        default=None,
                        help="file format (default: from --out's suffix, else csv.gz)")
    parser.add_argument("--out", type=Path, default=None,
                        help="file to write (default: DATA_DIR/paysim-ROWS-seedSEED-vN.FORMAT, "
                             "DATA_DIR from BANKCOURSE_DATA_DIR, default ./data)")
    parser.add_argument("--chunk-rows", type=int, default=BLOCK_ROWS,
                        help=f"rows generated and written at a time; bounds memory, never "
                             f"changes the data (default: {BLOCK_ROWS})")
    parser.set_defaults(func=_cli_generate)


def _cli_generate(args: argparse.Namespace) -> int:
    from bankcourse import dataio
    from bankcourse.settings import Settings

    if args.rows < 1 or args.seed < 0 or args.chunk_rows < 1:
        print("--rows and --chunk-rows must be >= 1 and --seed >= 0", file=sys.stderr)
        return 2
    fmt = args.fmt
    if args.out is None:
        fmt = fmt or "csv.gz"
        out = dataio.dataset_path(Settings.from_env(), args.rows, args.seed, fmt)
    else:
        out = args.out
        try:
            fmt = fmt or dataio.detect_format(out)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.rows, unit="rows", unit_scale=True, desc="generate")
    started = time.perf_counter()
    try:
        write_dataset(out, args.rows, args.seed, fmt, chunk_rows=args.chunk_rows,
                      on_chunk=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    print(f"wrote {args.rows:,} rows to {out} in {seconds:.1f} s "
          f"({args.rows / seconds:,.0f} rows/s)")
    return 0
