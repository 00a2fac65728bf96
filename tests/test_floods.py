"""Bad input and floods, end to end through nginx on a real Docker engine: malformed requests,
more uploads than the replicas hold, clients exactly at the bound while nginx reloads. Each test
prints the figures it measured."""

from __future__ import annotations

import collections
import concurrent.futures
import io
import threading
import time

import pytest
import requests
from PIL import Image

from harness import alongside, client, usage
from service.config import Settings
from service.sample import load_sample
from tests.checks import assert_json_503
from tests.corpus import malformed_requests
from tests.pictures import encode, noise_jpeg, picture

pytestmark = pytest.mark.docker


def send(url: str, bad) -> requests.Response:
    if bad.files or bad.form:
        files = [(name, (filename, data, kind)) for name, filename, data, kind in bad.files]
        return requests.post(url + "/flip", files=files or None, data=bad.form or None, timeout=60)
    headers = {"Content-Type": bad.content_type} if bad.content_type else {}
    return requests.post(url + "/flip", data=bad.body, headers=headers, timeout=60)


def test_malformed_corpus_gets_json_4xx_and_hurts_no_replica(stack):
    flipfleet = stack(2)
    replicas = flipfleet.container_ids()
    limit = int(flipfleet.inspect(replicas[0], "{{.HostConfig.Memory}}"))
    corpus = malformed_requests()
    assert len(corpus) >= 200
    answers = collections.Counter()
    wrong = []
    highest = {c: 0 for c in replicas}

    def watch_memory(stop: threading.Event) -> None:
        while not stop.wait(0.25):
            for container in replicas:
                highest[container] = max(highest[container], usage.memory(container)["usage"])

    with alongside(watch_memory):
        for bad in corpus:
            response = send(flipfleet.url, bad)
            answers[response.status_code] += 1
            content_type = response.headers.get("Content-Type", "")
            # Flipped bits in pixel data can leave a picture that still decodes: it is flipped.
            still_a_picture = bad.may_decode and response.status_code == 200 and content_type.startswith("image/")
            a_json_4xx = (400 <= response.status_code < 500 and content_type.startswith("application/json")
                          and "error" in response.json())
            if not (still_a_picture or a_json_4xx):
                wrong.append((bad.name, response.status_code, response.text[:200]))

    assert wrong == []
    assert [flipfleet.restart_count(c) for c in replicas] == [0, 0]
    peaks = {c[:12]: max(highest[c], usage.memory(c).get("peak", 0)) for c in replicas}
    assert all(0 < peak < limit for peak in peaks.values()), (peaks, limit)
    assert requests.post(flipfleet.url + "/flip", data=encode(picture("RGB"), "PNG"),
                         headers={"Content-Type": "image/png"}, timeout=30).status_code == 200
    print(f"{len(corpus)} malformed requests: {dict(sorted(answers.items()))}; "
          f"peak memory {', '.join(f'{c} {p / 2**20:.0f} MiB' for c, p in peaks.items())} "
          f"of a {limit / 2**20:.0f} MiB limit")


def test_a_flood_of_large_uploads_gets_flips_or_quick_json_refusals(stack):
    flipfleet = stack(2)
    replicas = flipfleet.container_ids()
    nginx = flipfleet.container_ids("nginx")[0]
    size = (4300, 5300)
    picture_20mb = noise_jpeg(size)
    assert 19_000_000 < len(picture_20mb) < 26_214_400

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(
            lambda _: client.post(flipfleet.url + "/flip", picture_20mb, {"Content-Type": "image/jpeg"}),
            range(100),
        ))

    by_status = collections.Counter(answer.status for answer in answers)
    assert [answer.error for answer in answers if answer.error] == []  # no reset, no cut answer
    assert set(by_status) <= {200, 503, 413}, by_status
    assert by_status[200] >= 1
    for answer in answers:
        if answer.status == 200:
            assert Image.open(io.BytesIO(answer.body)).size == size
        elif answer.status == 503:
            assert_json_503(answer.status, answer.headers, answer.body)
            assert answer.status_seconds < 1.0, answer.status_seconds
        else:
            assert answer.headers["Content-Type"] == "application/json" and b'"status":413' in answer.body
    assert [flipfleet.restart_count(c) for c in replicas + [nginx]] == [0, 0, 0]
    nginx_errors = [line for line in flipfleet.logs("nginx").splitlines()
                    if any(level in line for level in ("[crit]", "[alert]", "[emerg]"))]
    assert nginx_errors == []
    refusals = [answer.status_seconds for answer in answers if answer.status == 503]
    peaks = [usage.memory(c).get("peak", 0) / 2**20 for c in replicas + [nginx]]
    print(f"100 concurrent uploads of a {len(picture_20mb) / 1e6:.1f} MB picture: {dict(by_status)}; "
          f"refusals within {max(refusals, default=0):.2f} s, the last flip after "
          f"{max(a.seconds for a in answers if a.status == 200):.2f} s; no replica restarted; peak memory "
          f"{peaks[0]:.0f} and {peaks[1]:.0f} MiB (replicas), {peaks[2]:.0f} MiB (nginx)")


def test_back_pressure_refuses_within_a_second_when_every_replica_is_full(stack):
    flipfleet = stack(1)
    photo = load_sample(None)

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(
            lambda _: client.post(flipfleet.url + "/flip", photo, {"Content-Type": "image/jpeg"}), range(40)
        ))

    by_status = collections.Counter(answer.status for answer in answers)
    assert set(by_status) == {200, 503}, by_status  # 40 flips overflow one replica's queue
    assert by_status[200] >= Settings.from_env({}).queue
    for answer in answers:
        if answer.status == 503:
            assert_json_503(answer.status, answer.headers, answer.body)
    slowest_refusal = max(answer.status_seconds for answer in answers if answer.status == 503)
    slowest_flip = max(answer.seconds for answer in answers if answer.status == 200)
    assert slowest_refusal < 1.0, slowest_refusal
    print(f"40 concurrent flips to 1 replica: {dict(by_status)}; refusals within {slowest_refusal:.2f} s, "
          f"the last flip after {slowest_flip:.2f} s")


@pytest.mark.slow
def test_clients_at_the_admission_bound_are_not_refused_while_nginx_reloads(stack):
    # nginx reloads whenever the replica count changes (a scale); each reload moves every client
    # to a new connection and a new worker, which must not find a slot that is not yet freed.
    flipfleet = stack(1)
    clients = Settings.from_env({}).queue  # exactly what one replica holds
    photo = noise_jpeg((2000, 1500))
    assert len(photo) >= 1_000_000  # a large body: it takes a slot of nginx's admission
    stop_at = time.monotonic() + 40
    statuses: collections.Counter = collections.Counter()

    def flip_until_stopped(_) -> None:
        while time.monotonic() < stop_at:
            answer = client.post(flipfleet.url + "/flip", photo, {"Content-Type": "image/jpeg"}, timeout=60)
            statuses[answer.status or answer.error] += 1

    reloads = 0
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(flip_until_stopped, i) for i in range(clients)]
        while time.monotonic() < stop_at - 3:
            time.sleep(2)
            # What nginx's entrypoint does when the replica count changes.
            flipfleet.compose("exec", "-T", "nginx", "bash", "/etc/flipfleet/nginx/entrypoint.sh", "--reload")
            reloads += 1
        for each in running:
            each.result()
    assert set(statuses) == {200}, dict(statuses)
    print(f"{clients} clients at one replica's bound, nginx reloaded {reloads} times: {dict(statuses)}")
