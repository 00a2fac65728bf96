"""GET /metrics: what each request moves, read back with prometheus_client's own parser."""

import io
import re

import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from harness.service import running_service
from service.metrics import SPANS
from tests.pictures import animation, encode, picture, png_declaring

# The only labels flipfleet's metrics may carry (bounded sets), beside prometheus_client's own.
ALLOWED_LABELS = {"route", "method", "status", "span", "reason", "version", "le"}


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition: (name, sorted labels) -> value."""
    with client.get("/metrics") as response:
        assert response.status_code == 200
        text = response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def post(client, **kwargs):
    """POST /flip to the app and close the answer, as waitress does once it has sent it."""
    with client.post("/flip", **kwargs) as response:
        return response.status_code, response.data


def test_a_flip_moves_every_counter_and_histogram_by_its_amount(client):
    png = encode(picture("RGB", size=(64, 48)), "PNG")
    before = scrape(client)
    status, answer = post(client, data=png, content_type="image/png")
    after = scrape(client)
    assert status == 200

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("flipfleet_requests_total", route="/flip", method="POST", status="200") == 1
    assert grew("flipfleet_request_duration_seconds_count", route="/flip") == 1
    for span in SPANS:
        assert grew("flipfleet_flip_span_seconds_count", span=span) == 1, span
        assert grew("flipfleet_flip_span_seconds_sum", span=span) >= 0
    assert grew("flipfleet_flip_span_seconds_sum", span="decode") > 0
    assert grew("flipfleet_flip_request_bytes_sum") == len(png)
    assert grew("flipfleet_flip_response_bytes_sum") == len(answer)
    assert grew("flipfleet_flipped_pixels_total") == 64 * 48
    assert grew("flipfleet_flipped_frames_total") == 1
    assert value(after, "flipfleet_requests_in_flight", route="/flip") == 0
    assert value(after, "flipfleet_flips_held") == 0


def test_every_frame_of_an_animation_is_counted(client):
    gif, _ = animation("GIF", frames=4, size=(30, 20))
    before = scrape(client)
    assert post(client, data=gif, content_type="image/gif")[0] == 200
    after = scrape(client)
    assert value(after, "flipfleet_flipped_frames_total") - value(before, "flipfleet_flipped_frames_total") == 4
    flipped = value(after, "flipfleet_flipped_pixels_total") - value(before, "flipfleet_flipped_pixels_total")
    assert flipped == 4 * 30 * 20


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"data": b"not a picture", "content_type": "image/png"}, "400", "not_a_picture"),
        ({"data": png_declaring(2_000, 1_000), "content_type": "image/png"}, "413", "picture_too_large"),
        ({"data": encode(picture("RGB"), "ICO"), "content_type": "image/x-icon"}, "415", "unsupported_format"),
        ({"data": b"{}", "content_type": "application/json"}, "415", "unsupported_media_type"),
        ({"data": b"x" * (2 * 1024 * 1024 + 1), "content_type": "image/png"}, "413", "body_too_large"),
        ({"data": b"", "content_type": "image/png"}, "400", "bad_request"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_refusals_are_counted_by_status_and_reason(client, kwargs, status, reason):
    before = scrape(client)
    assert post(client, **kwargs)[0] == int(status)
    after = scrape(client)
    assert value(after, "flipfleet_refusals_total", status=status, reason=reason) - \
        value(before, "flipfleet_refusals_total", status=status, reason=reason) == 1
    assert value(after, "flipfleet_requests_total", route="/flip", method="POST", status=status) == 1


def test_labels_never_carry_a_request_id_or_a_client_address(client):
    for rid in ("rid-secret-1", "rid-secret-2"):
        client.get("/", headers={"X-Request-ID": rid, "X-Forwarded-For": "203.0.113.9"}).close()
        client.get(f"/nowhere/{rid}").close()
    text = client.get("/metrics").text
    assert "rid-secret" not in text and "203.0.113.9" not in text
    labels = {name for family in text_string_to_metric_families(text) if family.name.startswith("flipfleet")
              for sample in family.samples for name in sample.labels}
    assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
    routes = {label for family in text_string_to_metric_families(text) for sample in family.samples
              for key, label in sample.labels.items() if key == "route"}
    assert routes <= {"/", "/flip", "/healthz", "/metrics", "other"}, routes


def test_names_follow_prometheus_conventions(client):
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("flipfleet"):
            continue
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
    assert re.search(r'^flipfleet_build_info\{version="dev"\} 1\.0$', text, re.MULTILINE)
    assert re.search(r"^process_cpu_seconds_total ", text, re.MULTILINE)
    assert re.search(r"^process_resident_memory_bytes ", text, re.MULTILINE)


def test_openmetrics_when_the_scraper_asks_for_it(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_the_real_server_counts_a_flip_once_it_has_sent_it():
    with running_service(FLIP_REPLICA_NAME="metrics") as service:
        png = encode(picture("RGB", size=(64, 48)), "PNG")
        flipped = requests.post(service.url + "/flip", data=png, headers={"Content-Type": "image/png"}, timeout=30)
        assert Image.open(io.BytesIO(flipped.content)).size == (64, 48)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
                   text_string_to_metric_families(requests.get(service.url + "/metrics", timeout=10).text)
                   for s in family.samples}
    assert value(samples, "flipfleet_requests_total", route="/flip", method="POST", status="200") == 1
    assert value(samples, "flipfleet_flip_span_seconds_count", span="write") == 1
    assert value(samples, "flipfleet_requests_in_flight", route="/flip") == 0
