"""Settings from the environment: defaults, and a start-up error that names the bad variable."""

from __future__ import annotations

import pytest

from pipeline.config import Settings, SettingsError

pytestmark = pytest.mark.unit

SECRET = "s" * 16


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.broker_url == settings.redis_url
    assert settings.s3_bucket == "imagine-pipeline"
    assert settings.s3_prefix == ""
    assert settings.s3_endpoint_url is None
    assert settings.s3_region == "us-east-1"
    assert settings.runware_api_url == "https://api.runware.ai/v1"
    assert settings.runware_model == "xai:grok-imagine@image-pro"
    assert settings.runware_max_in_flight == 4
    assert settings.runware_image_hosts == ("im.runware.ai",)
    assert settings.allow_private_urls is False
    assert settings.public_base_url == "http://127.0.0.1:8000"
    assert settings.webhook_secrets == ()
    assert len(settings.api_keys) == 0
    assert settings.default_deadline_seconds == 900
    assert settings.reconcile_interval_seconds == 5.0
    assert settings.reconcile_grace_seconds == 60
    assert (settings.log_level, settings.log_format) == ("INFO", "json")
    assert settings.retry_backoff_cap_seconds < settings.visibility_timeout_seconds


def test_the_contract_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:6390/2",
            "S3_BUCKET": "b",
            "S3_PREFIX": "images/",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "RUNWARE_API_KEY": " rw ",
            "RUNWARE_API_URL": "http://127.0.0.1:9100/v1",
            "RUNWARE_MAX_IN_FLIGHT": "2",
            "RUNWARE_IMAGE_HOSTS": "im.runware.ai, 127.0.0.1:9100 ,",
            "ALLOW_PRIVATE_URLS": "true",
            "PUBLIC_BASE_URL": "http://127.0.0.1:8001/",
            "WEBHOOK_SECRETS": f"{SECRET},{'t' * 20}",
            "DEFAULT_DEADLINE_SECONDS": "120",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "text",
        }
    )
    assert settings.redis_url == settings.broker_url == "redis://127.0.0.1:6390/2"
    assert settings.s3_prefix == "images/"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.runware_api_key.reveal() == "rw"
    assert settings.runware_max_in_flight == 2
    assert settings.runware_image_hosts == ("im.runware.ai", "127.0.0.1:9100")
    assert settings.allow_private_urls is True
    assert settings.public_base_url == "http://127.0.0.1:8001"
    assert settings.require_webhook_secrets() == (SECRET, "t" * 20)
    assert settings.default_deadline_seconds == 120
    assert (settings.log_level, settings.log_format) == ("DEBUG", "text")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUNWARE_MAX_IN_FLIGHT", "four"),
        ("RUNWARE_MAX_IN_FLIGHT", "0"),
        ("DEFAULT_DEADLINE_SECONDS", "1.5"),
        ("DEFAULT_DEADLINE_SECONDS", "10"),
        ("RECONCILE_GRACE_SECONDS", "soon"),
        ("CELERY_VISIBILITY_TIMEOUT", "-1"),
        ("RECONCILE_INTERVAL_SECONDS", "fast"),
        ("RUNWARE_TIMEOUT_SECONDS", "0.5"),
        ("ALLOW_PRIVATE_URLS", "maybe"),
        ("REDIS_URL", "localhost:6379"),
        ("PUBLIC_BASE_URL", "ftp://example.com"),
        ("S3_ENDPOINT_URL", "127.0.0.1:9000"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "name",
    ["RUNWARE_MAX_IN_FLIGHT", "S3_BUCKET", "ALLOW_PRIVATE_URLS", "REDIS_URL", "API_RATE_LIMIT",
     "RUNWARE_TIMEOUT_SECONDS"],
)  # fmt: skip
def test_a_blank_value_that_would_become_a_default_names_the_variable(name: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} is set but empty"):
        Settings.from_env({name: " "})


def test_blank_is_a_value_where_the_default_is_blank_and_unset_is_the_default() -> None:
    settings = Settings.from_env(
        {"S3_PREFIX": "", "RUNWARE_API_KEY": "", "S3_ENDPOINT_URL": "", "API_KEYS": ""}
    )
    assert settings.s3_prefix == ""
    assert settings.s3_endpoint_url is None
    assert Settings.from_env({}).s3_bucket == "imagine-pipeline"


def test_an_s3_prefix_must_end_with_a_slash() -> None:
    with pytest.raises(SettingsError, match="S3_PREFIX"):
        Settings.from_env({"S3_PREFIX": "images"})
    assert Settings.from_env({"S3_PREFIX": "a/b/"}).s3_prefix == "a/b/"


def test_api_keys_map_keys_to_tenants() -> None:
    settings = Settings.from_env({"API_KEYS": "acme:key-1, globex:key-2,acme:key-3"})
    keys = settings.api_keys
    assert [keys.tenant_for(key) for key in ("key-1", "key-2", "key-3", "key-4")] == [
        "acme",
        "globex",
        "acme",
        None,
    ]
    assert keys.tenants() == ["acme", "globex"]


@pytest.mark.parametrize(
    "value", ["acme", "acme:", ":key", "acme:key,globex", " : ", "acme:key,globex:key"]
)
def test_malformed_api_keys_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="API_KEYS"):
        Settings.from_env({"API_KEYS": value})


def test_webhook_secrets_must_be_long_enough() -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SECRETS"):
        Settings.from_env({"WEBHOOK_SECRETS": f"{SECRET},short"})


def test_webhook_secrets_are_required_to_sign() -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SECRETS"):
        Settings.from_env({}).require_webhook_secrets()


def test_the_runware_key_is_required_to_submit() -> None:
    with pytest.raises(SettingsError, match="RUNWARE_API_KEY"):
        Settings.from_env({}).require_runware_key()


@pytest.mark.parametrize(("cap", "visibility"), [("3600", "3600"), ("600", "300")])
def test_the_backoff_cap_must_stay_below_the_visibility_timeout(cap: str, visibility: str) -> None:
    with pytest.raises(SettingsError, match="RETRY_BACKOFF_CAP_SECONDS"):
        Settings.from_env(
            {"RETRY_BACKOFF_CAP_SECONDS": cap, "CELERY_VISIBILITY_TIMEOUT": visibility}
        )


def test_a_backoff_cap_below_the_visibility_timeout_is_accepted() -> None:
    settings = Settings.from_env(
        {"RETRY_BACKOFF_CAP_SECONDS": "299", "CELERY_VISIBILITY_TIMEOUT": "300"}
    )
    assert (settings.retry_backoff_cap_seconds, settings.visibility_timeout_seconds) == (299, 300)


def test_a_model_outside_the_catalog_is_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="RUNWARE_MODEL"):
        Settings.from_env({"RUNWARE_MODEL": "xai:grok-imagine@image-ultra"})


def test_env_example_documents_every_setting() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    source = (root / "pipeline" / "config.py").read_text()
    read = set(re.findall(r'env,\s*"([A-Z0-9_]+)"', source))
    documented = set(
        re.findall(r"^#?\s*([A-Z0-9_]+)=", (root / ".env.example").read_text(), re.MULTILINE)
    )
    assert read, "no settings found in pipeline/config.py"
    assert read - documented == set()


def test_the_receiver_keeps_idle_connections_longer_than_a_load_balancer() -> None:
    settings = Settings.from_env({})
    assert settings.receiver_keepalive_seconds == 75  # above the usual 60 s balancer idle timeout
    assert settings.receiver_body_timeout_seconds == 30.0
    tuned = Settings.from_env(
        {"RECEIVER_KEEPALIVE_SECONDS": "620", "RECEIVER_BODY_TIMEOUT_SECONDS": "5"}
    )
    assert (tuned.receiver_keepalive_seconds, tuned.receiver_body_timeout_seconds) == (620, 5.0)
    for name, value in [
        ("RECEIVER_KEEPALIVE_SECONDS", "0"),
        ("RECEIVER_KEEPALIVE_SECONDS", "long"),
        ("RECEIVER_BODY_TIMEOUT_SECONDS", "0.5"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_every_catalog_model_is_allowed_by_default() -> None:
    settings = Settings.from_env({})
    assert set(settings.allowed_models) == {
        "xai:grok-imagine@image-pro",
        "xai:grok-imagine@image",
        "xai:grok-imagine@image-quality",
    }


def test_allowed_models_are_read_as_a_comma_list() -> None:
    settings = Settings.from_env(
        {
            "RUNWARE_MODEL": "xai:grok-imagine@image",
            "RUNWARE_ALLOWED_MODELS": "xai:grok-imagine@image, xai:grok-imagine@image-quality",
        }
    )
    assert settings.allowed_models == ("xai:grok-imagine@image", "xai:grok-imagine@image-quality")


def test_the_default_model_must_be_allowed() -> None:
    with pytest.raises(SettingsError, match=r"RUNWARE_MODEL .*RUNWARE_ALLOWED_MODELS"):
        Settings.from_env({"RUNWARE_ALLOWED_MODELS": "xai:grok-imagine@image"})


def test_an_allowed_model_outside_the_catalog_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"RUNWARE_ALLOWED_MODELS .*image-ultra"):
        Settings.from_env(
            {"RUNWARE_ALLOWED_MODELS": "xai:grok-imagine@image-pro,xai:grok-imagine@image-ultra"}
        )


def test_rate_limits_read_in_flask_limiter_notation_or_off() -> None:
    assert Settings.from_env({}).api_rate_limit == "20/second;600/minute"
    read = Settings.from_env({"API_RATE_LIMIT": "5 per second, 100/minute"})
    assert read.api_rate_limit == "5 per second;100/minute"
    assert Settings.from_env({"API_RATE_LIMIT": "off"}).api_rate_limit == ""
    with pytest.raises(SettingsError, match="API_RATE_LIMIT"):
        Settings.from_env({"API_RATE_LIMIT": "fast"})


def test_caps_and_result_urls_are_numbers_where_zero_turns_them_off() -> None:
    settings = Settings.from_env(
        {
            "RESULT_URL_SECONDS": "0",
            "TENANT_DAILY_IMAGES": "0",
            "TENANT_DAILY_SPEND_USD": "12.5",
            "GLOBAL_DAILY_SPEND_USD": "0",
        }
    )
    assert settings.result_url_seconds == 0
    assert settings.tenant_daily_images == 0
    assert settings.tenant_daily_spend_usd == 12.5
    assert settings.global_daily_spend_usd == 0
    with pytest.raises(SettingsError, match="TENANT_DAILY_SPEND_USD"):
        Settings.from_env({"TENANT_DAILY_SPEND_USD": "-1"})
