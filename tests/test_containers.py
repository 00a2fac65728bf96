"""loadtest.containers: a replica per variant of its container and settings, started by compose,
and the CPU per flip of each beside the flip alone."""

import json
import os
import re

import pytest

from harness.compose import PROJECT_PREFIX, compose_base, run
from loadtest import containers


def test_every_variant_turns_healthchecks_off_and_only_the_host_network_takes_a_port():
    assert containers.VARIANTS[containers.AS_COMPOSE] == {}
    for name, variant in containers.VARIANTS.items():
        layered = containers.override(variant, 43210)
        assert layered["services"]["web"]["healthcheck"] == {"disable": True}
        assert ("43210" in json.dumps(layered)) == (name == "host network"), name
        assert "{port}" not in json.dumps(layered)


def holds(config, wanted) -> bool:
    """Whether compose's rendered `config` has everything `wanted` names (list items among its)."""
    if isinstance(wanted, dict):
        return isinstance(config, dict) and all(key in config and holds(config[key], value)
                                                for key, value in wanted.items())
    if isinstance(wanted, list):
        return all(item in config for item in wanted)
    return str(config).lower() == str(wanted).lower()


@pytest.mark.docker
@pytest.mark.parametrize("name", list(containers.VARIANTS))
def test_compose_runs_the_replica_as_each_variant_says(docker_images, tmp_path, name):
    layered = containers.override(containers.VARIANTS[name], 43210)
    (tmp_path / "variant.yaml").write_text(json.dumps(layered))
    rendered = run(compose_base("variant", (tmp_path / "variant.yaml",)) + ["config", "--format", "json"])
    config = json.loads(rendered.stdout)
    assert holds(config, layered), (layered, config["services"]["web"], config.get("networks"))
    assert holds(config, {"services": {"web": {"read_only": True, "cap_drop": ["ALL"]}}})


@pytest.mark.docker
def test_the_comparison_prints_every_variant_on_both_paths_and_leaves_nothing_running(docker_images, capsys):
    assert containers.main(["--rounds", "1", "--flips", "1"]) == 0
    printed = capsys.readouterr().out
    for path in containers.PATHS:
        section = printed.split(f"\n{path}: ", 1)[1]
        alone = float(re.match(r"the flip alone in the replica's container\s+([\d.]+) ms", section).group(1))
        rows = {name: (float(ms), float(of_alone), float(of_compose)) for name, ms, of_alone, of_compose in re.findall(
            r"^  (\S.*?)\s+([\d.]+) ms   x([\d.]+) of the flip alone   x([\d.]+) of ", section, re.MULTILINE)
            [: len(containers.VARIANTS)]}
        assert list(rows) == list(containers.VARIANTS), printed
        # A 24 MP flip takes a tenth of a second or more of CPU on any machine; a request, more.
        assert 20 < alone < 30_000, printed
        for ms, of_alone, of_compose in rows.values():
            assert ms > 0.5 * alone, printed
            assert of_alone == pytest.approx(ms / alone, abs=0.002)
            assert of_compose == pytest.approx(ms / rows[containers.AS_COMPOSE][0], abs=0.002)
    left = run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format",
                '{{.Label "com.docker.compose.project"}}']).stdout.split()
    assert [project for project in left if project.startswith(f"{PROJECT_PREFIX}{os.getpid()}-containers")] == []
