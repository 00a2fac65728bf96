"""nginx/entrypoint.sh renders nginx.conf.template with the same numbers the replicas and compose
use: these tests fail when any two places disagree. (The Docker tests run the rendered config.)"""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.config import DEFAULTS_FILE, Settings

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "nginx" / "entrypoint.sh"
MiB = 1024 * 1024
UNITS = {"k": 1024, "m": MiB, "g": 1024 * MiB}


def render(tmp_path: Path, **env: str) -> tuple[str, str]:
    """The rendered config and what the entrypoint logged, for these environment variables."""
    out = tmp_path / "nginx.conf"
    environ = {
        "PATH": "/usr/bin:/bin", "FLIPFLEET_DEFAULTS": str(DEFAULTS_FILE), "NGINX_CONF": str(out),
        "FLIP_UPSTREAM": "web:8000", "NGINX_RESOLVER": "127.0.0.11", "WEB_REPLICAS": "2", **env,
    }
    result = subprocess.run(["sh", str(ENTRYPOINT), "--render-only"], env=environ, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return out.read_text(), result.stderr


def directive(conf: str, name: str) -> list[str]:
    """The arguments of every `name ...;` line."""
    return [match.strip() for match in re.findall(rf"^\s*{name}\s+([^;]*);", conf, re.MULTILINE)]


def size(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1].lower()] if text[-1].lower() in UNITS else int(text)


def compose_default(variable: str) -> str:
    """The default compose.yaml gives `variable` in `${variable:-default}`."""
    match = re.search(rf"\$\{{{variable}:-([^}}]*)\}}", (ROOT / "compose.yaml").read_text())
    assert match, f"compose.yaml has no default for {variable}"
    return match.group(1)


@pytest.mark.parametrize(
    "env",
    [{}, {"FLIP_MAX_BYTES": "1000000", "FLIP_QUEUE": "3", "WEB_REPLICAS": "5"}, {"FLIP_MAX_BYTES": "52428800"}],
    ids=["defaults", "small", "50MiB"],
)
def test_body_limits_follow_the_service_setting(tmp_path, env):
    conf, _ = render(tmp_path, **env)
    settings = Settings.from_env(env)
    assert directive(conf, "client_max_body_size") == [str(settings.max_bytes)]
    # Bodies stay in memory: a body nginx accepts never spills to a file.
    assert directive(conf, "client_body_buffer_size") == [str(settings.max_bytes)]
    # nginx's 413 says what the service's own 413 says.
    app_413 = create_app(settings).test_client().post("/flip", data=b"x" * (settings.max_bytes + 1),
                                                      content_type="image/png")
    assert app_413.status_code == 413
    assert f'413     "{app_413.get_json()["error"]}";' in conf


@pytest.mark.parametrize(
    ("env", "max_conns", "large"),
    [({"WEB_REPLICAS": "3", "FLIP_QUEUE": "5"}, 5, 15),
     # Two nginx in front of the same replicas (Kubernetes): each sends a replica half its queue.
     ({"WEB_REPLICAS": "3", "FLIP_QUEUE": "5", "NGINX_INSTANCES": "2"}, 2, 6)],
    ids=["one-nginx", "two-nginx"],
)
def test_admission_and_max_conns_come_from_replicas_and_queue(tmp_path, env, max_conns, large):
    conf, log = render(tmp_path, **env)
    assert directive(conf, "server")[0].endswith(f" max_conns={max_conns}")
    assert directive(conf, "limit_conn") == [f"large_bodies {large}", "small_bodies 128"]
    assert f"admitting {large} bodies" in log


@pytest.mark.parametrize(
    ("env", "admitted"),
    # Defaults: all the replicas can hold fits. More: fewer of both kinds, in proportion.
    [({}, (16, 128)), ({"FLIP_QUEUE": "16"}, (20, 83)), ({"WEB_REPLICAS": "8"}, (23, 47))],
    ids=["defaults", "q16", "r8"],
)
def test_the_admitted_bodies_and_answers_fit_in_nginx_memory_limit(tmp_path, env, admitted):
    limit = size(compose_default("NGINX_MEMORY_LIMIT"))
    # Inside the container the entrypoint reads this limit from its cgroup; here it is passed in.
    conf, log = render(tmp_path, NGINX_MEMORY_BYTES=str(limit), **env)
    settings = Settings.from_env({})
    large = int(directive(conf, "limit_conn")[0].split()[1])
    small = int(directive(conf, "limit_conn")[1].split()[1])
    assert (large, small) == admitted
    count, each = directive(conf, "proxy_buffers")[0].split()
    answer = int(count) * size(each)
    assert directive(conf, "proxy_max_temp_file_size") == ["0"]  # answers never spill to /tmp either
    # Every admitted request may hold its whole body and its answer buffers at once, beside
    # nginx's own ~64 MiB; small bodies are under 1 MB.
    need = large * (settings.max_bytes + answer) + small * (1_000_000 + answer) + 64 * MiB
    assert need <= limit, f"{need / MiB:.0f} MiB needed, {limit / MiB:.0f} MiB allowed"
    assert f"needs {need // MiB} MiB" in log
    print(f"nginx: {large} x ({settings.max_bytes} + {answer}) + {small} x (1000000 + {answer}) + 64 MiB = "
          f"{need / MiB:.0f} MiB of its {limit / MiB:.0f} MiB limit")


def test_web_replicas_default_is_written_once_in_compose():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    # The anchor is resolved by the YAML loader: both places hold the same ${WEB_REPLICAS:-N}.
    assert compose["services"]["web"]["deploy"]["replicas"] == compose["services"]["nginx"]["environment"]["WEB_REPLICAS"]
    assert (ROOT / "compose.yaml").read_text().count("${WEB_REPLICAS") == 1


def test_every_status_nginx_can_answer_itself_is_json(tmp_path):
    conf, _ = render(tmp_path)
    handled = {int(code) for line in directive(conf, "error_page") for code in line.split() if code.isdigit()}
    # nginx's own error answers (ngx_http_special_response.c); 497: HTTPS only, 499: never sent.
    own_errors = {400, 401, 402, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 421, 429,
                  494, 500, 501, 502, 503, 504, 505, 507}
    assert own_errors <= handled, sorted(own_errors - handled)
    assert 'return 200 \'{"error":"$flip_error","status":$status}\\n\';' in conf


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEB_REPLICAS": "two"}, "WEB_REPLICAS must be a whole number"),
        ({"FLIP_QUEUE": "0"}, "FLIP_QUEUE must be at least 1"),
        ({"FLIP_UPSTREAM": ""}, "FLIP_UPSTREAM is not set"),
    ],
)
def test_bad_settings_stop_nginx_with_the_variable_named(tmp_path, env, message):
    environ = {"PATH": "/usr/bin:/bin", "FLIPFLEET_DEFAULTS": str(DEFAULTS_FILE), "NGINX_CONF": str(tmp_path / "x"),
               "FLIP_UPSTREAM": "web:8000", "NGINX_RESOLVER": "127.0.0.11", "WEB_REPLICAS": "2", **env}
    result = subprocess.run(["sh", str(ENTRYPOINT), "--render-only"], env=environ, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and message in result.stderr
