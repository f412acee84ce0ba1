"""Every setting of the pipeline, read from the environment, typed and checked at start-up."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from pipeline.secrets import ApiKeys, Secret, redact_url


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _raw(env: Mapping[str, str], name: str, default: object) -> str | None:
    """The variable's value, None when unset; set but blank is refused when the default is not
    blank: a blank that silently became the default would hide the user's mistake."""
    raw = env.get(name)
    if raw is None or raw.strip() != "":
        return raw
    if default is None or str(default) == "":
        return None
    raise SettingsError(
        f"{name} is set but empty: give it a value, or unset it for the default ({default})"
    )


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name, default)
    return default if value is None else value.strip()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _raw(env, name, default)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = _raw(env, name, default)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(env, name, default)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = (_raw(env, name, default) or "").strip() or default
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https", "redis", "rediss", "sentinel"} or not parts.netloc:
        raise SettingsError(f"{name} must be an absolute URL, got {value!r}")
    return value.rstrip("/")


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default, 0)
    if value > 65535:
        raise SettingsError(f"{name} must be a TCP port (0 to 65535), got {value}")
    return value


def _directory(env: Mapping[str, str], name: str) -> str:
    """An existing directory, or "" when unset. Set but blank is refused: prometheus_client
    goes by the variable's presence, and would write its files to the working directory."""
    if name in env and not env[name].strip():
        raise SettingsError(f"{name} is set but empty: name a directory, or unset it")
    value = _str(env, name, "")
    if value and not os.path.isdir(value):
        raise SettingsError(f"{name} must be an existing directory, got {value!r}")
    return value


TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _required_url(env: Mapping[str, str], name: str, default: str) -> str:
    return _url(env, name, default) or default


def _sentinels(env: Mapping[str, str]) -> tuple[str, ...]:
    """REDIS_SENTINELS as host:port items; with them, REDIS_URL must be unset."""
    sentinels = _list(env, "REDIS_SENTINELS")
    for item in sentinels:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"REDIS_SENTINELS must be comma-separated host:port items, got {item!r}"
            )
    if sentinels and env.get("REDIS_URL", "").strip():
        raise SettingsError(
            "REDIS_URL and REDIS_SENTINELS are both set: unset REDIS_URL when Redis is reached "
            "through Sentinel (REDIS_SENTINEL_MASTER, REDIS_PASSWORD and REDIS_DB name the rest)"
        )
    if not sentinels:
        for name in ("REDIS_SENTINEL_MASTER", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"):
            if env.get(name, "").strip():
                raise SettingsError(
                    f"{name} is set but REDIS_SENTINELS is not: without Sentinel, REDIS_URL "
                    "carries the password"
                )
    master = env.get("REDIS_SENTINEL_MASTER", "imagine").strip() or "imagine"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", master):
        raise SettingsError(
            f"REDIS_SENTINEL_MASTER must be letters, digits, '.', '_' or '-', got {master!r}"
        )
    return sentinels


def _sentinel_url(env: Mapping[str, str], sentinels: tuple[str, ...]) -> str:
    """A display form of the Sentinel deployment (no password), in the `limits` notation."""
    master = _str(env, "REDIS_SENTINEL_MASTER", "imagine")
    db = _int(env, "REDIS_DB", 0, 0)
    return f"redis+sentinel://{','.join(sentinels)}/{master}/{db}"


def _broker_default(env: Mapping[str, str], redis_url: str) -> str:
    """The broker follows the job store's Redis: kombu's `sentinel://` form behind Sentinel."""
    if not redis_url.startswith("redis+sentinel://"):
        return redis_url
    password = _str(env, "REDIS_PASSWORD", "")
    auth = f":{quote(password, safe='')}@" if password else ""
    db = _int(env, "REDIS_DB", 0, 0)
    return ";".join(f"sentinel://{auth}{item}/{db}" for item in _list(env, "REDIS_SENTINELS"))


def _api_keys(env: Mapping[str, str]) -> ApiKeys:
    keys: dict[str, str] = {}
    for pair in _list(env, "API_KEYS"):
        tenant, sep, key = pair.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise SettingsError("API_KEYS must be comma-separated tenant:key pairs")
        if not TENANT_NAME.fullmatch(tenant.strip()):
            raise SettingsError(
                "API_KEYS tenant names must be 1-64 ASCII letters, digits, '.', '-' or '_'"
            )
        if key.strip() in keys:
            raise SettingsError("API_KEYS holds the same key twice")
        keys[key.strip()] = tenant.strip()
    return ApiKeys(keys.items())


WHSEC_PREFIX = "whsec_"
WHSEC_KEY_BYTES = (24, 64)
MAKE_WHSEC = (
    "python -c \"import base64,os;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
)


def _callback_secret(name: str, value: str) -> Secret:
    """A Standard Webhooks secret: 'whsec_' and the base64 of 24 to 64 bytes. The message never
    repeats the value: it is a secret, even when malformed."""
    encoded = value.removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    low, high = WHSEC_KEY_BYTES
    if not value.startswith(WHSEC_PREFIX) or not low <= len(key) <= high:
        raise SettingsError(
            f"{name} must hold Standard Webhooks secrets: '{WHSEC_PREFIX}' followed by "
            f"the base64 of {low} to {high} random bytes; make one with: {MAKE_WHSEC}"
        )
    return Secret(value)


def _tenant_callback_secrets(env: Mapping[str, str]) -> tuple[tuple[str, Secret], ...]:
    """CALLBACK_SECRETS: tenant:whsec_... pairs; a tenant named twice has two secrets (rotation)."""
    pairs = []
    for pair in _list(env, "CALLBACK_SECRETS"):
        tenant, sep, secret = (part.strip() for part in pair.partition(":"))
        if not sep or not TENANT_NAME.fullmatch(tenant):
            raise SettingsError(
                "CALLBACK_SECRETS must be comma-separated tenant:whsec_... pairs, tenant names "
                "of 1-64 ASCII letters, digits, '.', '-' or '_'"
            )
        pairs.append((tenant, _callback_secret("CALLBACK_SECRETS", secret)))
    return tuple(pairs)


def _default_callback_secret(env: Mapping[str, str]) -> Secret:
    value = _str(env, "CALLBACK_SECRET", "")
    return _callback_secret("CALLBACK_SECRET", value) if value else Secret()


RATE_LIMIT_ITEM = re.compile(
    r"^\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?$", re.IGNORECASE
)


def _rate_limit(env: Mapping[str, str]) -> str:
    """API_RATE_LIMIT: Flask-Limiter's notation ("20/second;600/minute"), or "off"."""
    raw = _raw(env, "API_RATE_LIMIT", Settings.api_rate_limit)
    if raw is None:
        return Settings.api_rate_limit
    if raw.strip().lower() in {"off", "none", "0"}:
        return ""
    items = [item.strip() for item in re.split(r"[;,]", raw) if item.strip()]
    if not items or not all(RATE_LIMIT_ITEM.fullmatch(item) for item in items):
        raise SettingsError(
            f"API_RATE_LIMIT must be limits like '20/second;600/minute' or 'off', got {raw!r}"
        )
    return ";".join(items)


@dataclass(frozen=True)
class Settings:
    """Typed settings; build with `Settings.from_env()`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Redis behind Sentinel (docs/redis.md): the sentinels' host:port list; empty: REDIS_URL.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_master: str = "imagine"
    redis_password: Secret = field(default_factory=Secret)
    redis_sentinel_password: Secret = field(default_factory=Secret)
    redis_db: int = 0
    # Replicas that must confirm a new job and a slot's taskUUID before they are relied on.
    redis_replica_acks: int = 0
    redis_replica_wait_ms: int = 1000
    s3_bucket: str = "imagine-pipeline"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    # The endpoint presigned URLs name, when Runware reaches S3 by another address than we do
    # (http://minio:9000 inside compose, https://s3.example.com outside); None: s3_endpoint_url.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    runware_api_url: str = "https://api.runware.ai/v1"
    runware_api_key: Secret = field(default_factory=Secret)
    runware_model: str = "xai:grok-imagine@image-pro"
    # Models a job may name (`model`, `fallbackModel`); empty: every model of the catalog.
    runware_allowed_models: tuple[str, ...] = ()
    runware_max_in_flight: int = 4
    runware_timeout_seconds: float = 30.0
    runware_image_hosts: tuple[str, ...] = ("im.runware.ai",)
    allow_private_urls: bool = False
    public_base_url: str = "http://127.0.0.1:8000"
    webhook_secrets: tuple[Secret, ...] = ()
    # Signs callbacks of tenants CALLBACK_SECRETS does not name; empty: they get none.
    callback_secret: Secret = field(default_factory=Secret)
    callback_tenant_secrets: tuple[tuple[str, Secret], ...] = ()
    # How long a callback is retried after its event (the job's end, or an operator's resend).
    callback_retry_window_seconds: int = 6 * 3600
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    receiver_roles: tuple[str, ...] = ("webhooks", "api", "metrics")
    receiver_keepalive_seconds: int = 75
    receiver_body_timeout_seconds: float = 30.0
    default_deadline_seconds: int = 900
    max_deadline_seconds: int = 86400
    upload_url_margin_seconds: int = 600
    webhook_max_body_bytes: int = 1_048_576
    inline_promote_timeout_seconds: float = 3.0
    inline_promote_budget_seconds: float = 2.0
    finalize_retry_seconds: int = 2
    reconcile_interval_seconds: float = 5.0
    reconcile_grace_seconds: int = 60
    job_retention_seconds: int = 7 * 86400
    slot_max_attempts: int = 3
    submit_max_retries: int = 8
    retry_backoff_cap_seconds: int = 60
    visibility_timeout_seconds: int = 3600
    max_image_bytes: int = 50 * 1024 * 1024
    circuit_probe_seconds: int = 60
    budget_wait_seconds: int = 10
    upload_wait_seconds: int = 30
    size_mismatch_fails: bool = False
    # How long a presigned GET URL in a job view lives; 0: job views carry no URLs.
    result_url_seconds: int = 900
    # Per-tenant request rates on the jobs API, in Flask-Limiter's notation; "" for none.
    api_rate_limit: str = "20/second;600/minute"
    # Per-tenant daily caps on images and estimated spend (USD), and one on the whole
    # deployment's daily spend; 0: no cap.
    tenant_daily_images: int = 5000
    tenant_daily_spend_usd: float = 500.0
    global_daily_spend_usd: float = 2000.0
    log_level: str = "INFO"
    log_format: str = "json"
    # Where the Celery worker's main process serves /metrics for its pool (0: nowhere), and
    # the directory every process of one service writes its metric values to ("": each
    # process keeps its own; read by prometheus_client itself, checked here).
    worker_metrics_port: int = 0
    worker_metrics_address: str = "127.0.0.1"
    prometheus_multiproc_dir: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        redis_url = _required_url(env, "REDIS_URL", cls.redis_url)
        sentinels = _sentinels(env)
        if sentinels:
            redis_url = _sentinel_url(env, sentinels)
        prefix = _str(env, "S3_PREFIX", "")
        if prefix and not prefix.endswith("/"):
            raise SettingsError(f"S3_PREFIX must be empty or end with '/', got {prefix!r}")
        secrets = _list(env, "WEBHOOK_SECRETS")
        if any(len(secret) < 16 for secret in secrets):
            raise SettingsError("WEBHOOK_SECRETS entries must be at least 16 characters long")
        public_base_url = _required_url(env, "PUBLIC_BASE_URL", cls.public_base_url)
        runware_api_url = _required_url(env, "RUNWARE_API_URL", cls.runware_api_url)
        log_format = _str(env, "LOG_FORMAT", cls.log_format)
        if log_format not in {"json", "text"}:
            raise SettingsError(f"LOG_FORMAT must be json or text, got {log_format!r}")
        settings = cls(
            redis_url=redis_url,
            broker_url=_url(env, "CELERY_BROKER_URL", None) or _broker_default(env, redis_url),
            redis_sentinels=sentinels,
            redis_sentinel_master=_str(env, "REDIS_SENTINEL_MASTER", cls.redis_sentinel_master),
            redis_password=Secret(_str(env, "REDIS_PASSWORD", "")),
            redis_sentinel_password=Secret(_str(env, "REDIS_SENTINEL_PASSWORD", "")),
            redis_db=_int(env, "REDIS_DB", cls.redis_db, 0),
            redis_replica_acks=_int(env, "REDIS_REPLICA_ACKS", cls.redis_replica_acks, 0),
            redis_replica_wait_ms=_int(env, "REDIS_REPLICA_WAIT_MS", cls.redis_replica_wait_ms, 1),
            s3_bucket=_str(env, "S3_BUCKET", cls.s3_bucket),
            s3_prefix=prefix,
            s3_endpoint_url=_url(env, "S3_ENDPOINT_URL", None),
            s3_public_endpoint_url=_url(env, "S3_PUBLIC_ENDPOINT_URL", None),
            s3_region=_str(env, "S3_REGION", cls.s3_region),
            runware_api_url=runware_api_url,
            runware_api_key=Secret(_str(env, "RUNWARE_API_KEY", "")),
            runware_model=_str(env, "RUNWARE_MODEL", cls.runware_model),
            runware_allowed_models=_list(env, "RUNWARE_ALLOWED_MODELS"),
            runware_max_in_flight=_int(env, "RUNWARE_MAX_IN_FLIGHT", cls.runware_max_in_flight, 1),
            runware_timeout_seconds=_float(
                env, "RUNWARE_TIMEOUT_SECONDS", cls.runware_timeout_seconds, 1.0
            ),
            runware_image_hosts=_list(env, "RUNWARE_IMAGE_HOSTS", cls.runware_image_hosts),
            allow_private_urls=_bool(env, "ALLOW_PRIVATE_URLS", cls.allow_private_urls),
            public_base_url=public_base_url,
            webhook_secrets=tuple(Secret(secret) for secret in secrets),
            callback_secret=_default_callback_secret(env),
            callback_tenant_secrets=_tenant_callback_secrets(env),
            callback_retry_window_seconds=_int(
                env, "CALLBACK_RETRY_WINDOW_SECONDS", cls.callback_retry_window_seconds, 0
            ),
            api_keys=_api_keys(env),
            receiver_roles=_list(env, "RECEIVER_ROLES", cls.receiver_roles),
            receiver_keepalive_seconds=_int(
                env, "RECEIVER_KEEPALIVE_SECONDS", cls.receiver_keepalive_seconds, 1
            ),
            receiver_body_timeout_seconds=_float(
                env, "RECEIVER_BODY_TIMEOUT_SECONDS", cls.receiver_body_timeout_seconds, 1.0
            ),
            default_deadline_seconds=_int(
                env, "DEFAULT_DEADLINE_SECONDS", cls.default_deadline_seconds, 30
            ),
            max_deadline_seconds=_int(env, "MAX_DEADLINE_SECONDS", cls.max_deadline_seconds, 60),
            upload_url_margin_seconds=_int(
                env, "UPLOAD_URL_MARGIN_SECONDS", cls.upload_url_margin_seconds, 0
            ),
            webhook_max_body_bytes=_int(
                env, "WEBHOOK_MAX_BODY_BYTES", cls.webhook_max_body_bytes, 1024
            ),
            inline_promote_timeout_seconds=_float(
                env, "INLINE_PROMOTE_TIMEOUT_SECONDS", cls.inline_promote_timeout_seconds, 0.1
            ),
            inline_promote_budget_seconds=_float(
                env, "INLINE_PROMOTE_BUDGET_SECONDS", cls.inline_promote_budget_seconds, 0.0
            ),
            finalize_retry_seconds=_int(
                env, "FINALIZE_RETRY_SECONDS", cls.finalize_retry_seconds, 1
            ),
            reconcile_interval_seconds=_float(
                env, "RECONCILE_INTERVAL_SECONDS", cls.reconcile_interval_seconds, 0.5
            ),
            reconcile_grace_seconds=_int(
                env, "RECONCILE_GRACE_SECONDS", cls.reconcile_grace_seconds, 1
            ),
            job_retention_seconds=_int(env, "JOB_RETENTION_SECONDS", cls.job_retention_seconds, 60),
            slot_max_attempts=_int(env, "SLOT_MAX_ATTEMPTS", cls.slot_max_attempts, 1),
            submit_max_retries=_int(env, "SUBMIT_MAX_RETRIES", cls.submit_max_retries, 0),
            retry_backoff_cap_seconds=_int(
                env, "RETRY_BACKOFF_CAP_SECONDS", cls.retry_backoff_cap_seconds, 1
            ),
            visibility_timeout_seconds=_int(
                env, "CELERY_VISIBILITY_TIMEOUT", cls.visibility_timeout_seconds, 60
            ),
            max_image_bytes=_int(env, "MAX_IMAGE_BYTES", cls.max_image_bytes, 1024),
            circuit_probe_seconds=_int(env, "CIRCUIT_PROBE_SECONDS", cls.circuit_probe_seconds, 1),
            budget_wait_seconds=_int(env, "BUDGET_WAIT_SECONDS", cls.budget_wait_seconds, 1),
            upload_wait_seconds=_int(env, "UPLOAD_WAIT_SECONDS", cls.upload_wait_seconds, 0),
            size_mismatch_fails=_bool(env, "SIZE_MISMATCH_FAILS", cls.size_mismatch_fails),
            result_url_seconds=_int(env, "RESULT_URL_SECONDS", cls.result_url_seconds, 0),
            api_rate_limit=_rate_limit(env),
            tenant_daily_images=_int(env, "TENANT_DAILY_IMAGES", cls.tenant_daily_images, 0),
            tenant_daily_spend_usd=_float(
                env, "TENANT_DAILY_SPEND_USD", cls.tenant_daily_spend_usd, 0.0
            ),
            global_daily_spend_usd=_float(
                env, "GLOBAL_DAILY_SPEND_USD", cls.global_daily_spend_usd, 0.0
            ),
            log_level=_str(env, "LOG_LEVEL", cls.log_level).upper(),
            log_format=log_format,
            worker_metrics_port=_port(env, "WORKER_METRICS_PORT", cls.worker_metrics_port),
            worker_metrics_address=_str(env, "WORKER_METRICS_ADDRESS", cls.worker_metrics_address),
            prometheus_multiproc_dir=_directory(env, "PROMETHEUS_MULTIPROC_DIR"),
        )
        check_models(settings)
        if settings.retry_backoff_cap_seconds >= settings.visibility_timeout_seconds:
            raise SettingsError(
                "RETRY_BACKOFF_CAP_SECONDS must stay below CELERY_VISIBILITY_TIMEOUT, "
                "or a delayed retry would be redelivered early"
            )
        return settings

    def __repr__(self) -> str:
        # Secrets mask themselves; URLs may carry a password in their user part.
        shown = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name in {"redis_url", "broker_url"}:
                # A Sentinel broker URL is one URL per sentinel, joined by ';'.
                value = ";".join(redact_url(part) for part in value.split(";"))
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The models this deployment serves: RUNWARE_ALLOWED_MODELS, or the whole catalog."""
        from pipeline.catalog import CATALOG

        return self.runware_allowed_models or tuple(CATALOG)

    def require_webhook_secrets(self) -> tuple[str, ...]:
        if not self.webhook_secrets:
            raise SettingsError("WEBHOOK_SECRETS must hold at least one secret")
        return tuple(secret.reveal() for secret in self.webhook_secrets)

    def callback_secrets_for(self, tenant: str) -> tuple[str, ...]:
        """The secrets that sign a tenant's callbacks: its own in CALLBACK_SECRETS (several
        while it rotates), else CALLBACK_SECRET; empty when neither is set."""
        own = tuple(
            secret.reveal() for name, secret in self.callback_tenant_secrets if name == tenant
        )
        if own:
            return own
        return (self.callback_secret.reveal(),) if self.callback_secret else ()

    def require_runware_key(self) -> str:
        if not self.runware_api_key:
            raise SettingsError("RUNWARE_API_KEY must be set to submit images")
        return self.runware_api_key.reveal()


def check_models(settings: Settings) -> None:
    """RUNWARE_ALLOWED_MODELS names catalog models only, and RUNWARE_MODEL is one it allows."""
    from pipeline.catalog import CATALOG

    known = ", ".join(sorted(CATALOG))
    unknown = [air for air in settings.runware_allowed_models if air not in CATALOG]
    if unknown:
        raise SettingsError(
            f"RUNWARE_ALLOWED_MODELS names models not in the catalog: {', '.join(unknown)}; "
            f"known: {known}"
        )
    if settings.runware_model not in CATALOG:
        raise SettingsError(
            f"RUNWARE_MODEL {settings.runware_model!r} is not in the catalog; known: {known}"
        )
    if settings.runware_model not in settings.allowed_models:
        raise SettingsError(
            f"RUNWARE_MODEL {settings.runware_model!r} is not one of RUNWARE_ALLOWED_MODELS "
            f"({', '.join(settings.allowed_models)})"
        )
