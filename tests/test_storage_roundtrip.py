"""Shared storage end to end, on the S3-compatible store: a two-worker training job submitted with `ray job submit`
checkpoints to s3://, is stopped, resumes from s3://, uploads final/ there, and a Serve app serves that final/
from s3:// (each replica's node copies it) answering as the model does."""

from __future__ import annotations

import base64
import json
import re
import time

import openai
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from conftest import ray_job_submit, stop_job_at_step
from llava_platform.config import SamplingSpec, StorageSpec
from llava_platform.data.images import load_image
from llava_platform.data.synthetic import generate
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.storage import Storage
from serving import ServedApp, tiny_config

pytestmark = pytest.mark.slow

STEP = re.compile(r"\[train\] step (\d+)/(\d+) loss")
RESUMED = re.compile(r"\[train\] resumed at step (\d+)")


def test_training_checkpoints_resumes_and_exports_to_s3_and_serve_loads_it_from_there(
    ray_cluster, ray_client, s3_server, tiny_checkpoint, tmp_path
):
    data = generate(tmp_path / "data", num_train=64, num_test=2, seed=5)
    store = f"s3://{s3_server.BUCKET}/roundtrip-{int(time.time())}"
    command = ["python", "-m", "jobs.finetune", "--config", "jobs/configs/tiny_finetune.yaml",
               f"model.checkpoint={tiny_checkpoint}", f"data.path={data.finetune}", f"data.image_folder={data.image_folder}",
               f"data.cache_dir={tmp_path / 'cache'}", f"run.storage_path={store}/ray", "run.name=roundtrip",
               f"train.output_dir={store}/out", f"storage.endpoint_url={s3_server.endpoint}", "scaling.num_workers=2",
               "scaling.torch_threads=1", "data.cache_encoded=false", "data.preprocess_workers=1", "train.max_steps=10",
               "train.global_batch_size=16", "train.micro_batch_size=4", "train.log_every_steps=1",
               "train.checkpoint_every_steps=3"]  # fmt: skip
    first = f"roundtrip-1-{int(time.time())}"
    submit = ray_job_submit(ray_cluster, first, command, "--no-wait")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    logged = stop_job_at_step(ray_cluster, first, 4)  # a checkpoint (step 3) is in the store
    client = JobSubmissionClient(ray_cluster.dashboard)
    assert client.get_job_status(first) == JobStatus.STOPPED, logged[-3000:]
    storage = s3_server.storage
    assert any("checkpoint" in p for p in storage.list_files(f"{store}/ray/roundtrip")), "no checkpoint in the store"
    assert not storage.exists(f"{store}/out/final/llava_platform.yaml")

    second = ray_job_submit(ray_cluster, f"roundtrip-2-{int(time.time())}", command)
    assert second.returncode == 0, second.stdout[-3000:]
    resumed = RESUMED.search(second.stdout)
    assert resumed and int(resumed[1]) in (3, 6, 9), second.stdout[-3000:]  # from the store, not from step 0
    assert [int(m[1]) for m in STEP.finditer(second.stdout)][-1] == 10
    final = f"{store}/out/final"
    assert storage.exists(f"{final}/llava_platform.yaml") and storage.exists(f"{final}/provenance.json")
    assert json.loads(storage.read_bytes(f"{final}/provenance.json"))["steps"] == 10

    # served from the store: the answer the model gives, read from a local copy of the same final/
    app = ServedApp(ray_client, tiny_config(models=[{"name": "from-s3", "checkpoint": final}],
                                            storage={"endpoint_url": s3_server.endpoint}), tmp_path)  # fmt: skip
    try:
        image = data.image_folder / "images" / "test_00000.png"
        question = "What color is the circle?"
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        reply = openai.OpenAI(base_url=app.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="from-s3", max_tokens=16,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}],
        )  # fmt: skip
    finally:
        app.shutdown()
    local = Storage(StorageSpec(endpoint_url=s3_server.endpoint)).local_copy(final, tmp_path / "copy")
    engine = InferenceEngine.from_checkpoint(local)
    [expected] = engine.generate([GenerationRequest([Message("user", "<image>\n" + question)], [load_image(image)])],
                                 SamplingSpec(max_new_tokens=16))  # fmt: skip
    assert reply.choices[0].message.content == expected.text
