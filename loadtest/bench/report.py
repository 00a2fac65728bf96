"""A benchmark summary as text (what `python -m loadtest.bench` prints), as the tables of
docs/results.md and docs/swarm.md, and as the figures README.md and docs/api.md quote, which are
all written from summary.json by this command, never by hand:

    python -m loadtest.bench.report [SUMMARY] [--write docs/results.md] [--write-swarm docs/swarm.md]
                                    [--write-quotes]
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path

from harness import ROOT

START = "<!-- tables: python -m loadtest.bench.report --write docs/results.md; do not edit by hand -->"
END = "<!-- end of tables -->"
CAPACITY_START = "<!-- capacity: python -m loadtest.bench.report --write-swarm docs/swarm.md; do not edit by hand -->"
CAPACITY_END = "<!-- end of capacity -->"
# The pages that quote the run's headline figures, and where.
QUOTES_COMMAND = "python -m loadtest.bench.report --write-quotes; do not edit by hand"
HEADLINE_START, HEADLINE_END = f"<!-- headline: {QUOTES_COMMAND} -->", "<!-- end of headline -->"
LOSSLESS_START, LOSSLESS_END = f"<!-- lossless cost: {QUOTES_COMMAND} -->", "<!-- end of lossless cost -->"
QUOTE_WIDTH = 100


def text(summary: dict) -> str:
    """The summary as a few readable lines."""
    lines = [
        f"floor's rate (the flip alone at its least CPU, {summary['machine']['cores']} processes): median "
        f"{summary['ceiling_rps']:.2f} flips/s of samples {summary['ceiling_samples']}",
        "replicas x flips at once | burst first / last (x ideal) | best req/s (x floor's rate) at users | "
        "p50 / p95 / p99 ms | failed",
    ]
    for label, v in _rows(summary):
        lines.append(
            f"{label:>18} | {v['burst_first_s']:.2f} s / {v['burst_last_s']:.2f} s (x{v['burst_last_vs_ideal']:.2f}) | "
            f"{v['rps']:.2f} (x{v['rps_fraction_of_ceiling']:.2f}) at {v['rps_at_users']} | "
            f"{v['p50_ms']:.0f} / {v['p95_ms']:.0f} / {v['p99_ms']:.0f} | {v['failures']}"
        )
    for name, p in summary.get("light_under_load", {}).get("probes", {}).items():
        lines.append(f"{name} with every queue full: p50 {p['p50_ms']} / p99 {p['p99_ms']} / max {p['max_ms']} ms")
    if summary["nginx"]:
        n = summary["nginx"]
        lines.append(f"GET / median: {n['through_nginx_p50_ms']:.3f} ms through nginx, {n['direct_p50_ms']:.3f} ms "
                     f"straight to the replica: nginx adds {n['nginx_adds_p50_ms']:.3f} ms")
    for path, e in (summary.get("efficiency") or {}).items():
        lines.append(f"{path}: CPU a flip against the floor's {e['vs_floor']}, {e['faults_per_flip']} page faults a "
                     f"flip in the replicas; x{e['rps_fraction_of_floor']} of the floor's rate "
                     f"(x{e['rps_fraction_of_cores_left']} for the {e['cores_left']} cores the load generator left); "
                     f"one flip {e['one_flip_s']} s")
    lines.append(f"default configuration: {json.dumps(summary['default'])}")
    return "\n".join(lines)


def _rows(summary: dict) -> list[tuple[str, dict]]:
    rows = [(f"{r} x {v['concurrency']}", v) for r, v in summary["replicas"].items()]
    return rows + [(label, v) for label, v in summary["gil"].items()]


def markdown(summary: dict) -> str:
    """The tables of docs/results.md."""
    m, default = summary["machine"], summary["default"]
    cores = m["cores"]
    one_flip = cores / summary["ceiling_rps"]
    article = summary["article"]["published"]
    by_replicas = summary["replicas"]
    parts = [
        f"Run of commit `{m['commit']}` started {summary['started']}: {cores} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB, kernel {m['kernel']}, {m['docker']}, load generator on the same cores. "
        f"The floor's rate (the flip alone at its least CPU, the faster of its two ways, {cores} processes, "
        "flips/s): "
        f"{', '.join(str(s) for s in summary['ceiling_samples'])}; median {summary['ceiling_rps']}.",
        "",
        "| 10 concurrent flips of a 24 MP photo | one flip | one process: first / last answer | "
        "one worker per core: first / last answer |",
        "| --- | --- | --- | --- |",
        f"| The article, as published (Jimp, 8-thread laptop, 2018) | ~3.8 s | "
        f"{article['one process']['burst_first_s']:.0f} s / {article['one process']['burst_last_s']:.0f} s | "
        f"{article['cluster, one worker per core']['burst_first_s']:.0f} s / "
        f"{article['cluster, one worker per core']['burst_last_s']:.0f} s (8 workers) |",
        f"| flipfleet (Pillow or TurboJPEG, {cores} cores) | {one_flip:.2f} s (the floor) | "
        f"{_burst(by_replicas.get('1'))} (1 replica) | {_burst(by_replicas.get(str(cores)))} ({cores} replicas) |",
        "",
        "| replicas x flips at once | burst first / last | x ideal last | best req/s (users) | "
        "x the floor's rate around it | p50 / p95 / p99 at that load | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, v in _rows(summary):
        is_default = label == f"{default.get('replicas')} x {default.get('concurrency')}"
        name = f"**{label} (default)**" if is_default else label
        parts.append(
            f"| {name} | {v['burst_first_s']:.2f} s / {v['burst_last_s']:.2f} s | {v['burst_last_vs_ideal']:.2f} | "
            f"{v['rps']:.2f} ({v['rps_at_users']}) | {v['rps_fraction_of_ceiling']:.2f} | "
            f"{v['p50_ms'] / 1000:.2f} / {v['p95_ms'] / 1000:.2f} / {v['p99_ms'] / 1000:.2f} s | {v['failures']} |"
        )
    parts += ["", *_efficiency_table(summary), "", *_cpu_table(summary), "", *_spans_table(summary)]
    light = summary.get("light_under_load") or {}
    if light:
        flips = light["flips"]
        parts += [
            "",
            f"Light requests while {light['users']} users keep the {light['replicas']} default replicas' queues "
            f"of {light['queue']} full ({flips['rps']:.2f} flips/s, {flips['failures']} failed), probed 4 times a "
            "second:",
            "",
            "| request | samples | p50 | p95 | p99 | max | failed |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *(f"| {name} | {p['count']} | {p['p50_ms']} ms | {p['p95_ms']} ms | {p['p99_ms']} ms | {p['max_ms']} ms "
              f"| {p['failed']} |" for name, p in light["probes"].items()),
        ]
    if summary["nginx"]:
        n = summary["nginx"]
        parts += ["", f"`GET /` over {n['requests_each']:,} requests each way: median {n['through_nginx_p50_ms']} ms "
                      f"through nginx, {n['direct_p50_ms']} ms straight to the replica "
                      f"(p95 {n['through_nginx_p95_ms']} "
                      f"against {n['direct_p95_ms']} ms): nginx adds {n['nginx_adds_p50_ms']} ms."]
    return "\n".join(parts)


def _burst(block: dict | None) -> str:
    return "not measured" if block is None else f"{block['burst_first_s']:.2f} s / {block['burst_last_s']:.2f} s"


def _efficiency_table(summary: dict) -> list[str]:
    """The default stack against the floor, for each way to flip the sample, the goals, and what it
    means for a machine of more cores."""
    found = summary.get("efficiency") or {}
    if not found:
        return []
    cores = summary["machine"]["cores"]
    rows = [f"The default stack ({summary['default'].get('replicas')} replicas, "
            f"{2 * summary['default'].get('replicas', 0)} locust users) against the floor, for each way to flip "
            "the sample. The floor is the bare library call alone (Pillow's decode, flip and encode, or "
            "TurboJPEG's tjTransform), one warm process a core, its allocator keeping every page mapped, no "
            "HTTP. CPU per flip of each part, and page faults per flip in the replicas, under load; one flip "
            "end to end, one client on the idle stack.", "",
            "| flip path | the floor | replicas | nginx | load generator | flips/s (x the floor's rate) | "
            "x the floor's rate for the cores left | one flip end to end | burst of 10: first / last (x ideal) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path, e in found.items():
        cpu, ratio = e["cpu_s_per_flip"], e["vs_floor"]
        rows.append(
            f"| {path} | {e['alone_cpu_s_per_flip'] * 1000:.1f} ms, {e['floor_faults_per_flip']:.0f} faults | "
            f"{cpu.get('web', 0) * 1000:.1f} ms (x{ratio.get('web', 0):.2f}), {e['faults_per_flip']:,} faults | "
            f"{cpu.get('nginx', 0) * 1000:.1f} ms (x{ratio.get('nginx', 0):.3f}) | "
            f"{cpu.get('load generator', 0) * 1000:.1f} ms (x{ratio.get('load generator', 0):.3f}) | "
            f"{e['rps']:.2f} (x{e['rps_fraction_of_floor']:.2f}) | {e['rps_fraction_of_cores_left']:.2f} "
            f"({e['cores_left']} of {cores} cores) | {e['one_flip_s'] * 1000:.0f} ms (floor + "
            f"{e['one_flip_over_floor_s'] * 1000:.0f} ms) | {e['burst_first_s']:.2f} s / {e['burst_last_s']:.2f} s "
            f"(x{e['burst_last_vs_ideal']:.2f}) |")
    default = summary["default"]
    if default.get("against_goals"):
        names = {"replica_cpu_vs_floor": "a replica's CPU per lossless flip, x the floor",
                 "faults_per_flip": "page faults per lossless flip in a replica",
                 "lossless_vs_reencoded": "a replica's CPU per flip, lossless x re-encoded",
                 "rps_fraction_of_floor": "flips/s, x the floor's rate (load generator on the same cores)",
                 "one_flip_over_floor_s": "one flip end to end, seconds over the floor's CPU",
                 "burst_last_vs_ideal": "the burst's last answer, x the floor's ideal"}
        rows += ["", "| goal (lossless, the default) | target | measured | met |", "| --- | --- | --- | --- |"]
        for goal, value in default["against_goals"].items():
            sense = ">=" if goal == "rps_fraction_of_floor" else "<="
            rows.append(f"| {names[goal]} | {sense} {default['goals'][goal]} | {value} | "
                        f"{'yes' if default['meets'][goal] else 'no'} |")
    # The floor's rate is the faster path's, so the ratio to scale it by is that path's too.
    fastest = min(found.values(), key=lambda e: e["alone_cpu_s_per_flip"])
    share = fastest["cpu_s_per_flip"].get("nginx", 0) / max(fastest["cpu_s_per_flip"].get("web", 1e-9), 1e-9)
    rows += ["", f"On a machine of N cores with the load generator elsewhere, expect about (N - nginx's share) x "
                 f"the floor's rate x the floor over a replica's CPU: nginx takes {share:.1%} of a replica's CPU per "
                 f"flip here, so 16 cores give about {16 / (1 + share):.1f} cores' worth of flips, each at "
                 f"x{fastest['vs_floor'].get('web', 0):.2f} of the floor's CPU."]
    return rows


def capacity(summary: dict) -> str:
    """docs/swarm.md's table: how many replica cores one nginx fronts before its CPU or a 10 GbE
    link is the limit, from what nginx spent and moved per flip in the benchmark."""
    rows = ["| flip path | nginx CPU a flip | replica CPU a flip | "
            "bytes a flip through nginx's link, each direction (body + answer) | "
            "replica cores one nginx core fronts | replica cores one 10 GbE link fronts |",
            "| --- | --- | --- | --- | --- | --- |"]
    for path, e in (summary.get("efficiency") or {}).items():
        cpu = e["cpu_s_per_flip"]
        rows.append(f"| {path} | {cpu.get('nginx', 0) * 1000:.1f} ms | {cpu.get('web', 0) * 1000:.1f} ms | "
                    f"{e['bytes_in_per_flip'] / 1e6:.1f} MB | {e.get('replica_cores_per_nginx_core', '-')} | "
                    f"{e.get('replica_cores_per_10gbe_link', '-')} |")
    m = summary["machine"]
    return "\n".join([f"From the benchmark run of commit `{m['commit']}` ({m['cores']} cores, {m['cpu']}), "
                      "the 24 MP sample:", "", *rows])


def _cpu_table(summary: dict) -> list[str]:
    """Where the CPU went in the default configuration's run at 4 users (or its largest)."""
    block = summary["replicas"].get(str(summary["default"].get("replicas")))
    if not block:
        return []
    run = next((r for r in block["by_users"] if r["users"] == 4), block["by_users"][-1])
    used = {part: seconds for part, seconds in run["cpu_s"].items() if part != "wall"}
    total = sum(used.values())
    rows = [f"CPU-seconds by part, default configuration, {run['users']} users for {run['cpu_s']['wall']} s "
            f"({run['rps']:.2f} flips/s):", "", "| part | CPU-seconds | share |", "| --- | --- | --- |"]
    rows += [f"| {part} | {seconds:.1f} | {seconds / total:.0%} |" for part, seconds in
             sorted(used.items(), key=lambda item: -item[1])]
    return rows


def _spans_table(summary: dict) -> list[str]:
    """Mean seconds per flip in each span, by configuration (the replicas' own metrics)."""
    blocks = [(label, v["spans_s"]) for label, v in _rows(summary) if v.get("spans_s")]
    if not blocks:
        return []
    spans = list(blocks[0][1])
    rows = ["Where a flip's time went in the replicas (mean seconds per flip over each block, from "
            "`flipfleet_flip_span_seconds`):", "",
            "| replicas x flips at once | " + " | ".join(spans) + " | total |",
            "| --- |" + " --- |" * (len(spans) + 1)]
    rows += [f"| {label} | " + " | ".join(f"{found.get(span, 0):.3f}" for span in spans) +
             f" | {sum(found.values()):.3f} |" for label, found in blocks]
    return rows


def headline(summary: dict) -> str:
    """README.md's paragraph on the article's experiment: the default stack, the sample flipped
    losslessly."""
    block = summary["replicas"][str(summary["default"]["replicas"])]
    lossless = summary["efficiency"]["lossless"]
    answered = "all answered" if not block.get("burst_failures") else f"{block['burst_failures']} not answered"
    return _paragraph(
        f"The article's experiment on a {summary['machine']['cores']}-core build machine, default stack (a "
        f"replica per core), the 24 MP sample flipped losslessly: 10 flips sent at once {answered}, the last "
        f"after {block['burst_last_s']:.2f} s (the article: 40 s on one process, 14 s on its cluster); "
        f"{block['rps']:.1f} flips/s sustained, {block['rps_fraction_of_ceiling']:.2f} of the floor's rate (the "
        "bare transform alone on every core) with the load generator on the same cores; a replica spends "
        f"x{lossless['vs_floor']['web']:.2f} of the floor's CPU on a flip and faults in "
        f"{lossless['faults_per_flip']} pages. `.venv/bin/python -m loadtest.bench` measures it on yours "
        "(about 20 minutes; [results.md](docs/results.md)).")


def lossless_cost(summary: dict) -> str:
    """docs/api.md's sentence on what a lossless flip costs a replica."""
    lossless = summary["efficiency"]["lossless"]
    against = summary["default"]["against_goals"]
    return _paragraph(
        f"On the benchmark's default stack a replica spends {lossless['cpu_s_per_flip']['web'] * 1000:.1f} ms of "
        f"CPU on a lossless flip of the sample, x{against['lossless_vs_reencoded']:.2f} of a re-encoding and "
        f"x{lossless['vs_floor']['web']:.2f} of TurboJPEG's bare transform at its floor, faulting in "
        f"{lossless['faults_per_flip']} pages ([results.md](results.md#the-benchmark)).")


def _paragraph(text: str) -> str:
    return textwrap.fill(text, QUOTE_WIDTH, break_long_words=False, break_on_hyphens=False)


def write_quotes(summary: dict, root: Path = ROOT) -> None:
    """The figures README.md and docs/api.md quote, from `summary`."""
    write(summary, root / "README.md", HEADLINE_START, HEADLINE_END, headline)
    write(summary, root / "docs" / "api.md", LOSSLESS_START, LOSSLESS_END, lossless_cost)


def write(summary: dict, target: Path, start: str = START, end: str = END, render=None) -> None:
    """Replace the tables between the markers of `target` with those of `summary`."""
    page = target.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(page):
        raise SystemExit(f"{target} has no {start!r} ... {end!r} section")
    tables = (render or markdown)(summary)
    target.write_text(pattern.sub(lambda _: f"{start}\n\n{tables}\n\n{end}", page))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", nargs="?", default=str(ROOT / "docs" / "results" / "summary.json"))
    parser.add_argument("--write", metavar="PAGE", help="replace the tables in this Markdown page")
    parser.add_argument("--write-swarm", metavar="PAGE", help="replace the capacity table in this page")
    parser.add_argument("--write-quotes", action="store_true",
                        help="replace the figures README.md and docs/api.md quote from the run")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    if args.write:
        write(summary, Path(args.write))
    if args.write_swarm:
        write(summary, Path(args.write_swarm), CAPACITY_START, CAPACITY_END, capacity)
    if args.write_quotes:
        write_quotes(summary)
    if not (args.write or args.write_swarm or args.write_quotes):
        print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
