"""Callback settings: Standard Webhooks secrets per tenant (several while one rotates), a default
for the other tenants, the retry window, and the start-up check of every secret."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from standardwebhooks import Webhook

from pipeline.config import MAKE_WHSEC, Settings, SettingsError
from pipeline.signing import sign_callback

pytestmark = pytest.mark.unit


def whsec(size: int, fill: bytes = b"k") -> str:
    return "whsec_" + base64.b64encode(fill * size).decode()


DEFAULT = whsec(32, b"d")
ACME_OLD = whsec(32, b"o")
ACME_NEW = whsec(24, b"n")
GLOBEX = whsec(64, b"g")


def test_each_tenant_signs_with_its_own_secrets_and_the_others_with_the_default() -> None:
    settings = Settings.from_env(
        {
            "CALLBACK_SECRET": DEFAULT,
            "CALLBACK_SECRETS": f"acme:{ACME_OLD}, globex:{GLOBEX},acme:{ACME_NEW}",
        }
    )
    assert settings.callback_secrets_for("acme") == (ACME_OLD, ACME_NEW)
    assert settings.callback_secrets_for("globex") == (GLOBEX,)
    assert settings.callback_secrets_for("initech") == (DEFAULT,)
    assert settings.callback_secret.reveal() == DEFAULT


def test_without_a_default_only_the_named_tenants_have_secrets() -> None:
    settings = Settings.from_env({"CALLBACK_SECRETS": f"acme:{ACME_NEW}"})
    assert settings.callback_secrets_for("acme") == (ACME_NEW,)
    assert settings.callback_secrets_for("globex") == ()
    assert not settings.callback_secret
    assert Settings.from_env({}).callback_secrets_for("acme") == ()


def test_a_secret_without_its_padding_is_read_as_the_reference_library_reads_it() -> None:
    unpadded = whsec(32, b"u").rstrip("=")
    settings = Settings.from_env({"CALLBACK_SECRET": unpadded})
    headers = sign_callback(settings.callback_secrets_for("acme"), "m", b"{}")
    assert Webhook(whsec(32, b"u")).verify(b"{}", headers) == {}


@pytest.mark.parametrize(
    "bad",
    [
        "callback-secret-of-the-old-kind-0123456789",  # no prefix
        "whsec_",  # nothing after it
        "whsec_not base64!!",
        whsec(16),  # too short a key
        whsec(65),  # too long a key
        whsec(32).removeprefix("whsec_"),  # base64 without the prefix
    ],
)
@pytest.mark.parametrize("name", ["CALLBACK_SECRET", "CALLBACK_SECRETS"])
def test_a_malformed_secret_stops_start_up_naming_the_variable(name: str, bad: str) -> None:
    value = bad if name == "CALLBACK_SECRET" else f"acme:{ACME_OLD},globex:{bad}"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name} must hold Standard Webhooks secrets")
    assert MAKE_WHSEC in message
    # A malformed secret is still a secret: the message never repeats one.
    assert bad == "whsec_" or bad not in message
    assert ACME_OLD not in message


@pytest.mark.parametrize("pair", ["acme", f":{ACME_OLD}", f"ac me:{ACME_OLD}", f"é:{ACME_OLD}"])
def test_a_malformed_pair_stops_start_up(pair: str) -> None:
    with pytest.raises(SettingsError, match="CALLBACK_SECRETS must be comma-separated"):
        Settings.from_env({"CALLBACK_SECRETS": pair})


def test_the_command_the_message_suggests_makes_a_secret_that_is_accepted() -> None:
    code = MAKE_WHSEC.removeprefix('python -c "').removesuffix('"')
    made = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert Settings.from_env({"CALLBACK_SECRET": made}).callback_secrets_for("acme") == (made,)


def test_the_retry_window_defaults_to_six_hours_and_is_checked() -> None:
    assert Settings.from_env({}).callback_retry_window_seconds == 6 * 3600
    window = Settings.from_env({"CALLBACK_RETRY_WINDOW_SECONDS": "600"})
    assert window.callback_retry_window_seconds == 600
    for raw in ["-1", "six hours"]:
        with pytest.raises(SettingsError, match="CALLBACK_RETRY_WINDOW_SECONDS"):
            Settings.from_env({"CALLBACK_RETRY_WINDOW_SECONDS": raw})
