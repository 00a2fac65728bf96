"""The documentation says what the files say: every setting with its default, and no dead link."""

import re

import pytest

from harness import ROOT
from loadtest.memory import IMAGE_ENV
from service import memory
from service.config import Settings

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::?-([^}]*))?\}")


def table(heading: str) -> dict[str, str]:
    """variable -> default, from the table under `heading` in docs/settings.md."""
    section = (ROOT / "docs" / "settings.md").read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


# A setting's default named in passing, as in "`FLIP_QUEUE` (10)", with the units the pages use.
DEFAULT_IN_PASSING = re.compile(r"`(FLIP_[A-Z_]+)` \(([0-9][0-9,]*)(?: (s|MiB|MP))?\)")
UNIT = {"": 1, "s": 1, "MiB": 2**20, "MP": 10**6}


def documented(default: str) -> str:
    return "" if default == "(none)" else default


def test_every_service_setting_is_documented_with_its_default():
    assert {name: documented(d) for name, d in table("The service").items()} == Settings.defaults()


def test_every_stack_variable_is_documented_with_its_default():
    used: dict[str, set[str]] = {}
    for name, default in COMPOSE_VARIABLE.findall((ROOT / "compose.yaml").read_text()):
        used.setdefault(name, set()).add(default)
    stack = table("The stack")
    assert set(stack) == set(used)
    for name, default in stack.items():
        assert documented(default) in used[name], (name, default, used[name])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_lead_somewhere(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_defaults_named_in_passing_are_the_defaults(page):
    defaults = Settings.defaults()
    named = DEFAULT_IN_PASSING.findall(page.read_text())
    wrong = [f"`{name}` ({number}{' ' + unit if unit else ''}) is {defaults[name]}" for name, number, unit in named
             if int(number.replace(",", "")) * UNIT[unit] != int(defaults[name])]
    assert wrong == []


def test_the_memory_worst_case_shown_is_what_a_replica_works_out():
    page = (ROOT / "docs" / "reliability.md").read_text()
    shown = page.split("$ docker compose exec web python -m service.memory\n", 1)[1].split("```", 1)[0]
    assert shown.rstrip("\n") == memory.report(Settings.from_env({}), IMAGE_ENV)
