"""`python -m loadtest.bench --quick`, the short version of the benchmark, on a real Docker engine."""

import json
import os
import subprocess
import sys

import pytest

from harness.compose import ROOT
from loadtest.bench import report
from loadtest.bench.burst import BURST
from service.metrics import SPANS

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PER_BLOCK_KEYS = {"burst_first_s", "burst_last_s", "rps", "p50_ms", "p95_ms", "p99_ms", "failures"}


@pytest.fixture(scope="module")
def quick_run(docker_images, tmp_path_factory):
    """The quick benchmark's results folder, after a run that must succeed."""
    out = tmp_path_factory.mktemp("bench")
    # Healthchecks every 2 s, as on every test stack: each of its stacks is up in seconds, not 20.
    # (Each check costs its replica CPU, which a benchmark for figures should not pay.)
    bench = subprocess.Popen(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HEALTH_INTERVAL": "2s"},
    )
    try:
        stdout, stderr = bench.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench tears its stacks down before it exits
        stdout, stderr = bench.communicate(timeout=120)
    assert bench.returncode == 0, stderr[-4000:]
    return out, stdout


def test_summary_has_every_figure_and_no_failures(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["commit"] != "unknown"
    assert summary["ceiling_rps"] > 0 and len(summary["ceiling_samples"]) >= 2
    assert set(summary["replicas"]) == {"1", "2"}
    for figures in [*summary["replicas"].values(), *summary["gil"].values()]:
        assert PER_BLOCK_KEYS <= set(figures)
        assert figures["failures"] == 0
        assert figures["rps"] > 0
        assert 0 < figures["burst_first_s"] <= figures["burst_last_s"]
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
        assert figures["burst_last_vs_ideal"] == pytest.approx(
            figures["burst_last_s"] * figures["ceiling_rps_around"] / BURST, rel=0.01
        )
    assert len(summary["gil"]) == 2
    for figures in summary["replicas"].values():
        # A lossless flip has no decode or encode: the transform is all of it, in "flip".
        assert {"queue", "read", "flip", "write"} <= set(figures["spans_s"]) <= set(SPANS)
        assert figures["spans_s"]["flip"] > 0
    assert summary["nginx"]["requests_each"] > 0
    expected = {"replicas", "concurrency", "rps_fraction_of_ceiling", "efficiency", "meets_goals"}
    assert expected <= set(summary["default"])
    assert summary["tuned"] == {}  # the defaults are what it measures
    # Each way to flip the sample: its CPU per flip by part, its efficiency, what nginx moves.
    assert set(summary["efficiency"]) == set(summary["ceiling_by_path"]) and "re-encoded" in summary["efficiency"]
    for path, figures in summary["efficiency"].items():
        assert figures["flips"] > 0 and figures["failures"] == 0, (path, figures)
        assert {"web", "nginx", "load generator"} <= set(figures["cpu_s_per_flip"])
        assert 0 < figures["efficiency"] < 1.5 and figures["alone_cpu_s_per_flip"] > 0
        assert figures["bytes_in_per_flip"] > 2 * 6_000_000
        # The floor is the bare call with its memory kept mapped: it faults in no page of its own.
        assert figures["floor_faults_per_flip"] < 50, figures["floor_faults_per_flip"]
        assert figures["faults_per_flip"] >= 0 and figures["one_flip_s"] > 0
        assert figures["vs_floor"]["web"] == pytest.approx(
            figures["cpu_s_per_flip"]["web"] / figures["alone_cpu_s_per_flip"], rel=0.02)
    assert set(summary["default"]["against_goals"]) == set(summary["default"]["goals"])
    assert summary["default"]["meets_goals"] == all(summary["default"]["meets"].values())


def test_reports_and_plots_are_written(quick_run):
    out, stdout = quick_run
    for name in ("throughput.png", "burst.png", "spans.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert (out / "replicas1" / "users2_stats.csv").is_file()
    assert (out / "replicas2" / "users2.html").stat().st_size > 1000
    assert "default configuration" in stdout


def test_light_requests_were_probed_while_the_queues_were_full(quick_run):
    out, _ = quick_run
    light = json.loads((out / "summary.json").read_text())["light_under_load"]
    assert light["users"] == light["replicas"] * light["queue"]
    assert light["flips"]["requests"] > 0
    assert set(light["probes"]) == {"GET /healthz (a replica)", "GET /metrics (a replica)", "GET / (through nginx)"}
    for figures in light["probes"].values():
        assert figures["count"] > 0 and figures["failed"] == 0
        assert figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


def test_the_results_page_tables_are_generated_from_the_summary(quick_run, tmp_path):
    out, _ = quick_run
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nprose stays\n\n{report.START}\nold tables\n{report.END}\n\nmore prose\n")
    report.write(json.loads((out / "summary.json").read_text()), page)
    written = page.read_text()
    assert "old tables" not in written and "prose stays" in written and "more prose" in written
    assert "| **2 x 1 (default)** |" in written and "GET /healthz (a replica)" in written
    assert "GET /metrics (a replica)" in written and "| re-encoded |" in written
    swarm = tmp_path / "swarm.md"
    swarm.write_text(f"# Swarm\n\n{report.CAPACITY_START}\n{report.CAPACITY_END}\n")
    report.write(json.loads((out / "summary.json").read_text()), swarm, report.CAPACITY_START,
                 report.CAPACITY_END, report.capacity)
    assert "replica cores one nginx core fronts" in swarm.read_text()
