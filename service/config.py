"""Settings: the defaults in service/defaults.env, overridden by environment variables."""

import dataclasses
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from service.imaging import Limits

DEFAULTS_FILE = Path(__file__).with_name("defaults.env")
# Threads beyond the flip queue, so that /healthz, /metrics and GET / never wait behind flips.
LIGHT_THREADS = 4
# The largest answer, as a multiple of the largest body: more room than any flip of a picture
# within FLIP_MAX_BYTES needs, unless its source compressed far better than its format's writer.
ANSWER_FACTOR = 2
# A client's only flip may run beside the queue's (service/gate.py) when it holds at most this
# fraction of the pixel limits: the replica's memory holds that beside a flip at the full limits.
EXPRESS_FRACTION = 4


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as a shell and `docker compose --env-file` read them (no quoting)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclasses.dataclass(frozen=True)
class Settings:
    # Tuned per deployment: defaults in DEFAULTS_FILE, which nginx and Kubernetes read too.
    concurrency: int = dataclasses.field(metadata={"env": "FLIP_CONCURRENCY"})
    queue: int = dataclasses.field(metadata={"env": "FLIP_QUEUE"})
    client_share: int = dataclasses.field(metadata={"env": "FLIP_CLIENT_SHARE"})
    max_bytes: int = dataclasses.field(metadata={"env": "FLIP_MAX_BYTES"})
    max_pixels: int = dataclasses.field(metadata={"env": "FLIP_MAX_PIXELS"})
    max_frames: int = dataclasses.field(metadata={"env": "FLIP_MAX_FRAMES"})
    max_total_pixels: int = dataclasses.field(metadata={"env": "FLIP_MAX_TOTAL_PIXELS"})
    max_scans: int = dataclasses.field(metadata={"env": "FLIP_MAX_SCANS"})
    max_seconds: int = dataclasses.field(metadata={"env": "FLIP_MAX_SECONDS"})
    answer_seconds: int = dataclasses.field(metadata={"env": "FLIP_ANSWER_SECONDS"})
    drain_seconds: int = dataclasses.field(metadata={"env": "FLIP_DRAIN_SECONDS", "minimum": 0})
    pillow_blocks: int = dataclasses.field(metadata={"env": "FLIP_PILLOW_BLOCKS", "minimum": 0})
    # Where and as what this process runs: the image sets them, so their defaults live here.
    host: str = dataclasses.field(default="127.0.0.1", metadata={"env": "HOST"})
    port: int = dataclasses.field(default=8000, metadata={"env": "PORT", "minimum": 0})  # 0: a free port
    sample_path: str = dataclasses.field(default="", metadata={"env": "FLIP_SAMPLE_PATH"})
    replica_name: str = dataclasses.field(default="", metadata={"env": "FLIP_REPLICA_NAME"})
    version: str = dataclasses.field(default="dev", metadata={"env": "FLIP_VERSION"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides) -> "Settings":
        """The defaults file under `environ`; `overrides` (field names) win over both."""
        layered = {**cls.defaults(), **{k: v for k, v in environ.items() if v.strip()}}
        values = {}
        for field in dataclasses.fields(cls):
            name = field.metadata["env"]
            raw = layered[name].strip()
            if field.type is int:
                values[field.name] = _whole_number(name, raw, field.metadata.get("minimum", 1))
            else:
                values[field.name] = raw
        settings = cls(**{**values, **overrides})
        if settings.port > 65535:
            raise ConfigError(f"PORT must be at most 65535, not {settings.port}")
        if settings.queue < settings.concurrency:
            raise ConfigError(
                f"FLIP_QUEUE ({settings.queue}) must be at least FLIP_CONCURRENCY ({settings.concurrency})"
            )
        if settings.max_seconds >= settings.answer_seconds:
            # nginx would give up first: the client would get a 504 for what the replica answers with a 422.
            raise ConfigError(f"FLIP_MAX_SECONDS ({settings.max_seconds}) must be below FLIP_ANSWER_SECONDS "
                              f"({settings.answer_seconds}), the seconds nginx waits for an answer")
        return settings

    @classmethod
    def defaults(cls) -> dict[str, str]:
        """Every variable's default, as text: the file's, then the ones written here."""
        written_here = {f.metadata["env"]: str(f.default) for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING}
        from_file = read_env_file(DEFAULTS_FILE)
        missing = {f.metadata["env"] for f in dataclasses.fields(cls)} - set(written_here) - set(from_file)
        if missing:
            raise ConfigError(f"{', '.join(sorted(missing))} has no default in {DEFAULTS_FILE.name}")
        return {**written_here, **from_file}

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> environment variable."""
        return {field.name: field.metadata["env"] for field in dataclasses.fields(cls)}

    @property
    def replica(self) -> str:
        """The name GET / and X-Served-By give: the container's hostname unless set."""
        return self.replica_name or socket.gethostname()

    @property
    def limits(self) -> Limits:
        return Limits(max_pixels=self.max_pixels, max_frames=self.max_frames, max_total_pixels=self.max_total_pixels,
                      max_scans=self.max_scans, max_seconds=self.max_seconds,
                      max_answer_bytes=ANSWER_FACTOR * self.max_bytes)

    @property
    def express_limits(self) -> Limits:
        """The limits of a flip in the express lane (service/gate.py): a fraction of the pixels."""
        return dataclasses.replace(self.limits, max_pixels=self.max_pixels // EXPRESS_FRACTION,
                                   max_total_pixels=self.max_total_pixels // EXPRESS_FRACTION)

    @property
    def threads(self) -> int:
        """waitress threads: one for every flip the replica may hold, and a few for the rest."""
        return self.queue + LIGHT_THREADS


def _whole_number(name: str, raw: str, minimum: int) -> int:
    # Digits only, as nginx's entrypoint reads the same variables: no sign, no 1_000 or 1e6.
    if not raw.isascii() or not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number, not {raw!r}")
    value = int(raw)
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value
