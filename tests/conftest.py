import os

import pytest

from harness.compose import DockerUnavailable, Stacks, build_images, check_docker, sweep_stale_stacks
from loadtest.memory import jemalloc_missing
from service.app import create_app
from service.config import Settings
from service.formats import jpeg_lossless
from tests.pictures import encode, picture


@pytest.fixture
def settings():
    """The defaults with small limits, so that the limit tests stay fast."""
    return Settings.from_env(
        {}, replica_name="test-replica", max_bytes=2 * 1024 * 1024, max_pixels=1_000_000, max_frames=10,
        max_total_pixels=5_000_000, concurrency=1, queue=3,
    )


@pytest.fixture
def png():
    """A small lossless picture, so that a flip can be checked pixel by pixel."""
    return encode(picture("RGB"), "PNG")


@pytest.fixture
def app(settings):
    """The flip app with `settings`."""
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    """A Flask test client for `app`."""
    return app.test_client()


@pytest.fixture
def turbojpeg():
    """A skip without libturbojpeg; a failure under CI, which installs it (libturbojpeg0)."""
    if not jpeg_lossless.available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the lossless JPEG tests: libturbojpeg0 is not installed")
        pytest.skip("libturbojpeg is not installed (apt-get install libturbojpeg0)")


@pytest.fixture
def jemalloc():
    """A skip without jemalloc, the image's allocator; a failure under CI, which installs it (libjemalloc2)."""
    missing = jemalloc_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the allocator's tests: {missing}")
        pytest.skip(missing)


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
    swept = sweep_stale_stacks()
    if swept:
        print(f"took down {len(swept)} stack(s) left by killed test runs: {', '.join(swept)}")
    build_images("web", "locust-master")


@pytest.fixture
def stack(docker_images, request):
    """Brings up compose stacks for one test: stack(replicas, **variables)."""
    stacks = Stacks(request.node.name.removeprefix("test_"))
    yield stacks
    report = getattr(request.node, "rep_call", None)
    stacks.tear_down(failed=report is not None and report.failed)


@pytest.fixture(scope="module")
def running_stack(docker_images, request):
    """One stack of one replica, shared by the tests of a module that only send it requests."""
    stacks = Stacks(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    try:
        yield stacks(1)
    finally:  # a stack that failed to come up is taken down too
        stacks.tear_down(failed=request.session.testsfailed > 0)
