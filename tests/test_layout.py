"""The repository layout of DESIGN.md, and the reason platform/ has no __init__.py."""

import subprocess
import sys
import sysconfig

from conftest import REPO


def test_platform_folder_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists(), "platform/__init__.py shadows the stdlib module 'platform'"


def test_import_platform_is_stdlib_from_repo_root():
    # the repo root on sys.path (python -m jobs.x, Ray working_dir) must not shadow stdlib `platform`
    code = "import platform, uuid; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    path, version = out.split()
    assert path.startswith(sysconfig.get_paths()["stdlib"]), path
    assert version == ".".join(map(str, sys.version_info[:3]))


def test_design_layout_is_visible():
    for folder in ["platform/llava_platform", "jobs", "serve_apps", "cluster", "benchmarks", "tests"]:
        assert (REPO / folder).is_dir(), folder
    for package in ["config.py", "model", "data", "inference"]:
        assert (REPO / "platform" / "llava_platform" / package).exists(), package
