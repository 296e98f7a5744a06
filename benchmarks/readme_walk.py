"""A new user's first hour, timed: a fresh clone of this repository, then the README's commands in order.

    .venv/bin/python benchmarks/readme_walk.py --clone /tmp/walk [--json walk.json]     # the platform's venv: openai

 1. install    python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e .
 2. demo       .venv/bin/python -m jobs.demo --out demo_output
 3. data       python -m jobs.make_synthetic_data --out data/synthetic
 4. batch      python -m jobs.batch_infer --config jobs/configs/tiny_batch.yaml
 5. evaluate   python -m jobs.evaluate --config jobs/configs/eval/scenes.yaml
 6. ray head   ray start --head
 7. pipeline   python -m jobs.pipeline --config jobs/configs/tiny_pipeline.yaml
 8. ask        the openai client at http://127.0.0.1:8000/v1, a held-out scene and its question

Every command is looked up in README.md first (the walk fails if the README no longer says it), then run in the
clone with the venv first on PATH, as in an activated venv. Ray's token comes from RAY_AUTH_TOKEN (the README's
alternative to ~/.ray/auth_token, which the walk leaves alone). The head runs with --block in its own process
group and is stopped by signalling that group, not with `ray stop` (which stops every Ray on the machine); it
takes Ray's default ports (6379, 8265) and Serve's 8000, so nothing else may hold them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start --head` records this machine's cluster
INSTALL = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ."
STEPS = [
    ("install", INSTALL),
    ("demo", ".venv/bin/python -m jobs.demo --out demo_output"),
    ("data", "python -m jobs.make_synthetic_data --out data/synthetic"),
    ("batch", "python -m jobs.batch_infer --config jobs/configs/tiny_batch.yaml"),
    ("evaluate", "python -m jobs.evaluate --config jobs/configs/eval/scenes.yaml"),
    ("pipeline", "python -m jobs.pipeline --config jobs/configs/tiny_pipeline.yaml"),
]


def readme_says(command: str) -> None:
    readme = (REPO / "README.md").read_text()
    if command not in readme:
        raise SystemExit(f"README.md no longer says `{command}`: update the walk with the README")


def run(name: str, command: str, clone: Path, env: dict[str, str], seconds: dict[str, float]) -> str:
    print(f"\n== {name}: {command}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)  # fmt: skip
    seconds[name] = round(time.perf_counter() - started, 1)
    print("\n".join(done.stdout.splitlines()[-6:]), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stdout[-4000:]}")
    print(f"-- {name}: {seconds[name]:.0f} s", flush=True)
    return done.stdout


def start_head(clone: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(clone / "ray_head.log", "w")
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--disable-usage-stats"], cwd=clone, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while "--block" not in (clone / "ray_head.log").read_text():  # printed once the node is up
        if head.poll() is not None or time.time() > deadline:
            raise SystemExit(f"ray start --head failed:\n{(clone / 'ray_head.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return head


def forget_head(record: str | None) -> None:
    """`ray stop` removes the head's record of this machine's cluster; a head stopped by signal leaves it, and Ray's
    clients without an address (the state API, `ray status`) would then wait for that dead head."""
    if record is not None and CURRENT_CLUSTER.exists() and CURRENT_CLUSTER.read_text() == record:
        CURRENT_CLUSTER.unlink()


def ask(clone: Path) -> str:
    """The served model's answer to the first held-out question, through the openai client."""
    import openai  # noqa: F811 (checked at the start)

    question = json.loads((clone / "data/synthetic/questions.jsonl").read_text().splitlines()[0])
    image = base64.b64encode((clone / "data/synthetic" / question["image"]).read_bytes()).decode()
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="llava-tiny", max_tokens=8, temperature=0, messages=[{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                                    {"type": "text", "text": question["text"]}]}])  # fmt: skip
    return f"{question['text']!r} -> {reply.choices[0].message.content!r} (gold {question.get('answer')!r})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clone", type=Path, required=True, help="an empty or missing folder for the fresh clone")
    parser.add_argument("--json", type=Path, help="also write the seconds of every step here")
    args = parser.parse_args()
    try:
        import openai  # noqa: F401 (the last step's client)
    except ImportError:
        raise SystemExit("run the walk with the platform's venv, which has openai: .venv/bin/python "
                         "benchmarks/readme_walk.py ...") from None
    for _, command in STEPS:
        readme_says(command)
    readme_says("ray start --head")
    clone = args.clone.resolve()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = clone / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{venv}:{os.environ['PATH']}", VIRTUAL_ENV=str(clone / ".venv"),
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONUNBUFFERED="1")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    seconds: dict[str, float] = {}
    outputs = {name: run(name, command, clone, env, seconds) for name, command in STEPS[:-1]}
    started = time.perf_counter()
    head = start_head(clone, env)
    record = CURRENT_CLUSTER.read_text() if CURRENT_CLUSTER.exists() else None
    seconds["ray head"] = round(time.perf_counter() - started, 1)
    try:
        outputs["pipeline"] = run("pipeline", STEPS[-1][1], clone, env, seconds)
        started = time.perf_counter()
        answer = ask(clone)
        seconds["ask"] = round(time.perf_counter() - started, 1)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the `ray start --block` this walk launched, and its node's processes
        head.wait(timeout=60)
        forget_head(record)
    print(f"\nserved model: {answer}")
    for name in ("demo", "evaluate", "pipeline"):
        lines = [line for line in outputs[name].splitlines() if "accuracy" in line or "[pipeline] served" in line]
        print(f"{name}: {lines[-1] if lines else '(no score line)'}")
    print("seconds: " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()) + f"; all {sum(seconds.values()):.0f}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "answer": answer}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
