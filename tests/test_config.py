import pytest

from service.config import ConfigError, Settings


def test_defaults_are_safe():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1"  # reachable only from this machine unless told
    assert settings.port == 8000
    assert settings.max_bytes == 25 * 1024 * 1024
    assert settings.max_pixels == 50_000_000


def test_every_setting_has_its_variable():
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "FLIP_THREADS": "4",
        "FLIP_MAX_BYTES": "1_000_000",
        "FLIP_MAX_PIXELS": "10",
        "FLIP_MAX_FRAMES": "3",
        "FLIP_MAX_TOTAL_PIXELS": "30",
        "FLIP_SAMPLE_PATH": "/srv/sample.jpg",
        "FLIP_REPLICA_NAME": "web-1",
        "FLIP_PILLOW_BLOCKS": "0",
    }
    settings = Settings.from_env(environ)
    assert (settings.host, settings.port, settings.threads) == ("0.0.0.0", 9000, 4)
    assert (settings.max_bytes, settings.max_pixels, settings.max_frames) == (1_000_000, 10, 3)
    assert settings.max_total_pixels == 30
    assert settings.sample_path == "/srv/sample.jpg"
    assert settings.replica == "web-1"
    assert settings.pillow_blocks == 0


def test_replica_defaults_to_the_hostname():
    import socket

    assert Settings.from_env({}).replica == socket.gethostname()


def test_port_zero_asks_for_a_free_port():
    assert Settings.from_env({"PORT": "0"}).port == 0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "http", "PORT must be a whole number"),
        ("PORT", "70000", "at most 65535"),
        ("FLIP_THREADS", "0", "FLIP_THREADS must be at least 1"),
        ("FLIP_MAX_BYTES", "-5", "at least 1"),
        ("FLIP_MAX_PIXELS", "1e6", "whole number"),
    ],
)
def test_bad_values_are_refused_by_name(name, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})
