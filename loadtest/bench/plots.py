"""PNG plots of a loadtest.bench summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def draw(summary: dict, out: Path, article: dict) -> list[Path]:
    return [_throughput_and_p95(summary, out), _burst(summary, out, article), _spans(summary, out)]


def _throughput_and_p95(summary: dict, out: Path) -> Path:
    fig, (rps_ax, p95_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for replicas, result in summary["replicas"].items():
        users = [run["users"] for run in result["by_users"]]
        rps_ax.plot(users, [run["rps"] for run in result["by_users"]], marker="o", label=f"{replicas} replica(s)")
        p95_ax.plot(users, [run["p95_ms"] / 1000 for run in result["by_users"]], marker="o",
                    label=f"{replicas} replica(s)")
    rps_ax.axhline(summary["ceiling_rps"], color="grey", linestyle="--",
                   label=f"the floor's rate: the flip alone, {summary['machine']['cores']} processes")
    rps_ax.set(xlabel="locust users (closed loop)", ylabel="flips per second", title="Throughput through nginx",
               xscale="log", ylim=(0, None))
    p95_ax.set(xlabel="locust users (closed loop)", ylabel="seconds", title="p95 latency of POST /flip",
               xscale="log", ylim=(0, None))
    for ax in (rps_ax, p95_ax):
        ax.set_xticks(users, [str(u) for u in users])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"24 MP JPEG flip, {summary['machine']['cores']} cores ({summary['machine']['cpu']})", fontsize=9)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _burst(summary: dict, out: Path, article: dict) -> Path:
    labels, first, last, colours = [], [], [], []
    for name, figures in article.items():
        labels.append(f"article: {name}\n(Jimp, 8 threads)")
        first.append(figures["burst_first_s"])
        last.append(figures["burst_last_s"])
        colours.append("#bbbbbb")
    for replicas, result in summary["replicas"].items():
        labels.append(f"flipfleet: {replicas} replica(s)\n({summary['machine']['cores']} cores)")
        first.append(result["burst_first_s"])
        last.append(result["burst_last_s"])
        colours.append("#3b7dd8")
    fig, ax = plt.subplots(figsize=(11, 4.2))
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], first, width=0.4, color=colours, alpha=0.55, label="first answer")
    ax.bar([p + 0.2 for p in positions], last, width=0.4, color=colours, label="last answer")
    for p, (first_s, last_s) in enumerate(zip(first, last, strict=True)):
        ax.annotate(f"{first_s:.2g}", (p - 0.2, first_s), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{last_s:.2g}", (p + 0.2, last_s), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set(ylabel="seconds (log scale)", yscale="log",
           title="10 concurrent POST /flip of a ~24 MP photo: time to the first and last answer")
    ax.axhline(summary["ideal_burst_last_s"], color="grey", linestyle="--",
               label=f"ideal last answer here: 10 / the floor's rate = {summary['ideal_burst_last_s']:.2f} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "burst.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _spans(summary: dict, out: Path) -> Path:
    """A bar a configuration, cut into where a flip's time went (the replicas' own metrics)."""
    blocks = [(f"{r} x {v['concurrency']}", v) for r, v in summary["replicas"].items()]
    blocks += list(summary["gil"].items())
    blocks = [(label, v["spans_s"]) for label, v in blocks if v.get("spans_s")]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(blocks) + 1.8))
    spans = list(blocks[0][1]) if blocks else []
    for index, (_, found) in enumerate(blocks):
        left = 0.0
        for colour, span in enumerate(spans):
            width = found.get(span, 0.0)
            ax.barh(index, width, left=left, color=f"C{colour}", label=span if index == 0 else None)
            left += width
        ax.annotate(f"{left:.2f} s", (left, index), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(blocks)), [label for label, _ in blocks], fontsize=8)
    ax.set(xlabel="seconds per flip (mean over the block's flips)",
           title="Where a flip's time goes in the replica: waiting its turn, reading, decoding, flipping, encoding, "
                 "writing")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=len(spans), loc="lower right")
    fig.tight_layout()
    path = out / "spans.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
