"""The KubeRay manifests (cluster/kuberay/) checked offline, as the API server and a reviewer would check them.

- Schema: every manifest against its CRD's openAPIV3Schema (cluster/kuberay/crds/, KubeRay's own), and unknown fields
  refused as by `kubectl apply --validate=strict`: the CRDs never say `additionalProperties: false`, so JSON Schema
  alone passes a misspelt key, which the API server would drop (or refuse under strict field validation).
- Resources: GPUs in limits and requests equal to limits, /dev/shm in memory and big enough for Ray's object store, one
  image per manifest whose Ray is the pinned one, token auth on every Ray container, a dashboard on ClusterIP only.
- Drift: the RayService serves serve_apps/llava-1.5-7b.yaml as it is; the RayJobs run shipped jobs and specs, and the
  cluster they select holds what those specs ask for.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.version import Version

from conftest import REPO
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.config import TrainJobSpec, load

KUBERAY = REPO / "cluster" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}  # fmt: skip
MANIFESTS = ["raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-finetune.yaml", "rayjob-batch.yaml", "rayservice.yaml"]
RAYJOBS = [m for m in MANIFESTS if m.startswith("rayjob-")]
SERVE_CONFIG = REPO / "serve_apps" / "llava-1.5-7b.yaml"
JOB_SPECS = {"jobs.pretrain": TrainJobSpec, "jobs.finetune": TrainJobSpec, "jobs.batch_infer": BatchJobSpec}
AUTH_TOKEN_KEY = "auth_token"  # the Secret key KubeRay reads for authOptions.secretName
NODE_GPUS = 8  # the project's training nodes: 8 nodes x 8 GPUs
# ObjectMeta's fields: the API server checks a manifest's own metadata against these, not against the CRD
OBJECT_META = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
               "ownerReferences", "finalizers", "managedFields"}  # fmt: skip
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 60k lines


class _NoDuplicateKeys(FAST_LOADER):
    """Refuses a key given twice in one mapping (PyYAML keeps the last one silently; strict validation refuses it)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


@functools.cache
def manifest(name: str) -> dict:
    return yaml.load((KUBERAY / name).read_text(), Loader=_NoDuplicateKeys)


@functools.cache
def crd_schema(kind: str, version: str) -> dict:
    """The openAPIV3Schema of `kind` at `version`, which must be the CRD's served and stored version."""
    crd = yaml.load((KUBERAY / "crds" / CRD_FILES[kind]).read_text(), Loader=FAST_LOADER)
    found = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in found and found[version]["served"] and found[version]["storage"], (
        f"{kind} {version}: the CRD stores {[n for n, v in found.items() if v['storage']]}"
    )
    return found[version]["schema"]["openAPIV3Schema"]


def schema_of(doc: dict) -> dict:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    return crd_schema(doc["kind"], version)


def dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def schema_errors(doc: dict) -> list[str]:
    """JSON Schema errors (types, enums, required fields, patterns), each with its path."""
    validator = jsonschema.Draft4Validator(schema_of(doc))  # OpenAPI 3.0 schema objects: draft 4's, extended
    return [f"{dotted(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Keys that the schema does not declare, where it neither maps arbitrary keys (additionalProperties) nor keeps
    unknown ones (x-kubernetes-preserve-unknown-fields): what `kubectl apply --validate=strict` refuses."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list):
        items = schema.get("items", {})
        return [e for i, item in enumerate(value) for e in unknown_fields(item, items, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    properties, additional = schema.get("properties", {}), schema.get("additionalProperties")
    errors = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if where == "metadata":  # the object's own ObjectMeta
            errors += [f"metadata.{k}" for k in item if k not in OBJECT_META]
        elif key in properties:
            errors += unknown_fields(item, properties[key], where)
        elif isinstance(additional, dict):
            errors += unknown_fields(item, additional, where)
        elif additional is not True:
            errors.append(where)
    return errors


def strict_errors(doc: dict) -> list[str]:
    return [f'unknown field "{path}"' for path in unknown_fields(doc, schema_of(doc))]


# --------------------------------------------------------------------------- what the manifests run


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a manifest runs on: its own, or for a clusterSelector RayJob the selected RayCluster's."""
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if doc["kind"] == "RayService":
        return doc["spec"]["rayClusterConfig"]
    if "clusterSelector" not in doc["spec"]:
        return doc["spec"]["rayClusterSpec"]
    name = doc["spec"]["clusterSelector"]["ray.io/cluster"]
    clusters = {manifest(m)["metadata"]["name"]: manifest(m) for m in MANIFESTS if manifest(m)["kind"] == "RayCluster"}
    assert name in clusters, f"{doc['metadata']['name']} selects RayCluster {name!r}; shipped: {sorted(clusters)}"
    return clusters[name]["spec"]


def groups(spec: dict) -> list[tuple[str, dict]]:
    """(name, group spec) of the head and of every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def own_groups(doc: dict) -> list[tuple[str, dict]]:
    """The Ray pod groups that a manifest itself defines (none for a clusterSelector RayJob)."""
    return groups(cluster_spec(doc)) if doc["kind"] != "RayJob" or "rayClusterSpec" in doc["spec"] else []


def all_containers(doc: dict) -> list[tuple[str, dict]]:
    """(where, container) of every Ray pod and RayJob submitter that the manifest defines."""
    out = [(f"{name}.{c['name']}", c) for name, g in own_groups(doc) for c in g["template"]["spec"]["containers"]]
    submitter = doc["spec"].get("submitterPodTemplate", {}).get("spec", {}) if doc["kind"] == "RayJob" else {}
    return out + [(f"submitter.{c['name']}", c) for c in submitter.get("containers", [])]


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def quantity(text) -> float:
    """A Kubernetes quantity ("500m", "64Gi", "200G", 8) as a number."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}  # fmt: skip
    return float(number) * scale[suffix]


def pod_resources(group: dict) -> dict[str, float]:
    """What Ray sees on a pod of the group: its Ray container's limits."""
    limits = ray_container(group)["resources"]["limits"]
    return {"CPU": quantity(limits["cpu"]), "GPU": quantity(limits.get("nvidia.com/gpu", 0)),
            "memory": quantity(limits["memory"])}  # fmt: skip


def slots(spec: dict, cpus: float, gpus: float, size: str = "maxReplicas") -> dict[str, int]:
    """How many {CPU: cpus, GPU: gpus} bundles each worker group holds at its maximum (or minimum) size."""
    out = {}
    for name, group in groups(spec)[1:]:
        have = pod_resources(group)
        per_pod = min(int(have["CPU"] // cpus), int(have["GPU"] // gpus) if gpus else 10**9)
        out[name] = per_pod * group[size]
    return out


def pinned_ray() -> Version:
    """The lower bound of pyproject.toml's Ray requirement (`ray[...]>=2.60,<...`)."""
    found = re.search(r'"ray\[[\w,]+\]>=([\d.]+)', (REPO / "pyproject.toml").read_text())
    assert found, "pyproject.toml: no ray[...]>=X requirement"
    return Version(found[1])


def job(doc: dict):
    """(module, --config path, the spec with the entrypoint's overrides applied and validated) of a RayJob's
    `python -m MODULE --config PATH [dotted.key=value ...]`."""
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"] and words[3] == "--config", f"entrypoint: {doc['spec']['entrypoint']}"
    module, config, overrides = words[2], words[4], words[5:]
    assert module in JOB_SPECS, f"{module} is none of the jobs this test knows ({sorted(JOB_SPECS)})"
    return module, config, load(REPO / config, JOB_SPECS[module], overrides)


# --------------------------------------------------------------------------- the CRDs' schemas


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_is_valid_against_its_crd_with_unknown_fields_refused(name):
    doc = manifest(name)
    assert schema_errors(doc) == []
    assert strict_errors(doc) == []


def test_the_crds_pod_templates_are_fully_specified():
    """No part of these CRDs keeps unknown fields, so the strict check reaches into every container."""
    for kind, file in CRD_FILES.items():
        assert "x-kubernetes-preserve-unknown-fields" not in (KUBERAY / "crds" / file).read_text(), kind
    source = (KUBERAY / "crds" / "SOURCE").read_text()
    assert re.match(r"[0-9a-f]{40} ", source) and "ray-project/kuberay" in source  # where and at which commit


MISSPELT = [
    ("raycluster.yaml", ["spec", "headGroupSpec"], "rayStartParams", "rayStartParm", "spec.headGroupSpec.rayStartParm"),
    ("raycluster.yaml", ["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "resources"], "limits",
     "limit", "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limit"),
    ("rayjob-pretrain.yaml", ["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobsFinish",
     "spec.shutdownAfterJobsFinish"),
    ("rayservice.yaml", ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "volumes", 0, "emptyDir"],
     "medium", "meduim", "spec.rayClusterConfig.headGroupSpec.template.spec.volumes[0].emptyDir.meduim"),
]  # fmt: skip


@pytest.mark.parametrize("name, parent, key, typo, path", MISSPELT, ids=[m[-1] for m in MISSPELT])
def test_a_misspelt_field_is_refused_by_its_path(name, parent, key, typo, path):
    doc = copy.deepcopy(manifest(name))
    node = doc
    for part in parent:
        node = node[part]
    node[typo] = node.pop(key)
    assert strict_errors(doc) == [f'unknown field "{path}"']
    assert schema_errors(doc) == []  # what JSON Schema alone lets through


def test_a_wrong_type_or_value_is_refused_by_its_path():
    doc = copy.deepcopy(manifest("raycluster.yaml"))
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    doc["spec"]["authOptions"]["mode"] = "tokens"
    errors = schema_errors(doc)
    assert any(e.startswith("spec.workerGroupSpecs[0].maxReplicas: '8' is not of type 'integer'") for e in errors)
    assert any(e.startswith("spec.authOptions.mode: 'tokens' is not one of") for e in errors), errors


def test_a_key_given_twice_is_refused():
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'rayVersion'"):
        yaml.load("spec:\n  rayVersion: '2.60.0'\n  rayVersion: '2.61.0'\n", Loader=_NoDuplicateKeys)


# --------------------------------------------------------------------------- what a reviewer checks


@pytest.mark.parametrize("name", MANIFESTS)
def test_gpus_are_in_limits_and_requests_equal_limits(name):
    doc = manifest(name)
    for where, container in all_containers(doc):
        limits, requests = container["resources"].get("limits", {}), container["resources"].get("requests", {})
        assert limits.get("cpu") and limits.get("memory"), f"{name}: {where} has no cpu/memory limits"
        assert "nvidia.com/gpu" not in requests or "nvidia.com/gpu" in limits, f"{name}: {where}: GPUs go in limits"
        assert requests == limits, f"{name}: {where}: requests {requests} != limits {limits} (a Guaranteed pod)"
    for _, head in own_groups(doc)[:1]:
        assert pod_resources(head)["GPU"] == 0 and head["rayStartParams"].get("num-gpus") == "0", f"{name}: head GPUs"


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_ray_container_has_shared_memory_for_the_object_store(name):
    from ray._private import ray_constants

    for group_name, group in own_groups(manifest(name)):
        volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in ray_container(group).get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{name}: {group_name} does not mount /dev/shm"
        empty_dir = volumes[mounts["/dev/shm"]].get("emptyDir", {})
        assert empty_dir.get("medium") == "Memory", f"{name}: {group_name}: /dev/shm is not a Memory emptyDir"
        # Ray's default store: 30% of the memory, at most 200 GB, and at most 95% of /dev/shm
        memory, shm = pod_resources(group)["memory"], quantity(empty_dir["sizeLimit"])
        store = min(memory * ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION,
                    ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES)  # fmt: skip
        assert 0.95 * shm >= store, f"{name}: {group_name}: /dev/shm too small for a {store / 2**30:.1f}Gi store"
        assert shm < memory / 2, f"{name}: {group_name}: /dev/shm takes half the pod's memory"


@pytest.mark.parametrize("name", MANIFESTS)
def test_one_image_and_every_ray_version_is_the_pinned_one(name):
    doc, pinned = manifest(name), pinned_ray()
    images = {c["image"] for _, c in all_containers(doc)}
    assert len(images) == 1, f"{name}: several images {images}"
    tag = re.fullmatch(r"(?:.+/)?llava-platform:ray([\d.]+)-py\d+-gpu", images.pop())
    assert tag, f"{name}: not the platform's image (cluster/docker/Dockerfile)"
    assert Version(tag[1]) == pinned, f"{name}: the image runs Ray {tag[1]}, pyproject.toml pins {pinned}"
    assert Version(cluster_spec(doc)["rayVersion"]) == pinned, f"{name}: rayVersion {cluster_spec(doc)['rayVersion']}"
    assert len(re.findall(r"image: (?:&\w+ )?\S*llava-platform:", (KUBERAY / name).read_text())) == 1, (
        f"{name}: name the image once (a YAML anchor) so that it is changed in one place"
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_token_auth_on_every_ray_container_and_submitter(name):
    doc = manifest(name)
    auth = cluster_spec(doc).get("authOptions", {})
    assert auth.get("mode") == "token" and auth.get("secretName"), f"{name}: authOptions {auth}"
    containers = all_containers(doc)
    assert doc["kind"] != "RayJob" or any(w.startswith("submitter.") for w, _ in containers), f"{name}: no submitter"
    for where, container in containers:
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}: {where}: RAY_AUTH_MODE is not token"
        source = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert source == {"name": auth["secretName"], "key": AUTH_TOKEN_KEY}, f"{name}: {where}: token from {source}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_dashboard_is_not_exposed(name):
    head = cluster_spec(manifest(name))["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: head serviceType {head['serviceType']}"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress"), f"{name}: the head's Ingress exposes the dashboard"
    if own_groups(manifest(name)):
        assert "kubectl port-forward svc/" in (KUBERAY / name).read_text(), f"{name}: say how to reach the dashboard"


def test_ray_start_params_are_ray_start_options():
    """The CRD takes any map of strings here: a misspelt option would only fail when the pod starts."""
    from ray.scripts.scripts import start

    options = {opt for param in start.params for opt in param.opts}
    for name in MANIFESTS:
        for group_name, group in own_groups(manifest(name)):
            for key in group.get("rayStartParams", {}):
                assert f"--{key}" in options, f"{name}: {group_name}: rayStartParams {key!r} is no `ray start` option"


# --------------------------------------------------------------------------- drift from the shipped jobs and app


def test_the_rayservice_serves_the_shipped_serve_config():
    """serveConfigV2 is the whole file: its http_options (0.0.0.0:8000) are what KubeRay's serve Service expects."""
    doc = manifest("rayservice.yaml")
    served, shipped = yaml.safe_load(doc["spec"]["serveConfigV2"]), yaml.safe_load(SERVE_CONFIG.read_text())
    assert served == shipped, "rayservice.yaml's serveConfigV2 differs from serve_apps/llava-1.5-7b.yaml: copy it over"

    spec = cluster_spec(doc)
    ports = {p["name"]: p["containerPort"] for p in ray_container(spec["headGroupSpec"]).get("ports", [])}
    assert shipped["http_options"] == {"host": "0.0.0.0", "port": ports.get("serve", 8000)}
    for app in shipped["applications"]:
        model, name = app["args"]["model_deployment"], app["name"]
        fixed = model.get("num_replicas", 1)
        scaling = model.get("autoscaling", {"min_replicas": fixed, "max_replicas": fixed})
        room = slots(spec, model["num_cpus"], model["num_gpus"])
        assert sum(room.values()) >= scaling["max_replicas"], f"{name}: {scaling['max_replicas']} replicas, room {room}"
        warm = slots(spec, model["num_cpus"], model["num_gpus"], size="minReplicas")
        assert sum(warm.values()) >= scaling["min_replicas"], f"{name}: min_replicas {scaling['min_replicas']} wait"
        key_env = app["args"].get("auth", {}).get("api_key_env")
        for group_name, group in groups(spec):  # the ingress replica may run on any of them
            env = {e["name"]: e for e in ray_container(group).get("env", [])}
            assert not key_env or "secretKeyRef" in env.get(key_env, {}).get("valueFrom", {}), (
                f"{group_name}: the ingress reads {key_env}: set it from a Secret on every Ray container"
            )


@pytest.mark.parametrize("name", RAYJOBS)
def test_the_rayjobs_run_shipped_jobs_and_specs(name):
    doc = manifest(name)
    module, config, spec = job(doc)
    assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file(), f"{name}: no module {module}"
    assert config.startswith("jobs/configs/") and (REPO / config).is_file(), f"{name}: no shipped spec {config}"
    if isinstance(spec, TrainJobSpec):
        assert spec.train.stage == module.removeprefix("jobs."), f"{name}: a {spec.train.stage} spec run by {module}"
        assert spec.run.storage_path.startswith("s3://"), f"{name}: checkpoints in {spec.run.storage_path}"
    else:
        assert spec.batch.input.startswith("s3://") and spec.batch.output.startswith("s3://"), f"{name}: {spec.batch}"
    if "clusterSelector" in doc["spec"]:
        assert doc["spec"].get("shutdownAfterJobFinishes") is False, f"{name}: KubeRay never deletes a selected cluster"


@pytest.mark.parametrize("name", RAYJOBS)
def test_the_cluster_holds_what_the_jobs_ask_for(name):
    doc = manifest(name)
    _, _, spec = job(doc)
    cluster = cluster_spec(doc)
    cpus = sum(pod_resources(g)["CPU"] * g["maxReplicas"] for _, g in groups(cluster)[1:])
    if isinstance(spec, TrainJobSpec):
        scaling = spec.scaling
        room = slots(cluster, scaling.cpus_per_worker, scaling.gpus_per_worker or 1)
        assert sum(room.values()) >= scaling.num_workers, f"{name}: {scaling.num_workers} workers, room for {room}"
        hosts = {g: n for g, n in room.items() if n}
        assert all(pod_resources(dict(groups(cluster))[g])["GPU"] == NODE_GPUS for g in hosts), (
            f"{name}: training workers could land on {hosts}: only {NODE_GPUS}-GPU pods should fit them"
        )
        tasks = spec.data.preprocess_workers * scaling.num_workers * spec.data.preprocess_cpus
        held = scaling.num_workers * scaling.cpus_per_worker
        assert cpus - held >= tasks, f"{name}: no CPUs for {tasks:g} data tasks"
    else:
        batch = spec.batch
        room = slots(cluster, batch.cpus_per_actor, batch.gpus_per_actor)
        assert sum(room.values()) >= batch.actors, f"{name}: {batch.actors} actors, room for {room}"
        assert cpus - batch.actors * batch.cpus_per_actor >= batch.preprocess_workers * batch.preprocess_cpus


@pytest.mark.parametrize("name", RAYJOBS)
def test_local_paths_of_the_jobs_are_on_storage_every_pod_mounts(name):
    """Stage 1's driver writes train.output_dir on the head; stage 2's workers load it: one volume, on every pod."""
    doc = manifest(name)
    _, _, spec = job(doc)
    sections = [spec.model, spec.data, spec.train] if isinstance(spec, TrainJobSpec) else [spec.model, spec.batch]
    fields = ("checkpoint", "path", "image_folder", "output_dir", "input", "output")
    paths = [v for s in sections for f in fields if isinstance(v := getattr(s, f, None), str) and v.startswith("/")]
    claims = {d["metadata"]["name"]: d for d in yaml.safe_load_all((KUBERAY / "shared-storage.yaml").read_text())}
    for group_name, group in groups(cluster_spec(doc)):
        volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}
        shared = []
        for mount in ray_container(group).get("volumeMounts", []):
            claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                assert claim in claims, f"{name}: {group_name} mounts claim {claim}, not in shared-storage.yaml"
                assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], f"{claim}: pods on many nodes mount it"
                shared.append(mount["mountPath"])
        for path in paths:
            assert any(Path(path).is_relative_to(m) for m in shared), f"{name}: {group_name} does not mount {path}"


def test_jobs_run_in_the_image_s_working_directory():
    """A Ray job runs where `ray start` ran on the head: the directory holding jobs/ (entrypoints are relative)."""
    dockerfile = REPO / "cluster" / "docker" / "Dockerfile"
    workdirs = re.findall(r"^WORKDIR (\S+)$", dockerfile.read_text(), re.M) if dockerfile.exists() else []
    for name in MANIFESTS:
        for group_name, group in own_groups(manifest(name)):
            workdir = ray_container(group).get("workingDir")
            assert workdir, f"{name}: {group_name}: no workingDir"
            assert not workdirs or workdir == workdirs[-1], f"{name}: {group_name}: {workdir}, not {workdirs[-1]}"
