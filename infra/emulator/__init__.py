"""Runware emulator: the provider's wire contract for the Grok Imagine image models, with faults."""

from infra.emulator.app import close_app, create_app
from infra.emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig", "close_app", "create_app"]
