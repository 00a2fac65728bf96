"""Checks that several test modules make of an answer."""

import collections
import re

import requests


def assert_json_503(status: int | None, headers, body: bytes) -> None:
    """nginx's (or a replica's) refusal: JSON in the service's shape, Retry-After, security headers."""
    assert status == 503, (status, body[:300])
    assert headers["Content-Type"] == "application/json"
    assert b'"status":503' in body.replace(b" ", b"")
    assert headers["Retry-After"] == "1"
    assert headers["X-Content-Type-Options"] == "nosniff"


JSON_503 = re.compile(r'status 503, not 200 \(Retry-After: 1\): \{"error":"[^"]*","status":503\}')


def failures_of_a_kill(errors: dict[str, int]) -> tuple[int, int, dict[str, int]]:
    """A locust run's /flip errors split into what a killed replica may cost: answers cut while it
    sent them, flips refused with nginx's JSON 503 and Retry-After (nginx sends a flip whose replica
    died to one other replica only: a flip may be what killed it), and anything else (which no kill
    explains)."""
    cut = sum(count for error, count in errors.items() if "Incomplete response" in error)
    refused = sum(count for error, count in errors.items() if JSON_503.search(error))
    other = {error: count for error, count in errors.items()
             if "Incomplete response" not in error and not JSON_503.search(error)}
    return cut, refused, other


# A connection that closed before the whole answer came, in geventhttpclient's words (locust's
# FastHttpUser) or requests'.
CLOSED = re.compile(
    r"Incomplete response|HTTPConnectionClosed|connection closed|ConnectionResetError|RemoteDisconnected")


def failures_of_a_lost_node(errors: dict[str, int]) -> tuple[int, int, dict[str, int]]:
    """A locust run's /flip errors split into what losing a node may cost: connections closed before
    a whole answer (those in flight through its nginx, and answers its replicas were sending), flips
    refused with nginx's JSON 503 and Retry-After (one that its replica held is sent to one other
    replica only), and anything else (which the loss does not explain)."""
    closed = sum(count for error, count in errors.items() if CLOSED.search(error))
    refused = sum(count for error, count in errors.items() if JSON_503.search(error))
    other = {error: count for error, count in errors.items() if not CLOSED.search(error) and not JSON_503.search(error)}
    return closed, refused, other


def served_by(url: str, count: int) -> collections.Counter:
    """Which replicas answered `count` GET / through `url`, by their X-Served-By."""
    return collections.Counter(requests.get(url + "/", timeout=10).headers["X-Served-By"] for _ in range(count))


def assert_json_error(response, status: int, fragment: str) -> None:
    """A Flask test client's answer: the service's JSON error of `status`, saying `fragment`."""
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert fragment in response.get_json()["error"]
    assert response.get_json()["status"] == status
