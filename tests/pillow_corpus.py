"""Real-world and fuzzed pictures: the test images that Pillow's own sdist ships (Tests/images:
odd modes, every TIFF compression, BigTIFF, and the fuzzers' crash-*, oom-* and timeout-* files),
and a runner that puts each through service.imaging.flip in child processes (a small pool;
a child that crashes or overruns its deadline is killed, its file recorded, and replaced).

The sdist is fetched once with pip (the ordinary client, the index pip is configured with),
checked against the sha256 pinned here, and only Tests/images is extracted, under
.cache/pillow-corpus/<version>/ in the repository (gitignored). A lock file makes parallel runs
wait for one download instead of racing; a marker file says the extraction is complete.

    python -m tests.pillow_corpus            # fetch if needed, flip every file, print a report
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT

CACHE = ROOT / ".cache" / "pillow-corpus"
# sha256 of each Pillow sdist this corpus may come from, as the package index lists it.
SDIST_SHA256 = {
    "13.0.0": "cdcd1ba258178f7356d74170c9a81ba4eab6a5d55748bc402a5a2a6fe6be3510",
}
# A copy of the sdist already on disk (a machine without the index): still checked against the pin.
SDIST_ENV = "FLIPFLEET_PILLOW_SDIST"
MARKER = ".complete"
PIP_TIMEOUT = 600


class CorpusUnavailable(Exception):
    """The corpus cannot be fetched or extracted here; the message says which step failed."""


def pinned_version() -> str:
    """The Pillow version requirements.txt pins."""
    match = re.search(r"^pillow==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE | re.IGNORECASE)
    if not match:
        raise CorpusUnavailable("requirements.txt pins no pillow==VERSION")
    return match.group(1)


def corpus_dir(version: str | None = None) -> Path:
    """The extracted Tests/images of Pillow `version` (the pinned one by default), fetched and
    extracted on the first call only."""
    version = version or pinned_version()
    sha256 = SDIST_SHA256.get(version)
    if sha256 is None:
        raise CorpusUnavailable(
            f"no sha256 pinned for the pillow {version} sdist: add it to SDIST_SHA256 in {__file__}"
        )
    home = CACHE / version
    images = home / "images"
    if (home / MARKER).exists():
        return images
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if (home / MARKER).exists():  # another run finished it while this one waited
            return images
        with tempfile.TemporaryDirectory(dir=home, prefix="fetch-") as scratch:
            sdist = _sdist(version, sha256, Path(scratch))
            staged = Path(scratch) / "images"
            count = _extract_images(sdist, version, staged)
            if images.exists():
                shutil.rmtree(images)  # a run interrupted after its rename, before its marker
            staged.rename(images)
        (home / MARKER).write_text(f"pillow {version} sdist sha256 {sha256}: {count} files\n")
    return images


def corpus_files(version: str | None = None) -> list[Path]:
    """Every file of the corpus, sorted by its path inside Tests/images."""
    images = corpus_dir(version)
    return sorted(p for p in images.rglob("*") if p.is_file())


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sdist(version: str, sha256: str, scratch: Path) -> Path:
    local = os.environ.get(SDIST_ENV)
    if local:
        sdist = Path(local)
        if not sdist.is_file():
            raise CorpusUnavailable(f"{SDIST_ENV}={local} is not a file")
    else:
        sdist = _pip_download(version, sha256, scratch)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha256:
        raise CorpusUnavailable(f"{sdist.name} has sha256 {digest}, not the pinned {sha256}")
    return sdist


def _pip_download(version: str, sha256: str, scratch: Path) -> Path:
    requirement = scratch / "requirement.txt"
    requirement.write_text(f"pillow=={version} --hash=sha256:{sha256}\n")
    # --no-binary pillow: the sdist (the wheels ship no tests); pip verifies the hash too. pip
    # prepares the sdist's metadata in an isolated build environment (a few seconds).
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "pillow",
               "--require-hashes", "-r", str(requirement), "-d", str(scratch), "--quiet"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CorpusUnavailable(f"pip download of the pillow {version} sdist took over {PIP_TIMEOUT} s") from None
    found = sorted(scratch.glob(f"pillow-{version}.tar.gz")) + sorted(scratch.glob(f"Pillow-{version}.tar.gz"))
    if done.returncode != 0 or not found:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise CorpusUnavailable(
            f"pip could not download the pillow {version} sdist (exit {done.returncode}; "
            f"without the package index set {SDIST_ENV} to a copy of it):\n{tail}"
        )
    return found[0]


def _extract_images(sdist: Path, version: str, target: Path) -> int:
    """Only the regular files under <top>/Tests/images/, with their folders; returns how many."""
    count = 0
    try:
        with tarfile.open(sdist) as archive:
            for member in archive:
                parts = member.name.split("/")
                if len(parts) < 4 or parts[1:3] != ["Tests", "images"] or not member.isfile():
                    continue
                relative = Path(*parts[3:])
                if relative.is_absolute() or ".." in relative.parts:
                    raise CorpusUnavailable(f"{sdist.name} holds an unsafe path: {member.name}")
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out)
                count += 1
    except (tarfile.TarError, OSError) as exc:
        raise CorpusUnavailable(f"cannot extract Tests/images from {sdist.name}: {exc}") from exc
    if count == 0:
        raise CorpusUnavailable(f"the pillow {version} sdist holds no Tests/images")
    return count


# ---------------------------------------------------------------------------------------------
# The runner: every file through flip(), each in a child process with a deadline.

FLIPPED = "flipped"
REFUSED = ("NotAnImage", "TooLarge", "UnsupportedFormat", "TooCostly")  # ImageError: a JSON 400, 413, 415, 422
BUG = "bug"  # any other exception: the app's 500
OUT_OF_MEMORY = "MemoryError"  # the app's 503
CRASH = "crash"  # the child died (a crash in C)
TIMEOUT = "timeout"
BAD_OUTPUT = "bad output"  # flipped, but what was written does not decode
READABLE_REFUSED = "readable refused"  # NotAnImage (400) for a picture Pillow decodes whole
# Address space of a child: far more than any picture within the default limits needs, so a
# MemoryError marks a runaway allocation rather than an ordinary picture.
CHILD_MEMORY = 4 * 1024**3


@dataclass(frozen=True)
class Outcome:
    name: str  # the path inside Tests/images
    kind: str  # FLIPPED, one of REFUSED, BUG, OUT_OF_MEMORY, CRASH or TIMEOUT
    seconds: float
    detail: str = ""  # the exception (type: message), or the result's format and size
    dropped: tuple[str, ...] = ()
    digest: str = ""  # the answer's SHA-256, for a flipped file

    @property
    def ok(self) -> bool:
        return self.kind == FLIPPED or self.kind in REFUSED


def flip_file(path: Path, direction: str = "vertical") -> Outcome:
    """One file through flip() with the service's default limits, in this process."""
    from service import imaging
    from service.config import Settings

    limits = Settings.from_env({}).limits
    data = path.read_bytes()
    started = time.perf_counter()
    try:
        result = imaging.flip(data, direction, limits)
    except imaging.NotAnImage as exc:
        seconds = time.perf_counter() - started
        if _pillow_decodes(data, list(imaging.MEDIA_TYPES)):
            return Outcome(path.name, READABLE_REFUSED, seconds, str(exc)[:300])
        return Outcome(path.name, "NotAnImage", seconds, str(exc)[:300])
    except imaging.ImageError as exc:
        return Outcome(path.name, type(exc).__name__, time.perf_counter() - started, str(exc)[:300])
    except MemoryError as exc:
        return Outcome(path.name, OUT_OF_MEMORY, time.perf_counter() - started, repr(exc)[:300])
    except Exception as exc:  # noqa: BLE001 - what the app answers with a 500
        return Outcome(path.name, BUG, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:300])
    seconds = time.perf_counter() - started
    detail = f"{result.format} {result.width}x{result.height} x{result.frames}"
    dropped = tuple(getattr(result, "dropped", ()))
    if not _pillow_decodes(result.data, [result.format]):
        return Outcome(path.name, BAD_OUTPUT, seconds, detail, dropped)
    return Outcome(path.name, FLIPPED, seconds, detail, dropped, hashlib.sha256(result.data).hexdigest())


def _pillow_decodes(data: bytes, formats: list[str]) -> bool:
    """Whether Pillow opens `data` as one of `formats` and decodes every frame of it."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            for frame in ImageSequence.Iterator(im):
                frame.load()
    except Exception:  # noqa: BLE001 - any failure of Pillow's on this data
        return False
    return True


def _child(conn, direction: str, memory: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # Pillow's and libtiff's warnings on damaged files: thousands of lines, none of them news.
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send(flip_file(Path(path), direction))


class _Worker:
    def __init__(self, context, direction: str, memory: int):
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_child, args=(child_end, direction, memory), daemon=True)
        self.process.start()
        child_end.close()
        self.path: Path | None = None
        self.started = 0.0

    def give(self, path: Path) -> None:
        self.path, self.started = path, time.perf_counter()
        self.conn.send(str(path))

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run(files: list[Path], base: Path, timeout: float = 30.0, workers: int = 2,
        direction: str = "vertical", memory: int = CHILD_MEMORY) -> list[Outcome]:
    """Flip each file in a child process; a child that crashes or overruns `timeout` seconds is
    killed, its file recorded as CRASH or TIMEOUT, and a new child takes its place."""
    context = multiprocessing.get_context("fork")  # the children inherit PIL already imported
    pending = list(reversed(files))
    pool = [_Worker(context, direction, memory) for _ in range(max(1, min(workers, len(files))))]
    outcomes: list[Outcome] = []
    idle = list(pool)
    busy: list[_Worker] = []

    def name(path: Path) -> str:
        return str(path.relative_to(base))

    try:
        while pending or busy:
            while idle and pending:
                worker = idle.pop()
                worker.give(pending.pop())
                busy.append(worker)
            ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=0.05)
            for worker in list(busy):
                elapsed = time.perf_counter() - worker.started
                replacement = False
                if worker.conn in ready:
                    try:
                        outcome = worker.conn.recv()
                        outcomes.append(Outcome(name(worker.path), outcome.kind, outcome.seconds,
                                                outcome.detail, outcome.dropped, outcome.digest))
                    except (EOFError, OSError):
                        worker.process.join(1)
                        outcomes.append(Outcome(name(worker.path), CRASH, elapsed,
                                                f"the child died (exit code {worker.process.exitcode})"))
                        replacement = True
                elif elapsed > timeout:
                    outcomes.append(Outcome(name(worker.path), TIMEOUT, elapsed, f"over {timeout:g} s"))
                    replacement = True
                else:
                    continue
                busy.remove(worker)
                if replacement:
                    worker.stop(kill=True)
                    pool.remove(worker)
                    worker = _Worker(context, direction, memory)
                    pool.append(worker)
                idle.append(worker)
    finally:
        for worker in pool:
            worker.stop(kill=worker in busy)
    return sorted(outcomes, key=lambda o: o.name)


def report(outcomes: list[Outcome], slowest: int = 10) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    lines = [f"{len(outcomes)} files: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    dropped: dict[tuple[str, ...], int] = {}
    for outcome in outcomes:
        if outcome.dropped:
            dropped[outcome.dropped] = dropped.get(outcome.dropped, 0) + 1
    if dropped:
        lines.append("dropped: " + ", ".join(f"{'+'.join(k)} {v}" for k, v in sorted(dropped.items())))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        lines.append("not 200 nor a 4xx:")
        lines += [f"  {o.kind:9} {o.seconds:6.2f}s {o.name}: {o.detail}" for o in bad]
    lines.append(f"slowest {slowest}:")
    for o in sorted(outcomes, key=lambda o: -o.seconds)[:slowest]:
        lines.append(f"  {o.seconds:6.2f}s {o.kind:17} {o.name}  {o.detail[:90]}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--direction", default="vertical")
    parser.add_argument("--memory-mib", type=int, default=CHILD_MEMORY // 2**20,
                        help="address space of each child (RLIMIT_AS)")
    parser.add_argument("--all", action="store_true", help="list every file's outcome")
    parser.add_argument("names", nargs="*", help="only these files (substrings of their paths)")
    args = parser.parse_args(argv)
    try:
        base = corpus_dir()
    except CorpusUnavailable as exc:
        print(f"corpus unavailable: {exc}", file=sys.stderr)
        return 2
    files = [p for p in corpus_files() if not args.names or any(n in str(p) for n in args.names)]
    started = time.perf_counter()
    outcomes = run(files, base, args.timeout, args.workers, args.direction, args.memory_mib * 2**20)
    if args.all:
        for o in outcomes:
            print(f"{o.kind:17} {o.seconds:7.3f}s {o.name}  {'+'.join(o.dropped)}  {o.detail[:120]}")
    print(report(outcomes))
    print(f"wall time {time.perf_counter() - started:.1f} s with {args.workers} workers")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
