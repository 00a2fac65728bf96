"""Defaults that the pages name in passing, as in "`FLIP_QUEUE` (10)", and the stack's defaults as
docs/settings.md gives them: what scripts/generate.py writes, and what tests/test_docs.py checks."""

from __future__ import annotations

import re
from collections.abc import Mapping

# "`FLIP_QUEUE` (10)", "`FLIP_QUEUE` held (10)", "`FLIP_MAX_BYTES` (25 MiB)", with the units the pages use.
DEFAULT_IN_PASSING = re.compile(r"`(FLIP_[A-Z_]+)`((?: [a-z]+)? \()([0-9][0-9,]*)(?: (s|MiB|MP))?\)")
UNIT = {"": 1, "s": 1, "MiB": 2**20, "MP": 10**6}


def stack_default(default: str) -> str:
    """A compose.yaml default as docs/settings.md gives it: none ("") for /dev/null, a file compose
    bind-mounts from nothing when the variable is unset."""
    return "" if default == "/dev/null" else default


def named_in_passing(text: str) -> list[tuple[str, int]]:
    """Each default named in passing in `text`: the setting and the value the text gives it."""
    return [(name, int(number.replace(",", "")) * UNIT[unit])
            for name, _, number, unit in DEFAULT_IN_PASSING.findall(text)]


def with_defaults(text: str, defaults: Mapping[str, str]) -> str:
    """`text` with every default named in passing set to `defaults`' value: in the unit the text
    used where the value is a whole number of it, else as a plain number."""

    def written(match: re.Match) -> str:
        name, between, number, unit = match.groups()
        value = int(defaults[name])
        unit = unit or ""
        if value % UNIT[unit]:
            unit = ""
        shown = value // UNIT[unit]
        figure = f"{shown:,}" if "," in number or shown >= 10_000 else str(shown)
        return f"`{name}`{between}{figure}{' ' + unit if unit else ''})"

    return DEFAULT_IN_PASSING.sub(written, text)
