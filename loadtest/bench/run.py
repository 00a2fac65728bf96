"""One benchmark run: each block on a fresh compose stack, each compared with the floor (the flip
alone at its least CPU, loadtest.bench.ceiling) measured just before and after it, everything
written to summary.json."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import usage
from harness.compose import ROOT, Stack, build_images, check_docker
from harness.locust import run_locust
from loadtest.bench.burst import BURST, burst
from loadtest.bench.ceiling import PATHS, available, ceiling
from loadtest.bench.cpu import cpu_during
from loadtest.bench.latency import get_latencies, nginx_overhead, probe
from loadtest.bench.spans import flip_spans
from service.config import Settings
from service.sample import load_sample

# The article (2018), as published: Jimp flipping a 6.7 MB photo on an 8-thread laptop.
ARTICLE_PUBLISHED = {
    "one process": {"burst_first_s": 16.0, "burst_last_s": 40.0},
    "cluster, one worker per core": {"burst_first_s": 10.0, "burst_last_s": 14.0},
}
# Also publishes the replica's port on loopback, for requests straight to a replica.
DIRECT_OVERRIDE = ROOT / "loadtest" / "compose.direct.yaml"
# The default stack against the floor, on its lossless path (the sample's default): a replica's
# CPU per flip over the floor's, the pages it faults in a flip, the lossless path's replica CPU
# over the re-encoded path's, throughput over the floor's rate on every core (the load generator
# on the same cores), one flip end to end on an idle stack over the floor's CPU per flip (seconds
# more), and the article's burst over the floor's ideal.
GOALS = {"replica_cpu_vs_floor": 1.10, "faults_per_flip": 2000, "lossless_vs_reencoded": 0.70,
         "rps_fraction_of_floor": 0.80, "one_flip_over_floor_s": 0.060, "burst_last_vs_ideal": 1.35}
# Flips of the sample one after another, one client, on the idle default stack: one flip end to end.
ONE_FLIP_ROUNDS = 7
# A 10 GbE link, each way: what one nginx's flips move, for the capacity model.
LINK_BYTES_PER_S = 10e9 / 8


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def compose_defaults() -> dict:
    """Replicas as compose.yaml ships them (no variables set), flips at once as the service does."""
    clean = {k: v for k, v in os.environ.items() if k != "WEB_REPLICAS" and not k.startswith("FLIP_")}
    config = json.loads(
        subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=ROOT, env=clean,
                       capture_output=True, text=True, check=True, timeout=60).stdout
    )
    settings = Settings.from_env({})
    return {"replicas": int(config["services"]["web"]["deploy"]["replicas"]), "concurrency": settings.concurrency,
            "queue": settings.queue}


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )
    # "-dirty" when the tree differs from the commit: the run is of uncommitted code.
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": check_docker(),
        "commit": commit.stdout.strip() or "unknown",
    }


def flipped_sample(url: str, query: str = "") -> bytes:
    """One flip of the sample through the stack: its answer."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", f"/flip?{query}" if query else "/flip", body=load_sample(None),
                       headers={"Content-Type": "image/jpeg"})
    answer = connection.getresponse().read()
    connection.close()
    return answer


def locust_figures(url: str, users: int, seconds: int, prefix: Path, photo: Path, query: str = "") -> dict:
    """A headless locust run of FlipUser posting `photo`: its exit code and its /flip figures."""
    run = run_locust(url, "FlipUser", users=users, seconds=seconds, csv_prefix=prefix, html=True,
                     FLIP_PHOTO=str(photo), FLIP_QUERY=query)
    return {"exit_code": run.exit_code, "users": users, **run.figures("/flip")}


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.photo = load_sample(None)
        self.stacks: list[Stack] = []

    # -- stacks --------------------------------------------------------------------------

    def stack(self, label: str, replicas: int, *overrides: Path, **env: str) -> Stack:
        # The load generator is one address standing in for many clients: no per-client share.
        tuned = {"FLIP_QUEUE": str(self.args.queue)} if self.args.queue else {}
        queue = int({**tuned, **env}.get("FLIP_QUEUE", Settings.from_env({}).queue))
        env = {**tuned, "FLIP_CLIENT_SHARE": str(max(replicas * queue, 10)), **env}
        log(f"bringing up {replicas} replica(s) {env}")
        stack = Stack(f"bench-{label}", *overrides, **env)
        self.stacks.append(stack)
        stack.up(replicas)
        return stack

    def down(self, stack: Stack) -> None:
        stack.down()
        self.stacks.remove(stack)

    def teardown(self) -> None:
        for stack in list(self.stacks):
            log(f"tearing down {stack.project}")
            try:
                self.down(stack)
            except Exception as exc:  # keep going: every other stack must come down too
                log(f"  could not tear down {stack.project}: {exc}")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        # Locust reads the sample from a file rather than making it again in every run.
        self.photo_path = self.out / "sample.jpg"
        self.photo_path.write_bytes(self.photo)
        summary: dict = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                         "quick": args.quick, "machine": machine(), "settings": vars(args),
                         "tuned": {"FLIP_QUEUE": args.queue} if args.queue else {},
                         "article": {"published": ARTICLE_PUBLISHED}}
        log(f"machine: {summary['machine']}")
        defaults = compose_defaults()
        summary["compose_defaults"] = defaults
        log("building images")
        build_images("web")

        summary["ceiling_samples"], summary["ceiling_by_path"] = [], {}
        self.sample_ceiling(summary)
        summary["replicas"] = {}
        for replicas in args.replicas:
            # Users up to what the replicas hold: more would measure refusals, not flips.
            users = [u for u in args.users if u <= replicas * defaults["queue"]] or [replicas]
            result = self.block(f"replicas{replicas}", replicas, users,
                                FLIP_CONCURRENCY=str(defaults["concurrency"]))
            result["concurrency"] = defaults["concurrency"]
            summary["replicas"][str(replicas)] = self.relate(result, summary)
        summary["gil"] = self.gil(summary) if args.gil_threads else {}
        summary["light_under_load"] = self.light_under_load(defaults) if args.probe_seconds else {}
        summary["nginx"] = self.nginx() if args.nginx_rounds else {}
        summary["efficiency"] = self.efficiency(summary, defaults) if args.efficiency_seconds else {}
        summary["ceiling_rps"] = round(statistics.median(summary["ceiling_samples"]), 3)
        summary["ideal_burst_last_s"] = round(BURST / summary["ceiling_rps"], 3)
        summary["default"] = self.default(summary, defaults)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from loadtest.bench import plots  # matplotlib only once there is something to draw

        plots.draw(summary, self.out, ARTICLE_PUBLISHED)
        log(f"wrote {self.out / 'summary.json'} and plots")
        return summary

    def block(self, label: str, replicas: int, user_counts: list[int], **env: str) -> dict:
        """A stack of `replicas`: the burst, then a locust run at each user count, with CPU used."""
        stack = self.stack(label, replicas, **env)
        try:
            # Warm-up, one flip per replica (least_conn spreads them): a replica's first is slower.
            burst(stack.url, self.photo, clients=replicas)
            result, used = cpu_during(stack, lambda: burst(stack.url, self.photo))
            result["burst_cpu_s"] = used
            log(f"  burst of {BURST}: first {result['burst_first_s']:.2f} s, last {result['burst_last_s']:.2f} s")
            runs = []
            for users in user_counts:
                prefix = self.out / label / f"users{users}"
                prefix.parent.mkdir(parents=True, exist_ok=True)
                numbers, used = cpu_during(stack, lambda users=users, prefix=prefix: locust_figures(
                    stack.url, users, self.args.duration, prefix, self.photo_path))
                numbers["cpu_s"] = used
                runs.append(numbers)
                log(f"  {users:>2} users: {numbers['rps']:.2f} req/s, p50 {numbers['p50_ms']:.0f} ms, "
                    f"p95 {numbers['p95_ms']:.0f} ms, {numbers['failures']} failed; CPU s {used}")
            result["spans_s"] = flip_spans(stack)
            log(f"  a flip's time, by span (mean s): {result['spans_s']}")
        finally:
            self.down(stack)
        best = max(runs, key=lambda r: r["rps"])
        result.update({key: best[key] for key in ("rps", "p50_ms", "p95_ms", "p99_ms")})
        result["rps_at_users"] = best["users"]
        result["failures"] = sum(r["failures"] for r in runs) + result["burst_failures"]
        result["by_users"] = runs
        return result

    def sample_ceiling(self, summary: dict) -> float:
        """Measure the floor again and keep its rate: the machine's speed drifts by several percent
        within minutes, so each block is compared with the floor measured just before and after it.
        For the sample (a JPEG) the rate is the faster of the two ways to flip it."""
        cores = os.cpu_count() or 1
        found = {}
        for path in (p for p in PATHS if available(p)):
            rps, cpu, faults = ceiling(self.args.ceiling_seconds, cores, path)
            found[path] = rps
            summary["ceiling_by_path"].setdefault(path, []).append(
                {"rps": round(rps, 3), "cpu_s": round(cpu, 4), "faults": round(faults, 1)})
            log(f"floor, {path}: the flip alone, {cores} processes, {self.args.ceiling_seconds} s: {rps:.2f} "
                f"flips/s, {cpu * 1000:.1f} ms of CPU and {faults:.0f} page faults a flip")
        rps = max(found.values())
        summary["ceiling_samples"].append(round(rps, 3))
        return rps

    def relate(self, result: dict, summary: dict) -> dict:
        """Add the block's figures as fractions of the ceiling measured around it."""
        before = summary["ceiling_samples"][-1]
        after = self.sample_ceiling(summary)
        around = (before + after) / 2
        result["ceiling_rps_around"] = round(around, 3)
        result["rps_fraction_of_ceiling"] = round(result["rps"] / around, 3)
        result["ideal_burst_last_s"] = round(BURST / around, 3)
        result["burst_last_vs_ideal"] = round(result["burst_last_s"] * around / BURST, 3)
        return result

    def gil(self, summary: dict) -> dict:
        """T flips at once in one replica against T replicas of one flip each, same users."""
        at_once = self.args.gil_threads
        found = {}
        for label, replicas, per_replica in (
            (f"1 x {at_once} (one replica)", 1, at_once),
            (f"{at_once} x 1 ({at_once} replicas)", at_once, 1),
        ):
            result = self.block(f"gil-{replicas}x{per_replica}", replicas, [2 * at_once],
                                FLIP_CONCURRENCY=str(per_replica))
            found[label] = self.relate(result, summary)
        return found

    def light_under_load(self, defaults: dict) -> dict:
        """GET /healthz, /metrics and GET / while every flip queue of the default stack is full:
        what healthchecks, probes and Prometheus see of a busy replica."""
        replicas, queue = defaults["replicas"], defaults["queue"]
        users = replicas * queue
        log(f"light requests while {users} users fill {replicas} replicas' queues of {queue}")
        stack = self.stack("light", replicas, DIRECT_OVERRIDE, FLIP_QUEUE=str(queue))
        try:
            direct = stack.published_port("web", 8000)
            done = threading.Event()
            found: dict = {}

            def load() -> None:
                try:
                    found["flips"] = locust_figures(stack.url, users, self.args.probe_seconds,
                                                    self.out / "light" / "flips", self.photo_path)
                finally:
                    done.set()

            (self.out / "light").mkdir(parents=True, exist_ok=True)
            loader = threading.Thread(target=load)
            loader.start()
            found["probes"] = probe({"GET /healthz (a replica)": (direct, "/healthz"),
                                     "GET /metrics (a replica)": (direct, "/metrics"),
                                     "GET / (through nginx)": (stack.port, "/")}, until=done.is_set)
            loader.join()
        finally:
            self.down(stack)
        found.update(users=users, replicas=replicas, queue=queue)
        for name, figures in found["probes"].items():
            log(f"  {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms")
        return found

    def nginx(self) -> dict:
        log("what nginx adds to GET /: 1 replica, its port also published on loopback")
        stack = self.stack("nginx", 1, DIRECT_OVERRIDE)
        try:
            get_latencies("127.0.0.1", stack.port, 50)  # warm-up
            result = nginx_overhead(stack, self.args.nginx_rounds)
        finally:
            self.down(stack)
        log(f"  GET / median: {result['through_nginx_p50_ms']:.3f} ms through nginx, "
            f"{result['direct_p50_ms']:.3f} ms direct; nginx adds {result['nginx_adds_p50_ms']:.3f} ms")
        return result

    def efficiency(self, summary: dict, defaults: dict) -> dict:
        """On the default stack, each flip path in turn: CPU seconds per flip of each part, the
        efficiency (the flip alone's CPU per flip over the stack's: replicas, nginx, proxy),
        throughput against the ceiling of the cores the load generator leaves, and what nginx
        spends and moves per flip (the capacity model of docs/swarm.md)."""
        replicas, cores = defaults["replicas"], summary["machine"]["cores"]
        found = {}
        for path in (p for p in PATHS if available(p)):
            alone = statistics.median(s["cpu_s"] for s in summary["ceiling_by_path"][path])
            ceiling_rps = statistics.median(s["rps"] for s in summary["ceiling_by_path"][path])
            stack = self.stack(f"efficiency-{path}", replicas)
            try:
                query = "lossless=false" if path == "re-encoded" else ""
                burst(stack.url, self.photo, clients=replicas, query=query)  # warm-up
                one_flip = self.one_flip(stack, query)
                article = burst(stack.url, self.photo, query=query)  # the article's burst, this path
                prefix = self.out / "efficiency" / path
                prefix.parent.mkdir(parents=True, exist_ok=True)
                web = stack.container_ids("web")
                faults_before = sum(usage.container_faults(c) or 0 for c in web)
                numbers, used = cpu_during(stack, lambda stack=stack, prefix=prefix, query=query: locust_figures(
                    stack.url, 2 * replicas, self.args.efficiency_seconds, prefix, self.photo_path, query))
                faults = sum(usage.container_faults(c) or 0 for c in web) - faults_before
                answer = len(flipped_sample(stack.url, query))
            finally:
                self.down(stack)
            flips = max(numbers["requests"] - numbers["failures"], 1)
            per_flip = {part: round(seconds / flips, 4) for part, seconds in used.items() if part != "wall"}
            stack_cpu = per_flip.get("web", 0) + per_flip.get("nginx", 0) + per_flip.get("docker-proxy", 0)
            generator_share = used.get("load generator", 0) / (used["wall"] * cores)
            cores_left = cores * (1 - generator_share)
            result = {
                **article, "burst_last_vs_ideal": round(article["burst_last_s"] * ceiling_rps / BURST, 3),
                "flips": flips, "rps": numbers["rps"], "failures": numbers["failures"],
                "cpu_s_per_flip": per_flip, "alone_cpu_s_per_flip": round(alone, 4),
                "floor_faults_per_flip": statistics.median(s["faults"] for s in summary["ceiling_by_path"][path]),
                "vs_floor": {part: round(seconds / alone, 3) for part, seconds in per_flip.items()},
                "faults_per_flip": round(faults / flips),
                "one_flip_s": one_flip, "one_flip_over_floor_s": round(one_flip - alone, 3),
                "efficiency": round(alone / stack_cpu, 3) if stack_cpu else None,
                "load_generator_share": round(generator_share, 3), "cores_left": round(cores_left, 2),
                "rps_fraction_of_floor": round(numbers["rps"] / ceiling_rps, 3),
                "rps_fraction_of_cores_left": round(numbers["rps"] / (ceiling_rps * cores_left / cores), 3),
                "bytes_in_per_flip": len(self.photo) + answer, "bytes_out_per_flip": len(self.photo) + answer,
            }
            nginx_cpu = per_flip.get("nginx") or None
            replica_cpu = per_flip.get("web") or None
            if nginx_cpu and replica_cpu:
                link_flips = LINK_BYTES_PER_S / result["bytes_in_per_flip"]
                result["replica_cores_per_nginx_core"] = round(replica_cpu / nginx_cpu, 1)
                result["replica_cores_per_10gbe_link"] = round(link_flips * replica_cpu, 1)
            found[path] = result
            log(f"  {path}: {numbers['rps']:.2f} flips/s, CPU s a flip {per_flip}, the floor {alone:.4f}, "
                f"{result['faults_per_flip']} page faults a flip; one flip {one_flip:.3f} s; x"
                f"{result['rps_fraction_of_floor']} of the floor's rate, x{result['rps_fraction_of_cores_left']} "
                f"of the cores left")
        return found

    def one_flip(self, stack: Stack, query: str) -> float:
        """Seconds from sending the sample to its whole answer, one client on an idle stack (median)."""
        times = []
        for _ in range(ONE_FLIP_ROUNDS):
            started = time.monotonic()
            flipped_sample(stack.url, query)
            times.append(time.monotonic() - started)
        return round(statistics.median(times), 3)

    def default(self, summary: dict, defaults: dict) -> dict:
        """The shipped configuration's figures, against the goals."""
        measured = summary["replicas"].get(str(defaults["replicas"]))
        if measured is None:
            return {"note": f"the default of {defaults['replicas']} replicas was not among those measured"}
        efficiency = summary.get("efficiency") or {}
        figures = {
            **defaults,
            "rps_fraction_of_ceiling": measured["rps_fraction_of_ceiling"],
            "burst_last_vs_ideal": measured["burst_last_vs_ideal"],
            "efficiency": {path: e["efficiency"] for path, e in efficiency.items()},
            "rps_fraction_of_cores_left": {path: e["rps_fraction_of_cores_left"] for path, e in efficiency.items()},
            "goals": GOALS,
        }
        lossless, reencoded = efficiency.get("lossless"), efficiency.get("re-encoded")
        if not (lossless and reencoded):
            figures["meets_goals"] = None  # a path was not measured
            return figures
        replica_cpu = {path: e["cpu_s_per_flip"].get("web", 0) for path, e in efficiency.items()}
        against = {
            "replica_cpu_vs_floor": lossless["vs_floor"].get("web"),
            "faults_per_flip": lossless["faults_per_flip"],
            "lossless_vs_reencoded": round(replica_cpu["lossless"] / replica_cpu["re-encoded"], 3),
            "rps_fraction_of_floor": lossless["rps_fraction_of_floor"],
            "one_flip_over_floor_s": lossless["one_flip_over_floor_s"],
            "burst_last_vs_ideal": lossless["burst_last_vs_ideal"],
        }
        at_least = {"rps_fraction_of_floor"}  # the others are at most
        figures["against_goals"] = against
        figures["meets"] = {goal: (value >= GOALS[goal]) if goal in at_least else (value <= GOALS[goal])
                            for goal, value in against.items()}
        figures["meets_goals"] = all(figures["meets"].values())
        return figures
