"""Batch inference throughput: the seed documents' one-image-at-a-time loop against the Ray Data job
(`llava_platform.batch.job.run_batch`), on the same model and the same synthetic questions, with the job's
start-up cost and its memory at two sizes.

    python benchmarks/batch_throughput.py                        # the job on 5000 and 500 rows, the loop on 500
    python benchmarks/batch_throughput.py --rows 200 --loop-rows 50 --out /tmp/bt.json      # a quick check

Measured:
  loop          the checkpoint loaded once with plain transformers (AutoProcessor, LlavaForConditionalGeneration),
                then per question: the checkpoint's chat template (processor.apply_chat_template), PIL.Image.open,
                processor(...), model.generate, decode; torch threads = --cpus. Its rate is measured on the first
                --loop-rows questions (default min(rows, 500)) to keep the run short; model loading is timed apart
                and its end-to-end time for --rows rows is load + rows / rate.
  job           jobs/configs/tiny_batch.yaml as shipped (its batch size, actor and preprocessing CPUs; --batch-size and
                --actor-cpus override them) on a fresh local Ray (ray.init(num_cpus=--ray-cpus), one per size), with
                small part files (batch.rows_per_part).
                end to end: rows / run_batch's wall time (Ray already started; ray.init timed apart).
                start-up:   seconds from run_batch's call to its first answer (the summary's first_row_s).
                steady:     rows/s once the pipeline is full: the rows of every part after the first, over the time from
                            the first part file's commit to the last's (their mtimes; a part is --rows-per-part rows,
                            a multiple of the batch size, so a part ends where a model batch does).
  memory        peak RSS, sampled every 0.25 s during each job run, of this process (the driver) and of each
                BatchPredictor actor (pid from ray.util.state.list_actors, on this run's Ray), with its private (RssAnon)
                and shared-memory (RssShmem: object store pages read) parts; the job runs at --rows and --rows/10 (the
                goal: flat). The driver runs both sizes, --rows/10 first: "before" is its memory when the run began.
  agreement     the loop's answers against the job's (the --rows run) on the loop's questions, whitespace stripped.

Both sides decode greedily with --max-new-tokens (16) new tokens, in float32 on CPU. The loop takes every core
(torch threads = --cpus); the job shares them between its model actor and its preprocessing tasks, as the spec
sizes them for a 2-core machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
BUSY_CORES = 0.25  # other processes' mean CPU use during a run above which its rates are flagged


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000, help="questions the job answers (it also runs on rows/10)")
    parser.add_argument("--loop-rows", type=int, help="questions the loop answers to measure its rate (default: "
                        "min(rows, 500))")  # fmt: skip
    parser.add_argument("--skip-loop", action="store_true", help="the job alone (no ratios, no agreement)")
    parser.add_argument("--batch-size", type=int, help="batch.batch_size: rows a model call answers (default: the spec's)")
    parser.add_argument("--rows-per-part", type=int, help="batch.rows_per_part (default: 4 x batch size)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="the loop's torch threads (default: every core)")
    parser.add_argument("--actor-cpus", type=float, help="batch.cpus_per_actor (default: the spec's)")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="logical CPUs of the local Ray (default: "
                        "the cores, as a local Ray counts them)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--config", default=str(REPO / "jobs/configs/tiny_batch.yaml"), help="the job's spec")
    parser.add_argument("--checkpoint", default=str(REPO / "jobs/assets/tiny-base"), help="the model, both sides")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/batch_throughput.json"), help="JSON results")
    args = parser.parse_args()
    args.loop_rows = min(args.rows, 500) if args.loop_rows is None else min(args.loop_rows, args.rows)
    args.rows_per_part = args.rows_per_part or 4 * (args.batch_size or 64)
    if args.rows < 10:
        parser.error(f"--rows {args.rows}: at least 10 (the job also runs on rows/10)")
    return args


def write_questions(folder: Path, rows: int) -> tuple[Path, Path]:
    """Synthetic held-out scenes (PNG images) and LLaVA question files of `rows` and rows/10 of them."""
    from llava_platform.data.synthetic import generate

    paths = generate(folder, num_train=10, num_test=rows, seed=0)
    lines = paths.questions.read_text().splitlines(keepends=True)
    small = folder / f"questions_{rows // 10}.jsonl"
    small.write_text("".join(lines[: rows // 10]))
    return paths.questions, small


class OtherCpu:
    """The CPU that processes other than this one and its descendants (the local Ray) used over a window, in cores
    (CPU seconds / wall seconds): a busy machine's figures are flagged, not taken as the platform's."""

    cores: float = 0.0

    @staticmethod
    def _machine_s() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _own_s() -> dict[int, float]:
        times = {}
        for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                t = process.cpu_times()
                times[process.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return times

    def __enter__(self) -> OtherCpu:
        self.started, self.machine, self.own = time.monotonic(), self._machine_s(), self._own_s()
        return self

    def __exit__(self, *exc) -> None:
        own = sum(s - self.own.get(pid, 0.0) for pid, s in self._own_s().items())
        self.cores = max(0.0, self._machine_s() - self.machine - own) / max(1e-9, time.monotonic() - self.started)


# ---------------------------------------------------------------------------------------------------- the loop


def run_loop(checkpoint: str, questions: Path, image_folder: Path, rows: int, threads: int, max_new_tokens: int) -> dict:
    """The seed documents' loop: one question at a time through plain transformers. Returns its figures and answers."""
    import torch
    import transformers
    from PIL import Image

    from llava_platform.config import ModelSpec
    from llava_platform.data.templates import Message, get_template
    from llava_platform.model.builder import model_template

    torch.set_num_threads(threads)
    started = time.perf_counter()
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    load_s = time.perf_counter() - started

    records = [json.loads(line) for line in questions.read_text().splitlines()[:rows]]
    template = get_template(model_template(ModelSpec(checkpoint=checkpoint)))  # the job's (llava_platform.yaml)
    answers, prompts_match = {}, 0
    started = time.perf_counter()
    with OtherCpu() as others, torch.inference_mode():
        for record in records:
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["text"]}]}]
            prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
            image = Image.open(image_folder / record["image"]).convert("RGB")
            inputs = processor(text=[prompt], images=[image], return_tensors="pt")
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # (1, T + new)
            answers[str(record["question_id"])] = processor.decode(output[0, inputs["input_ids"].shape[1] :],
                                                                   skip_special_tokens=True).strip()  # fmt: skip
    seconds = time.perf_counter() - started
    for record in records:  # outside the timing: the plain prompt against the platform's template
        ours = template.render([Message("user", "<image>\n" + record["text"])], add_generation_prompt=True).text
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["text"]}]}]
        prompts_match += processor.apply_chat_template(conversation, add_generation_prompt=True) == ours
    del model, processor
    return {"rows": rows, "load_s": load_s, "seconds": seconds, "rows_per_s": rows / seconds, "torch_threads": threads,
            "other_processes_cores": others.cores,
            "prompt": "processor.apply_chat_template (the checkpoint's chat_template.jinja)",
            "prompts_equal_to_template": prompts_match, "answers": answers}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the job


def memory_of(pid: int) -> dict[str, int]:
    """A process's resident memory, bytes: rss, and of it anon (its private heap: what a leak grows) and shmem (shared
    memory mapped in: for a Ray worker, the object store's pages it has read, counted again in every reader)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except FileNotFoundError:
        if not psutil.pid_exists(pid):
            raise psutil.NoSuchProcess(pid) from None
        return {"rss": psutil.Process(pid).memory_info().rss}  # no /proc: RSS alone
    keys = {"rss": "VmRSS", "anon": "RssAnon", "shmem": "RssShmem"}
    return {name: int(fields[key].split()[0]) * 1024 for name, key in keys.items() if key in fields}  # "1234 kB"


def peak_of(peaks: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    return {k: max(v, peaks.get(k, 0)) for k, v in now.items()}


@dataclass
class MemorySampler:
    """Peak memory (memory_of) of this process (the driver) and of each BatchPredictor actor, sampled in a thread."""

    gcs_address: str  # this run's Ray: the state API's own discovery errs when the machine runs more than one
    every_s: float = 0.25
    driver_before: dict[str, int] = field(default_factory=dict)
    driver_peak: dict[str, int] = field(default_factory=dict)
    actor_peaks: dict[int, dict[str, int]] = field(default_factory=dict)  # pid -> peaks
    actor_seen_s: float | None = None  # seconds from the start to the first actor's process found
    actor_ready_s: float | None = None  # ... to the first actor ALIVE (its __init__, the model load, done)
    lookup_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self.driver_before = self.driver_peak = memory_of(os.getpid())
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _actor_pids(self) -> set[int]:
        from ray.util.state import list_actors

        try:
            actors = list_actors(address=self.gcs_address, raise_on_missing_output=False, timeout=5)
        except Exception as e:  # the state API is the dashboard's: a slow start answers later
            self.lookup_errors.append(f"{type(e).__name__}: {e}")
            return set()
        # PENDING_CREATION too: the actor has its process (and pid) while its __init__ loads the model
        ours = [a for a in actors if a.pid and a.state in ("PENDING_CREATION", "ALIVE")
                and ("BatchPredictor" in a.class_name or "MapWorker" in a.class_name)]  # fmt: skip
        if self.actor_ready_s is None and any(a.state == "ALIVE" for a in ours):
            self.actor_ready_s = time.monotonic() - self.started
        return {a.pid for a in ours}

    def _run(self) -> None:
        pids, looked_up = set(), 0.0
        while not self._stop.is_set():
            self.driver_peak = peak_of(self.driver_peak, memory_of(os.getpid()))
            if time.monotonic() - looked_up >= 1.0:  # a new or restarted actor is found within a second
                looked_up = time.monotonic()
                pids |= self._actor_pids()
                if pids and self.actor_seen_s is None:
                    self.actor_seen_s = time.monotonic() - self.started
            for pid in list(pids):
                try:
                    self.actor_peaks[pid] = peak_of(self.actor_peaks.get(pid, {}), memory_of(pid))
                except (psutil.NoSuchProcess, ProcessLookupError):
                    pids.discard(pid)
            self._stop.wait(self.every_s)


def mib(memory: dict[str, int]) -> dict[str, float]:
    return {k: round(v / MIB, 1) for k, v in memory.items()}


def part_timeline(folder: Path) -> list[tuple[float, int]]:
    """(mtime, rows) of each answers part file, in commit order (the writer numbers them)."""
    from llava_platform.batch.answers import part_files
    from llava_platform.storage import Storage

    parts = []
    for path in part_files(str(folder), Storage()):
        with open(path, "rb") as f:
            parts.append((os.stat(path).st_mtime, sum(1 for line in f if line.strip())))
    return sorted(parts)


def run_job(args: argparse.Namespace, questions: Path, image_folder: Path, output: Path) -> dict:
    """One run of the batch job on a fresh local Ray: its summary, steady rate, memory and answers."""
    import ray

    from llava_platform.batch.answers import read_answers
    from llava_platform.batch.job import run_batch
    from llava_platform.batch.spec import BatchJobSpec
    from llava_platform.config import load
    from llava_platform.storage import Storage

    overrides = [f"model.checkpoint={args.checkpoint}", f"batch.input={questions}", f"batch.image_folder={image_folder}",
                 f"batch.output={output}", *([f"batch.batch_size={args.batch_size}"] if args.batch_size else []),
                 *([f"batch.cpus_per_actor={args.actor_cpus}"] if args.actor_cpus else []),
                 f"batch.rows_per_part={args.rows_per_part}", "batch.commit_every_s=86400", "batch.progress_every_s=10",
                 f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.temperature=0"]  # fmt: skip
    spec = load(args.config, BatchJobSpec, overrides)
    started = time.perf_counter()
    # a new local Ray, never a cluster this machine runs already; run_batch's connect() joins it
    ray.init(address="local", num_cpus=args.ray_cpus, logging_level="ERROR")
    ray_init_s = time.perf_counter() - started
    try:
        with MemorySampler(ray.get_runtime_context().gcs_address) as memory, OtherCpu() as others:
            started, started_wall = time.perf_counter(), time.time()
            summary = run_batch(spec, log=lambda line: print("  " + line, flush=True))
            seconds = time.perf_counter() - started
    finally:
        # run_batch leaves ObjectRefs in reference cycles: freed now, not by a collection racing ray.shutdown
        gc.collect()
        ray.shutdown()

    parts = part_timeline(output)
    steady_rows = sum(rows for _, rows in parts[1:])
    steady_s = parts[-1][0] - parts[0][0] if len(parts) > 1 else 0.0
    answers = {str(row["question_id"]): (row["text"] or "").strip() for row in read_answers(str(output), Storage())}
    return {
        "rows": summary.rows,
        "errors": summary.errors,
        "ray_init_s": ray_init_s,
        "seconds": seconds,
        "rows_per_s": summary.rows / seconds,
        "first_row_s": summary.first_row_s,
        "steady_rows": steady_rows,
        "steady_s": steady_s,
        "steady_rows_per_s": steady_rows / steady_s if steady_s > 0 else None,
        "parts": len(parts),
        "part_commits_s": [round(mtime - started_wall, 3) for mtime, _ in parts],  # from run_batch's call
        "actor_found_s": memory.actor_seen_s,  # its process started (within a second)
        "actor_ready_s": memory.actor_ready_s,  # ALIVE (model loaded) as the state API says it, polled each second
        "other_processes_cores": others.cores,
        "completion_tokens": summary.completion_tokens,
        "prompt_tokens": summary.prompt_tokens,
        "batch": {k: getattr(spec.batch, k) for k in ("batch_size", "actors", "cpus_per_actor", "preprocess_workers",
                                                      "preprocess_cpus", "rows_per_part")},  # fmt: skip
        "driver_before_mib": mib(memory.driver_before),
        "driver_peak_mib": mib(memory.driver_peak),
        "actor_peak_mib": {str(pid): mib(peaks) for pid, peaks in memory.actor_peaks.items()},
        "actor_lookup_errors": memory.lookup_errors[:3],
        "answers": answers,
    }


# ---------------------------------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def rate(x: float | None) -> str:
    return f"{x:.1f}" if x else "n/a"


def memory_cell(memory: dict[str, float]) -> str:
    parts = "/".join(f"{memory[k]:.0f}" for k in ("anon", "shmem") if k in memory)
    return f"{memory['rss']:.0f} ({parts})" if parts else f"{memory['rss']:.0f}"


def report(args: argparse.Namespace, loop: dict | None, jobs: dict[int, dict], agreement: dict | None) -> dict:
    big = jobs[args.rows]
    loop_rate = loop["rows_per_s"] if loop else None

    def loop_e2e_at(n: int) -> float | None:  # the loop's end-to-end rate for n rows: model load + n / its rate
        return n / (loop["load_s"] + n / loop_rate) if loop else None

    loop_e2e = loop_e2e_at(args.rows)
    print(f"\nbatch inference on CPU, {args.checkpoint}, greedy, max_new_tokens {args.max_new_tokens}; "
          f"job: batch {big['batch']['batch_size']}, actor {big['batch']['cpus_per_actor']} CPUs, preprocessing "
          f"{big['batch']['preprocess_workers']} x {big['batch']['preprocess_cpus']} CPUs, Ray {args.ray_cpus} logical CPUs "
          f"on {os.cpu_count()} cores")  # fmt: skip
    print(f"{'':34}{'rows':>7}{'rows/s':>9}{'vs loop':>9}")
    if loop:
        print(f"{'loop, one image a call':34}{loop['rows']:>7}{rate(loop_rate):>9}{'1.00x':>9}   torch threads "
              f"{loop['torch_threads']}; model load {loop['load_s']:.1f}s apart")  # fmt: skip
        print(f"{'loop, end to end (estimated)':34}{args.rows:>7}{rate(loop_e2e):>9}{'':>9}   model load + rows / "
              "rate; job end to end is against this at its own rows")  # fmt: skip
    for n, job in sorted(jobs.items()):
        print(f"{f'job {n}, end to end':34}{job['rows']:>7}{rate(job['rows_per_s']):>9}"
              f"{ratio(job['rows_per_s'], loop_e2e_at(n)):>9}   start-up (first answer) "
              f"{job['first_row_s'] or float('nan'):.1f}s (actor ALIVE by ~{job['actor_ready_s'] or float('nan'):.0f}s), "
              f"ray.init {job['ray_init_s']:.1f}s apart")  # fmt: skip
        print(f"{f'job {n}, steady state':34}{job['steady_rows']:>7}{rate(job['steady_rows_per_s']):>9}"
              f"{ratio(job['steady_rows_per_s'], loop_rate):>9}   parts 2..{job['parts']} of {args.rows_per_part} rows, "
              f"{job['steady_s']:.1f}s")  # fmt: skip
    print("\npeak memory (MiB), sampled every 0.25 s: RSS (private anon / object-store shmem)")
    print(f"{'':20}{'driver before':>22}{'driver peak':>22}{'actor peak':>22}")
    for n, job in sorted(jobs.items()):
        actors = [memory_cell(peaks) for peaks in job["actor_peak_mib"].values()] or ["not found"]
        print(f"{f'job {n} rows':20}{memory_cell(job['driver_before_mib']):>22}{memory_cell(job['driver_peak_mib']):>22}"
              f"{', '.join(actors):>22}")  # fmt: skip
    if agreement:
        print(f"\nagreement: {agreement['equal']}/{agreement['compared']} of the loop's answers equal the job's "
              f"(stripped); prompts: {loop['prompts_equal_to_template']}/{loop['rows']} of apply_chat_template's "
              "equal the platform template's")  # fmt: skip
        for qid, (ours, theirs) in list(agreement["differ"].items())[:5]:
            print(f"  {qid}: loop {ours!r}  job {theirs!r}")
    for name, run in [("loop", loop)] + [(f"job {n}", job) for n, job in sorted(jobs.items())]:
        if run and run["other_processes_cores"] > BUSY_CORES:
            print(f"busy machine: other processes used {run['other_processes_cores']:.2f} of the {os.cpu_count()} cores "
                  f"during the {name} run: its rates are not the platform's alone")  # fmt: skip
    for n, job in jobs.items():
        if job["errors"] or job["rows"] != n:
            print(f"job {n}: {job['rows']} rows answered, errors {job['errors']}")

    steady_vs_loop = big["steady_rows_per_s"] / loop_rate if loop and big["steady_rows_per_s"] else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "loop": loop and {k: v for k, v in loop.items() if k != "answers"} | {"end_to_end_rows_per_s_estimated": loop_e2e},
        "jobs": {str(n): {k: v for k, v in job.items() if k != "answers"} for n, job in jobs.items()},
        "ratios": {
            "job_end_to_end_vs_loop_end_to_end": big["rows_per_s"] / loop_e2e if loop else None,
            "job_end_to_end_vs_loop_rate": big["rows_per_s"] / loop_rate if loop else None,
            "job_steady_vs_loop_rate": steady_vs_loop,
        },
        "agreement": agreement and agreement | {"differ": dict(list(agreement["differ"].items())[:20])},
    }  # fmt: skip


def main() -> None:
    args = parse_args()
    os.environ.pop("RAY_ADDRESS", None)  # this benchmark's own local Ray
    from llava_platform.cli import quiet_transformers

    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="batch_throughput_"))
    try:
        questions, small = write_questions(work / "data", args.rows)
        loop = None
        if not args.skip_loop:  # first, before any Ray process shares the cores
            print(f"[loop] {args.loop_rows} questions, one at a time, torch threads {args.cpus}", flush=True)
            loop = run_loop(args.checkpoint, questions, work / "data", args.loop_rows, args.cpus, args.max_new_tokens)
            print(f"[loop] {loop['rows_per_s']:.1f} rows/s (model load {loop['load_s']:.1f}s)", flush=True)
        jobs = {}
        for n, path in ((args.rows // 10, small), (args.rows, questions)):
            print(f"[job] {n} rows", flush=True)
            jobs[n] = run_job(args, path, work / "data", work / f"answers_{n}")
        agreement = None
        if loop:
            job_answers = jobs[args.rows]["answers"]
            differ = {q: (a, job_answers.get(q)) for q, a in loop["answers"].items() if job_answers.get(q) != a}
            agreement = {"compared": len(loop["answers"]), "equal": len(loop["answers"]) - len(differ), "differ": differ}
        result = report(args, loop, jobs, agreement)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
