"""Training jobs on a real two-node Ray cluster (two `ray start` on this machine), run as users run them.

Every run fine-tunes the session's tiny checkpoint on a small synthetic set with 20% text-only records,
placed so that in step 1 one rank runs a micro-batch of text alone while the other runs images. Each
two-worker run logs the losses and gradient norms of a one-worker run of the same batches, computed
in this process with the same step code (the grouping window is one step, so a step holds the same
samples whatever the worker count, and the loss is normalised per step). Runs are module-scoped
fixtures: one run serves several assertions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ray.job_submission import JobStatus, JobSubmissionClient
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import REPO, RayCluster, ray_env, ray_job_submit, stop_job_at_step
from llava_platform.config import SamplingSpec, TrainJobSpec, load
from llava_platform.data.images import load_image
from llava_platform.data.records import read_records
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.data.templates import get_template
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import load_checkpoint
from llava_platform.train.loop import run_steps, sample_batches
from llava_platform.train.plan import DataPlan
from llava_platform.train.setup import build_training, training_template

pytestmark = pytest.mark.slow

STEP = re.compile(r"\[train\] step (\d+)/(\d+) loss ([\d.]+) lr \S+ grad_norm ([\d.]+)")
STARTED = re.compile(r"\[train\] (starting|resumed at step (\d+)): .* worker nodes (\[.*?\]) pids (\[.*?\])")
FIRST_STEP_RATE = re.compile(r"\[train\] step 1/\d+ .* (\d+) tokens/s mfu ([\d.]+)%")
PEAK_TFLOPS = 0.02  # train.peak_tflops of the DDP and ZeRO runs: MFU is logged on CPU too


@dataclass
class Run:
    returncode: int
    output: str
    root: Path  # output_dir = root/out, storage = root/ray
    name: str

    @property
    def steps(self) -> list[tuple[int, float]]:
        """(step, loss) of every logged step, in log order (a resumed run logs its steps again from the checkpoint)."""
        return [(int(m[1]), float(m[3])) for m in STEP.finditer(self.output)]

    @property
    def grad_norms(self) -> list[tuple[int, float]]:
        return [(int(m[1]), float(m[4])) for m in STEP.finditer(self.output)]

    @property
    def final(self) -> Path:
        return self.root / "out" / "final"

    def checkpoints(self) -> list[Path]:
        return sorted((self.root / "ray" / self.name).glob("step_*"))


STEP_ONE = DataPlan(num_samples=96, epochs=1.0, global_batch=16, micro_batch=4, workers=2, seed=0, max_steps=12)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """96 scenes, 19 of them made text-only: 4 of rank 0's 8 samples in step 1 (a micro-batch of text alone once the
    step is grouped by modality) and none of rank 1's, the rest among samples that step 1 does not train."""
    paths = generate(tmp_path_factory.mktemp("syn"), num_train=96, num_test=8, seed=1)
    records = json.loads(paths.finetune.read_text())
    order = STEP_ONE.order().tolist()
    later = sorted(set(range(96)) - set(order[:16]))
    for i in order[:4] + later[:15]:
        records[i] = {"id": records[i]["id"], "conversations": [{"from": "human", "value": f"What is {i} plus one?"},
                                                                {"from": "gpt", "value": str(i + 1)}]}  # fmt: skip
    paths.finetune.write_text(json.dumps(records))
    return paths


def test_step_one_gives_one_rank_text_alone_and_the_other_images(data):
    has_image = np.array(["image" in r for r in json.loads(data.finetune.read_text())])
    assert has_image.mean() == pytest.approx(0.8, abs=0.01)
    lengths = np.full(96, 10)
    rank0, rank1 = (has_image[STEP_ONE.micro_batches(rank, lengths, has_image, window_micro_batches=1)[:2]] for rank in (0, 1))
    text_alone = [i for i in range(2) if not rank0[i].any()]
    assert len(text_alone) == 1 and rank1[text_alone[0]].all()


COMMON = ["train.max_steps=12", "train.global_batch_size=16", "train.micro_batch_size=4", "train.log_every_steps=1",
          "train.checkpoint_every_steps=4", "train.lr=1e-3", "train.warmup_ratio=0", "train.length_grouping_window=1",
          "scaling.torch_threads=1"]  # fmt: skip


def train_args(stage: str, checkpoint: Path, data, root: Path, name: str, *overrides: str) -> list[str]:
    """python -m jobs.<stage> on the tiny spec, pointed at this test's data, checkpoint and folders."""
    return [sys.executable, "-m", f"jobs.{stage}", "--config", f"jobs/configs/tiny_{stage}.yaml",
            f"model.checkpoint={checkpoint}", f"data.path={data.finetune}", f"data.image_folder={data.image_folder}",
            f"train.output_dir={root / 'out'}", f"run.storage_path={root / 'ray'}", f"run.name={name}", *COMMON,
            "scaling.num_workers=2", *overrides]  # fmt: skip


def one_worker_steps(checkpoint: Path, data, *overrides: str) -> list[tuple[float, float]]:
    """(loss, grad norm) of every step of the same run on one worker, in this process (train.loop, the workers' step
    code): the same samples in every step, cut into 4 micro-batches instead of 2 x 2."""
    spec = load("jobs/configs/tiny_finetune.yaml", TrainJobSpec, [f"model.checkpoint={checkpoint}", f"data.path={data.finetune}",
                "train.output_dir=unused", "run.storage_path=unused", *COMMON, "scaling.num_workers=1", *overrides])  # fmt: skip
    processor = load_checkpoint(checkpoint).processor
    encoder = SampleEncoder(processor, get_template(training_template(spec)), data.image_folder, spec.data.max_length)
    samples = [encoder.encode(r) for r in read_records(data.finetune)]
    plan = DataPlan.for_spec(len(samples), spec.train, workers=1)
    setup = build_training(spec, plan, torch.device("cpu"))
    batches = sample_batches(samples, plan, 0, spec.train.length_grouping_window)
    return [(m.loss, m.grad_norm) for m in run_steps(setup.runner, batches, processor=setup.bundle.processor, start_step=0,
                                                      total_steps=plan.total_steps, accumulation=plan.accumulation)]  # fmt: skip


def assert_steps_match(run: Run, reference: list[tuple[float, float]]) -> None:
    """Every logged step (a resumed run's included) has the one-worker run's loss and gradient norm."""
    assert run.steps, run.output[-3000:]
    for (step, loss), (_, grad_norm) in zip(run.steps, run.grad_norms):
        assert loss == pytest.approx(reference[step - 1][0], rel=2e-4, abs=1e-4), (step, run.steps, reference)
        assert grad_norm == pytest.approx(reference[step - 1][1], rel=2e-3, abs=2e-3), (step, run.grad_norms, reference)


def launch(args: list[str], cluster, on_line=None, timeout: int = 600) -> tuple[int, str]:
    """Run a job process against the cluster, streaming its output through `on_line(line, process)`."""
    process = subprocess.Popen(args, cwd=REPO, env=ray_env(RAY_ADDRESS=cluster.gcs), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, process)
    finally:
        timer.cancel()
    return process.wait(), "".join(lines)


def run_training(cluster, tmp_path_factory, tiny_checkpoint, data, name: str, *overrides: str, on_line=None) -> Run:
    root = tmp_path_factory.mktemp(name)
    code, output = launch(train_args("finetune", tiny_checkpoint, data, root, name, *overrides), cluster, on_line)
    (root / "job.log").write_text(output)  # for a failing test's post-mortem
    return Run(code, unique_lines(output), root, name)


def unique_lines(output: str) -> str:
    """Both nodes of the test cluster share one log folder, so each monitors (and echoes) every worker
    line; a worker's lines carry its pid and, for steps, different timings, so duplicates are exact copies."""
    return "".join(dict.fromkeys(output.splitlines(keepends=True)))


def answers(engine: InferenceEngine, data, n: int = 8) -> list[str]:
    records = list(read_records(data.test))[:n]
    requests = [GenerationRequest(r.messages[:1], [load_image(data.image_folder / r.images[0])]) for r in records]
    return [r.text for r in engine.generate(requests, SamplingSpec(max_new_tokens=6))]


def assert_final_answers_like_plain_transformers(run: Run, data) -> None:
    """final/ is a complete HF checkpoint: plain transformers and the platform's engine give the same greedy text."""
    bundle = load_checkpoint(run.final)
    ours = answers(InferenceEngine(bundle), data, n=2)
    processor = AutoProcessor.from_pretrained(run.final)
    model = LlavaForConditionalGeneration.from_pretrained(run.final)
    record = next(iter(read_records(data.test)))
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record.messages[0].content.removeprefix("<image>\n")}]}],
                                           add_generation_prompt=True)  # fmt: skip
    inputs = processor(images=load_image(data.image_folder / record.images[0]), text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    theirs = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours[0].strip() == theirs.strip() and all(isinstance(a, str) for a in ours)


def assert_loss_falls(run: Run, by: float = 0.2) -> None:
    """The mean of the last 3 logged losses is at least `by` below the first step's (the model as loaded)."""
    losses = [loss for _, loss in run.steps]
    assert len(losses) >= 8, run.output[-3000:]
    assert sum(losses[-3:]) / 3 < (1 - by) * losses[0], losses


# --------------------------------------------------------------------------- DDP across two nodes, one worker killed


@pytest.fixture(scope="module")
def ddp_run(ray_cluster, tmp_path_factory, tiny_checkpoint, data):
    """2 workers, one per node (STRICT_SPREAD); rank 1 is SIGKILLed once step 6 is logged (a checkpoint exists at 4,
    step 5 is reported already: the restarted group reports it again)."""
    killed: list[int] = []

    def kill_rank1(line: str, process) -> None:
        started = STARTED.search(line)
        if started and not killed:
            kill_rank1.pids = json.loads(started[4])
        step = STEP.search(line)
        if step and int(step[1]) == 6 and not killed:
            os.kill(kill_rank1.pids[1], signal.SIGKILL)
            killed.append(kill_rank1.pids[1])

    run = run_training(ray_cluster, tmp_path_factory, tiny_checkpoint, data, "ddp", "scaling.placement_strategy=STRICT_SPREAD",
                       "train.loggers=[tensorboard]", f"train.peak_tflops={PEAK_TFLOPS}", on_line=kill_rank1)  # fmt: skip
    run.killed = killed
    return run


def test_ddp_run_spans_two_nodes(ddp_run):
    assert ddp_run.returncode == 0, ddp_run.output[-3000:]
    first = STARTED.search(ddp_run.output)
    nodes = json.loads(first[3].replace("'", '"'))
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes  # STRICT_SPREAD: one worker per node


def test_killed_worker_resumes_from_the_last_checkpoint(ddp_run):
    assert ddp_run.returncode == 0 and ddp_run.killed, ddp_run.output[-3000:]
    resumed = [int(m[2]) for m in STARTED.finditer(ddp_run.output) if m[2] is not None]
    assert len(resumed) == 1 and resumed[0] >= 4 and resumed[0] % 4 == 0, resumed
    steps = [s for s, _ in ddp_run.steps]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])  # where the log goes back
    assert steps[:restart] == list(range(1, restart + 1)) and steps[restart - 1] >= 5
    # after the restart: from the checkpoint's next step to the end, each step once
    assert steps[restart:] == list(range(resumed[0] + 1, 13)), steps
    assert ddp_run.final.is_dir()
    # TensorBoard shows every step once; the steps trained twice carry the values of the run that went on
    events = EventAccumulator(str(ddp_run.root / "out" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert [logged[s] for s, _ in ddp_run.steps[restart:]] == pytest.approx([loss for _, loss in ddp_run.steps[restart:]], abs=1e-3)


def test_checkpoints_hold_model_optimizer_and_position(ddp_run):
    checkpoints = ddp_run.checkpoints()
    assert [c.name for c in checkpoints][-2:] == ["step_000008", "step_000012"]  # keep_checkpoints: 2
    last = checkpoints[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["total_steps"] == 12 and state["workers"] == 2
    assert (last / "optimizer.pt").is_file() and (last / "job_spec.yaml").is_file()
    assert load_checkpoint(last / "model").spec.template == "mistral_instruct"


def test_ddp_final_answers_and_loss_falls(ddp_run, data):
    assert_loss_falls(ddp_run)
    assert_final_answers_like_plain_transformers(ddp_run, data)


def test_ddp_steps_equal_one_worker_over_a_kill_and_a_resume(ddp_run, tiny_checkpoint, data):
    """Two DDP workers (no find_unused_parameters: text-only micro-batches run the tower on a blank image) train
    exactly what one worker trains on the same batches, the steps re-run after the restart included."""
    assert ddp_run.returncode == 0, ddp_run.output[-3000:]
    assert_steps_match(ddp_run, one_worker_steps(tiny_checkpoint, data))
    provenance = json.loads((ddp_run.final / "provenance.json").read_text())
    assert provenance["data"]["sha256"] == hashlib.sha256(data.finetune.read_bytes()).hexdigest()
    assert provenance["job_spec"]["run"]["name"] == "ddp" and provenance["steps"] == 12
    assert provenance["code"]["git_commit"] is None or len(provenance["code"]["git_commit"]) == 40


# --------------------------------------------------------------------------- DeepSpeed ZeRO (gloo on CPU)


@pytest.fixture(scope="module")
def zero_run(ray_cluster, s3_server, tmp_path_factory, tiny_checkpoint, data):
    """ZeRO-3, its two workers reading their records and images from the S3-compatible store (storage.endpoint_url;
    credentials from the nodes' environment), the shards and the data check's cache there too. The tower frozen
    (the tiny spec trains it): ZeRO must leave frozen weights exactly as they were; AdamW, as ZeRO's partitions are
    no whole matrices for the spec's Muon. (ZeRO-2's step, two ranks: tests/test_loss_normalisation.py; its
    checkpoints are ZeRO-3's code without the gather.)"""
    prefix = s3_server.upload_folder(data.root, f"job-data-{int(time.time())}")
    run = run_training(ray_cluster, tmp_path_factory, tiny_checkpoint, data, "zero3", "train.strategy=zero3",
                       "train.optimizer=adamw", "train.train_vision_tower=false", f"train.peak_tflops={PEAK_TFLOPS}",
                       f"data.path={prefix}/finetune.json", f"data.image_folder={prefix}", f"data.cache_dir={prefix}-cache",
                       f"storage.endpoint_url={s3_server.endpoint}")  # fmt: skip
    run.s3_prefix = prefix
    return run


def flops_per_token(run: Run) -> float:
    """The model FLOPs per token behind step 1's logged MFU (MFU x peak / tokens/s)."""
    rate = FIRST_STEP_RATE.search(run.output)
    assert rate, run.output[-3000:]
    return float(rate[2]) / 100 * PEAK_TFLOPS * 1e12 / float(rate[1])


def test_zero3_trains_like_ddp_and_saves_whole_weights(zero_run, ddp_run, tiny_checkpoint, data, s3_server):
    assert zero_run.returncode == 0, zero_run.output[-3000:]
    assert_loss_falls(zero_run)
    # the same init, data and first batch: ZeRO's step-1 loss is DDP's; and every step is one worker's
    assert zero_run.steps[0][1] == pytest.approx(ddp_run.steps[0][1], rel=1e-4)
    assert_steps_match(zero_run, one_worker_steps(tiny_checkpoint, data, "train.optimizer=adamw", "train.train_vision_tower=false"))
    # its FLOPs too: MFU counts a ZeRO-3 partition as the weight it stands for, not as its empty placeholder
    # (that would drop the LLM, ~90% of them); the tower, frozen here, saves only its backward (a few %)
    assert flops_per_token(zero_run) == pytest.approx(flops_per_token(ddp_run), rel=0.15)
    assert (zero_run.checkpoints()[-1] / "deepspeed").is_dir()
    before, after = load_file(tiny_checkpoint / "model.safetensors"), load_file(zero_run.final / "model.safetensors")
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape, name  # ZeRO-3 partitions were gathered
    llm = [n for n in before if "language_model" in n and n.endswith("q_proj.weight")]
    assert llm and all(not torch.equal(before[n], after[n]) for n in llm)  # the LLM trained
    tower = [n for n in before if "vision_tower" in n]
    assert all(torch.equal(before[n], after[n]) for n in tower)  # the tower stayed frozen
    assert_final_answers_like_plain_transformers(zero_run, data)
    # the same steps as one local worker's, from the records and images on object storage
    assert_read_from_object_storage(zero_run, data, s3_server)


def assert_read_from_object_storage(run: Run, data, s3_server) -> None:
    assert "96 samples, 96 ok" in run.output and s3_server.storage.list_files(f"{run.s3_prefix}-cache")
    provenance = json.loads((run.final / "provenance.json").read_text())
    assert provenance["data"]["path"] == f"{run.s3_prefix}/finetune.json"
    assert provenance["data"]["sha256"] == hashlib.sha256(data.finetune.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- QLoRA (the submitted job below)


# LoRA's usual 10x the full fine-tune lr: rank-8 adapters on a random-init LLM move slowly
ADAPTERS = ["model.lora.r=8", "model.lora.alpha=16", "model.lora.dropout=0", "train.lr=1e-2", "train.projector_lr=1e-3"]


def assert_adapter_checkpoint_and_merged_final(run: Run, data, quantization: str) -> None:
    """The run's checkpoints hold adapters on the base as trained; final/ is a merged, unquantized model (that it
    answers as the adapters do, to 1e-3 in its logits: tests/test_final_model.py)."""
    model_dir = run.checkpoints()[-1] / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    saved = load_checkpoint(model_dir).spec
    assert saved.lora.r == 8 and saved.quantization == quantization
    assert not (run.final / "adapter_config.json").exists() and (run.final / "model.safetensors").is_file()
    assert load_checkpoint(run.final).spec.quantization == "none"
    assert_final_answers_like_plain_transformers(run, data)


# --------------------------------------------------------------------------- ray job submit / stop, bad data


def submitted_command(checkpoint: Path, data, root: Path, name: str, *overrides: str) -> list[str]:
    """The tiny finetune as `ray job submit` runs it: the cluster's python, in the uploaded working dir."""
    return ["python", *train_args("finetune", checkpoint, data, root, name, *overrides)[1:]]


def test_a_stopped_job_submitted_again_with_the_same_name_resumes_it(ray_cluster, tiny_checkpoint, data, tmp_path):
    """`ray job submit --no-wait` of a QLoRA finetune in another template, `ray job logs --follow` until step 5, `ray
    job stop`; the same command submitted again resumes from the last checkpoint (step 4, or 8 if the stop came late:
    adapters reloaded on the 4-bit base) and finishes, its final/ the merged model, in the template it was tuned in,
    its metrics in TensorBoard."""
    command = submitted_command(tiny_checkpoint, data, tmp_path, "rerun", "scaling.num_workers=1", "model.quantization=4bit",
                                *ADAPTERS, "data.template=vicuna_v1", "train.loggers=[tensorboard]")  # fmt: skip
    first, second = f"llava-rerun-1-{int(time.time())}", f"llava-rerun-2-{int(time.time())}"
    submit = ray_job_submit(ray_cluster, first, command, "--no-wait")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    logged = stop_job_at_step(ray_cluster, first, 5)
    client = JobSubmissionClient(ray_cluster.dashboard)
    assert client.get_job_status(first) == JobStatus.STOPPED, logged[-3000:]
    stopped_at = max(int(m[1]) for m in STEP.finditer(logged))
    assert stopped_at < 12 and not (tmp_path / "out" / "final").exists()

    resubmit = ray_job_submit(ray_cluster, second, command)
    assert resubmit.returncode == 0 and client.get_job_status(second) == JobStatus.SUCCEEDED, resubmit.stdout[-3000:]
    output = unique_lines(resubmit.stdout)
    assert "TrainingReport(" not in output  # Ray Train's per-report dump beside our step lines (worker.quiet_report_log)
    [resumed] = [m[1] for m in STARTED.finditer(output)]
    assert resumed in ("resumed at step 4", "resumed at step 8"), output[-3000:]
    start = int(resumed.rsplit(" ", 1)[1])
    assert start <= stopped_at and [int(m[1]) for m in STEP.finditer(output)] == list(range(start + 1, 13))
    run = Run(0, output, tmp_path, "rerun")
    first_loss, last_losses = float(STEP.search(logged)[3]), [loss for _, loss in run.steps[-3:]]
    assert sum(last_losses) / 3 < 0.9 * first_loss, (first_loss, last_losses)  # rank-8 adapters: 6.8 -> ~5.7 in 12 steps
    assert_adapter_checkpoint_and_merged_final(run, data, "4bit")
    # tuned on data.template (not the tiny preset's mistral_instruct): the model answers in that template
    bundle = load_checkpoint(run.final)
    prompt = bundle.processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                                  add_generation_prompt=True)  # fmt: skip
    assert bundle.template.name == "vicuna_v1" and prompt.endswith("USER: hi ASSISTANT:"), prompt
    # train.loggers: the steps of the resumed job reach TensorBoard, with every metric
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert set(range(start + 1, 13)) <= {e.step for e in events.Scalars("train/loss")}
    assert {"train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s"} <= set(events.Tags()["scalars"])


def test_bad_records_stop_the_job_before_training(ray_cluster, tiny_checkpoint, data, tmp_path):
    records = json.loads(data.finetune.read_text())
    records[3]["image"] = "images/missing.png"
    records[7]["conversations"] = [{"from": "gpt", "value": "an answer before any question"}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    args = train_args("finetune", tiny_checkpoint, data, tmp_path, "bad", "scaling.num_workers=1", f"data.path={bad}")
    code, output = launch(args, ray_cluster)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert f"{records[3]['id']}: missing_image" in output and f"{records[7]['id']}: malformed" in output
    assert "data.on_bad_record: skip" in output  # the fix is named
    assert "[train] step" not in output and not (tmp_path / "ray" / "bad").exists()


# --------------------------------------------------------------------------- room for preprocessing


def publish_autoscaler_config(cluster, max_cpus: int) -> None:
    """What an autoscaler (ray up, KubeRay) publishes to the cluster's GCS: node types it may add, here CPU nodes."""
    script = f"""
import ray, ray._raylet as raylet
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_put
ray.init(address="{cluster.gcs}")
config = autoscaler_pb2.ClusterConfig()
group = config.node_group_configs.add(name="cpu-workers", min_count=0, max_count={max_cpus // 4})
group.resources["CPU"] = 4
_internal_kv_put(raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(), overwrite=True,
                 namespace=raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
"""
    done = subprocess.run([sys.executable, "-c", script], env=ray_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_workers_that_leave_no_cpu_for_preprocessing_stop_before_training(tmp_path, tiny_checkpoint, data):
    """A cluster of 2 CPUs that cannot grow, 2 workers reserving 1 each: the job stops at once, naming the fix (it used
    to wait forever behind Ray Data's warning). The same cluster with an autoscaler's config: it says what it waits for."""
    (tmp_path / "small").mkdir()
    small = RayCluster(tmp_path / "small", nodes=1, cpus_per_node=2)
    try:
        args = train_args("finetune", tiny_checkpoint, data, tmp_path, "no-room", "scaling.cpus_per_worker=1")
        started = time.perf_counter()
        code, output = launch(args, small, timeout=300)
        assert code == 2 and "Traceback" not in output, output[-3000:]
        assert ("2 training workers x scaling.cpus_per_worker=1 reserve 2 of this Ray cluster's 2 CPUs" in output
                and "cannot grow (no autoscaler)" in output and "Lower scaling.cpus_per_worker" in output), output[-3000:]
        assert "[data]" not in output and time.perf_counter() - started < 120

        publish_autoscaler_config(small, max_cpus=8)
        waiting = []

        def stop_once_it_says_what_it_waits_for(line: str, process) -> None:
            if "wait for the autoscaler to add CPU nodes" in line:
                waiting.append(line)
                process.kill()

        launch(args, small, on_line=stop_once_it_says_what_it_waits_for, timeout=300)
        assert waiting and "hold 2 of the cluster's 2 CPUs" in waiting[0] and "up to 8 CPUs" in waiting[0]
    finally:
        small.stop()
