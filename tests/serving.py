"""A Serve app deployed the way users deploy one: `serve deploy config.yaml` to a `ray start --head` cluster.

    app = ServedApp(cluster, config, root)     # waits until the application is RUNNING
    app.url                                     # http://127.0.0.1:<port>
    app.status()["applications"]["llava"]["deployments"]["LlavaModel"]["replica_states"]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from conftest import REPO, free_port, ray_env

SERVE = str(Path(sys.executable).parent / "serve")


class ServedApp:
    APP = "llava"

    def __init__(self, cluster, config: dict, root: Path, timeout: float = 240):
        self.cluster = cluster
        self.port = free_port()
        config = dict(config, http_options={"host": "127.0.0.1", "port": self.port})
        self.config_path = root / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://127.0.0.1:{self.port}"
        self._serve("deploy", str(self.config_path))
        try:
            self.wait_running(timeout)
        except BaseException:
            self.shutdown()  # a failed deploy leaves no app holding the shared cluster's CPUs
            raise

    def _serve(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([SERVE, *args, "--address", self.cluster.dashboard], cwd=REPO, env=ray_env(),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"serve {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def status(self) -> dict:
        return yaml.safe_load(self._serve("status"))

    def replicas(self, deployment: str = "LlavaModel") -> dict[str, int]:
        """Replica states of a deployment, e.g. {"RUNNING": 2}."""
        app = self.status()["applications"].get(self.APP) or {}
        return (app.get("deployments", {}).get(deployment) or {}).get("replica_states", {})

    def wait_running(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            app = self.status()["applications"].get(self.APP) or {}
            if app.get("status") == "RUNNING":
                self.wait_http(deadline - time.time())
                return
            if app.get("status") == "DEPLOY_FAILED":
                raise RuntimeError(f"the app failed to deploy: {app.get('message')}")
            time.sleep(1)
        raise TimeoutError(f"the app is not RUNNING after {timeout} s: {self.status()}")

    def wait_http(self, timeout: float) -> None:
        """Until /health answers {"status": "ok"} (the proxy may take a moment after RUNNING)."""
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if json.load(r).get("status") == "ok":
                        return
            except (OSError, ValueError):
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{self.url}/health did not answer ok within {timeout:.0f} s")
            time.sleep(0.5)

    def shutdown(self) -> None:
        self._serve("shutdown", "--yes")


def tiny_config(**args_overrides) -> dict:
    """serve_apps/tiny.yaml with its args updated (top-level keys of args replaced)."""
    config = yaml.safe_load((REPO / "serve_apps" / "tiny.yaml").read_text())
    app = config["applications"][0]
    app["args"] = {**app["args"], **args_overrides}
    return config


def metrics_text(cluster) -> str:
    """Every node's Prometheus export, joined (Ray's metrics agents, the ports `ray start` chose)."""
    import ray

    texts = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                texts.append(r.read().decode())
    return "\n".join(texts)
