"""The Ray cluster launcher configs (cluster/launcher/*.yaml), checked offline as `ray up` checks them, and stricter.

Before it calls any cloud API, `ray up` turns a YAML into a cluster config with Ray's `prepare_config` (the provider's
defaults merged in; on-prem, its one node type built) and checks it with `validate_config` (the JSON schema
ray/autoscaler/ray-schema.json); these tests run the same two, and on-prem the whole of that step (it calls nothing).
Ray's schema refuses unknown keys at the top level, in a node type, and in `docker` and `auth`. It lets any key
through in `provider` (additionalProperties: true) and leaves `node_config` free-form: here provider keys are checked
against the ones the schema names, and AWS node configs against EC2's RunInstances request (botocore's offline model).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from ray._private.authentication.authentication_token_setup import _get_default_token_path
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO

LAUNCHER = REPO / "cluster" / "launcher"
CONFIGS = ["aws", "gcp", "onprem"]
CLOUDS = ["aws", "gcp"]  # the ones with node types: Ray's local provider takes none
COMMAND_KEYS = [
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
]  # fmt: skip
DASHBOARD_PORT = 8265


def load(name: str) -> dict:
    return yaml.safe_load((LAUNCHER / f"{name}.yaml").read_text())


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_up_config(config: dict) -> dict:
    """What `ray up` makes of a YAML before it calls the cloud: Ray's defaults merged in, then checked by Ray."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def unknown_provider_keys(config: dict) -> set[str]:
    """Provider keys Ray's schema does not name (Ray itself lets them through)."""
    return set(config["provider"]) - set(ray_schema()["properties"]["provider"]["properties"])


def test_every_launcher_yaml_is_checked():
    assert sorted(path.stem for path in LAUNCHER.glob("*.yaml")) == sorted(CONFIGS)


# --------------------------------------------------------------------------- Ray's own checks


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_accepts_the_config(name):
    config = load(name)
    jsonschema.validate(config, ray_schema())  # the file as written, not only once Ray's defaults fill its gaps
    ray_up_config(config)


def test_onprem_passes_the_whole_config_step_of_ray_up():
    config = load("onprem")
    bootstrapped = _bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    (node_type,) = bootstrapped["available_node_types"].values()
    # every listed machine joins and stays
    assert node_type["min_workers"] == node_type["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("name", CONFIGS)
def test_a_misspelt_top_level_key_is_refused(name):
    config = load(name)
    config["max_worker"] = 4  # max_workers
    with pytest.raises(jsonschema.ValidationError, match="'max_worker' was unexpected"):
        ray_up_config(config)


@pytest.mark.parametrize("name", CLOUDS)
def test_a_misspelt_node_type_key_is_refused(name):
    config = load(name)
    gpu_train = config["available_node_types"]["gpu_train"]
    gpu_train["min_worker"] = gpu_train.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        ray_up_config(config)


# --------------------------------------------------------------------------- where Ray's schema lets anything through


@pytest.mark.parametrize("name", CONFIGS)
def test_provider_keys_are_ones_ray_knows(name):
    config = load(name)
    assert unknown_provider_keys(config) == set()
    config["provider"]["use_internal_ip"] = True  # use_internal_ips
    ray_up_config(config)  # Ray takes it and ignores it
    assert unknown_provider_keys(config) == {"use_internal_ip"}


def run_instances_report(node_config: dict) -> str:
    """botocore's complaints about an AWS node_config as the EC2 RunInstances request Ray sends ('' if none)."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    request = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    return ParamValidator().validate({"MinCount": 1, "MaxCount": 1, **node_config}, request).generate_report()


def test_aws_node_configs_are_run_instances_requests():
    for name, node_type in load("aws")["available_node_types"].items():
        assert run_instances_report(node_type["node_config"]) == "", name
    assert 'Unknown parameter in input: "InstanceTyp"' in run_instances_report({"InstanceTyp": "p5.48xlarge"})


def test_gcp_disks_are_in_the_clusters_zone():
    config = load("gcp")
    zone = config["provider"]["availability_zone"]
    for name, node_type in config["available_node_types"].items():
        for disk in node_type["node_config"]["disks"]:
            assert disk["initializeParams"]["diskType"].startswith(f"zones/{zone}/"), name


# --------------------------------------------------------------------------- the platform's choices


def pinned_ray() -> SpecifierSet:
    """pyproject.toml's requirement on Ray (`ray[...]>=2.60,<...`)."""
    found = re.search(r'"ray\[[\w,]+\]([^";]+)"', (REPO / "pyproject.toml").read_text())
    assert found, "pyproject.toml: no ray[...] requirement"
    return SpecifierSet(found[1])


def test_the_image_carries_the_platforms_ray():
    images = {load(name)["docker"]["image"] for name in CONFIGS}
    assert len(images) == 1, f"the launcher configs name different images: {sorted(images)}"
    (image,) = images
    tag = re.fullmatch(r"ray(\d+\.\d+\.\d+)-py3\d+-gpu", image.rsplit(":", 1)[-1])
    assert tag, f"{image}: expected a tag like ray2.60.0-py311-gpu"
    assert tag[1] == ray.__version__, f"{image} carries Ray {tag[1]}, the platform is tested on {ray.__version__}"
    built = dict(re.findall(r"^ARG (\w+)=(\S+)$", (REPO / "cluster" / "docker" / "Dockerfile").read_text(), re.M))
    dockerfile_tag = f"ray{built['RAY_VERSION']}-{built['PYTHON_TAG']}-gpu"
    assert tag[0] == dockerfile_tag, f"{image}: cluster/docker/Dockerfile builds {dockerfile_tag}"
    pinned = pinned_ray()
    (floor,) = [Version(s.version) for s in pinned if s.operator == ">="]
    assert tag[1] in pinned and Version(tag[1]).release[:2] == floor.release[:2], f"{image}; pyproject: ray{pinned}"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_start_runs_with_token_auth(name):
    config = load(name)
    prepared = ray_up_config(config)  # after Ray's defaults: none of their token-less commands got in
    start_lists = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    starts = [command for command in start_lists if "ray start" in command]
    assert len(starts) == 2
    for command in starts:
        assert command.count("ray start") == command.count("RAY_AUTH_MODE=token ray start"), command
    # the token reaches every node where Ray looks for it (~/.ray/auth_token, `ray get-auth-token --generate`'s file)
    token_dir = "~/" + _get_default_token_path().parent.relative_to(Path.home()).as_posix()
    assert config["file_mounts"] == {token_dir: token_dir}
    assert "--env=RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # `ray attach` / `ray exec` shells


@pytest.mark.parametrize("name", CONFIGS)
def test_no_command_comes_from_rays_defaults(name):
    config = load(name)
    # a list left out gets Ray's: a nightly Ray wheel pip-installed over the image's, `ray start` without the token
    assert [key for key in COMMAND_KEYS if key not in config] == []
    commands = [c for key in COMMAND_KEYS for c in ray_up_config(config)[key]]
    assert [c for c in commands if re.search(r"pip install[^;&|]*\bray\b", c)] == []  # the image's Ray is the cluster's


def rules_admitting_the_internet(config: dict, port: int) -> list[dict]:
    """Every security-group rule (IpPermissions, anywhere in the config) that admits any address to `port`."""
    rules = []

    def walk(node):
        if isinstance(node, dict):
            rules.extend(node.get("IpPermissions", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return [rule for rule in rules if admits_anyone(rule) and covers(rule, port)]


def admits_anyone(rule: dict) -> bool:
    sources = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
    return bool(sources & {"0.0.0.0/0", "::/0"})


def covers(rule: dict, port: int) -> bool:
    return str(rule.get("IpProtocol")) == "-1" or rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)


@pytest.mark.parametrize("name", CONFIGS)
def test_the_dashboard_is_not_opened_to_the_internet(name):
    config = load(name)
    assert rules_admitting_the_internet(config, DASHBOARD_PORT) == []
    # nothing names the port at all: no firewall, rule or setting; `ray dashboard` reaches it over SSH
    assert str(DASHBOARD_PORT) not in yaml.safe_dump(config)

    opened = copy.deepcopy(config)
    ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    web = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8300, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    opened["provider"]["security_group"] = {"GroupName": "llava", "IpPermissions": [ssh, web]}
    jsonschema.validate(opened, ray_schema())  # Ray would apply it (on AWS)
    assert rules_admitting_the_internet(opened, DASHBOARD_PORT) == [web]


def docker_run_options(config: dict, node_type: str) -> list[str]:
    """The `docker run` options a node of this type gets, merged as Ray's command runner merges them."""
    docker = config["docker"]
    if node_type == config["head_node_type"]:
        return docker.get("run_options", []) + docker.get("head_run_options", [])
    merged = {**docker, **config["available_node_types"][node_type].get("docker", {})}
    return merged.get("run_options", []) + merged.get("worker_run_options", [])


@pytest.mark.parametrize("name", CLOUDS)
def test_node_types(name):
    config = load(name)
    types = config["available_node_types"]
    assert sorted(types) == ["cpu_data", "gpu_serve", "gpu_train", "head"] and config["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0} and types["head"]["max_workers"] == 0  # nothing runs on the head
    assert types["gpu_train"]["resources"]["GPU"] == 8 and types["gpu_train"]["max_workers"] == 8  # 8 nodes x 8 GPUs
    assert types["gpu_serve"]["resources"]["GPU"] == 1
    assert "GPU" not in types["cpu_data"]["resources"] and types["cpu_data"]["resources"]["CPU"] > 0
    workers = [node_type for node_name, node_type in types.items() if node_name != "head"]
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)
    assert config["max_workers"] == sum(t["max_workers"] for t in workers)
    # no custom resources: the autoscaler counts a declared resource nobody asks for as unused, and passes the type over
    assert all(set(t["resources"]) <= {"CPU", "GPU"} for t in types.values())
    for node_name, node_type in types.items():
        options = docker_run_options(config, node_name)
        assert len([o for o in options if o.startswith("--shm-size")]) == 1, (node_name, options)
        # `docker run --gpus all` fails on a machine without GPUs
        assert ("--gpus all" in options) == ("GPU" in node_type["resources"]), (node_name, options)


def nodes_the_autoscaler_adds(config: dict, requests: list[dict]) -> dict[str, int]:
    """The worker nodes Ray's autoscaler starts for these requests on a cluster of only its head (a PACK placement
    group's bundles are plain requests to it)."""
    prepared = ray_up_config(config)
    no_failures = NodeAvailabilitySummary(node_availabilities={})

    def score(resources, demands, node_type):
        return _default_utilization_scorer(resources, demands, node_type, node_availability_summary=no_failures)

    head = prepared["head_node_type"]
    node_types, most = prepared["available_node_types"], prepared["max_workers"]
    added, unmet = get_nodes_for(node_types, {head: 1}, head, most, requests, score)
    assert unmet == []
    return dict(added)


@pytest.mark.parametrize("name", CLOUDS)
def test_the_autoscaler_starts_the_node_type_each_job_needs(name):
    config = load(name)
    scaling = yaml.safe_load((REPO / "jobs/configs/llava-1.5-7b_finetune.yaml").read_text())["scaling"]
    (app,) = yaml.safe_load((REPO / "serve_apps/llava-1.5-7b.yaml").read_text())["applications"]
    model = app["args"]["model_deployment"]

    train_worker = {"CPU": scaling["cpus_per_worker"], "GPU": 1}
    assert nodes_the_autoscaler_adds(config, [train_worker] * 64) == {"gpu_train": 8}  # the 7B spec on 8 x 8 GPUs
    replica = {"CPU": model["num_cpus"], "GPU": model["num_gpus"]}
    assert nodes_the_autoscaler_adds(config, [replica]) == {"gpu_serve": 1}
    assert nodes_the_autoscaler_adds(config, [{"CPU": 1}] * 32) == {"cpu_data": 1}  # Ray Data's preprocessing tasks
