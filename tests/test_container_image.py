"""The nodes' image (cluster/docker/Dockerfile) cannot be built here (no registry, no network): its text is checked
instead against what the project pins, so the image, the clients and CI run the same Ray and Python."""

import re

import ray
from packaging.specifiers import SpecifierSet

from conftest import REPO

DOCKERFILE = (REPO / "cluster" / "docker" / "Dockerfile").read_text()
PYPROJECT = (REPO / "pyproject.toml").read_text()


def arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)[1]


def test_the_image_runs_the_ray_and_python_the_project_pins():
    pin = SpecifierSet(re.search(r'"ray\[[\w,]+\](>=[\d.]+,<[\d.]+)"', PYPROJECT)[1])
    assert str(pin) == "<2.61,>=2.60"  # one minor version
    assert arg("RAY_VERSION") in pin and arg("RAY_VERSION") == ray.__version__  # the image's Ray is the tests' Ray
    python = re.fullmatch(r"py(\d)(\d+)", arg("PYTHON_TAG"))
    requires = SpecifierSet(re.search(r'^requires-python = "([^"]+)"', PYPROJECT, re.M)[1])
    assert f"{python[1]}.{python[2]}.0" in requires
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu$", DOCKERFILE, re.M)


def test_the_image_installs_the_platform_as_the_readme_does_and_runs_as_a_user():
    readme = (REPO / "README.md").read_text()
    assert f"torch=={arg('TORCH_VERSION')}" in readme  # the torch the README installs first
    assert re.search(r'pip install --no-cache-dir -e "\.\[quantization,deepspeed,tensorboard\]"', DOCKERFILE)
    for copied in re.findall(r"^COPY --chown=ray:users (.+) \./", DOCKERFILE, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), path
    assert re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)[-1] == "ray"  # not root
    assert "ENV RAY_AUTH_MODE=token" in DOCKERFILE
