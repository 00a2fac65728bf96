import os

import pytest

from loadtest.stack import DockerUnavailable, build_images, check_docker
from service.app import create_app


@pytest.fixture
def app():
    """The flip app with small limits, so that the limit tests stay fast."""
    return create_app(
        {
            "TESTING": True,
            "REPLICA": "test-replica",
            "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
            "MAX_PIXELS": 1_000_000,
            "MAX_FRAMES": 10,
            "MAX_TOTAL_PIXELS": 5_000_000,
        }
    )


@pytest.fixture
def client(app):
    """A Flask test client for `app`."""
    return app.test_client()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def docker_images():
    """A Docker engine with the stack's images built once; a skip (a failure under CI) without one."""
    try:
        check_docker()
    except DockerUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Docker tests: {exc}")
        pytest.skip(str(exc))
    build_images("web", "locust-master")
