"""Settings as a user sets them: environment variables in, typed values out, a clear message
naming the variable when a value cannot be used, and the sandbox's settings among them."""

from __future__ import annotations

import pytest

from enrich_pipeline.dagster_layer.resources import DataLegionResource, WarehouseResource
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import SettingError, Settings


def test_unset_and_empty_variables_keep_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_PERSON_TTL_DAYS", "")
    settings = Settings.from_env()
    assert settings.person_ttl_days == 30
    assert settings.max_credits_per_run is None
    assert settings.sandbox == SandboxConfig(latency_ms=0)  # the tests' environment sets 0


def test_the_sandbox_is_configured_from_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ENRICH_SANDBOX_MATCH_RATE": "0.5",
        "ENRICH_SANDBOX_RATE_LIMIT": "none",
        "ENRICH_SANDBOX_LIMIT_ALGORITHM": "Token_Bucket",
        "ENRICH_SANDBOX_HEADER_STYLE": "ietf",
        "ENRICH_SANDBOX_CREDITS": "10",
        "ENRICH_SANDBOX_API_KEY": "only-this-one",
    }.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env().sandbox == SandboxConfig(
        match_rate=0.5,
        latency_ms=0,
        rate_limit_per_min=None,
        limit_algorithm="token_bucket",
        header_style="ietf",
        credits=10,
        accepted_api_key="only-this-one",
    )
    monkeypatch.setenv("ENRICH_SANDBOX_RATE_LIMIT", "0")
    monkeypatch.setenv("ENRICH_SANDBOX_CREDITS", "0")
    sandbox = Settings.from_env().sandbox
    # No rate limit at all, but a contract with no credits left: two different zeros.
    assert (sandbox.rate_limit_per_min, sandbox.credits) == (None, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENRICH_SANDBOX_MATCH_RATE", "lots"),
        ("ENRICH_SANDBOX_MATCH_RATE", "1.5"),
        ("ENRICH_SANDBOX_RATE_LIMIT", "-3"),
        ("ENRICH_SANDBOX_HEADER_STYLE", "rfc"),
        ("ENRICH_PARTITION_START", "2024-13-01"),
        ("ENRICH_CRM_DESTINATIONS", "file,ftp"),
        ("ENRICH_MAX_CREDITS_PER_RUN", "0"),
        ("ENRICH_FIELD_PROFILE", "everything"),
        ("ENRICH_MIN_MATCH_CONFIDENCE", "certain"),
        ("ENRICH_MAX_STALE_SHARE", "1.2"),
    ],
)
def test_an_unusable_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=f"{name}={value!r} is not usable"):
        Settings.from_env()


def test_each_groups_own_rules_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every group's validators end up on one class: none may shadow another's.
    monkeypatch.setenv("DATA_LEGION_BASE_URL", "https://provider.test/")
    monkeypatch.setenv("HUBSPOT_BASE_URL", "https://crm.test/")
    monkeypatch.setenv("ENRICH_SANDBOX_CREDITS", "unlimited")
    monkeypatch.setenv("ENRICH_MIN_MATCH_CONFIDENCE", "HIGH")
    settings = Settings.from_env()
    assert (settings.base_url, settings.hubspot_base_url) == (
        "https://provider.test",
        "https://crm.test",
    )
    assert (settings.credits, settings.min_match_confidence) == (None, "high")


def test_credits_per_run_can_be_said_to_be_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_MAX_CREDITS_PER_RUN", "unlimited")
    assert Settings.from_env().max_credits_per_run is None
    monkeypatch.setenv("ENRICH_MAX_CREDITS_PER_RUN", "250")
    assert Settings.from_env().max_credits_per_run == 250


def test_a_secret_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_LEGION_API_KEY", "dl-very-secret")
    settings = Settings.from_env()
    assert settings.secret("data_legion_api_key") == "dl-very-secret"
    assert "dl-very-secret" not in repr(settings) + str(settings.model_dump())
    assert settings.secret("hubspot_access_token") is None


def test_resources_take_their_configuration_from_the_settings(tmp_path) -> None:
    settings = Settings(warehouse_path=str(tmp_path / "w.duckdb"), duckdb_memory_limit="512MB")
    warehouse = WarehouseResource.from_settings(settings)
    assert (warehouse.warehouse_path, warehouse.duckdb_memory_limit) == (
        str(tmp_path / "w.duckdb"),
        "512MB",
    )
    provider = DataLegionResource.from_settings(
        Settings(limiter_dir="~/limits", bulk_size=40), api_key="k"
    )
    assert provider.bulk_size == 40
    # ~ is the user's home, expanded when the limiter state is opened.
    assert provider.endpoint(logger=None).shared_state_dir.is_absolute()  # type: ignore[arg-type]
