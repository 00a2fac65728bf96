import pytest

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
