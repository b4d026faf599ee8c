"""GoHighLevel API emulator for development and tests (see docs/emulator.md)."""

from emulator.config import EmulatorConfig

from emulator.config import FaultRule

from emulator.config import FaultsConfig

from emulator.config import LocationConfig

from emulator.config import RateLimitConfig

from emulator.config import load_config
from emulator.server import EmulatorServer
from emulator.server import ThreadedEmulator
from emulator.server import create_app
from emulator.server import run
__all__ = [
    "EmulatorConfig", "EmulatorServer", "FaultRule", "FaultsConfig", "LocationConfig", "RateLimitConfig",
    "ThreadedEmulator", "create_app", "load_config", "run",
]
