"""nginx/entrypoint.sh renders nginx.conf.template with the same numbers the replicas and compose
use: these tests fail when any two places disagree. (The Docker tests run the rendered config.)"""

import re

import pytest
import yaml

from harness import ROOT
from harness.compose import compose_default, size
from service.app import create_app
from service.config import Settings
from tests.nginx_conf import directive, entrypoint, render

MiB = 1024 * 1024


def plan(**env: str) -> dict[str, int]:
    """What the entrypoint admits for these variables (its --plan), as numbers."""
    result = entrypoint("--plan", **env)
    assert result.returncode == 0, result.stderr
    return {key: int(value) if value else 0 for key, value in (line.split("=", 1) for line in result.stdout.split())}


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


@pytest.mark.parametrize("env", [{}, {"FLIP_ANSWER_SECONDS": "7", "FLIP_MAX_SECONDS": "3"}], ids=["default", "7s"])
def test_the_wait_for_an_answer_follows_the_service_setting(tmp_path, env):
    conf, _ = render(tmp_path, **env)
    answer_seconds = Settings.from_env(env).answer_seconds
    # (The second is /nginx-ready's: a replica that does not answer GET / within 1 s is not ready.)
    assert directive(conf, "proxy_read_timeout") == [f"{answer_seconds}s", "1s"]
    # The JSON 504 names the wait the client was given.
    assert f"no answer from the replica within {answer_seconds} s:" in conf


@pytest.mark.parametrize(
    ("env", "max_conns", "large"),
    [({"WEB_REPLICAS": "3", "FLIP_QUEUE": "5"}, 5, 15),
     # Two nginx in front of the same replicas (Kubernetes): each sends a replica half its queue.
     ({"WEB_REPLICAS": "3", "FLIP_QUEUE": "5", "NGINX_INSTANCES": "2"}, 2, 6)],
    ids=["one-nginx", "two-nginx"],
)
def test_admission_and_max_conns_come_from_replicas_and_queue(tmp_path, env, max_conns, large):
    unlimited = {"NGINX_MEMORY_BYTES": str(2**40)}
    conf, log = render(tmp_path, **env, **unlimited)
    small = plan(**env, **unlimited)["ADMITTED_SMALL"]
    assert directive(conf, "server")[0].endswith(f" max_conns={max_conns}")
    assert directive(conf, "limit_conn") == [f"client_bodies {Settings.from_env({}).client_share}",
                                             f"large_bodies {large}", f"small_bodies {small}"]
    assert f"admitting {large} bodies" in log


@pytest.mark.parametrize("env", [{}, {"FLIP_QUEUE": "16"}, {"WEB_REPLICAS": "8"}, {"FLIP_MAX_BYTES": "52428800"}],
                         ids=["defaults", "q16", "r8", "50MiB"])
def test_the_admitted_bodies_and_answers_fit_in_nginx_memory_limit(tmp_path, env):
    limit = size(compose_default("NGINX_MEMORY_LIMIT"))
    # Inside the container the entrypoint reads this limit from its cgroup; here it is passed in.
    admitted = plan(NGINX_MEMORY_BYTES=str(limit), **env)
    wanted = plan(NGINX_MEMORY_BYTES=str(2**40), **env)
    settings = Settings.from_env(env)
    replicas = int(env.get("WEB_REPLICAS", "2"))
    assert wanted["ADMITTED_LARGE"] == replicas * settings.queue  # every place in the replicas' queues
    assert admitted["NEEDED_BYTES"] <= limit
    if wanted["NEEDED_BYTES"] <= limit:
        assert admitted == {**wanted, "MEMORY_LIMIT_BYTES": limit}
    else:
        # Fewer of both sizes, in the same proportion (to within one body of rounding).
        large, small = admitted["ADMITTED_LARGE"], admitted["ADMITTED_SMALL"]
        assert 1 <= large < wanted["ADMITTED_LARGE"] and 1 <= small < wanted["ADMITTED_SMALL"]
        assert abs(large / wanted["ADMITTED_LARGE"] - small / wanted["ADMITTED_SMALL"]) < 1 / large
    conf, log = render(tmp_path, NGINX_MEMORY_BYTES=str(limit), **env)
    assert directive(conf, "limit_conn")[1:] == [f"large_bodies {admitted['ADMITTED_LARGE']}",
                                                 f"small_bodies {admitted['ADMITTED_SMALL']}"]
    # Bodies and answers never spill to files, so memory is all they take.
    assert directive(conf, "client_body_buffer_size") == directive(conf, "client_max_body_size")
    assert directive(conf, "proxy_max_temp_file_size") == ["0"]
    assert f"needs {admitted['NEEDED_BYTES'] >> 20} MiB of {limit >> 20} MiB" in log
    print(f"nginx {env or 'defaults'}: {admitted['ADMITTED_LARGE']} large and {admitted['ADMITTED_SMALL']} small "
          "bodies "
          f"admitted, {admitted['NEEDED_BYTES'] / MiB:.0f} MiB of its {limit / MiB:.0f} MiB limit")


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [("", []),
     ("10.0.0.0/8 fd00::/8 192.168.1.7", ["10.0.0.0/8", "fd00::/8", "192.168.1.7"])],
    ids=["off", "three"],
)
def test_the_client_address_comes_from_trusted_proxies_only(tmp_path, trusted, expected):
    conf, _ = render(tmp_path, NGINX_TRUSTED_PROXIES=trusted)
    assert directive(conf, "set_real_ip_from") == expected
    assert directive(conf, "real_ip_header") == (["X-Forwarded-For"] if expected else [])


def test_every_client_limit_keys_on_the_client_its_address_or_its_keys_name(tmp_path):
    conf, _ = render(tmp_path)
    zones = {line.split()[1].split("=")[1].split(":")[0]: line.split()[0] for line in directive(conf, "limit_conn_zone")
             + directive(conf, "limit_req_zone")}
    assert zones["client_bodies"] == "$flip_client_body"
    assert zones["bodyless"] == "$flip_client_bodyless" and zones["sample"] == "$flip_client_sample"

    def maps_to(variable: str, value: str) -> bool:
        return bool(re.search(rf"map [^{{]*\{variable} \{{[^}}]*\{value};", conf))

    # Requests without a body on the address; a flip on its client: the address without a key.
    assert maps_to("$flip_client_bodyless", "$binary_remote_addr")
    assert maps_to("$flip_client_body", "$flip_client") and maps_to("$flip_client_sample", "$flip_client")
    client = r'map \$flip_key_name \$flip_client \{\s*""\s+\$binary_remote_addr;\s*default\s+"key:\$flip_key_name";'
    assert re.search(client, conf)


def test_web_replicas_default_is_written_once_in_compose():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    # The anchor is resolved by the YAML loader: both places hold the same ${WEB_REPLICAS:-N}.
    services = compose["services"]
    assert services["web"]["deploy"]["replicas"] == services["nginx"]["environment"]["WEB_REPLICAS"]
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
        ({"FLIP_CLIENT_SHARE": "-1"}, "FLIP_CLIENT_SHARE must be a whole number"),
        ({"FLIP_ANSWER_SECONDS": "60s"}, "FLIP_ANSWER_SECONDS must be a whole number"),
        ({"NGINX_TRUSTED_PROXIES": "10.0.0.0/8; evil"}, "is not an address or network"),
    ],
)
def test_bad_settings_stop_nginx_with_the_variable_named(tmp_path, env, message):
    result = entrypoint("--render-only", NGINX_CONF=str(tmp_path / "x"), **env)
    assert result.returncode != 0 and message in result.stderr
