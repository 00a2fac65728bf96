"""The CPU each part of the system used while an action ran (harness.usage reads it)."""

from __future__ import annotations

import time

from harness import usage
from harness.compose import Stack


def cpu_during(stack: Stack, action):
    """Run `action`; return its result and the CPU seconds each part used meanwhile."""
    containers = {service: stack.container_ids(service) for service in ("web", "nginx")}
    before = usage.snapshot(containers)
    started = time.monotonic()
    result = action()
    elapsed = time.monotonic() - started
    used = usage.difference(before, usage.snapshot(containers))
    used["wall"] = round(elapsed, 2)
    return result, used
