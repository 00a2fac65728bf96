import os

import pytest

from loadtest.stack import DockerUnavailable, Stack, build_images, check_docker
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


@pytest.fixture
def stack(docker_images, request):
    """A fresh compose project for one test, always torn down, logs shown when it fails."""
    stacks = []

    def start(replicas: int, **env: str) -> Stack:
        """Bring up a stack of `replicas` web replicas, with compose variables `env`."""
        # Frequent healthchecks: the stack is healthy sooner, at a CPU cost no test measures.
        new = Stack(request.node.name.removeprefix("test_")[:20].replace("_", "-"), HEALTH_INTERVAL="2s", **env)
        stacks.append(new)
        new.up(replicas)
        return new

    yield start
    report = getattr(request.node, "rep_call", None)
    for each in stacks:
        try:
            if report is not None and report.failed:
                print(each.logs("nginx")[-5000:], each.logs("web")[-5000:])
        finally:
            each.down()
