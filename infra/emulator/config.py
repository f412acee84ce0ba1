"""Every switch and fault of the Runware emulator, read from flags, `EMULATOR_*` env or PATCH.

Each field below can be set from the environment as `EMULATOR_<FIELD NAME IN UPPER CASE>`
(lists are comma separated, booleans accept 1/0/true/false/yes/no/on/off, `none` clears an
optional value), from the command line (`--api-key`, `--public-url`, `--seed`,
`--set name=value`), and at runtime with `PATCH /_emulator/config`.

Provider behaviour (the values of what runware-api.md lists as unknown):
  api_keys                 accepted API keys; empty accepts any non-empty key
  public_url               base URL of hosted images; unset = the URL the request came in on
  model                    the model ids served for imageInference, each with its own sizes and
                           prices from catalog.py (comma separated; one id, the old form, serves
                           that model only); default: the Pro model, `xai:grok-imagine@image`
                           and `xai:grok-imagine@image-quality`
  retired_models           model ids answered as the API answers a model it no longer knows:
                           400 with an `invalidModel` error on `parameter: "model"`. The real code
                           for a retired model is undocumented (§14: `unknownModel` is SDK-only);
                           `invalidModel` with "Model must be ... a valid AIR identifier" is the one
                           refusal of a model id the real server was seen to send
                           (Runware/ComfyUI-Runware#3), an SDK `validation` error; the pipeline's
                           error table reads any refusal on `model` as a model fault
  reject_unknown_parameters  unknown task fields (and `seed`) are refused with `unknownParameter`
  ack_status               async ACK items also carry `"status": "processing"`
  conflict_status          HTTP status of a `conflictTaskUUID` answer: 400, 409 or 200
  sync_timeout_s           how long a sync request waits for its images
  deliveries               perform PUTs and webhooks at all (off: recorded as skipped)
  put_order                PUT to uploadEndpoint `before` the webhook, `after` it, or `never`
  put_attempts             PUT tries per image (the provider's retry policy is unknown: 1)
  put_timeout_s            timeout of one PUT
  envelope                 webhook body: `wrapped` {"data":[item]} or `flat` item
  webhook_status_field     success webhook items carry `"status": "success"`
  error_placement          failed-item webhook: `errors` {"errors":[...]} or `item` (nested error)
  poll_error_placement     failed items in getResponse: `errors` (top level) or `item` (nested)
  webhook_attempts         maximum POSTs of one webhook (retries on non-2xx and network errors)
  webhook_timeout_s        timeout of one webhook POST
  webhook_backoff_ms       first retry delay; doubles per attempt
  webhook_backoff_cap_ms   retry delay cap
  webhook_jitter_ms        uniform random extra delay added to each retry, at most this
  charge_errored_items     failed items are charged in the ledger too
  image_ttl_s              lifetime of a hosted image when the task gave no `ttl`
  max_hosted_images        oldest hosted images are forgotten beyond this count
  price_per_image          USD per generated image, for every model; unset = each model's price
  price_per_input_image    USD added per reference image when editing; unset = each model's
  latency_ms               fixed render latency per image
  latency_min_ms/latency_max_ms  when both set, the latency is uniform in [min, max]
  render_workers           size of the render thread pool
  delivery_workers         size of the delivery (PUT + webhook) thread pool
  fetch_reference_urls     read http(s) reference images to match their aspect ratio
  allow_remote_control     serve /_emulator/ to non-loopback clients
  returned_size            size of the images rendered, whatever was asked (upstream redirects
                           and edits may change it): unset = as requested, `swap` = height x
                           width, `WxH` = that fixed size (e.g. `1000x700`)
  omit_image_url           webhook and getResponse items carry no `imageURL` (nothing hosted)
  render_once              render one image per (size, format, quality) and send its bytes for
                           every image of that kind (benchmarks: the provider's render is the floor
                           they leave out, and at zero latency it would take the pipeline's CPU);
                           off by default: every image is drawn from its prompt, seed and index

Faults (decisions drawn from one RNG seeded by `seed`, so a schedule is reproducible):
  seed                     RNG seed; unset = random
  model_unavailable        every imageInference is refused with `unknownModel` (400)
  model_disabled           every imageInference for the model is refused with `modelDisabled` (400)
                           (the SDK's code for a disabled model; `unknownModel` is SDK-only)
  drop_webhook_rate        share of webhooks never sent
  duplicate_webhook_rate   share of webhooks sent twice
  delay_webhook_ms         extra uniform random delay, at most this, before a webhook
  reorder_webhook_rate     share of webhooks held back until the next one went out
  reorder_hold_ms          how long a held webhook waits at most for a next one
  submit_error_rate        share of submits (requests with an imageInference) refused whole
  submit_error_statuses    HTTP statuses drawn for refused submits
  retry_after_s            `Retry-After` seconds sent with a refused submit (0 = no header)
  burst                    the next this-many submits are refused (counts down)
  burst_status             HTTP status of a burst refusal
  upload_fail_rate         share of PUTs that fail
  upload_fail_mode         `skip` (no PUT at all) or `truncate` (half the bytes are sent)
  item_error_rate          share of images that fail
  item_error_permanent_share  share of failed images with `providerContentPolicyViolation`
                           (the rest fail with the transient `timeoutProvider`)
  unknown_item_code        share of images that fail with `unknown_item_code_name`, a code no
                           client knows (a queued `item_error` takes any `code` for exact counts)
  unknown_item_code_name   that code (default `weirdNewFailure`)
  not_found_for_live_task  share of getResponse polls of a known task, rendering or delivered,
                           answered `taskFailedOrNotFound` as if it had left retention (queue
                           kind `not_found_for_live_task` for exact counts)
  conflict_without_task_uuid  `conflictTaskUUID` error items omit `taskUUID` (the legacy SDK
                           reads `error.get("taskUUID") or task_uuid`)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.emulator import catalog

ENV_PREFIX = "EMULATOR_"

CHOICES: dict[str, tuple[Any, ...]] = {
    "conflict_status": (400, 409, 200),
    "put_order": ("before", "after", "never"),
    "envelope": ("wrapped", "flat"),
    "error_placement": ("errors", "item"),
    "poll_error_placement": ("errors", "item"),
    "upload_fail_mode": ("skip", "truncate"),
}
RATES = (
    "drop_webhook_rate",
    "duplicate_webhook_rate",
    "reorder_webhook_rate",
    "submit_error_rate",
    "upload_fail_rate",
    "item_error_rate",
    "item_error_permanent_share",
    "unknown_item_code",
    "not_found_for_live_task",
)


class ConfigError(ValueError):
    """A switch name or value the emulator does not accept."""


@dataclass
class EmulatorConfig:
    """All switches of the emulator; see the module docstring for each one."""

    api_keys: list[str] = field(default_factory=list)
    public_url: str | None = None
    model: list[str] = field(default_factory=lambda: list(catalog.MODELS))
    retired_models: list[str] = field(default_factory=list)
    reject_unknown_parameters: bool = True
    ack_status: bool = False
    conflict_status: int = 400
    sync_timeout_s: float = 60.0
    deliveries: bool = True
    put_order: str = "before"
    put_attempts: int = 1
    put_timeout_s: float = 30.0
    envelope: str = "wrapped"
    webhook_status_field: bool = False
    error_placement: str = "errors"
    poll_error_placement: str = "errors"
    webhook_attempts: int = 8
    webhook_timeout_s: float = 5.0
    webhook_backoff_ms: int = 250
    webhook_backoff_cap_ms: int = 8000
    webhook_jitter_ms: int = 250
    charge_errored_items: bool = False
    image_ttl_s: int = 86400
    max_hosted_images: int = 1000
    price_per_image: float | None = None
    price_per_input_image: float | None = None
    latency_ms: int = 0
    latency_min_ms: int | None = None
    latency_max_ms: int | None = None
    render_workers: int = 4
    delivery_workers: int = 16
    fetch_reference_urls: bool = True
    allow_remote_control: bool = False
    returned_size: str | None = None
    omit_image_url: bool = False
    render_once: bool = False
    seed: int | None = None
    model_unavailable: bool = False
    drop_webhook_rate: float = 0.0
    duplicate_webhook_rate: float = 0.0
    delay_webhook_ms: int = 0
    reorder_webhook_rate: float = 0.0
    reorder_hold_ms: int = 2000
    submit_error_rate: float = 0.0
    submit_error_statuses: list[int] = field(default_factory=lambda: [429, 503, 504])
    retry_after_s: int = 1
    burst: int = 0
    burst_status: int = 503
    upload_fail_rate: float = 0.0
    upload_fail_mode: str = "skip"
    item_error_rate: float = 0.0
    item_error_permanent_share: float = 0.5
    model_disabled: bool = False
    unknown_item_code: float = 0.0
    unknown_item_code_name: str = "weirdNewFailure"
    not_found_for_live_task: float = 0.0
    conflict_without_task_uuid: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape served by GET /_emulator/config."""
        return dataclasses.asdict(self)

    def copy(self) -> EmulatorConfig:
        """An independent copy (lists are not shared)."""
        return EmulatorConfig(**self.to_dict())

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply typed changes (JSON values or env strings); all or nothing."""
        staged = self.copy()
        for name, raw in changes.items():
            setattr(staged, name, coerce(name, raw))
        staged.check()
        for name in changes:
            setattr(self, name, getattr(staged, name))

    def check(self) -> None:
        """Refuse values outside each switch's range."""
        self._check_choices()
        self._check_counts()
        low, high = self.latency_min_ms, self.latency_max_ms
        if low is not None and high is not None and not 0 <= low <= high:
            raise ConfigError("latency_min_ms must be between 0 and latency_max_ms")
        if not self.submit_error_statuses:
            raise ConfigError("submit_error_statuses must not be empty")
        _check_returned_size(self.returned_size)
        if not self.unknown_item_code_name:
            raise ConfigError("unknown_item_code_name must not be empty")
        self._check_models()

    def _check_models(self) -> None:
        if not self.model:
            raise ConfigError("model must name at least one model")
        for name in ("model", "retired_models"):
            unknown = [m for m in getattr(self, name) if m not in catalog.MODELS]
            if unknown:
                raise ConfigError(f"{name}: {unknown} not in {list(catalog.MODELS)}")

    def prices(self, model: str) -> tuple[float, float]:
        """USD per image and per input image for `model`: its own, unless a switch overrides."""
        rules = catalog.MODELS[model]
        per_image = self.price_per_image
        per_input = self.price_per_input_image
        return (
            rules.price_per_image if per_image is None else per_image,
            rules.price_per_input_image if per_input is None else per_input,
        )

    def _check_choices(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}")
        for name in RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1")

    def _check_counts(self) -> None:
        positive = ("put_attempts", "webhook_attempts", "render_workers", "delivery_workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "latency_ms",
            "delay_webhook_ms",
            "burst",
            "retry_after_s",
            "webhook_backoff_ms",
            "webhook_backoff_cap_ms",
            "webhook_jitter_ms",
            "reorder_hold_ms",
            "image_ttl_s",
            "max_hosted_images",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
        """Defaults overridden by every `EMULATOR_<NAME>` variable that is set."""
        env = os.environ if environ is None else environ
        config = cls()
        changes = {
            f.name: env[ENV_PREFIX + f.name.upper()]
            for f in dataclasses.fields(cls)
            if ENV_PREFIX + f.name.upper() in env
        }
        try:
            config.update(changes)
        except ConfigError as exc:
            raise ConfigError(f"bad {ENV_PREFIX}* variable: {exc}") from exc
        return config


def _check_returned_size(value: str | None) -> None:
    if value is None or value == "swap":
        return
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and 0 < int(width) and 0 < int(height)):
        raise ConfigError("returned_size must be unset, `swap` or `WxH` (e.g. 1000x700)")
    if max(int(width), int(height)) > 8192:
        raise ConfigError("returned_size must be at most 8192 on a side")


_HINTS = typing.get_type_hints(EmulatorConfig)
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(EmulatorConfig))


def _parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be a boolean")


def _parse_scalar(name: str, kind: type, raw: Any) -> Any:
    if kind is bool:
        return _parse_bool(name, raw)
    if isinstance(raw, bool):
        raise ConfigError(f"{name} must be a {kind.__name__}")
    try:
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            return float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a {kind.__name__}") from exc
    if not isinstance(raw, str):
        raise ConfigError(f"{name} must be a string")
    return raw


def coerce(name: str, raw: Any) -> Any:
    """Turn a JSON value or an env string into the switch's type."""
    if name not in _HINTS:
        raise ConfigError(f"unknown switch {name!r}")
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        (item_kind,) = typing.get_args(hint)
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise ConfigError(f"{name} must be a list")
        return [
            _parse_scalar(name, item_kind, i.strip() if isinstance(i, str) else i)
            for i in items
            if not (isinstance(i, str) and not i.strip())
        ]
    return _parse_scalar(name, hint, raw)
