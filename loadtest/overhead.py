"""What the service costs above Pillow's own work, for the sample photo; and each format's paths.

    python -m loadtest.overhead [--rounds N] [--format-rounds N] [--allocator-rounds N] [--cpu-rounds N]

Interleaves, round by round so that machine noise hits all alike: Pillow alone (decode, flip,
encode with the source's tables), service.imaging.flip, one POST /flip of the same bytes to
`python -m service` (waitress) on loopback, and what the Prometheus metrics record for a flip.
Prints each median and the ratios. These flips re-encode (?lossless=false), the same work as
Pillow alone: the ratios are what the service adds to it.

The in-process work runs on a worker thread, as waitress runs the app, with Pillow keeping its
freed image blocks as the service does. Without those blocks kept, the same calls on the main
thread were 1.5x slower (glibc mapped fresh pages for every picture there); the last line shows
the main thread for comparison.

Then, per format (the sample JPEG; HEIC and AVIF made from it at a phone's 12 MP), side by
side: Pillow alone, imaging.flip re-encoding, and for JPEG the lossless path, each timed the
same way (medians over --format-rounds), with its peak memory: how far a fresh process's
resident memory rises above what it holds before the flip, for one flip (no Pillow blocks kept,
the allocator set as the image sets it: loadtest.memory.IMAGE_ENV).

Last, allocators side by side: the sample's lossless and re-encoded flips, each in fresh
processes under each of loadtest.memory's variants (the image's jemalloc, jemalloc's defaults,
glibc tuned, glibc's defaults), interleaved (--allocator-rounds): the CPU per flip of each against
the image's.

With --cpu-rounds N, only CPU instead of time: a `python -m service` with the allocator the image
sets, its process's CPU seconds around POST /flip on each JPEG path, against the same flip alone
in a fresh process under the same settings, interleaved: what the service's HTTP work costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from PIL import Image, JpegImagePlugin

from harness.service import running_service
from harness.usage import process_seconds
from loadtest.flip_cpu import cpu_per_flip
from loadtest.memory import IMAGE_ENV, VARIANTS, allocator_environment
from service import imaging
from service.config import Settings
from service.imaging import keep_image_memory
from service.metrics import SPANS, Metrics, MetricsMiddleware
from service.sample import make_sample


def pillow_alone(data: bytes) -> bytes:
    im = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(
        out, "JPEG", qtables=im.quantization, subsampling=JpegImagePlugin.get_sampling(im)
    )
    return out.getvalue()


def post_flip(connection: http.client.HTTPConnection, data: bytes, path: str = "re-encoded") -> float:
    """POST the picture; return the app's own time from X-Response-Time, in seconds."""
    connection.request("POST", f"/flip?lossless={'true' if path == 'lossless' else 'false'}", body=data,
                       headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST /flip answered {response.status}: {body[:200]!r}")
    return float(response.headers["X-Response-Time"].removesuffix("ms")) / 1000


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def timed_post(connection: http.client.HTTPConnection, data: bytes) -> tuple[float, float]:
    started = time.perf_counter()
    in_app = post_flip(connection, data)
    return time.perf_counter() - started, in_app


def metrics_per_flip(rounds: int = 2000) -> float:
    """Seconds the metrics add to one POST /flip: the middleware and everything it records for
    a flip, run around a WSGI app that does nothing else."""
    metrics = Metrics("overhead", queue=8)
    spans = {span: 0.01 for span in SPANS if span != "write"}

    def flip_view(environ, start_response):
        # What the Flask app's hooks and its flip view leave for the middleware.
        environ["flipfleet.route"] = "/flip"
        metrics.in_flight.labels("/flip").inc()
        environ["flipfleet.flip"] = {"spans": dict(spans), "bytes_in": 6_530_520, "bytes_out": 6_333_747,
                                     "pixels": 24_000_000, "frames": 1}
        environ["flipfleet.view_done"] = time.perf_counter()
        start_response("200 OK", [])
        return [b""]

    app = MetricsMiddleware(flip_view, metrics)
    started = time.perf_counter()
    for _ in range(rounds):
        app({"REQUEST_METHOD": "POST"}, lambda status, headers, exc_info=None: None).close()
    return (time.perf_counter() - started) / rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="measured rounds (default 15)")
    parser.add_argument("--format-rounds", type=int, default=5,
                        help="measured rounds of the per-format comparison (default 5)")
    parser.add_argument("--allocator-rounds", type=int, default=3,
                        help="rounds of the comparison of allocators (default 3; 0 skips it)")
    parser.add_argument("--peak-of", nargs=2, metavar=("PATH_NAME", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu-of", metavar="PATH_NAME", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-rounds", type=int, default=0,
                        help="only compare CPU per flip, the service's against the flip alone, for N rounds")
    args = parser.parse_args(argv)
    if args.peak_of:
        _measure_peak(args.peak_of[0], Path(args.peak_of[1]))
        return 0
    if args.cpu_of:
        _measure_cpu(args.cpu_of)
        return 0
    if args.cpu_rounds:
        compare_service_cpu(args.cpu_rounds)
        return 0

    data = make_sample()
    keep_image_memory(Settings.from_env({}).pillow_blocks)  # as `python -m service` does
    print(f"sample: 6000x4000 JPEG, {len(data):,} bytes; {args.rounds} rounds after 2 warm-up rounds")
    with running_service() as service:
        address = urllib.parse.urlsplit(service.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        times: dict[str, list[float]] = {"pillow": [], "imaging": [], "http": [], "app": [], "main": [],
                                         "metrics": []}
        measures = {
            "pillow": lambda: worker.submit(timed, pillow_alone, data).result(),
            "imaging": lambda: worker.submit(timed, re_encoded, data).result(),
            "http": lambda: timed_post(connection, data),
            "main": lambda: timed(pillow_alone, data),
            "metrics": lambda: metrics_per_flip(200),
        }
        names = list(measures)
        for round_number in range(args.rounds + 2):
            # Rotate the order each round, so that no measure always follows the same one.
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = measures[name]()
                if name == "http":
                    seconds, in_app = seconds
                    if round_number >= 2:
                        times["app"].append(in_app)
                if round_number >= 2:
                    times[name].append(seconds)
        connection.close()
        worker.shutdown()

    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"Pillow alone, decode+flip+encode   median {median['pillow']:7.1f} ms")
    print(f"service.imaging.flip, re-encoding  median {median['imaging']:7.1f} ms"
          f"   x{median['imaging'] / median['pillow']:.3f} of Pillow alone")
    print(f"POST /flip to waitress on loopback median {median['http']:7.1f} ms"
          f"   x{median['http'] / median['pillow']:.3f} of Pillow alone (goal: at most x1.10)")
    print(f"  of which inside the Flask app    median {median['app']:7.1f} ms"
          f"   (the rest is waitress and the loopback transfer)")
    print(f"Pillow alone on the main thread    median {median['main']:7.1f} ms"
          f"   x{median['main'] / median['pillow']:.3f} (for comparison only)")
    print(f"metrics recorded for one flip      median {median['metrics']:7.3f} ms"
          f"   {median['metrics'] / median['http']:.3%} of POST /flip (goal: at most 2 %)")
    print()
    compare_paths(data, args.format_rounds)
    if args.allocator_rounds:
        print()
        compare_allocators(args.allocator_rounds)
    return 0


def re_encoded(data: bytes) -> imaging.Flipped:
    return imaging.flip(data, lossless=False)


def lossless(data: bytes) -> imaging.Flipped:
    flipped = imaging.flip(data)
    if flipped.path != imaging.LOSSLESS:
        raise RuntimeError(f"the JPEG was {flipped.path} ({flipped.reason}), not flipped losslessly")
    return flipped


def pillow_alone_as_the_service_writes(data: bytes) -> bytes:
    """Open, flip, save with the parameters service.imaging writes the format with."""
    im = Image.open(io.BytesIO(data))
    params = imaging.writer_params(im.format, im, data)
    out = io.BytesIO()
    im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(out, im.format, **params)
    return out.getvalue()


# Phone-sized HEIC and AVIF, made from the sample; written as the service writes them.
PHONE_SIZE = (4032, 3024)
# format -> measure -> what it runs on the format's picture.
PATHS = {
    "JPEG": {"Pillow alone": pillow_alone, "re-encoded": re_encoded, "lossless": lossless},
    "HEIF": {"Pillow alone": pillow_alone_as_the_service_writes, "re-encoded": imaging.flip},
    "AVIF": {"Pillow alone": pillow_alone_as_the_service_writes, "re-encoded": imaging.flip},
}
FORMAT_NAMES = {"JPEG": "JPEG", "HEIF": "HEIC", "AVIF": "AVIF"}


def format_pictures(sample: bytes) -> dict[str, bytes]:
    phone = Image.open(io.BytesIO(sample)).resize(PHONE_SIZE)
    pictures = {"JPEG": sample}
    for fmt in ("HEIF", "AVIF"):
        out = io.BytesIO()
        params = imaging.writer_params(fmt, phone)
        phone.save(out, fmt, **params)
        pictures[fmt] = out.getvalue()
    return pictures


def compare_paths(sample: bytes, rounds: int) -> None:
    pictures = format_pictures(sample)
    with tempfile.TemporaryDirectory() as scratch:
        files = {fmt: Path(scratch) / fmt for fmt in pictures}
        for fmt, path in files.items():
            path.write_bytes(pictures[fmt])
        peaks = {(fmt, name): peak_memory(name, files[fmt]) for fmt in PATHS for name in PATHS[fmt]}
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in peaks}
    keys = list(times)
    for round_number in range(rounds + 1):
        shift = round_number % len(keys)
        for fmt, name in keys[shift:] + keys[:shift]:
            seconds = worker.submit(timed, PATHS[fmt][name], pictures[fmt]).result()
            if round_number >= 1:
                times[fmt, name].append(seconds)
    worker.shutdown()
    print(f"per format, {rounds} rounds after 1 warm-up round; peak: one flip in a fresh process")
    for fmt, paths in PATHS.items():
        im = Image.open(io.BytesIO(pictures[fmt]))
        print(f"{FORMAT_NAMES[fmt]} {im.width}x{im.height}, {len(pictures[fmt]):,} bytes")
        alone = statistics.median(times[fmt, "Pillow alone"])
        for name in paths:
            median = statistics.median(times[fmt, name])
            peak = peaks[fmt, name]
            print(f"  {name:<14} median {median * 1000:7.1f} ms  x{median / alone:.3f} of Pillow alone"
                  f"   peak {peak / 2**20:4.0f} MiB, {peak / (im.width * im.height):4.1f} bytes a pixel")


FLIPS_PER_PROCESS = 4


def compare_allocators(rounds: int) -> None:
    """The sample's flip on each JPEG path in a fresh process under each of loadtest.memory's
    VARIANTS (from the image's allocator to glibc's defaults), the
    processes interleaved round by round: CPU seconds per flip, against the image's settings."""
    keys = [(name, variant) for name in ("lossless", "re-encoded") for variant in VARIANTS]
    times: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for round_number in range(rounds):
        shift = round_number % len(keys)
        for name, variant in keys[shift:] + keys[:shift]:
            times[name, variant].append(cpu_alone(name, VARIANTS[variant]))
    print(f"Allocators: the sample's flip, CPU per flip (median of {rounds} fresh processes, "
          f"{FLIPS_PER_PROCESS} flips each after a first)")
    for name in ("lossless", "re-encoded"):
        image = statistics.median(times[name, "as the image runs it"])
        for variant, env in VARIANTS.items():
            median = statistics.median(times[name, variant])
            settings = " ".join(f"{key}={value}" for key, value in env.items()) or "-"
            print(f"  {name:<10} {variant:<22} {median * 1000:6.1f} ms  x{median / image:.3f}   {settings}")


def cpu_alone(name: str, allocator: dict[str, str]) -> float:
    """CPU seconds of one flip of the sample on path `name`, in a fresh process with `allocator`."""
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--cpu-of", name], capture_output=True,
                          text=True, timeout=600, check=True, env=allocator_environment(allocator))
    return float(done.stdout.split()[-1])


def compare_service_cpu(rounds: int) -> None:
    """Per JPEG path, round by round: the flip alone in a fresh process, then FLIPS_PER_PROCESS
    POST /flip (after a first) to one `python -m service`, both with the image's allocator;
    the service's CPU per flip is its process's, so it holds everything the request costs there."""
    data = make_sample()
    alone: dict[str, list[float]] = {name: [] for name in ("lossless", "re-encoded")}
    served: dict[str, list[float]] = {name: [] for name in alone}
    with running_service(base=allocator_environment()) as service:
        address = urllib.parse.urlsplit(service.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        for _ in range(rounds):
            for name in alone:
                alone[name].append(cpu_alone(name, IMAGE_ENV))
                post_flip(connection, data, name)
                before = process_seconds(service.process.pid)
                for _flip in range(FLIPS_PER_PROCESS):
                    post_flip(connection, data, name)
                time.sleep(0.2)  # what the app's thread does after the last answer is sent
                served[name].append((process_seconds(service.process.pid) - before) / FLIPS_PER_PROCESS)
        connection.close()
    print(f"CPU per flip of the sample, the allocator as the image sets it (medians of {rounds} rounds, "
          f"{FLIPS_PER_PROCESS} flips each after a first)")
    for name in alone:
        flip, request = statistics.median(alone[name]), statistics.median(served[name])
        print(f"  {name:<10} alone {flip * 1000:6.1f} ms   POST /flip to the service {request * 1000:6.1f} ms"
              f"   x{request / flip:.3f}")


def _measure_cpu(name: str) -> None:
    print(cpu_per_flip(PATHS["JPEG"][name], make_sample(), FLIPS_PER_PROCESS))


def peak_memory(name: str, path: Path) -> int:
    """Bytes a fresh process's resident memory rises by during one `name` flip of the picture
    at `path`, above what it held just before (imports and codecs loaded by a flip of a small
    picture of the same format first)."""
    done = subprocess.run([sys.executable, "-m", "loadtest.overhead", "--peak-of", name, str(path)],
                          capture_output=True, text=True, timeout=600, check=True, env=allocator_environment())
    return int(done.stdout.split()[-1])


def _measure_peak(name: str, path: Path) -> None:
    data = path.read_bytes()
    fmt = Image.open(io.BytesIO(data)).format  # the header only
    run = PATHS[fmt][name]
    # A small picture of the same format first: the codecs loaded, and nothing of the size of
    # the measured one left in the heap for it to reuse.
    small = io.BytesIO()
    Image.effect_noise((64, 48), 64).convert("RGB").save(small, fmt)
    imaging.flip(small.getvalue(), lossless=name == "lossless")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from now
    except OSError:
        pass  # then it holds the imports' peak too, which is far below a flip's
    before = _status("VmRSS")
    run(data)
    print(_status("VmHWM") - before)


def _status(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]) * 1024


if __name__ == "__main__":
    raise SystemExit(main())
