"""GoHighLevel API emulator for development and tests (see docs/emulator.md)."""

from emulator.config import (
    EmulatorConfig, FaultRule, FaultsConfig, LatencyConfig, LocationConfig, RateLimitConfig, load_config,
)
from emulator.server import EmulatorServer, ThreadedEmulator, create_app, run

__all__ = [
    "EmulatorConfig",
    "EmulatorServer",
    "FaultRule",
    "FaultsConfig",
    "LatencyConfig",
    "LocationConfig",
    "RateLimitConfig",
    "ThreadedEmulator",
    "create_app",
    "load_config",
    "run",
]
