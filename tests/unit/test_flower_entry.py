"""`python -m workers.flower` refuses to serve Flower without authentication or off loopback."""

from __future__ import annotations

import pytest

from workers.flower import FlowerConfigError, flower_environment

pytestmark = pytest.mark.unit

GOOD = "operator:a-password-of-24-characters"
OAUTH = {
    "FLOWER_AUTH": ".*@example.com",
    "FLOWER_AUTH_PROVIDER": "flower.views.auth.GoogleAuth2LoginHandler",
    "FLOWER_OAUTH2_KEY": "client-id",
    "FLOWER_OAUTH2_SECRET": "client-secret",
    "FLOWER_OAUTH2_REDIRECT_URI": "http://localhost:5555/login",
}


@pytest.mark.parametrize("environ", [
    {},
    {"FLOWER_BASIC_AUTH": ""},
    {"FLOWER_BASIC_AUTH": "operator:short"},
    {"FLOWER_BASIC_AUTH": "no-colon-in-this-value-at-all"},
    {"FLOWER_BASIC_AUTH": f"{GOOD},other:"},
    {"FLOWER_AUTH": ".*@example.com"},
    {**OAUTH, "FLOWER_OAUTH2_SECRET": ""},
    {"FLOWER_BASIC_AUTH": GOOD, "FLOWER_UNAUTHENTICATED_API": "true"},
])  # fmt: skip
def test_refuses_to_start_without_authentication(environ: dict[str, str]) -> None:
    with pytest.raises(FlowerConfigError):
        flower_environment(environ)


@pytest.mark.parametrize("arg", [
    "--basic_auth=operator:a-password-of-24-characters", "--basic-auth=x:y",
    "--oauth2_secret=s", "--address=0.0.0.0", "--conf=other.py",
])  # fmt: skip
def test_credentials_and_the_address_never_come_from_argv(arg: str) -> None:
    with pytest.raises(FlowerConfigError):
        flower_environment({"FLOWER_BASIC_AUTH": GOOD}, [arg])


def test_binds_loopback_unless_told_otherwise_and_drops_pipeline_credentials() -> None:
    env = flower_environment(
        {
            "FLOWER_BASIC_AUTH": GOOD,
            "RUNWARE_API_KEY": "rk",
            "WEBHOOK_SECRETS": "ws",
            "API_KEYS": "t:k",
            "REDIS_URL": "redis://r",
        }
    )
    assert env["FLOWER_ADDRESS"] == "127.0.0.1"
    assert env["FLOWER_BASIC_AUTH"] == GOOD and env["REDIS_URL"] == "redis://r"
    assert not {"RUNWARE_API_KEY", "WEBHOOK_SECRETS", "API_KEYS"} & set(env)
    told = flower_environment({**OAUTH, "FLOWER_ADDRESS": "10.0.0.7"}, ["--port=5556"])
    assert told["FLOWER_ADDRESS"] == "10.0.0.7"
