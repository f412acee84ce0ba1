"""What every use case works with: settings and the adapters behind the pipeline's ports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from pipeline.config import Settings, SettingsError
from pipeline.interfaces import Circuit, Dispatcher, InFlightBudget, JobStore, ObjectStorage
from pipeline.runware import RunwareClient
from pipeline.storage import KeyLayout


@dataclass
class Context:
    """Built once per process by `pipeline.wiring`; use cases take it as their first argument."""

    settings: Settings
    store: JobStore
    storage: ObjectStorage
    dispatcher: Dispatcher
    circuit: Circuit
    budget: InFlightBudget
    http: httpx.Client  # outbound: callbacks and image fetches (redirects never followed)
    provider: RunwareClient | None = None  # None in a process that never talks to Runware
    # Storage for work an HTTP caller waits on, by per-call timeout; None: `storage` as it is.
    inline_storage: Callable[[float], ObjectStorage] | None = None

    @property
    def layout(self) -> KeyLayout:
        return KeyLayout(self.settings.s3_prefix)

    def runware(self) -> RunwareClient:
        if self.provider is None:
            raise SettingsError("RUNWARE_API_KEY must be set to submit images")
        return self.provider
