"""HTTPS on nginx's published port (FLIP_TLS_CERT, FLIP_TLS_KEY): the rendered config, then a real
stack checked with real clients: a CA and certificates made with openssl here, curl for HTTP/2 and
HTTP/1.1, openssl s_client for the protocol versions, and a certificate replaced under requests."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from harness import wait_for
from harness.compose import Stacks
from tests.nginx_conf import directive, entrypoint, render
from tests.pictures import decode, encode, picture

DOWN = picture("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path) -> Path:
    """A CA of this test's own: ca.pem and its key in `directory`."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=flipfleet test CA", cwd=directory)
    return directory / "ca.pem"


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A server certificate for localhost and 127.0.0.1 signed by the CA in `directory`, and its key
    (readable by nginx's uid 65534, as docs/operations.md asks)."""
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", extensions.name, "-out", f"{name}.pem", cwd=directory)
    (directory / f"{name}.key").chmod(0o644)
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    cert, key = make_certificate(directory, "server")
    return {"dir": directory, "ca": ca, "cert": cert, "key": key}


# -- the rendered config (no Docker) -----------------------------------------------------------

def test_without_a_certificate_the_port_serves_plain_http(tmp_path):
    conf, _ = render(tmp_path)
    assert directive(conf, "listen") == ["8080", "127.0.0.1:8079", "8081"]
    assert not directive(conf, "ssl_certificate") and not directive(conf, "http2")


def test_with_a_certificate_the_port_serves_https_1_2_and_1_3_and_http2(tmp_path, pki):
    conf, _ = render(tmp_path, FLIP_TLS_CERT=str(pki["cert"]), FLIP_TLS_KEY=str(pki["key"]))
    # The healthcheck's loopback port stays plain; the internal metrics port is untouched.
    assert directive(conf, "listen") == ["8080 ssl", "127.0.0.1:8079", "8081"]
    assert directive(conf, "http2") == ["on"]
    assert directive(conf, "ssl_certificate") == [str(pki["cert"])]
    assert directive(conf, "ssl_certificate_key") == [str(pki["key"])]
    assert directive(conf, "ssl_protocols") == ["TLSv1.2 TLSv1.3"]
    (ciphers,) = directive(conf, "ssl_ciphers")
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in ciphers.split(":"))
    assert "error_page 497 =400 /_flipfleet_https;" in conf


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLIP_TLS_CERT": "{cert}"}, "FLIP_TLS_KEY is not set: HTTPS needs both"),
        ({"FLIP_TLS_KEY": "{key}"}, "FLIP_TLS_CERT is not set: HTTPS needs both"),
        ({"FLIP_TLS_CERT": "{dir}/missing.pem", "FLIP_TLS_KEY": "{key}"},
         "FLIP_TLS_CERT: cannot read {dir}/missing.pem"),
        ({"FLIP_TLS_CERT": "{cert}", "FLIP_TLS_KEY": "{dir}/server.ext"},
         "FLIP_TLS_KEY: {dir}/server.ext is not PEM"),
    ],
    ids=["cert-only", "key-only", "missing", "not-pem"],
)
def test_a_half_or_unreadable_certificate_stops_nginx_naming_the_path(tmp_path, pki, env, message):
    paths = {name: str(path) for name, path in pki.items()}
    result = entrypoint("--render-only", NGINX_CONF=str(tmp_path / "x"),
                        **{name: value.format(**paths) for name, value in env.items()})
    assert result.returncode != 0 and message.format(**paths) in result.stderr, result.stderr


# -- a real stack ------------------------------------------------------------------------------

def https_stack(stacks: Stacks, pki: dict[str, Path]):
    return stacks(1, ca=pki["ca"], FLIP_TLS_CERT=str(pki["cert"]), FLIP_TLS_KEY=str(pki["key"]))


@pytest.fixture(scope="module")
def served(docker_images, request, pki):
    """One stack serving HTTPS with the test CA's certificate, shared by the tests that only ask it."""
    stacks = Stacks("tls")
    try:
        yield https_stack(stacks, pki)
    finally:
        stacks.tear_down(failed=request.session.testsfailed > 0)


def curl(url: str, ca: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", "--cacert", str(ca), *args, url],
                          capture_output=True, timeout=60)


@pytest.mark.docker
@pytest.mark.parametrize(("option", "version"), [("--http2", "2"), ("--http1.1", "1.1")])
def test_a_flip_over_https_with_http2_and_http1_1(served, pki, tmp_path, option, version):
    (tmp_path / "in.png").write_bytes(encode(picture("RGB"), "PNG"))
    done = curl(served.url + "/flip", pki["ca"], option, "-X", "POST", "-H", "Content-Type: image/png",
                "--data-binary", f"@{tmp_path / 'in.png'}", "-o", str(tmp_path / "out.png"),
                "-w", "%{http_code} %{http_version}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"200 {version}"
    assert decode((tmp_path / "out.png").read_bytes()).tobytes() == DOWN.tobytes()


def s_client(port: int, ca: Path, *args: str) -> subprocess.CompletedProcess:
    # Without the machine's openssl.cnf (Debian's refuses TLS below 1.2 itself) and at security
    # level 0, so that a refusal of an old version is the server's, not this client's.
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                           "-CAfile", str(ca), "-verify_return_error", "-cipher", "DEFAULT@SECLEVEL=0", *args],
                          input=b"", capture_output=True, timeout=30, env={**os.environ, "OPENSSL_CONF": os.devnull})


@pytest.mark.docker
def test_only_tls_1_2_and_1_3_are_spoken(served, pki):
    for version, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        done = s_client(served.port, pki["ca"], version)
        out = done.stdout.decode()
        assert done.returncode == 0 and f"New, {name}, Cipher is" in out and "Verify return code: 0 (ok)" in out, out
    for version in ("-tls1_1", "-tls1"):
        done = s_client(served.port, pki["ca"], version)
        # The server's own refusal: its alert, not the client's lack of that version.
        assert done.returncode != 0 and "alert protocol version" in done.stderr.decode(), done.stderr.decode()


@pytest.mark.docker
def test_plain_http_to_the_https_port_gets_the_json_400(served):
    plain = served.url.replace("https://", "http://")
    for method in ("GET", "POST"):
        response = requests.request(method, plain + "/flip", data=b"x" * 100 if method == "POST" else None,
                                    timeout=10)
        assert response.status_code == 400
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"error": "this port speaks HTTPS: use https://", "status": 400}
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.docker
def test_the_healthcheck_passes_and_forwarded_proto_is_https(served):
    (nginx,) = served.container_ids("nginx")
    assert wait_for(lambda: served.health(nginx) == "healthy", timeout=30)
    response = requests.get(served.url + "/", timeout=10, verify=served.verify)
    assert response.status_code == 200


def serial_of(certificate: Path | bytes) -> str:
    """serial=... of a PEM certificate (or of the first in s_client's output); "" if none."""
    given = certificate.read_bytes() if isinstance(certificate, Path) else certificate
    return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=given, capture_output=True,
                          timeout=30).stdout.decode().strip()


def served_certificate(port: int, ca: Path) -> str:
    """The serial of the certificate nginx serves now."""
    return serial_of(subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                                     "localhost", "-CAfile", str(ca)], input=b"", capture_output=True,
                                    timeout=30).stdout)


@pytest.mark.docker
def test_a_replaced_certificate_is_served_after_a_reload_and_no_request_fails(stack, pki):
    directory = pki["dir"]
    # Files of this test's own, mounted into the stack: the module's certificate stays as it is.
    cert, key = directory / "live.pem", directory / "live.key"
    cert.write_bytes(pki["cert"].read_bytes())
    key.write_bytes(pki["key"].read_bytes())
    key.chmod(0o644)
    flipfleet = stack(1, ca=pki["ca"], FLIP_TLS_CERT=str(cert), FLIP_TLS_KEY=str(key))
    new_cert, new_key = make_certificate(directory, "renewed")
    serial, old_serial = serial_of(new_cert), serial_of(pki["cert"])
    assert served_certificate(flipfleet.port, pki["ca"]) == old_serial != serial

    png = encode(picture("RGB"), "PNG")
    results: list[int | str] = []
    stop = threading.Event()

    def load() -> None:
        # Bounded: 3000 flips or 60 s at most, whichever comes first; each on a new TLS connection.
        deadline = time.monotonic() + 60
        while not stop.is_set() and len(results) < 3000 and time.monotonic() < deadline:
            try:
                answer = requests.post(flipfleet.url + "/flip", data=png, headers={"Content-Type": "image/png"},
                                       timeout=30, verify=flipfleet.verify)
                results.append(answer.status_code)
            except requests.RequestException as exc:
                results.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(2)
        before = len(results)
        # Copied over the mounted files (a rename would leave the old ones mounted), then reloaded.
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        flipfleet.compose("exec", "-T", "nginx", "bash", "/etc/flipfleet/nginx/entrypoint.sh", "--reload")
        # (Within 2 s: the reload's new worker takes over at once, and the entrypoint's own look
        # at the files, below, comes every 5 s.)
        assert wait_for(lambda: served_certificate(flipfleet.port, pki["ca"]) == serial, timeout=2, interval=0.2)
        # Once the old worker has stopped taking connections, only the new certificate is served.
        time.sleep(1)
        assert served_certificate(flipfleet.port, pki["ca"]) == serial
        reloaded = len(results)
        # Files copied over with no reload asked for: the entrypoint sees them change and reloads.
        cert.write_bytes(pki["cert"].read_bytes())
        key.write_bytes(pki["key"].read_bytes())
        assert wait_for(lambda: served_certificate(flipfleet.port, pki["ca"]) == old_serial, timeout=15, interval=0.5)
        assert wait_for(lambda: "the certificate or key changed: reloading" in flipfleet.logs("nginx"), timeout=5)
        renewed = len(results)
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=90)
    assert len(results) > renewed > reloaded > before > 0, (before, reloaded, renewed, len(results))
    assert set(results) == {200}, [r for r in results if r != 200][:5]
    print(f"certificate replaced twice (a reload, then the entrypoint's own) under 2 clients: {len(results)} "
          f"flips over HTTPS, {reloaded - before} during the first swap and {renewed - reloaded} during the second, "
          "none failed")
