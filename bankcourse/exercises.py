"""Notebook helpers: checking parameters, finding folders, and the "your turn" self-checks.

Every notebook starts with a cell tagged ``parameters`` (papermill overrides it) and
then calls :func:`validate_parameters`, which checks each value against its allowed
range and builds the :class:`~bankcourse.settings.Settings`. A bad value stops the
notebook with one line naming the parameter, its allowed values and how to change it.

The self-check functions (``check_...``) compute the right answer from the same data
the learner used and print whether the learner's answer matches, with a hint when it
does not. They never raise on a wrong answer, so a student copy runs to the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bankcourse import rules
from bankcourse.settings import SettingError, Settings, Thresholds

log = logging.getLogger(__name__)


class ParameterError(ValueError):
    """A notebook parameter is out of range; the message names it and the fix.

    In a notebook only the message is shown (no traceback through the library).
    """

    def _render_traceback_(self) -> list[str]:
        return [f"ParameterError: {self}"]


# --- parameter rules -------------------------------------------------------------------


def _whole(minimum: int, maximum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))
        ):
            raise ParameterError(
                f"{name} must be a whole number from {minimum:,} to {maximum:,}, "
                f"got {value!r}. {_how(name)}")
        if not minimum <= int(value) <= maximum:
            raise ParameterError(
                f"{name} must be from {minimum:,} to {maximum:,}, got {int(value):,}. "
                f"{_how(name)}")
        return int(value)
    return check


def _number(minimum: float, maximum: float, *, above: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        low = f"above {minimum:g}" if above else f"from {minimum:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
            not math.isfinite(float(value))
        ):
            raise ParameterError(f"{name} must be a number {low} to {maximum:g}, "
                                 f"got {value!r}. {_how(name)}")
        number = float(value)
        if number < minimum or (above and number == minimum) or number > maximum:
            raise ParameterError(f"{name} must be {low} to {maximum:g}, got {number:g}. "
                                 f"{_how(name)}")
        return number
    return check


def _text(pattern: str, example: str, *, optional: bool = False) -> Callable[[str, Any], Any]:
    compiled = re.compile(pattern)

    def check(name: str, value: Any) -> Any:
        if value is None or value == "":
            if optional:
                return None
            raise ParameterError(f"{name} must be set, for example {example!r}.")
        if not isinstance(value, str) or not compiled.fullmatch(value.strip()):
            extra = " or None" if optional else ""
            raise ParameterError(f"{name} must look like {example!r}{extra}, got {value!r}.")
        return value.strip()
    return check


def _flag(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ParameterError(f"{name} must be True, False or None, got {value!r}.")


def _how(name: str) -> str:
    return f"Change it in the parameters cell, or pass -p {name} VALUE to papermill."


_SERVERS = r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}(,\s*[A-Za-z0-9_.\-\[\]:]+:\d{1,5})*"
_MASTER = r"local(\[(\*|\d+)(,\s*\d+)?\])?|(spark|k8s|mesos)://\S+|yarn"
_PATH = r"[^\x00]+"

PARAMETERS: dict[str, Callable[[str, Any], Any]] = {
    "rows": _whole(10, 7_000_000),
    "seed": _whole(0, 2**32 - 1),
    "chunk_rows": _whole(100, 2_000_000),
    "partitions": _whole(1, 64),
    "max_messages": _whole(1, 10_000_000),
    "stream_rows": _whole(10, 7_000_000),
    "detectors": _whole(1, 8),
    "rate_per_s": _number(0.0, 1_000_000.0, above=True),
    "duration_s": _number(0.0, 900.0, above=True),
    "timeout_s": _number(0.0, 900.0, above=True),
    "window_s": _number(0.0, 2_678_400.0, above=True),
    "watermark_s": _number(0.0, 2_678_400.0),
    "high_amount": _number(0.0, 1e12),
    "transfer_spike": _number(0.0, 1e12),
    "drain_balance": _number(0.0, 1e12),
    "bootstrap_servers": _text(_SERVERS, "127.0.0.1:9092", optional=True),
    "spark_master": _text(_MASTER, "local[2]", optional=True),
    "data_dir": _text(_PATH, "data"),
    "output_dir": _text(_PATH, "output"),
    "live_dashboard": _flag,
}
"""Every notebook parameter the course knows and how it is checked."""



# --- folders ---------------------------------------------------------------------------


def course_root(start: str | Path | None = None) -> Path:
    """The course folder (the one holding ``notebooks/`` and ``bankcourse/``).

    Searched from ``start`` (default: the current folder) upwards, so a notebook run
    from ``notebooks/`` (Jupyter, nbval) or from the repository root (papermill)
    finds the same ``data/`` and ``output/``. Falls back to ``start`` itself.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents[:3]):
        if (folder / "notebooks").is_dir() and (folder / "bankcourse").is_dir():
            return folder
    return here


def course_path(path: str | Path, root: Path | None = None) -> Path:
    """``path`` resolved against the course root when it is relative."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (root or course_root()) / path


def shown_path(path: str | Path, root: Path | None = None) -> str:
    """``path`` as text relative to the course root when it is inside it (for printing)."""
    path = Path(path).resolve()
    root = (root or course_root()).resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class CourseParameters:
    """A notebook's checked parameters and what follows from them.

    Attributes:
        values: every parameter after checking, by name (also readable as attributes).
        settings: :class:`Settings` from the environment with the notebook's thresholds,
            ``data_dir`` and ``bootstrap_servers`` / ``spark_master`` applied.
        root: the course root (see :func:`course_root`).
        output_dir: where the notebook writes (created), when it has ``output_dir``.
    """

    values: dict[str, Any]
    settings: Settings
    root: Path
    output_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"CourseParameters({shown})"


def validate_parameters(**params: Any) -> CourseParameters:
    """Check a notebook's parameters and build its settings.

    Each keyword must be one of :data:`PARAMETERS`; its value is checked against
    its allowed range. Threshold names (``high_amount``,
    ``transfer_spike``, ``drain_balance``) go into ``settings.thresholds``;
    ``data_dir`` into ``settings.data_dir`` (relative to the course root);
    ``bootstrap_servers`` (when not None) selects an existing Kafka cluster;
    ``spark_master`` (when not None) the Spark master. Everything else comes from
    ``Settings.from_env()``, so ``BANKCOURSE_KAFKA_PORT`` still applies.

    Returns:
        A :class:`CourseParameters`.

    Raises:
        ParameterError: a name is unknown or a value is out of range; the message
            names the parameter, the allowed values and how to change it.
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)}; the course knows "
            f"{', '.join(sorted(PARAMETERS))}.")
    values = {name: PARAMETERS[name](name, value) for name, value in params.items()}
    root = course_root()
    overrides: dict[str, Any] = {}
    for name in ("high_amount", "transfer_spike", "drain_balance"):
        if name in values:
            overrides[name] = values[name]
    if "data_dir" in values:
        overrides["data_dir"] = course_path(values["data_dir"], root)
    if values.get("bootstrap_servers"):
        overrides["kafka_bootstrap_servers"] = values["bootstrap_servers"]
    if values.get("spark_master"):
        overrides["spark_master"] = values["spark_master"]
    if "partitions" in values:
        overrides["partitions"] = values["partitions"]
    try:
        settings = Settings.from_env(**overrides)
    except SettingError as exc:  # from BANKCOURSE_* environment variables
        raise ParameterError(f"{exc} (check the BANKCOURSE_* environment variables)") from None
    output_dir = None
    if "output_dir" in values:
        output_dir = course_path(values["output_dir"], root)
        output_dir.mkdir(parents=True, exist_ok=True)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log.info("parameters checked: %s", values)
    return CourseParameters(values=values, settings=settings, root=root, output_dir=output_dir)


def run_topics(settings: Settings, prefix: str) -> Settings:
    """Settings whose four topics are new, named ``<prefix>-<run id>-<usual name>``.

    A notebook that streams into fresh topics gets the same counts however often it
    is run: nothing left over from an earlier run is read again.
    """
    run = f"{prefix}-{secrets.token_hex(3)}"
    return settings.replace(
        topic_transactions=f"{run}-{settings.topic_transactions}",
        topic_alerts=f"{run}-{settings.topic_alerts}",
        topic_processed=f"{run}-{settings.topic_processed}",
        topic_dead_letter=f"{run}-{settings.topic_dead_letter}",
    )


@contextlib.contextmanager
def child_output_to(path: str | Path) -> Iterator[Path]:
    """Send the output of child processes started inside the block to ``path``.

    The Spark JVM inherits the kernel's standard output and error, so its download
    report and log lines would land in the notebook. Started inside this block, it
    writes them to ``path`` (appended) for its whole life instead; Python's own
    ``print`` and errors still show in the notebook.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in saved:
            os.dup2(log_fd, fd)
        yield path
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)


def write_summary(output_dir: str | Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as ``<output_dir>/<name>.json`` (for tests and instructors' runs)."""
    path = Path(output_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2, sort_keys=True) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# --- self-checks -----------------------------------------------------------------------


class Verdict:
    """The result of a self-check: true when the answer is right.

    It prints its message when made and shows nothing more in a notebook, so a check
    cell's output is only the sentence.
    """

    def __init__(self, right: bool, message: str) -> None:
        self.right = bool(right)
        self.message = message

    def __bool__(self) -> bool:
        return self.right

    def _ipython_display_(self) -> None:
        """Nothing: the message was already printed."""

    def __repr__(self) -> str:
        return f"Verdict(right={self.right}, message={self.message!r})"


def _verdict(right: bool, message: str, hint: str = "") -> Verdict:
    text = f"Right: {message}" if right else (
        f"Not yet: {message}" + (f" Hint: {hint}" if hint else ""))
    print(text)
    return Verdict(right, text)


def _missing(answer: Any, what: str) -> Verdict | None:
    """A "not yet" verdict when the starter's None is still there, else None."""
    if answer is None or answer is Ellipsis:
        return _verdict(False, f"replace None with {what} in the cell above, "
                               "then run both cells.")
    return None


def _as_share(answer: Any) -> float | None:
    """A share given as 0.35 or as a percentage 35.2 (anything above 1 is a percentage)."""
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value / 100 if value > 1 else value


def check_share(
    answer: Any, expected: float, what: str, *, tolerance: float = 0.002
) -> Verdict:
    """Compare a share (0 to 1, or a percentage) with ``expected``, within ``tolerance``."""
    if (missing := _missing(answer, what)) is not None:
        return missing
    value = _as_share(answer)
    if value is None:
        return _verdict(False, f"{answer!r} is not a number.", "give a share like 0.35.")
    return _verdict(abs(value - expected) <= tolerance,
                    f"{what} is {expected:.2%}; you gave {value:.2%}.",
                    "divide the count you want by the count of all rows it is part of.")


def check_settings(answer: Any, **expected: Any) -> Verdict:
    """Notebook 00: a Settings object whose attributes (``kafka_port``,
    ``bootstrap_servers``...) have the expected values."""
    if (missing := _missing(answer, "a Settings object")) is not None:
        return missing
    if not isinstance(answer, Settings):
        return _verdict(False, f"expected a Settings object, got {type(answer).__name__}.",
                        "use Settings.from_env(name=value, ...).")
    wrong = {k: getattr(answer, k, None) for k, v in expected.items()
             if getattr(answer, k, None) != v}
    if wrong:
        shown = ", ".join(f"{k} is {v!r}, wanted {expected[k]!r}" for k, v in wrong.items())
        return _verdict(False, shown + ".", "pass the field names as keyword arguments.")
    shown = ", ".join(f"{k}={v!r}" for k, v in expected.items())
    return _verdict(True, f"your settings have {shown}.")


def check_fraud_share_of_type(answer: Any, frame: pd.DataFrame, txn_type: str) -> Verdict:
    """Notebook 01: what share of the fraud rows are of type ``txn_type``?"""
    fraud = frame[frame["isFraud"] == 1]
    expected = float((fraud["type"] == txn_type).mean()) if len(fraud) else 0.0
    return check_share(answer, expected, f"the share of {txn_type} among fraud rows")


def check_median_amount(answer: Any, frame: pd.DataFrame, txn_type: str) -> Verdict:
    """Notebook 01: the median ``amount`` of ``txn_type`` transactions."""
    if (missing := _missing(answer, f"the median amount of {txn_type}")) is not None:
        return missing
    expected = float(frame.loc[frame["type"] == txn_type, "amount"].median())
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _verdict(False, f"{answer!r} is not a number.")
    return _verdict(abs(value - expected) <= max(0.01, 1e-6 * expected),
                    f"the median amount of {txn_type} is {expected:,.2f}; you gave {value:,.2f}.",
                    f"filter rows with type == '{txn_type}', then take .median() of amount.")


def check_precision(answer: Any, frame: pd.DataFrame, rule: str,
                    thresholds: Thresholds | None = None) -> Verdict:
    """Notebook 02: the precision of ``rule`` against ``isFraud``."""
    if rule not in rules.RULE_NAMES:
        raise ValueError(f"unknown rule {rule!r}; rules are {', '.join(rules.RULE_NAMES)}")
    flags = rules.evaluate_frame(frame, thresholds)
    fired = flags[rule].to_numpy()
    n_fired = int(fired.sum())
    expected = float((frame["isFraud"].to_numpy()[fired] == 1).mean()) if n_fired else 0.0
    return check_share(answer, expected, f"the precision of {rule}", tolerance=0.0005)


def check_rule_count_at(
    answer: Any, frame: pd.DataFrame, rule: str, **thresholds: float
) -> Verdict:
    """Notebook 02: how often ``rule`` fires with some thresholds changed."""
    if (missing := _missing(answer, f"the number of {rule} alerts")) is not None:
        return missing
    t = Thresholds().replace(**thresholds)
    expected = int(rules.evaluate_frame(frame, t)[rule].sum())
    changed = ", ".join(f"{k}={v:,g}" for k, v in thresholds.items())
    right = _is_int(answer) and int(answer) == expected
    return _verdict(right, f"{rule} fires {expected:,} times with {changed}; you gave {answer!r}.",
                    "build Thresholds(...) with the new value and pass it to evaluate_frame.")


def check_count(answer: Any, expected: int, what: str, hint: str = "") -> Verdict:
    """Compare a whole-number answer with ``expected`` (computed by the caller's library
    code, never typed in)."""
    if (missing := _missing(answer, what)) is not None:
        return missing
    right = _is_int(answer) and int(answer) == int(expected)
    return _verdict(right, f"{what} is {int(expected):,}; you gave {answer!r}.", hint)


def check_quarantine_count(answer: Any, quarantine_path: str | Path) -> Verdict:
    """Notebook 03: how many rows did file mode set aside in ``quarantine_path``?"""
    path = Path(quarantine_path)
    expected = 0
    if path.exists():
        with path.open() as lines:
            expected = sum(1 for line in lines if line.strip())
    return check_count(answer, expected, "the number of quarantined rows",
                       "look at report.quarantined, or count the lines of quarantine.jsonl.")


def check_partition_split(answer: Any, assignments: Mapping[str, Iterable[Any]]) -> Verdict:
    """Notebook 04: how many partitions each detector owns after a rebalance.

    ``assignments`` maps a detector name to the partitions it was given; the answer
    is a dict of the same names to counts, or one number when all are equal.
    """
    expected = {name: len(list(parts)) for name, parts in assignments.items()}
    if (missing := _missing(answer, "the partitions each detector owns")) is not None:
        return missing
    if isinstance(answer, Mapping):
        right = {k: int(v) for k, v in answer.items()} == expected
    else:
        right = _is_int(answer) and len(set(expected.values())) == 1 and (
            int(answer) == next(iter(expected.values())))
    return _verdict(right, f"the detectors own {expected}; you gave {answer!r}.",
                    "a topic's partitions are shared out among the consumers of one group.")


def check_busiest_window(answer: Any, counts: pd.DataFrame, rule: str) -> Verdict:
    """Notebook 05: the ``window_start`` with the most alerts of ``rule`` (any of tied)."""
    if (missing := _missing(answer, f"the window_start with the most {rule} alerts")) \
            is not None:
        return missing
    of_rule = counts[counts["rule"] == rule]
    if of_rule.empty:
        return _verdict(False, f"there are no {rule} windows in the counts.")
    top = of_rule["alerts"].max()
    best = [pd.Timestamp(t) for t in of_rule.loc[of_rule["alerts"] == top, "window_start"]]
    try:
        value = pd.Timestamp(answer)
    except (TypeError, ValueError):
        return _verdict(False, f"{answer!r} is not a time.")
    if value.tzinfo is None and best and best[0].tzinfo is not None:
        value = value.tz_localize(best[0].tzinfo)
    right = any(value == b for b in best)
    return _verdict(right, f"the busiest {rule} window starts at {best[0]} with {top} "
                           f"alerts; you gave {value}.",
                    "filter the rule, then take the window_start of the largest alerts.")


def check_ratio(answer: Any, numerator: float, denominator: float, what: str,
                *, tolerance: float = 0.05) -> Verdict:
    """Notebook 06: a ratio such as one mode's throughput over another's, within 5 %."""
    if (missing := _missing(answer, what)) is not None:
        return missing
    expected = numerator / denominator if denominator else math.nan
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _verdict(False, f"{answer!r} is not a number.")
    right = math.isfinite(expected) and abs(value - expected) <= tolerance * abs(expected)
    return _verdict(right, f"{what} is {expected:,.2f}; you gave {value:,.2f}.",
                    "divide the first figure by the second.")


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, float) and value.is_integer()
