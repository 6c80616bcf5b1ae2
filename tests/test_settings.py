"""Settings: defaults in one place, overridable from code and environment, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankcourse.settings import SettingError, Settings, Thresholds


def test_defaults_are_the_rule_thresholds_of_the_course() -> None:
    t = Thresholds()
    assert (t.high_amount, t.transfer_spike, t.drain_balance) == (200_000.0, 150_000.0, 0.0)


def test_environment_overrides_thresholds_and_connection_settings() -> None:
    s = Settings.from_env({
        "BANKCOURSE_HIGH_AMOUNT": "100000",
        "BANKCOURSE_KAFKA_PORT": "19999",
        "BANKCOURSE_DATA_DIR": "/srv/data",
    })
    assert s.thresholds.high_amount == 100_000.0
    assert s.kafka_port == 19999
    assert s.bootstrap_servers == "127.0.0.1:19999"
    assert s.data_dir == Path("/srv/data")
    assert not s.external_kafka


def test_code_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"BANKCOURSE_HIGH_AMOUNT": "100000"}, high_amount=5_000)
    assert s.thresholds.high_amount == 5_000.0


def test_kafka_bootstrap_servers_selects_an_external_cluster_and_its_security() -> None:
    s = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093",
        "BANKCOURSE_KAFKA_SECURITY_SECURITY_PROTOCOL": "SASL_SSL",
        "BANKCOURSE_KAFKA_SECURITY_SASL_MECHANISM": "PLAIN",
    })
    assert s.external_kafka
    assert s.bootstrap_servers == "kafka.example:9093"
    assert s.kafka_security == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}


def test_an_empty_environment_variable_keeps_the_default() -> None:
    assert Settings.from_env({"BANKCOURSE_HIGH_AMOUNT": ""}).thresholds.high_amount == 200_000


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf"])
def test_a_bad_threshold_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingError, match="high_amount"):
        Settings.from_env({"BANKCOURSE_HIGH_AMOUNT": value})


def test_a_boolean_is_not_taken_for_a_number() -> None:
    with pytest.raises(SettingError, match="transfer_spike"):
        Thresholds(transfer_spike=True)


@pytest.mark.parametrize(("name", "value"), [
    ("kafka_port", 0), ("kafka_port", 70000), ("kafka_port", "x"), ("partitions", 1.5),
    ("broker_heap_mb", 16),
])
def test_bad_service_settings_name_the_setting_and_the_allowed_range(name, value) -> None:
    with pytest.raises(SettingError, match=name):
        Settings(**{name: value})


def test_broker_and_controller_ports_must_differ() -> None:
    with pytest.raises(SettingError, match="differ"):
        Settings(kafka_port=9000, kafka_controller_port=9000)


def test_spark_remote_must_be_a_spark_connect_url() -> None:
    assert Settings(spark_remote="sc://spark:15002").spark_remote == "sc://spark:15002"
    with pytest.raises(SettingError, match="sc://"):
        Settings(spark_remote="spark://host:7077")


def test_replace_routes_threshold_names_to_the_thresholds() -> None:
    s = Settings().replace(transfer_spike=1_000, partitions=3)
    assert s.thresholds.transfer_spike == 1_000.0
    assert s.partitions == 3
    assert Settings().thresholds.transfer_spike == 150_000.0


def test_to_env_gives_back_the_same_settings_through_from_env(tmp_path: Path) -> None:
    settings = Settings(
        thresholds=Thresholds(high_amount=123_456.5, transfer_spike=99_000.0),
        data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", kafka_port=19_500,
        kafka_controller_port=19_501, partitions=3, topic_alerts="alerts-x",
        kafka_bootstrap_servers="broker-a:9092",
        kafka_security={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
        spark_driver_memory_mb=700)
    assert Settings.from_env(settings.to_env()) == settings


def test_to_env_clears_what_the_parent_environment_would_otherwise_add() -> None:
    parent = {"KAFKA_BOOTSTRAP_SERVERS": "elsewhere:9092",
              "BANKCOURSE_SPARK_REMOTE": "sc://elsewhere:15002", "BANKCOURSE_HIGH_AMOUNT": "5"}
    child = Settings.from_env({**parent, **Settings().to_env()})
    assert child == Settings()
    assert not child.external_kafka and child.spark_remote is None
