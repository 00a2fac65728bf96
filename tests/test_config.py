import dataclasses
import socket
from pathlib import Path

import pytest
import yaml

from service.config import DEFAULTS_FILE, ConfigError, Settings, read_env_file


def test_defaults_are_safe():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"  # reachable only from this machine unless told
    assert settings.concurrency == 1  # the replicas are the parallelism
    # The article's burst of 10 from one client is held whole by one replica, and fits one
    # client's share; no client holds more than the queue.
    assert settings.client_share <= settings.queue and 10 <= settings.client_share
    assert settings.max_seconds < settings.answer_seconds  # a flip past its deadline is the replica's 422


def test_every_setting_has_one_default_and_the_file_holds_only_settings():
    in_file = set(read_env_file(DEFAULTS_FILE))
    written_here = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
    assert in_file | written_here == set(Settings.env_names().values())
    assert not in_file & written_here  # each default in one place only


def test_compose_and_the_swarm_stack_pass_on_exactly_the_tuned_settings():
    root = Path(__file__).resolve().parent.parent
    for path in ("compose.yaml", "deploy/swarm/stack.yaml"):
        web = yaml.safe_load((root / path).read_text())["services"]["web"]
        assert sorted(web["environment"]) == sorted(read_env_file(DEFAULTS_FILE)), path


def test_every_setting_has_its_variable():
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "FLIP_CONCURRENCY": "2",
        "FLIP_QUEUE": "4",
        "FLIP_CLIENT_SHARE": "3",
        "FLIP_MAX_BYTES": "1000000",
        "FLIP_MAX_PIXELS": "10",
        "FLIP_MAX_FRAMES": "3",
        "FLIP_MAX_TOTAL_PIXELS": "30",
        "FLIP_MAX_SCANS": "7",
        "FLIP_MAX_SECONDS": "4",
        "FLIP_ANSWER_SECONDS": "9",
        "FLIP_DRAIN_SECONDS": "0",
        "FLIP_SAMPLE_PATH": "/srv/sample.jpg",
        "FLIP_REPLICA_NAME": "web-1",
        "FLIP_PILLOW_BLOCKS": "0",
        "FLIP_VERSION": "1.2.3",
    }
    assert set(environ) == set(Settings.env_names().values())
    settings = Settings.from_env(environ)
    assert (settings.host, settings.port, settings.concurrency, settings.queue) == ("0.0.0.0", 9000, 2, 4)
    assert settings.client_share == 3
    assert (settings.max_bytes, settings.max_pixels, settings.max_frames) == (1_000_000, 10, 3)
    assert settings.max_total_pixels == 30
    assert (settings.max_scans, settings.max_seconds, settings.answer_seconds) == (7, 4, 9)
    assert settings.drain_seconds == 0
    assert settings.sample_path == "/srv/sample.jpg"
    assert settings.replica == "web-1"
    assert settings.pillow_blocks == 0
    assert settings.version == "1.2.3"


def test_limits_are_built_from_the_settings():
    limits = Settings.from_env({"FLIP_MAX_PIXELS": "10", "FLIP_MAX_FRAMES": "3", "FLIP_MAX_TOTAL_PIXELS": "30",
                                "FLIP_MAX_SCANS": "5", "FLIP_MAX_SECONDS": "2"}).limits
    assert (limits.max_pixels, limits.max_frames, limits.max_total_pixels) == (10, 3, 30)
    assert (limits.max_scans, limits.max_seconds) == (5, 2)


def test_threads_leave_room_for_light_requests_beside_a_full_queue():
    settings = Settings.from_env({"FLIP_QUEUE": "5"})
    assert settings.threads > settings.queue


def test_an_empty_variable_means_the_default():
    assert Settings.from_env({"FLIP_MAX_BYTES": " "}).max_bytes == int(Settings.defaults()["FLIP_MAX_BYTES"])


def test_replica_defaults_to_the_hostname():
    assert Settings.from_env({}).replica == socket.gethostname()


def test_port_zero_asks_for_a_free_port():
    assert Settings.from_env({"PORT": "0"}).port == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "http"}, "PORT must be a whole number"),
        ({"PORT": "70000"}, "at most 65535"),
        ({"FLIP_QUEUE": "0"}, "FLIP_QUEUE must be at least 1"),
        ({"FLIP_MAX_BYTES": "-5"}, "whole number"),
        ({"FLIP_MAX_PIXELS": "1e6"}, "whole number"),
        ({"FLIP_MAX_BYTES": "26_214_400"}, "whole number"),
        ({"FLIP_QUEUE": "+8"}, "whole number"),
        ({"FLIP_DRAIN_SECONDS": "-1"}, "FLIP_DRAIN_SECONDS must be a whole number"),
        ({"FLIP_CONCURRENCY": "3", "FLIP_QUEUE": "2"}, "FLIP_QUEUE \\(2\\) must be at least FLIP_CONCURRENCY \\(3\\)"),
        ({"FLIP_MAX_SECONDS": "30", "FLIP_ANSWER_SECONDS": "30"},
         "FLIP_MAX_SECONDS \\(30\\) must be below FLIP_ANSWER_SECONDS"),
    ],
)
def test_bad_values_are_refused_by_name(environ, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(environ)
