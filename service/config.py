"""Settings from environment variables, each with a safe default; the README lists them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields
from typing import Mapping


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 2
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_frames: int = 100
    max_total_pixels: int = 50_000_000
    sample_path: str = ""
    replica_name: str = ""
    pillow_blocks: int = 16

    # setting -> environment variable
    ENV = {
        "host": "HOST",
        "port": "PORT",
        "threads": "FLIP_THREADS",
        "max_bytes": "FLIP_MAX_BYTES",
        "max_pixels": "FLIP_MAX_PIXELS",
        "max_frames": "FLIP_MAX_FRAMES",
        "max_total_pixels": "FLIP_MAX_TOTAL_PIXELS",
        "sample_path": "FLIP_SAMPLE_PATH",
        "replica_name": "FLIP_REPLICA_NAME",
        "pillow_blocks": "FLIP_PILLOW_BLOCKS",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        values = {}
        for field in fields(cls):
            raw = environ.get(cls.ENV[field.name], "").strip()
            if not raw:
                continue
            if field.type == "int":
                # PORT=0 asks the OS for a free port, FLIP_PILLOW_BLOCKS=0 keeps no image memory;
                # every other number must be positive.
                minimum = 0 if field.name in ("port", "pillow_blocks") else 1
                values[field.name] = _whole_number(cls.ENV[field.name], raw, minimum)
            else:
                values[field.name] = raw
        settings = cls(**values)
        if settings.port > 65535:
            raise ConfigError(f"PORT must be at most 65535, not {settings.port}")
        return settings

    @property
    def replica(self) -> str:
        """The name GET / and X-Served-By give: the container's hostname unless set."""
        return self.replica_name or socket.gethostname()


def _whole_number(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value
