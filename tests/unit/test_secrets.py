"""Secrets never show: not in a repr, not in Celery's configuration, not in a pickled setting."""

from __future__ import annotations

import json
import pickle

import pytest
from celery.app.utils import filter_hidden_settings

from pipeline.config import Settings
from pipeline.dispatch import create_celery
from pipeline.secrets import ApiKeys, Secret, redact_url

pytestmark = pytest.mark.unit

RUNWARE_KEY = "rw-key-that-must-never-show"
WEBHOOK_SECRET = "webhook-secret-that-must-never-show"
CALLBACK_SECRET = "whsec_Y2FsbGJhY2stc2VjcmV0LXRoYXQtbXVzdC1uZXZlci1zaG93"
TENANT_CALLBACK_SECRET = "whsec_dGVuYW50LWNhbGxiYWNrLXNlY3JldC1uZXZlci1zaG93bg=="
TENANT_KEY = "tenant-key-that-must-never-show"
REDIS_PASSWORD = "redis-password-that-must-never-show"
SECRETS = (
    RUNWARE_KEY,
    WEBHOOK_SECRET,
    CALLBACK_SECRET,
    TENANT_CALLBACK_SECRET,
    TENANT_KEY,
    REDIS_PASSWORD,
)


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env(
        {
            "RUNWARE_API_KEY": RUNWARE_KEY,
            "WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "CALLBACK_SECRET": CALLBACK_SECRET,
            "CALLBACK_SECRETS": f"acme:{TENANT_CALLBACK_SECRET}",
            "API_KEYS": f"acme:{TENANT_KEY}",
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0",
        }
    )


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_the_settings_repr_masks_every_secret(settings: Settings) -> None:
    assert_no_secret(repr(settings))
    assert_no_secret(str(settings))
    assert_no_secret(f"{settings.runware_api_key} {settings.webhook_secrets} {settings.api_keys}")
    assert "acme" in repr(settings.api_keys)  # tenants are not secret; their keys are
    assert settings.require_runware_key() == RUNWARE_KEY
    assert settings.require_webhook_secrets() == (WEBHOOK_SECRET,)
    assert settings.callback_secrets_for("acme") == (TENANT_CALLBACK_SECRET,)
    assert settings.callback_secrets_for("globex") == (CALLBACK_SECRET,)


def test_a_secret_serialised_by_accident_is_the_mask(settings: Settings) -> None:
    assert_no_secret(json.dumps({"key": settings.runware_api_key}, default=str))
    # Our own bytes, just made: nothing untrusted is unpickled.
    assert_no_secret(repr(pickle.loads(pickle.dumps(settings.runware_api_key))))  # noqa: S301


def test_celery_configuration_holds_no_setting_and_no_secret(settings: Settings) -> None:
    app = create_celery(settings)
    assert "imagine_settings" not in app.conf
    shown = filter_hidden_settings(app.conf.table(with_defaults=False))  # what `inspect conf` sends
    assert_no_secret(json.dumps(shown, default=repr))
    assert app.imagine_settings is settings


def test_api_keys_find_the_tenant_of_a_key() -> None:
    keys = ApiKeys([("k1", "acme"), ("k2", "globex")])
    assert (keys.tenant_for("k1"), keys.tenant_for("k2"), keys.tenant_for("k3")) == (
        "acme",
        "globex",
        None,
    )
    assert keys.tenant_for("") is None


def test_secrets_compare_by_value_and_are_false_when_empty() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and Secret("x")


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("redis://:pw@h:1/0") == "redis://:**********@h:1/0"
    assert redact_url("redis://u:pw@h/0") == "redis://u:**********@h/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
