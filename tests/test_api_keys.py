"""API keys at the edge (FLIP_API_KEYS_FILE): nginx/entrypoint.sh turns the file into nginx's map
of keys, and refuses to start on a file it cannot take; nginx refuses a flip without a listed key
before reading its body, keys each client's share on its key's name, never passes a key on or
logs it, and takes an edited file without a restart."""

import socket
import threading
import time

import pytest
import requests

from harness import client, wait_for
from tests.nginx_conf import GOOD_KEY, OTHER_KEY, entrypoint, keys_file, render
from tests.pictures import encode, picture


def test_a_keys_file_becomes_the_map_and_the_check(tmp_path):
    conf, log = render(tmp_path, FLIP_API_KEYS_FILE=str(keys_file(tmp_path)))
    keys = (tmp_path / "api-keys.conf").read_text()
    assert f'"{GOOD_KEY}" "alice";' in keys and f'"{OTHER_KEY}" "bob";' in keys
    assert f"include {tmp_path / 'api-keys.conf'};" in conf
    assert 'if ($flip_key_name = "") { return 401; }' in conf
    assert "2 listed" in log and GOOD_KEY not in log


def test_without_a_keys_file_no_key_is_needed(tmp_path):
    conf, _ = render(tmp_path)
    assert "return 401" not in conf
    assert (tmp_path / "api-keys.conf").read_text() == 'map $flip_presented_key $flip_key_name {\n    default "";\n}\n'


@pytest.mark.parametrize(("text", "says"), [
    (f"alice {GOOD_KEY}\nbob\n", "line 2: want a name and a key"),
    (f"alice {GOOD_KEY} extra\n", "line 1: want a name and a key"),
    ("alice semi;colon-0123456789abc\n", "line 1 (alice): a key is"),
    ("alice short\n", "line 1 (alice): a key is 16 to 128"),
    (f'alice "{GOOD_KEY}"\n', "line 1 (alice): a key is"),
    (f"al'ice {GOOD_KEY}\n", "line 1: a name is"),
    (f"alice {GOOD_KEY}\nbob {GOOD_KEY}\n", "line 2 (bob): the same key as line 1"),
], ids=["no key", "three words", "bad key", "short key", "quoted key", "bad name", "same key"])
def test_a_malformed_line_stops_nginx_at_start_naming_the_line_not_the_key(tmp_path, text, says):
    path = keys_file(tmp_path, text)
    result = entrypoint("--render-only", NGINX_CONF=str(tmp_path / "nginx.conf"), FLIP_API_KEYS_FILE=str(path))
    assert result.returncode != 0
    assert f"{path} {says}" in result.stderr
    assert GOOD_KEY not in result.stderr and not (tmp_path / "nginx.conf").exists()


def test_a_keys_file_that_cannot_be_read_stops_nginx_at_start(tmp_path):
    result = entrypoint("--render-only", NGINX_CONF=str(tmp_path / "nginx.conf"),
                        FLIP_API_KEYS_FILE=str(tmp_path / "missing"))
    assert result.returncode != 0
    assert f"cannot read the API keys file {tmp_path / 'missing'}" in result.stderr


# -- through nginx, on Docker ------------------------------------------------------------------------

PNG = encode(picture("RGB"), "PNG")


def flip(url: str, **headers: str):
    return client.post(url + "/flip", PNG, {"Content-Type": "image/png", **headers}, timeout=30)


@pytest.mark.docker
def test_a_flip_needs_a_listed_key_and_nothing_else_does(stack, tmp_path):
    flipfleet = stack(1, FLIP_API_KEYS_FILE=str(keys_file(tmp_path)))
    for headers in ({}, {"Authorization": "Bearer not-a-key-of-anyone"}, {"X-API-Key": "not-a-key-of-anyone"},
                    {"Authorization": f"Basic {GOOD_KEY}"}):
        refused = flip(flipfleet.url, **headers)
        assert refused.status == 401, (headers, refused.body[:200])
        assert refused.headers["Content-Type"] == "application/json"
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="flipfleet"'
        assert "needs an API key" in refused.json()["error"] and refused.json()["status"] == 401
    for headers in ({"Authorization": f"Bearer {GOOD_KEY}"}, {"authorization": f"bearer {OTHER_KEY}"},
                    {"X-API-Key": GOOD_KEY}):
        answer = flip(flipfleet.url, **headers)
        assert answer.status == 200, (headers, answer.body[:200])
        assert "WWW-Authenticate" not in answer.headers
    # What needs no key: the replica's name, nginx's health.
    assert requests.get(flipfleet.url + "/", timeout=10).status_code == 200
    assert requests.get(flipfleet.url + "/nginx-health", timeout=10).status_code == 200
    # The key's name is in nginx's log, the key nowhere (nginx passes it on to no replica).
    logs = flipfleet.logs("nginx") + flipfleet.logs("web")
    assert "key=alice" in logs and "key=bob" in logs
    assert GOOD_KEY not in logs and OTHER_KEY not in logs


@pytest.mark.docker
def test_a_flip_without_a_key_is_refused_before_its_body_is_read(stack, tmp_path):
    flipfleet = stack(1, FLIP_API_KEYS_FILE=str(keys_file(tmp_path)))
    with socket.create_connection(("127.0.0.1", flipfleet.port), timeout=5) as sock:
        sock.sendall(b"POST /flip HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 20000000\r\n\r\n")  # and no body at all
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


@pytest.mark.docker
def test_each_key_has_its_own_share(stack, tmp_path):
    # One place each: alice's slow upload holds hers, and bob, from the same address, still gets in.
    flipfleet = stack(1, FLIP_API_KEYS_FILE=str(keys_file(tmp_path)), FLIP_CLIENT_SHARE="1")
    with socket.create_connection(("127.0.0.1", flipfleet.port), timeout=10) as slow:
        slow.sendall(f"POST /flip HTTP/1.1\r\nHost: x\r\nX-API-Key: {GOOD_KEY}\r\n"
                     f"Content-Type: image/png\r\nContent-Length: {len(PNG)}\r\n\r\n".encode() + PNG[:10])
        time.sleep(0.5)
        assert flip(flipfleet.url, **{"X-API-Key": GOOD_KEY}).status == 503
        assert flip(flipfleet.url, **{"X-API-Key": OTHER_KEY}).status == 200


@pytest.mark.docker
def test_an_edited_keys_file_is_taken_without_a_restart_or_a_lost_flip(stack, tmp_path):
    path = keys_file(tmp_path)
    flipfleet = stack(1, FLIP_API_KEYS_FILE=str(path))
    (nginx,) = flipfleet.container_ids("nginx")
    statuses, stop = [], threading.Event()

    def steady() -> None:  # bob's flips, one after another, while the file changes
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            statuses.append(flip(flipfleet.url, **{"X-API-Key": OTHER_KEY}).status)

    worker = threading.Thread(target=steady)
    worker.start()
    try:
        carol = "carol-new-key-0123456789"
        with path.open("w") as edited:  # in place: the mounted file is this inode
            edited.write(f"bob {OTHER_KEY}\ncarol {carol}\n")
        # Within seconds: the entrypoint looks every 5 s, and an old worker takes connections until
        # it has seen the reload.
        assert wait_for(lambda: flip(flipfleet.url, **{"X-API-Key": carol}).status == 200, timeout=30)
        assert wait_for(lambda: flip(flipfleet.url, **{"X-API-Key": GOOD_KEY}).status == 401, timeout=5)
        # A file that no longer reads keeps the keys in use, and the log says why.
        with path.open("w") as broken:
            broken.write(f"bob {OTHER_KEY}\ncarol\n")
        assert wait_for(lambda: "keeping the API keys in use" in flipfleet.logs("nginx"), timeout=30)
        assert flip(flipfleet.url, **{"X-API-Key": carol}).status == 200
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}, statuses
    assert flipfleet.restart_count(nginx) == 0
    print(f"{len(statuses)} flips while the keys file changed twice: all 200")
