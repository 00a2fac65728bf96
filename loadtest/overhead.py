"""What the service costs above Pillow's own work, for the sample photo.

    python -m loadtest.overhead [--rounds N]

Interleaves, round by round so that machine noise hits all alike: Pillow alone (decode, flip,
encode with the source's tables), service.imaging.flip, one POST /flip of the same bytes to
`python -m service` (waitress) on loopback, and what the Prometheus metrics record for a flip.
Prints each median and the ratios.

The in-process work runs on a worker thread, as waitress runs the app, with Pillow keeping its
freed image blocks as the service does. Without those blocks kept, the same calls on the main
thread were 1.5x slower (glibc mapped fresh pages for every picture there); the last line shows
the main thread for comparison.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import statistics
import time
import urllib.parse

from PIL import Image, JpegImagePlugin

from harness.service import running_service
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


def post_flip(connection: http.client.HTTPConnection, data: bytes) -> float:
    """POST the picture; return the app's own time from X-Response-Time, in seconds."""
    connection.request("POST", "/flip", body=data, headers={"Content-Type": "image/jpeg"})
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
    args = parser.parse_args(argv)

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
            "imaging": lambda: worker.submit(timed, imaging.flip, data).result(),
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
    print(f"service.imaging.flip               median {median['imaging']:7.1f} ms"
          f"   x{median['imaging'] / median['pillow']:.3f} of Pillow alone")
    print(f"POST /flip to waitress on loopback median {median['http']:7.1f} ms"
          f"   x{median['http'] / median['pillow']:.3f} of Pillow alone (goal: at most x1.10)")
    print(f"  of which inside the Flask app    median {median['app']:7.1f} ms"
          f"   (the rest is waitress and the loopback transfer)")
    print(f"Pillow alone on the main thread    median {median['main']:7.1f} ms"
          f"   x{median['main'] / median['pillow']:.3f} (for comparison only)")
    print(f"metrics recorded for one flip      median {median['metrics']:7.3f} ms"
          f"   {median['metrics'] / median['http']:.3%} of POST /flip (goal: at most 2 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
