"""CPU per flip of this checkout against another revision's, measured side by side: each round
runs one process of each tree in turn, flipping the same pictures, and the medians are compared.
For a change that must cost nothing per flip (a refactor), on a machine too noisy for timings
taken apart:

    python -m loadtest.against REV [--rounds 4]

It checks REV out in a temporary git worktree and runs both with this checkout's interpreter,
without the image's allocator (both trees alike)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run inside each tree: name -> CPU seconds a flip (the median of a few, after a first).
MEASURE = r"""
import json, statistics, sys, time
from service import imaging
from service.sample import load_sample
from tests.pictures import animation, encode, photo

sample = load_sample()
cases = {
    "JPEG lossless": (sample, True, 8), "JPEG re-encoded": (sample, False, 4),
    "PNG 3 MP": (encode(photo((2000, 1500)), "PNG"), True, 4),
    "WebP 3 MP": (encode(photo((2000, 1500)), "WEBP"), True, 4),
    "GIF of 20 frames": (animation("GIF", frames=20, size=(400, 300))[0], True, 10),
}
only = set(sys.argv[1:])
found = {}
for name, (data, lossless, flips) in cases.items():
    if only and name not in only:
        continue
    imaging.flip(data, lossless=lossless)
    spent = []
    for _ in range(flips):
        started = time.process_time()
        imaging.flip(data, lossless=lossless)
        spent.append(time.process_time() - started)
    found[name] = statistics.median(spent)
print(json.dumps(found))
"""


def measure(tree: Path, cases: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, *cases], cwd=tree, capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})
    return json.loads(done.stdout)


def compare(revision: str, rounds: int, cases: list[str]) -> dict[str, tuple[float, float]]:
    """case -> (the revision's median CPU seconds a flip, this checkout's)."""
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), revision], check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"other": [], "this": []}
            for _ in range(rounds):
                runs["other"].append(measure(other, cases))
                runs["this"].append(measure(ROOT, cases))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=True)
    return {case: (statistics.median(run[case] for run in runs["other"]),
                   statistics.median(run[case] for run in runs["this"])) for case in runs["this"][0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    args = parser.parse_args(argv)
    for case, (other, this) in compare(args.revision, args.rounds, args.case).items():
        print(f"{case:18s} {args.revision}: {other * 1000:7.1f} ms  this: {this * 1000:7.1f} ms  x{this / other:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
