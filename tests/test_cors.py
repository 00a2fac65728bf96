"""Browser clients (FLIP_CORS_ORIGINS): nginx answers a listed origin's preflight of /flip itself,
before the key check, and adds Access-Control-Allow-Origin for a listed origin only, never "*";
unset, no CORS header at all. A real page in headless Chromium, on another origin, flips a picture
with a key and reads its headers; the same page from an origin not listed is refused."""

import base64
import html
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from harness import ROOT, client
from harness.compose import Stack, nginx_trouble
from tests.nginx_conf import GOOD_KEY, directive, entrypoint, keys_file, render
from tests.pictures import decode, encode, picture

EXPOSED = ["X-Flipfleet-Flip", "X-Flipfleet-Dropped", "X-Flipfleet-Version", "X-Image-Size", "X-Image-Frames",
           "X-Served-By", "X-Response-Time", "X-Request-ID", "Retry-After", "WWW-Authenticate"]
ALLOWED_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"


def maps(conf: str, variable: str) -> str:
    """The body of the map that sets `variable`."""
    return re.search(rf"map [^{{]*\{variable} \{{([^}}]*)\}}", conf).group(1)


def test_listed_origins_become_the_map_each_as_a_browser_sends_it(tmp_path):
    origins = " https://App.Example.com  http://127.0.0.1:5173\thttps://app.example.com http://[::1]:3000"
    conf, _ = render(tmp_path, FLIP_CORS_ORIGINS=origins)
    lines = [line.strip() for line in maps(conf, "$flip_cors_origin").strip().splitlines()]
    assert lines == ['default "";', '"https://app.example.com" "https://app.example.com";',
                     '"http://127.0.0.1:5173" "http://127.0.0.1:5173";', '"http://[::1]:3000" "http://[::1]:3000";']
    assert directive(conf, "add_header Vary") == ['"Origin" always']


def test_without_origins_nothing_is_allowed_and_no_header_added(tmp_path):
    conf, _ = render(tmp_path)
    assert maps(conf, "$flip_cors_origin").split() == ["default", '"";']
    assert directive(conf, "add_header Vary") == ['"" always']
    assert '"*"' not in conf and "Access-Control-Allow-Origin *" not in conf


@pytest.mark.parametrize(("origin", "says"), [
    ("*", "'*' is not allowed"),
    ("https://app.example.com/", "is not an origin"),
    ("https://app.example.com/page", "is not an origin"),
    ("https://*.example.com", "is not an origin"),
    ("app.example.com", "is not an origin"),
    ("ftp://app.example.com", "is not an origin"),
    ("null", "is not an origin"),
    ('https://a.example";', "is not an origin"),
    ("https://app.example.com:443", "without its default port"),
    ("http://app.example.com:80", "without its default port"),
    ("http://app.example.com:65536", "no such port"),
])
def test_a_malformed_origin_stops_nginx_at_start_naming_it(tmp_path, origin, says):
    result = entrypoint("--render-only", NGINX_CONF=str(tmp_path / "nginx.conf"),
                        FLIP_CORS_ORIGINS=f"https://ok.example {origin}")
    assert result.returncode != 0 and not (tmp_path / "nginx.conf").exists()
    assert f"FLIP_CORS_ORIGINS: '{origin}'" in result.stderr and says in result.stderr, result.stderr


def test_a_page_may_read_every_header_the_service_adds(tmp_path):
    conf, _ = render(tmp_path, FLIP_CORS_ORIGINS="https://app.example.com")
    added = set(re.findall(r'headers\["(X-[A-Za-z-]+)"\] =', (ROOT / "service" / "app.py").read_text()))
    assert added and added <= set(EXPOSED), sorted(added - set(EXPOSED))
    assert f'default "{", ".join(EXPOSED)}";' in maps(conf, "$flip_cors_expose")


# -- through nginx, on Docker ------------------------------------------------------------------------

PNG = encode(picture("RGB"), "PNG")
# Fetches POST /flip with a key, then without one, and writes what the script could read into the page.
PAGE = """<!doctype html><html><head><title>flipfleet from a web page</title></head><body>
<pre id="result">pending</pre><script>
const params = new URLSearchParams(location.search);
const png = Uint8Array.from(atob("%PNG%"), (c) => c.charCodeAt(0));
async function call(headers) {
  try {
    const answer = await fetch(params.get("stack") + "/flip",
                               {method: "POST", body: new Blob([png], {type: "image/png"}), headers});
    const bytes = new Uint8Array(await answer.arrayBuffer());
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return {status: answer.status, headers: Object.fromEntries(answer.headers.entries()), body: btoa(binary)};
  } catch (error) {
    return {error: String(error)};
  }
}
(async () => {
  const withKey = await call({"Authorization": "Bearer " + params.get("key"), "Content-Type": "image/png",
                              "X-Request-ID": "from-the-page-1"});
  const withoutKey = await call({"Content-Type": "image/png"});
  document.getElementById("result").textContent = JSON.stringify({withKey, withoutKey});
})();
</script></body></html>
""".replace("%PNG%", base64.b64encode(PNG).decode())


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pages():
    """The page, served from two origins of their own (another port is another origin): listed, not."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [f"http://127.0.0.1:{server.server_address[1]}" for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def cors_stack(docker_images, pages, tmp_path_factory, request):
    """One replica behind nginx with API keys and the first page's origin listed, for the module."""
    listed, _ = pages
    flipfleet = Stack("cors", HEALTH_INTERVAL="2s", FLIP_CORS_ORIGINS=f"https://other.example {listed}",
                      FLIP_API_KEYS_FILE=str(keys_file(tmp_path_factory.mktemp("keys"))))
    try:
        flipfleet.up(1)
        yield flipfleet
    finally:
        if request.session.testsfailed:
            print("nginx:", *nginx_trouble(flipfleet.logs("nginx"))[-100:], sep="\n")
        flipfleet.down()


def cors_headers(headers) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower().startswith("access-control-")}


def preflight(url: str, origin: str) -> requests.Response:
    return requests.options(url + "/flip", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-request-id"})


@pytest.mark.docker
def test_nginx_answers_a_listed_origins_preflight_before_the_key_check(cors_stack, pages):
    listed, unlisted = pages
    answer = preflight(cors_stack.url, listed)
    assert answer.status_code == 204 and answer.content == b""
    assert cors_headers(answer.headers) == {
        "Access-Control-Allow-Origin": listed, "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": ALLOWED_HEADERS, "Access-Control-Max-Age": "600",
        "Access-Control-Expose-Headers": ", ".join(EXPOSED)}
    assert answer.headers["Vary"] == "Origin" and "Allow" not in answer.headers
    # Another origin's preflight is no preflight to nginx: the key check refuses it, without CORS.
    refused = preflight(cors_stack.url, unlisted)
    assert refused.status_code == 401 and cors_headers(refused.headers) == {}
    # A listed origin's OPTIONS that is no preflight is not answered as one.
    plain = requests.options(cors_stack.url + "/flip", headers={"Origin": listed}, timeout=10)
    assert plain.status_code == 401 and "Access-Control-Allow-Methods" not in plain.headers
    assert f"CORS: web pages of https://other.example {listed} may call /flip" in cors_stack.logs("nginx")


@pytest.mark.docker
def test_every_answer_to_a_listed_origin_names_it_and_no_other_origin_gets_one(cors_stack, pages):
    listed, unlisted = pages
    key = {"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": "image/png"}
    flipped = client.post(cors_stack.url + "/flip", PNG, {**key, "Origin": listed}, timeout=30)
    assert flipped.status == 200
    assert flipped.headers["Access-Control-Allow-Origin"] == listed
    assert flipped.headers["Access-Control-Expose-Headers"] == ", ".join(EXPOSED)
    assert flipped.headers["Vary"] == "Origin" and "Access-Control-Max-Age" not in flipped.headers
    # nginx's own errors too, so that the page can read them: the 401, and a 413 before the body.
    refused = client.post(cors_stack.url + "/flip", PNG, {"Origin": listed}, timeout=30)
    assert refused.status == 401 and refused.headers["Access-Control-Allow-Origin"] == listed
    with socket.create_connection(("127.0.0.1", cors_stack.port), timeout=10) as sock:
        sock.sendall(f"POST /flip HTTP/1.1\r\nHost: x\r\nOrigin: {listed}\r\nX-API-Key: {GOOD_KEY}\r\n"
                     f"Content-Length: 900000000\r\n\r\n".encode())
        too_large = sock.recv(4096).decode()
    assert too_large.startswith("HTTP/1.1 413 ") and f"\r\nAccess-Control-Allow-Origin: {listed}\r\n" in too_large
    # Another origin, or none: the flip still works (CORS binds browsers only), with no CORS header.
    for headers in ({**key, "Origin": unlisted}, key, {**key, "Origin": listed + ".evil.example"}):
        other = client.post(cors_stack.url + "/flip", PNG, headers, timeout=30)
        assert other.status == 200 and cors_headers(other.headers) == {}, headers
        assert other.headers["Vary"] == "Origin"


@pytest.mark.docker
def test_unset_no_cors_header_and_options_is_the_replicas(running_stack, pages):
    listed, _ = pages
    answer = preflight(running_stack.url, listed)
    assert answer.status_code == 204 and set(answer.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert cors_headers(answer.headers) == {} and "Vary" not in answer.headers
    flipped = client.post(running_stack.url + "/flip", PNG, {"Origin": listed, "Content-Type": "image/png"}, timeout=30)
    assert flipped.status == 200 and cors_headers(flipped.headers) == {} and "Vary" not in flipped.headers


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium; a skip without it (a failure under CI, which installs it)."""
    found = shutil.which("chromium")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser tests: chromium is not installed")
        pytest.skip("chromium is missing (apt-get install chromium)")
    return found


def open_page(chromium: str, page: str, stack_url: str, profile: Path) -> dict:
    """What the page's script could read, after Chromium ran it headless (virtual time waits for fetch)."""
    url = f"{page}/?stack={quote(stack_url)}&key={quote(GOOD_KEY)}"
    result = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found and found.group(1) != "pending", (result.stdout[-2000:], result.stderr[-2000:])
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.docker
def test_a_web_page_of_a_listed_origin_flips_with_a_key_and_another_is_refused(chromium, cors_stack, pages,
                                                                                tmp_path):
    listed, unlisted = pages
    seen = open_page(chromium, listed, cors_stack.url, tmp_path / "listed")
    with_key = seen["withKey"]
    assert with_key.get("status") == 200, with_key
    headers = with_key["headers"]
    assert headers["content-type"] == "image/png" and headers["x-request-id"] == "from-the-page-1"
    assert headers["x-flipfleet-flip"] and headers["x-flipfleet-version"] and headers["x-served-by"]
    assert headers["x-response-time"].endswith("ms") and headers["x-image-size"] == "48x32"
    flipped = decode(base64.b64decode(with_key["body"]))
    assert flipped.tobytes() == picture("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).tobytes()
    # Without a key: the page can read nginx's 401 and how to present one.
    without_key = seen["withoutKey"]
    assert without_key.get("status") == 401, without_key
    assert without_key["headers"]["www-authenticate"] == 'Bearer realm="flipfleet"'
    assert json.loads(base64.b64decode(without_key["body"]))["status"] == 401

    preflights = len(re.findall(r'"OPTIONS /flip HTTP/1.1" 401 ', cors_stack.logs("nginx")))
    refused = open_page(chromium, unlisted, cors_stack.url, tmp_path / "unlisted")
    assert refused["withKey"] == {"error": "TypeError: Failed to fetch"}, refused
    assert refused["withoutKey"] == {"error": "TypeError: Failed to fetch"}, refused
    # The browser asked, and nginx's answer had no CORS header (the plain tests above): it refused.
    assert len(re.findall(r'"OPTIONS /flip HTTP/1.1" 401 ', cors_stack.logs("nginx"))) > preflights
