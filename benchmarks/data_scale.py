"""Does training start quickly, and within memory, on LLaVA-665K-sized data? Measured on this machine.

    python benchmarks/data_scale.py generate --out /work/data_scale                 # 665k records, ~1.1 GB JSON
    python benchmarks/data_scale.py measure --data /work/data_scale [--code /tmp/old-code] [--label old]

`generate` writes a synthetic set shaped like llava_v1_5_mix665k.json: DIR/finetune.json, one
JSON array pretty-printed with indent 2, streamed chunk by chunk (never all records in memory),
and one small PNG per image record under DIR/images/<shard>/<n>.png (1000 records per shard,
DIR/images replaced; distinct paths holding a few hundred distinct pre-encoded images). ~6% of
the records are text-only; 1-8 rounds per record, mostly 1 or 2; answers of 1-120 words in three
styles (VQA single words or phrases, one-sentence answers, long descriptions). Deterministic for
a seed; both cores write. `--bad N` adds N image records whose image is missing or truncated
(off by default). The set's figures go to DIR/stats.json.

`measure` starts its own Ray head as a user would (`ray start --head --block`, in its own process
group, stopped by that group at the end), then runs, each as a subprocess:

  cold     python -m jobs.finetune ... on DIR, a fresh run.storage_path (nothing cached), 3 steps
  cached   the same again with the same storage path and a new run.name (the data check's cache,
           if the code keeps one, is reused; training starts from scratch)
  validate python -m jobs.validate_data on DIR, with no RAY_ADDRESS (it runs in-process or starts
           its own local Ray), after the head is stopped

The training drivers connect to the head with RAY_ADDRESS, so the Ray workers are the raylet's
children and the driver's own memory is what `os.wait4` reports (ru_maxrss). Each run's output is
streamed line by line with the time since launch (its log goes to the results folder). Figures:
- time to the first `[train] step 1/` line, and to the first `[data]` line (the check is done);
  any "N s" the `[data]` lines state; the time Ray Data logs for the driver's first dataset (the
  data check, where it runs as one; not kept for a run that was stopped: stopping logs it too);
- the launched process's peak RSS (wait4, or /proc VmHWM polled every 0.5 s if it was stopped),
  its process tree's peak summed VmRSS, and for training runs the Ray head's process tree's peak
  summed PSS, polled every 5 s (the workers share the object store's pages: PSS counts them once);
- the machine's mean 1-minute load average during the run (others' work shares the CPUs).
A run past --timeout, or one that leaves less than --min-free-gb of the machine's memory
available, is stopped and recorded as not finished, with what it reached.
`--code CHECKOUT` runs the same commands from another checkout, e.g. `git worktree add /tmp/old-code
<commit>`: cwd=CHECKOUT and PYTHONPATH=CHECKOUT/platform:CHECKOUT for the runs and the Ray head (so
its workers import that library too); which llava_platform a process and a Ray task import is
checked first and recorded. One JSON per run goes to --results/<label>-<run>.json, then a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- generate

SHARD = 1000  # records per image folder, and per generation task
TEXT_ONLY = 0.06
ROUNDS = {1: 40, 2: 24, 3: 12, 4: 8, 5: 6, 6: 4, 7: 3, 8: 3}  # weights of rounds (human + gpt pairs) per record
# answer styles, with their weights and word counts: VQA single words / phrases, one sentence, a long description
STYLES = {"vqa": (22, 1, 3), "sentence": (13, 5, 60), "detail": (65, 60, 120)}
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_SIZES = [(24, 24), (32, 32), (48, 32), (32, 48), (64, 48), (48, 64), (64, 64)]
DISTINCT_IMAGES = 280

NOUNS = """man woman child dog cat horse bird car bus truck train bicycle boat plane table chair sofa bed
window door wall floor street road sign tree grass flower sky cloud building house tower bridge river lake
beach wave ball kite umbrella bag hat shirt jacket shoe plate bowl cup bottle glass pizza sandwich cake
apple banana orange phone laptop screen keyboard book clock lamp mirror fence bench field mountain snow
player team game crowd kitchen room shelf box cow sheep elephant giraffe zebra bear skateboard surfboard
sink toilet oven counter vase picture camera helmet racket bat glove statue light pole wheel engine""".split()
ADJECTIVES = """red blue green yellow white black brown gray orange pink purple small large tall short old young
bright dark wooden metal plastic round square empty busy quiet open closed wet dry sunny cloudy clean dirty
striped colorful narrow wide distant nearby modern ancient heavy light soft shiny""".split()
VERBS = """stands sits walks runs holds carries rides looks plays eats drinks waits rests hangs leans flies
parks crosses watches reads shows covers surrounds faces points moves lies grows""".split()
LINKS = """on in near behind under above beside across along around between through with and while the a
the the a its their this that of to from""".split()
WORDS = NOUNS + ADJECTIVES + VERBS + LINKS
SHORT_ANSWERS = NOUNS + ADJECTIVES + "yes no yes no one two three four five six left right top bottom".split()
OPENERS = ["What is the", "What color is the", "Where is the", "How many", "Is there a", "Why is the",
           "What is on the", "Which side of the", "What kind of", "Who is near the", "What does the",
           "Can you see the", "Is the"]  # fmt: skip
DETAIL_ASKS = ["Describe the image in detail.", "What is happening in this picture?", "Explain the scene.",
               "What can you tell me about the", "Write a short description of the", "What might the"]  # fmt: skip


def words(rng: random.Random, n: int) -> str:
    """n words of running text, in sentences of 6-16 words."""
    out, left = [], n
    while left:
        k = min(left, rng.randint(6, 16))
        sentence = rng.choices(WORDS, k=k)
        sentence[0] = sentence[0].capitalize()
        out.append(" ".join(sentence) + ".")
        left -= k
    return " ".join(out)


def round_text(rng: random.Random, style: str) -> tuple[str, str, int]:
    """One (question, answer, answer word count) in a record's style."""
    _, low, high = STYLES[style]
    n = rng.randint(low, high)
    if style == "vqa":
        question = f"{rng.choice(OPENERS)} {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))}?{VQA_SUFFIX}"
        return question, " ".join(rng.choices(SHORT_ANSWERS, k=n)).capitalize(), n
    opener = rng.choice(DETAIL_ASKS if style == "detail" else OPENERS)
    question = opener if opener.endswith(".") else f"{opener} {' '.join(rng.choices(WORDS, k=rng.randint(4, 18)))}?"
    return question, words(rng, n), n


def record_json(record_id: str, image: str | None, turns: list[tuple[str, str]]) -> str:
    """One record exactly as json.dumps([..], indent=2) writes it inside the array (without the comma)."""
    lines = ["  {", f'    "id": {json.dumps(record_id)},']
    if image is not None:
        lines.append(f'    "image": {json.dumps(image)},')
    lines.append('    "conversations": [')
    for t, (speaker, text) in enumerate(turns):
        lines += ["      {", f'        "from": "{speaker}",', f'        "value": {json.dumps(text)}',
                  "      }," if t < len(turns) - 1 else "      }"]  # fmt: skip
    lines += ["    ]", "  }"]
    return "\n".join(lines)


def encoded_images(seed: int) -> list[bytes]:
    """A few hundred distinct small PNGs (blocks of colour, so they stay a few hundred bytes each)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pngs = []
    for i in range(DISTINCT_IMAGES):
        width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        blocks = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        buffer = BytesIO()
        Image.fromarray(blocks).resize((width, height), Image.NEAREST).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


_PNGS: list[bytes] = []  # per generation process, set by its initializer


def _init_worker(pngs: list[bytes]) -> None:
    _PNGS[:] = pngs


def write_shard(task: tuple[Path, int, int, int, dict[int, str]]) -> tuple[str, Counter, Counter, int, int]:
    """Records [shard*SHARD, +count): their JSON text, and their images written under out/images/<shard>/.
    Returns (text, rounds counts, answer word counts, text-only records, files written)."""
    out, seed, shard, count, bad = task
    rng = random.Random(f"{seed}/{shard}")
    folder = out / "images" / f"{shard:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    rounds_seen, answer_words, text_only, files, texts = Counter(), Counter(), 0, 0, []
    for n in range(shard * SHARD, shard * SHARD + count):
        has_image = rng.random() >= TEXT_ONLY or n in bad
        style = rng.choices(list(STYLES), weights=[w for w, _, _ in STYLES.values()])[0]
        rounds = rng.choices(list(ROUNDS), weights=list(ROUNDS.values()))[0]
        turns = []
        for r in range(rounds):
            question, answer, n_words = round_text(rng, style)
            if r == 0 and has_image:
                question = "<image>\n" + question
            turns += [("human", question), ("gpt", answer)]
            answer_words[n_words] += 1
        rounds_seen[rounds] += 1
        image = f"images/{shard:04d}/{n}.png" if has_image else None
        png = _PNGS[rng.randrange(len(_PNGS))]
        if image is None:
            text_only += 1
        elif bad.get(n) != "missing":
            (out / image).write_bytes(png[: len(png) // 2] if bad.get(n) == "truncated" else png)
            files += 1
        texts.append(record_json(f"{n:012d}", image, turns))
    return ",\n".join(texts), rounds_seen, answer_words, text_only, files


def bad_records(records: int, n: int, seed: int) -> dict[int, str]:
    """n record positions whose image will be missing or truncated (alternately)."""
    chosen = sorted(random.Random(f"{seed}/bad").sample(range(records), n))
    return {p: ("missing", "truncated")[i % 2] for i, p in enumerate(chosen)}


def percentile(counts: Counter, q: float) -> int:
    """The q-th percentile of a {value: count} histogram."""
    target, seen = q / 100 * sum(counts.values()), 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= target:
            return value
    return 0


def word_summary(counts: Counter) -> dict:
    """Answers, their mean and percentile word counts, and the share of 1-3 word answers."""
    answers = sum(counts.values())
    return {"answers": answers, "mean": round(sum(k * v for k, v in counts.items()) / answers, 1),
            **{f"p{q}": percentile(counts, q) for q in (10, 25, 50, 75, 90, 100)},
            "share_1_to_3": round(sum(v for k, v in counts.items() if k <= 3) / answers, 3)}  # fmt: skip


def generate(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    shutil.rmtree(out / "images", ignore_errors=True)  # a rerun's missing images must not be an earlier run's files
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bad = bad_records(args.records, args.bad, args.seed)
    shards = range((args.records + SHARD - 1) // SHARD)
    tasks = [(out, args.seed, s, min(SHARD, args.records - s * SHARD),
              {p: kind for p, kind in bad.items() if p // SHARD == s}) for s in shards]  # fmt: skip
    rounds, answer_words, text_only, files = Counter(), Counter(), 0, 0
    with open(out / "finetune.json", "w", encoding="utf-8") as f, multiprocessing.Pool(
        args.processes, initializer=_init_worker, initargs=(encoded_images(args.seed),)
    ) as pool:
        f.write("[\n")
        for s, (text, r, a, t, n) in enumerate(pool.imap(write_shard, tasks)):  # in shard order
            f.write(("" if s == 0 else ",\n") + text)
            rounds.update(r)
            answer_words.update(a)
            text_only, files = text_only + t, files + n
        f.write("\n]\n")
    stats = {"records": args.records, "seed": args.seed, "text_only": text_only,
             "text_only_share": round(text_only / args.records, 4), "rounds": dict(sorted(rounds.items())),
             "answer_words": word_summary(answer_words), "json_bytes": (out / "finetune.json").stat().st_size,
             "image_files": files, "bad": dict(Counter(bad.values())),
             "seconds": round(time.perf_counter() - started, 1), "processes": args.processes}  # fmt: skip
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    print(f"{out / 'finetune.json'}: {stats['json_bytes'] / 1e9:.2f} GB, {files} images, {stats['seconds']} s")


# --------------------------------------------------------------------------- measure

POLL_S = 0.5
CLUSTER_POLL_S = 5.0  # the Ray head's PSS: ~80 ms of smaps_rollup per poll, so less often
KIB_PER_GB = 1024**2  # /proc and ru_maxrss count KiB; the figures are GiB, written GB
FIRST_STEP = "[train] step 1/"
STATED_SECONDS = re.compile(r"(\d+(?:\.\d+)?) ?s\b")
# the driver's own Ray Data log (not a worker's "(pid=...)" line): its first dataset is the data check
DRIVER_DATASET = re.compile(r"^\d{4}-.* Dataset \S+ execution finished in (\d+(?:\.\d+)?) seconds")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(code: Path | None) -> dict[str, str]:
    """A user's shell: the venv's tools first on PATH, Ray's auth off; with `code`, that checkout's library first."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    if code is not None:
        env["PYTHONPATH"] = f"{code / 'platform'}:{code}"
    return env


class RayHead:
    """`ray start --head --block` in its own process group (stopped by that group), on free ports and a
    short temp dir (Ray's socket paths must stay within 107 bytes). Its Ray workers inherit `env`: with
    --code, its PYTHONPATH is what makes them import that checkout's library too."""

    def __init__(self, num_cpus: int, log: Path, env: dict[str, str]):
        self.temp_dir = tempfile.mkdtemp(prefix="ds_ray", dir="/tmp")
        self.address = f"127.0.0.1:{free_port()}"
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                   f"--num-cpus={num_cpus}", f"--port={self.address.split(':')[1]}", f"--temp-dir={self.temp_dir}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}"]  # fmt: skip
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip
        deadline = time.time() + 120
        while "--block" not in log.read_text():  # printed once the node is up
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def proc_status(pid: int) -> dict[str, int]:
    """/proc/<pid>/status's memory lines in KiB (empty once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.partition(":") for line in text.splitlines())
    return {k: int(v.split()[0]) for k, _, v in fields if k.startswith("Vm")}


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


def process_tree(root: int) -> list[int]:
    """root and all its descendants, from /proc/*/stat's parent ids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def mem_available_gb() -> float:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable:"))
    return int(line.split()[1]) / KIB_PER_GB


def stream(pipe, started: float, log: Path, seen: dict[str, float], data_lines: list[str]) -> None:
    """Copy the process's output to `log` with the seconds since launch; note when the markers first appear."""
    with open(log, "w", encoding="utf-8") as out:
        for raw in pipe:
            at = time.perf_counter() - started
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.write(f"{at:9.2f} | {line}\n")
            out.flush()
            if FIRST_STEP in line:
                seen.setdefault("first_step", at)
            if (dataset := DRIVER_DATASET.match(line)) and "first_dataset" not in seen:
                seen["first_dataset"] = float(dataset[1])
            if line.startswith("[data]"):
                seen.setdefault("first_data_line", at)
                data_lines.append(f"{at:.1f} s: {line}")


def stop_tree(pid: int, pids: list[int]) -> None:
    """SIGTERM the launched process's group, then SIGKILL whatever is left of the tree it had (by pid)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + 15
    while time.time() < deadline and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.2)  # WNOWAIT: the caller reaps it (wait4, for its rusage)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_measured(command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float, min_free_gb: float,
                 cluster: RayHead | None = None) -> dict:  # fmt: skip
    """Launch `command` in its own process group and follow it to its end: output, markers, memory."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    seen: dict[str, float] = {}
    data_lines: list[str] = []
    reader = threading.Thread(target=stream, args=(process.stdout, started, log, seen, data_lines))
    reader.start()
    hwm = tree_peak = cluster_peak = 0
    stopped, tree, reaped = None, [process.pid], (0, 0, None)
    loads, cluster_polled = [os.getloadavg()[0]], 0.0
    try:
        while (reaped := os.wait4(process.pid, os.WNOHANG))[0] == 0:
            hwm = max(hwm, proc_status(process.pid).get("VmHWM", 0))
            tree = process_tree(process.pid)
            tree_peak = max(tree_peak, sum(proc_status(p).get("VmRSS", 0) for p in tree))
            elapsed = time.perf_counter() - started
            if cluster is not None and elapsed - cluster_polled >= CLUSTER_POLL_S:
                cluster_peak = max(cluster_peak, sum(pss_kib(p) for p in process_tree(cluster.process.pid)))
                cluster_polled = elapsed
            loads.append(os.getloadavg()[0])
            if elapsed > timeout:
                stopped = f"did not finish within {timeout:.0f} s"
                break
            if mem_available_gb() < min_free_gb:
                stopped = f"stopped at {elapsed:.0f} s: less than {min_free_gb} GB of memory available"
                break
            time.sleep(POLL_S)
    finally:
        if reaped[0] == 0:  # stopped, or this benchmark was interrupted: stop the run too
            stop_tree(process.pid, tree)
            reaped = os.wait4(process.pid, 0)
    _, status, usage = reaped
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    wall = time.perf_counter() - started
    reader.join(timeout=60)  # a leftover process holding the pipe must not hang the benchmark
    stated = [float(x) for line in data_lines for x in STATED_SECONDS.findall(line.split(": ", 1)[1])]
    return {
        "command": command, "cwd": str(cwd), "log": str(log), "exit_code": process.returncode,
        "finished": stopped is None, "stopped": stopped, "wall_s": round(wall, 1),
        "peak_rss_gb": round(max(usage.ru_maxrss, hwm) / KIB_PER_GB, 2),
        "tree_peak_rss_gb": round(tree_peak / KIB_PER_GB, 2),
        "cluster_peak_pss_gb": round(cluster_peak / KIB_PER_GB, 2) if cluster is not None else None,
        "first_data_line_s": round(seen["first_data_line"], 1) if "first_data_line" in seen else None,
        "check_s_stated": stated or None,
        "first_ray_dataset_s": seen.get("first_dataset") if stopped is None else None,
        "first_step_s": round(seen["first_step"], 1) if "first_step" in seen else None,
        "data_lines": data_lines,
        "load_avg_mean": round(sum(loads) / len(loads), 1),
    }  # fmt: skip


def finetune_command(data: Path, run_dir: Path, storage: Path, name: str, workers: int,
                     preprocess_workers: int) -> list[str]:  # fmt: skip
    overrides = {
        "model.checkpoint": "jobs/assets/tiny-base", "data.path": data / "finetune.json", "data.image_folder": data,
        "data.max_length": 2048, "data.cache_encoded": "false", "data.preprocess_workers": preprocess_workers,
        "data.preprocess_cpus": 0.5, "train.output_dir": run_dir / "output", "train.max_steps": 3,
        "train.log_every_steps": 1, "train.global_batch_size": 16, "train.micro_batch_size": 4,
        "train.optimizer": "adamw", "scaling.num_workers": workers, "scaling.cpus_per_worker": 0.5,
        "scaling.torch_threads": 1, "run.storage_path": storage, "run.name": name,
    }  # fmt: skip
    return [sys.executable, "-m", "jobs.finetune", "--config", "jobs/configs/tiny_finetune.yaml",
            *(f"{k}={v}" for k, v in overrides.items())]  # fmt: skip


def imported_library(code: Path, env: dict[str, str]) -> str:
    """Where `import llava_platform` resolves from `code` with `env`; with RAY_ADDRESS, in a task on that cluster."""
    one_liner = "import llava_platform; print(llava_platform.__file__)"
    if "RAY_ADDRESS" in env:
        one_liner = ("import ray; ray.init(logging_level='ERROR'); "
                     "print(ray.get(ray.remote(lambda: __import__('llava_platform').__file__).remote()))")  # fmt: skip
    library = subprocess.run([sys.executable, "-c", one_liner], cwd=code, env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    if not library.startswith(str(code) + os.sep):
        raise SystemExit(f"llava_platform is imported from {library}, not from {code}")
    return library


def measure(args: argparse.Namespace) -> None:
    data = Path(args.data).resolve()
    code = Path(args.code).resolve() if args.code else REPO
    env = user_env(code if args.code else None)
    library = imported_library(code, env)
    label = args.label or ("current" if not args.code else code.name)
    results = Path(args.results).resolve() / label
    runs = [r.strip() for r in args.runs.split(",")]
    if "cold" in runs:
        shutil.rmtree(results / "storage", ignore_errors=True)  # a fresh storage path: nothing cached
    results.mkdir(parents=True, exist_ok=True)
    stats = data / "stats.json"
    common = {"label": label, "code": str(code), "library": library, "data": str(data),
              "records": json.loads(stats.read_text())["records"] if stats.exists() else None}  # fmt: skip
    out = []
    if {"cold", "cached"} & set(runs):
        head = RayHead(args.num_cpus, results / "ray_head.log", env)
        try:
            imported_library(code, env | {"RAY_ADDRESS": head.address})
            for run in [r for r in ("cold", "cached") if r in runs]:
                shutil.rmtree(results / run, ignore_errors=True)  # its train.output_dir
                name = f"data-scale-{run}-{time.strftime('%Y%m%d-%H%M%S')}"  # never resumes an earlier run
                command = finetune_command(data, results / run, results / "storage", name, args.workers,
                                           args.preprocess_workers)  # fmt: skip
                print(f"[{label}] {run}: {' '.join(command)}", flush=True)
                out.append(common | {"run": run, "ray_address": head.address} | run_measured(
                    command, code, env | {"RAY_ADDRESS": head.address}, results / f"{run}.log", args.timeout,
                    args.min_free_gb, head))  # fmt: skip
                save(out[-1], results)
        finally:
            head.stop()
    if "validate" in runs:
        command = [sys.executable, "-m", "jobs.validate_data", "--data", str(data / "finetune.json"), "--image-folder",
                   str(data), "--template", "mistral_instruct", "--max-length", "2048"]  # fmt: skip
        print(f"[{label}] validate: {' '.join(command)}", flush=True)
        out.append(common | {"run": "validate"} | run_measured(command, code, env, results / "validate.log",
                                                               args.timeout, args.min_free_gb))  # fmt: skip
        save(out[-1], results)
    print(table(out))


def save(result: dict, results: Path) -> None:
    path = results.parent / f"{result['label']}-{result['run']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    state = "finished" if result["finished"] else result["stopped"]
    print(f"  exit {result['exit_code']} ({state}) in {result['wall_s']} s, peak RSS {result['peak_rss_gb']} GB: "
          f"{path}")
    for line in result["data_lines"]:
        print(f"  {line}")


COLUMNS = {  # table header: the result's field
    "label": "label", "run": "run", "records": "records", "peak RSS (GB)": "peak_rss_gb",
    "tree peak RSS (GB)": "tree_peak_rss_gb", "Ray head PSS (GB)": "cluster_peak_pss_gb",
    "first [data] line (s)": "first_data_line_s", "seconds stated in [data]": "check_s_stated",
    "first Ray dataset (s)": "first_ray_dataset_s", "first step (s)": "first_step_s", "wall (s)": "wall_s",
    "load avg": "load_avg_mean",
}  # fmt: skip


def table(results: list[dict]) -> str:
    def cell(value) -> str:
        return "-" if value is None else ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    rows = ["| " + " | ".join([*COLUMNS, "status"]) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        status = "ok" if r["finished"] and r["exit_code"] == 0 else r["stopped"] or f"exit {r['exit_code']}"
        rows.append("| " + " | ".join([*(cell(r[field]) for field in COLUMNS.values()), status]) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a synthetic LLaVA-665K-shaped set")
    gen.add_argument("--out", required=True, help="folder for finetune.json, images/ and stats.json")
    gen.add_argument("--records", type=int, default=665_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--bad", type=int, default=0, help="image records whose image is missing or truncated")
    gen.add_argument("--processes", type=int, default=os.cpu_count(), help="processes writing shards")
    run = commands.add_parser("measure", help="time and memory of training's start and of jobs.validate_data")
    run.add_argument("--data", required=True, help="a folder written by generate")
    run.add_argument("--code", default=None, help="a checkout to run instead of this one (e.g. a git worktree)")
    run.add_argument("--label", default=None, help="names the results (default: current, or the checkout's name)")
    run.add_argument("--workers", type=int, default=2, help="training workers")
    run.add_argument("--preprocess-workers", type=int, default=1,
                     help="data.preprocess_workers (per training worker; the code before the streamed check: in all)")
    run.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs the Ray head offers")
    run.add_argument("--runs", default="cold,cached,validate", help="which of cold, cached, validate to run")
    run.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped and recorded as such")
    run.add_argument("--min-free-gb", type=float, default=2.0, help="stop a run when less memory is available")
    run.add_argument("--results", default="/tmp/data_scale_results", help="one JSON per run, and the logs")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # runs the clean-ups: runs, Ray head
        measure(args)


if __name__ == "__main__":
    main()
