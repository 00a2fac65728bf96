"""python -m loadtest.bench [--quick] [--replicas 1,2,4] [--users 1,2,4,8,16] [--duration 30]

Writes summary.json, locust's CSV and HTML reports, and PNG plots to --out (loadtest/results),
then prints the summary. `python -m loadtest.bench.report` turns a summary into docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import signal

from harness.compose import ROOT
from loadtest.bench import report
from loadtest.bench.run import Bench, log


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="a short run (1 and 2 replicas, 2 users, 5 s)")
    parser.add_argument("--replicas", type=parse_counts, default=[1, 2, 4])
    parser.add_argument("--users", type=parse_counts, default=[1, 2, 4, 8, 16])
    parser.add_argument("--duration", type=int, default=30, help="seconds per locust run")
    parser.add_argument("--ceiling-seconds", type=float, default=10, help="seconds per ceiling sample")
    parser.add_argument("--gil-threads", type=int, default=os.cpu_count() or 2,
                        help="T: one replica flipping T at once against T replicas; 0 skips these runs")
    parser.add_argument("--queue", type=int, default=None,
                        help="FLIP_QUEUE for every stack (a tuned stack, and the summary says so); "
                             "the service's default when unset")
    parser.add_argument("--efficiency-seconds", type=int, default=30,
                        help="seconds of load on the default stack for the CPU per flip of each flip path; 0 skips")
    parser.add_argument("--probe-seconds", type=int, default=30,
                        help="seconds of light requests while the default stack's queues are full; 0 skips")
    parser.add_argument("--nginx-rounds", type=int, default=20, help="rounds of 50 GET / each way; 0 skips")
    parser.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.replicas, args.users, args.duration = [1, 2], [2], 5
        args.ceiling_seconds, args.nginx_rounds, args.probe_seconds, args.efficiency_seconds = 2, 1, 8, 8

    bench = Bench(args)
    # A terminal's Ctrl-C and a plain kill both end in the teardown below.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.teardown()
    print(report.text(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
