"""The README is a user's guide: short, its commands first, every command and file it names real."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_short_with_the_two_commands_on_the_first_screen():
    assert len(README.encode()) < 15_000
    first_screen = "\n".join(README.splitlines()[:40])
    assert "python -m jobs.demo" in first_screen and "<!-- test-command -->" in first_screen


def test_every_job_and_file_it_names_exists():
    for module in set(re.findall(r"python -m ((?:jobs|llava_platform|experiments)(?:\.[a-z_]+)+)", README)):
        parts = module.split(".")
        path = REPO / ("platform" if parts[0] == "llava_platform" else "") / "/".join(parts)
        assert path.with_suffix(".py").is_file(), module
    for path in set(re.findall(r"((?:jobs/configs|jobs/assets|docs|benchmarks|experiments)/[\w./-]+\.(?:yaml|md|py|sh|json))", README)):
        assert (REPO / path).is_file(), path
    for spec in set(re.findall(r"--config (jobs/configs/[\w.-]+\.yaml)", README)):
        assert (REPO / spec).is_file(), spec


def test_no_development_history():
    for word in ("session", "issue", "helper", "previous code", "old code"):
        assert word not in README.lower(), word


def test_the_timed_walk_runs_what_the_readme_says():
    """benchmarks/readme_walk.py times a fresh clone through these commands; the README's times come from it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_walk", REPO / "benchmarks" / "readme_walk.py")
    walk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walk)
    assert [name for name, _ in walk.STEPS] == ["install", "demo", "data", "batch", "evaluate", "pipeline"]
    for _, command in walk.STEPS:
        assert command in README, command
    assert "ray start --head" in README
