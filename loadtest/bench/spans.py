"""Where a flip's time goes, read from the replicas' own metrics (flipfleet_flip_span_seconds):
mean seconds per flip in each span, over every replica of a stack since it started."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from harness.compose import Stack, run
from service.metrics import SPANS

# The replicas' port is not published: read /metrics from inside each container.
SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=10).read().decode())")


def flip_spans(stack: Stack) -> dict[str, float]:
    sums = dict.fromkeys(SPANS, 0.0)
    counts = dict.fromkeys(SPANS, 0.0)
    for container in stack.container_ids("web"):
        text = run(["docker", "exec", container, "python", "-c", SCRAPE]).stdout
        for family in text_string_to_metric_families(text):
            if family.name != "flipfleet_flip_span_seconds":
                continue
            for sample in family.samples:
                span = sample.labels["span"]
                if sample.name.endswith("_sum"):
                    sums[span] += sample.value
                elif sample.name.endswith("_count"):
                    counts[span] += sample.value
    return {span: round(sums[span] / counts[span], 4) for span in SPANS if counts[span]}
