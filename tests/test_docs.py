"""The documentation says what the files say: every setting with its default, and no dead link."""

import json
import os
import re
import subprocess

import pytest

from harness import ROOT
from harness.docs import named_in_passing, stack_default
from loadtest.bench import report
from loadtest.memory import IMAGE_ENV
from service import app, memory
from service.config import Settings

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::?-([^}]*))?\}")


def table(heading: str) -> dict[str, str]:
    """variable -> default, from the table under `heading` in docs/settings.md."""
    section = (ROOT / "docs" / "settings.md").read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")


def documented(default: str) -> str:
    return "" if default == "(none)" else default


def test_every_service_setting_is_documented_with_its_default():
    assert {name: documented(d) for name, d in table("The service").items()} == Settings.defaults()


def test_every_stack_variable_is_documented_with_its_default():
    used: dict[str, set[str]] = {}
    for name, default in COMPOSE_VARIABLE.findall((ROOT / "compose.yaml").read_text()):
        used.setdefault(name, set()).add(stack_default(default))
    stack = table("The stack")
    assert set(stack) == set(used)
    for name, default in stack.items():
        assert documented(default) in used[name], (name, default, used[name])


def anchors(page) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered."""
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_lead_somewhere(page):
    dead = []
    for target, anchor in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        linked = (page.parent / target) if target else page
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{target}#{anchor}: no such heading")
    assert dead == [], f"{page.name} links to places that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_defaults_named_in_passing_are_the_defaults(page):
    defaults = Settings.defaults()
    wrong = [f"`{name}` says {value}, the default is {defaults[name]}"
             for name, value in named_in_passing(page.read_text()) if value != int(defaults[name])]
    assert wrong == []


def test_the_memory_worst_case_shown_is_what_a_replica_works_out():
    page = (ROOT / "docs" / "reliability.md").read_text()
    shown = page.split("$ docker compose exec web python -m service.memory\n", 1)[1].split("```", 1)[0]
    assert shown.rstrip("\n") == memory.report(Settings.from_env({}), IMAGE_ENV)


def test_every_refusal_reason_is_in_the_metrics_reference():
    source = (ROOT / "service" / "app.py").read_text()
    reasons = {*app.REFUSAL_REASON.values(), *app.HTTP_REFUSAL_REASON.values(),
               *re.findall(r'_refused\(\d+, "(\w+)"\)', source)}
    row = next(line for line in (ROOT / "docs" / "metrics.md").read_text().splitlines()
               if line.startswith("| `flipfleet_refusals_total"))
    assert {reason for reason in reasons if f"`{reason}`" not in row} == set()


def test_the_entrypoint_commands_shown_work_from_a_checkout(tmp_path):
    # Run where a checkout's folders are, so that --render-only writes its out.conf there.
    for folder in ("service", "nginx"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    text = (ROOT / "docs" / "operations.md").read_text().replace("\\\n", "")
    commands = [line.split("  #")[0] for line in text.splitlines() if "nginx/entrypoint.sh --" in line
                and not line.startswith("docker")]
    assert len(commands) == 2
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": os.environ["PATH"]})
        assert done.returncode == 0, (command, done.stderr)
    assert "upstream flips" in (tmp_path / "out.conf").read_text()


def committed_summary() -> dict:
    """The benchmark run docs/results.md, README.md and docs/api.md are written from."""
    return json.loads((ROOT / "docs" / "results" / "summary.json").read_text())


def test_the_readme_and_api_quote_the_committed_run():
    summary = committed_summary()
    assert report.headline(summary) in (ROOT / "README.md").read_text()
    assert report.lossless_cost(summary) in (ROOT / "docs" / "api.md").read_text()


def test_the_quotes_are_rewritten_from_a_summary_and_the_prose_around_them_kept(tmp_path):
    summary = committed_summary()
    (tmp_path / "docs").mkdir()
    pages = {"README.md": (report.HEADLINE_START, report.HEADLINE_END),
             "docs/api.md": (report.LOSSLESS_START, report.LOSSLESS_END)}
    for page, (start, end) in pages.items():
        (tmp_path / page).write_text(f"prose before\n\n{start}\n\nstale figures\n\n{end}\n\nprose after\n")
    report.write_quotes(summary, tmp_path)
    readme, api = ((tmp_path / page).read_text() for page in pages)
    assert "stale figures" not in readme + api and readme.count("prose") == api.count("prose") == 2
    assert report.headline(summary) in readme and report.lossless_cost(summary) in api
