"""Every setting of the course, its default and where it can be overridden.

Two small keyword-only value objects hold them:

* :class:`Thresholds`: the numbers the four fraud rules compare against.
* :class:`Settings`: where data and caches live, how to reach Kafka and Spark,
  and the topic names, plus a :class:`Thresholds`.

Defaults live here and nowhere else. Environment variables are read in one
place, :meth:`Settings.from_env`, and each is named ``BANKCOURSE_<FIELD>`` in
upper case (``BANKCOURSE_HIGH_AMOUNT=100000``). Two well-known names are also
honoured: ``KAFKA_BOOTSTRAP_SERVERS`` (use that cluster, start no broker) and
``KAFKA_HOME`` (use that Apache Kafka distribution's jars).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "BANKCOURSE_"


class SettingError(ValueError):
    """A setting has a value that cannot be used; the message names it and the fix."""


def _number(name: str, value: Any, *, minimum: float = 0.0, example: str = "200000") -> float:
    """Return ``value`` as a finite float no smaller than ``minimum``, or raise SettingError."""
    if isinstance(value, bool):
        raise SettingError(f"{name} must be a number, got the boolean {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(
            f"{name} must be a number, got {value!r}; "
            f"for example {name}={example}"
        ) from None
    if not math.isfinite(number) or number < minimum:
        raise SettingError(
            f"{name} must be a finite number >= {minimum:g}, got {value!r}"
        )
    return number


def _integer(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int within [minimum, maximum], or raise SettingError."""
    number = _number(name, value, minimum=minimum, example=str(maximum or minimum))
    if number != int(number) or (maximum is not None and number > maximum):
        allowed = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise SettingError(f"{name} must be a whole number in {allowed}, got {value!r}")
    return int(number)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """The numbers the fraud rules compare against.

    Attributes:
        high_amount: HIGH_AMOUNT fires when ``amount`` is above it. Default: 200000.
        transfer_spike: TRANSFER_SPIKE fires when a TRANSFER's ``amount`` is above it.
            Default: 150000.
        drain_balance: BALANCE_DRAIN fires when a TRANSFER or CASH_OUT leaves
            ``newbalanceOrig`` at or below it. Default: 0 (the account is emptied).
    """

    high_amount: float = 200_000.0
    transfer_spike: float = 150_000.0
    drain_balance: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _number(f.name, getattr(self, f.name)))

    def replace(self, **changes: Any) -> Thresholds:
        """Return a copy with some thresholds changed (validated like the originals)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where things live and how to reach the services.

    Attributes:
        thresholds: the rule thresholds. Default: ``Thresholds()``.
        data_dir: where generated datasets are cached. Default: the checkout's ``data/``
            folder when the package runs from a clone (whatever the working folder, so
            notebooks and the CLI share one cache), else ``<cache_dir>/data``.
        cache_dir: where jars, the broker's storage and Spark checkpoints go.
            Default: ``$XDG_CACHE_HOME/bankcourse`` or ``~/.cache/bankcourse``.
        kafka_bootstrap_servers: an existing cluster to use; when set the course
            starts no broker. Default: None (the course runs its own broker).
        kafka_port: the port of the course's own broker. Default: 9092.
        kafka_controller_port: its KRaft controller port. Default: 9093.
        kafka_home: an Apache Kafka distribution whose ``libs/`` to use instead of
            jars from Maven Central. Default: None.
        kafka_version: the Apache Kafka version fetched from Maven Central. Default: 4.1.1.
        broker_heap_mb: the broker's Java heap. Default: 320.
        kafka_security: extra kafka-python client settings for an external cluster,
            such as ``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``,
            ``sasl_plain_password``, ``ssl_cafile``. Default: empty.
        topic_transactions, topic_alerts, topic_processed, topic_dead_letter: topic names.
        partitions: partitions of the input and output topics. Default: 2.
        spark_master: Spark master URL. Default: ``local[*]``.
        spark_remote: a Spark Connect URL (``sc://host:15002``); overrides spark_master.
            Default: None.
        spark_driver_memory_mb: driver heap of a local Spark. Default: 640.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    data_dir: Path = field(default_factory=lambda: _default_data_dir())
    cache_dir: Path = field(default_factory=lambda: _default_cache_dir())
    kafka_bootstrap_servers: str | None = None
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_home: Path | None = None
    kafka_version: str = "4.1.1"
    broker_heap_mb: int = 320
    kafka_security: Mapping[str, str] = field(default_factory=dict)
    topic_transactions: str = "banking-transactions"
    topic_alerts: str = "fraud-alerts"
    topic_processed: str = "processed-transactions"
    topic_dead_letter: str = "banking-transactions-dlq"
    partitions: int = 2
    spark_master: str = "local[*]"
    spark_remote: str | None = None
    spark_driver_memory_mb: int = 640

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, Thresholds):
            raise SettingError("thresholds must be a bankcourse.settings.Thresholds")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.kafka_home is not None:
            object.__setattr__(self, "kafka_home", Path(self.kafka_home))
        for name in ("kafka_port", "kafka_controller_port"):
            object.__setattr__(self, name, _integer(name, getattr(self, name),
                                                    minimum=1, maximum=65535))
        if self.kafka_port == self.kafka_controller_port:
            raise SettingError("kafka_port and kafka_controller_port must differ")
        object.__setattr__(self, "broker_heap_mb",
                           _integer("broker_heap_mb", self.broker_heap_mb, minimum=128))
        object.__setattr__(self, "partitions",
                           _integer("partitions", self.partitions, minimum=1, maximum=64))
        object.__setattr__(self, "spark_driver_memory_mb",
                           _integer("spark_driver_memory_mb", self.spark_driver_memory_mb,
                                    minimum=256))
        if self.kafka_bootstrap_servers is not None and not self.kafka_bootstrap_servers.strip():
            object.__setattr__(self, "kafka_bootstrap_servers", None)
        if self.spark_remote is not None and not self.spark_remote.startswith("sc://"):
            raise SettingError(
                f"spark_remote must be a Spark Connect URL starting with sc://, "
                f"got {self.spark_remote!r}"
            )

    @property
    def bootstrap_servers(self) -> str:
        """Where Kafka clients connect: the external cluster, or the course's own broker."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def external_kafka(self) -> bool:
        """True when a cluster of the user's is configured and no broker should be started."""
        return self.kafka_bootstrap_servers is not None

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some settings changed; threshold names go to the thresholds."""
        threshold_names = {f.name for f in dataclasses.fields(Thresholds)}
        moved = {k: changes.pop(k) for k in list(changes) if k in threshold_names}
        if moved:
            changes["thresholds"] = changes.get("thresholds", self.thresholds).replace(**moved)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then environment variables, then ``overrides``.

        ``BANKCOURSE_HIGH_AMOUNT`` sets ``thresholds.high_amount``,
        ``BANKCOURSE_KAFKA_PORT`` sets ``kafka_port`` and so on; ``BANKCOURSE_KAFKA_SECURITY_X``
        sets the client option ``x`` of ``kafka_security``.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls) + dataclasses.fields(Thresholds):
            key = ENV_PREFIX + f.name.upper()
            if f.name not in ("thresholds", "kafka_security") and env.get(key, "") != "":
                values[f.name] = env[key]
        if env.get("KAFKA_BOOTSTRAP_SERVERS") and "kafka_bootstrap_servers" not in values:
            values["kafka_bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        if env.get("KAFKA_HOME") and "kafka_home" not in values:
            values["kafka_home"] = env["KAFKA_HOME"]
        prefix = ENV_PREFIX + "KAFKA_SECURITY_"
        security = {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)}
        if security:
            values["kafka_security"] = security
        values.update(overrides)
        return cls().replace(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables: :meth:`from_env` reads them back.

        For a child process (``python -m bankcourse ...``) that must use exactly these
        settings: overlay the result on ``os.environ``. A setting that is None is given
        as an empty value, which :meth:`from_env` reads as "not set", so a value in the
        parent's environment cannot leak in.
        """
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            if f.name in ("thresholds", "kafka_security"):
                continue
            value = getattr(self, f.name)
            env[ENV_PREFIX + f.name.upper()] = "" if value is None else str(value)
        for name, value in dataclasses.asdict(self.thresholds).items():
            env[ENV_PREFIX + name.upper()] = repr(value)
        for name, value in self.kafka_security.items():
            env[f"{ENV_PREFIX}KAFKA_SECURITY_{name.upper()}"] = str(value)
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap_servers or ""
        env["KAFKA_HOME"] = "" if self.kafka_home is None else str(self.kafka_home)
        return env


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bankcourse"


def _default_data_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data"
    return _default_cache_dir() / "data"
