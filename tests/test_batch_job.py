"""Batch inference on Ray Data as users run it: `python -m jobs.batch_infer` on the shared `ray start --head` cluster
(bad rows, a kill and a re-run, S3 in and out), and `run_batch` / `run_evaluation` in-process for the other input
formats and the demo's score. Every good answer is checked against the engine's answer to the same question."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, ray_env, ray_job_submit, run_job
from llava_platform.batch.answers import read_answers
from llava_platform.batch.job import run_batch
from llava_platform.batch.spec import BatchJobSpec
from llava_platform.config import SamplingSpec, load
from llava_platform.data.images import load_image
from llava_platform.data.synthetic import generate
from llava_platform.data.templates import Message
from llava_platform.eval.heldout import answer_held_out
from llava_platform.eval.job import run_evaluation
from llava_platform.eval.spec import EvalJobSpec
from llava_platform.inference.engine import GenerationRequest, InferenceEngine

pytestmark = pytest.mark.slow

TINY = REPO / "jobs" / "assets" / "tiny-base"
CONFIG = str(REPO / "jobs" / "configs" / "tiny_batch.yaml")
MAX_NEW = 16  # tiny_batch.yaml's sampling.max_new_tokens
BAD = {  # question id -> the error kind its row must carry
    "bad-missing": "missing_image", "bad-truncated": "unreadable_image", "bad-not-an-image": "unreadable_image",
    "bad-empty": "empty_question", "line 53": "bad_record",
}  # fmt: skip


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """48 held-out scenes (questions.jsonl) and a question file with planted bad rows after them."""
    paths = generate(tmp_path_factory.mktemp("scenes"), 10, 48, seed=3)
    images = paths.image_folder / "images"
    good = (images / "test_00001.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "not-an-image.png").write_text("hello")
    lines = paths.questions.read_text().splitlines() + [
        json.dumps({"question_id": "bad-missing", "image": "images/nowhere.png", "text": "What is it?"}),
        json.dumps({"question_id": "bad-truncated", "image": "images/truncated.png", "text": "What is it?"}),
        json.dumps({"question_id": "bad-not-an-image", "image": "images/not-an-image.png", "text": "What is it?"}),
        json.dumps({"question_id": "bad-empty", "image": "images/test_00002.png", "text": "  "}),
        "{not json",
    ]  # fmt: skip
    planted = paths.root / "planted.jsonl"
    planted.write_text("\n".join(lines) + "\n")
    return paths, planted


@pytest.fixture(scope="module")
def engine():
    return InferenceEngine.from_checkpoint(TINY)


def engine_answers(engine, asked: dict[str, tuple[list[Message], list[str]]], folder: Path, max_new: int = MAX_NEW):
    """{id: the engine's greedy answer} to {id: (messages, image paths)}, in one batch (float32: rows as alone)."""
    ids = list(asked)
    requests = [GenerationRequest(asked[i][0], [load_image(folder / p) for p in asked[i][1]]) for i in ids]
    results = engine.generate(requests, SamplingSpec(max_new_tokens=max_new))
    return {i: r.text for i, r in zip(ids, results)}


def question_lines(path: Path) -> dict[str, tuple[list[Message], list[str]]]:
    """A question file's good lines as what the engine is asked: the image first, then the text."""
    out = {}
    for line in path.read_text().splitlines():
        q = json.loads(line)
        out[q["question_id"]] = ([Message("user", "<image>\n" + q["text"])], [q["image"]])
    return out


@pytest.fixture(scope="module")
def expected(scenes, engine):
    paths, _ = scenes
    return engine_answers(engine, question_lines(paths.questions), paths.image_folder)


def answers_in(folder, storage=None) -> list[dict]:
    from llava_platform.storage import Storage

    return list(read_answers(str(folder), storage or Storage()))


def batch_infer(ray_cluster, *overrides: str, env: dict | None = None):
    done = run_job("batch_infer", "--config", CONFIG, *overrides, env={"RAY_ADDRESS": ray_cluster.gcs, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bad_rows_are_written_with_their_error_and_good_answers_equal_the_engines(ray_cluster, scenes, expected, tmp_path):
    """`ray job submit` of the shipped tiny spec (the cluster's python, in the uploaded working dir)."""
    paths, planted = scenes
    command = ["python", "-m", "jobs.batch_infer", "--config", "jobs/configs/tiny_batch.yaml", f"batch.input={planted}",
               f"batch.image_folder={paths.image_folder}", f"batch.output={tmp_path / 'out'}", "batch.rows_per_part=20"]
    done = ray_job_submit(ray_cluster, f"llava-batch-{int(time.time())}", command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = answers_in(tmp_path / "out")
    assert len(rows) == 53 and len({r["question_id"] for r in rows}) == 53  # one row per input line
    by_id = {r["question_id"]: r for r in rows}
    for question_id, kind in BAD.items():
        assert by_id[question_id]["error"].startswith(kind + ":") or by_id[question_id]["error"] == kind, by_id[question_id]
        assert by_id[question_id]["text"] == ""
    assert "nowhere.png" in by_id["bad-missing"]["error"] and "truncated" in by_id["bad-truncated"]["error"]
    good = {i: r for i, r in by_id.items() if i not in BAD}
    assert {i: r["text"] for i, r in good.items()} == expected
    assert all(r["error"] is None and r["model_id"] == "tiny-base" and r["metadata"]["answer"] for r in good.values())
    assert all(r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= MAX_NEW for r in good.values())
    assert len(list((tmp_path / "out").glob("part-*.jsonl"))) == 3  # 20 + 20 + 13 rows
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"] == 53 and summary["errors"] == {"missing_image": 1, "unreadable_image": 2,
                                                          "empty_question": 1, "bad_record": 1}  # fmt: skip
    assert "[batch] errors: bad_record 1, empty_question 1, missing_image 1, unreadable_image 2" in done.stdout
    assert "53/53 rows" in done.stdout  # the progress line, as logs show it


def test_a_killed_job_rerun_answers_each_row_exactly_once_and_nothing_twice(ray_cluster, tmp_path):
    paths = generate(tmp_path / "scenes", 10, 240, seed=4)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.batch_infer", "--config", CONFIG, f"batch.input={paths.questions}",
            f"batch.image_folder={paths.image_folder}", f"batch.output={out}", "batch.batch_size=4",
            "batch.rows_per_part=8"]  # fmt: skip
    job = subprocess.Popen(args, cwd=REPO, env=ray_env(RAY_ADDRESS=ray_cluster.gcs), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while len(list(out.glob("part-*.jsonl"))) < 3:
        assert job.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    before = {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")}
    written = [json.loads(line)["question_id"] for data in before.values() for line in data.decode().splitlines()]
    assert 24 <= len(written) < 240

    # the same job (a bigger batch is no other job: answers do not depend on it), resumed
    done = run_job("batch_infer", *args[3:], "batch.batch_size=32", env={"RAY_ADDRESS": ray_cluster.gcs})
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [r["question_id"] for r in answers_in(out)]
    assert sorted(ids) == sorted(json.loads(line)["question_id"] for line in paths.questions.read_text().splitlines())
    assert len(ids) == len(set(ids)) == 240
    assert all((out / name).read_bytes() == data for name, data in before.items())  # parts of the killed run kept
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["already_written"], summary["rows"]) == (len(written), 240 - len(written))  # none asked again
    assert not list(out.glob(".part-*"))


def test_inputs_checkpoint_and_outputs_on_an_s3_compatible_store(ray_cluster, s3_server, scenes, expected, tmp_path):
    paths, _ = scenes
    data = s3_server.upload_folder(paths.image_folder, "batch/scenes")
    checkpoint = s3_server.upload_folder(TINY, "batch/models/tiny-base")
    batch_infer(ray_cluster, f"batch.input={data}/questions.jsonl", f"batch.image_folder={data}",
                f"batch.output=s3://{s3_server.BUCKET}/batch/answers", f"model.checkpoint={checkpoint}",
                f"storage.endpoint_url={s3_server.endpoint}")  # fmt: skip
    rows = answers_in(f"s3://{s3_server.BUCKET}/batch/answers", s3_server.storage)
    assert {r["question_id"]: r["text"] for r in rows} == expected
    assert s3_server.storage.exists(f"s3://{s3_server.BUCKET}/batch/answers/summary.json")


def _spec(**batch) -> BatchJobSpec:
    return load(CONFIG, BatchJobSpec, [f"batch.{k}={v}" for k, v in batch.items()])


def test_conversations_are_asked_turn_by_turn_with_the_gold_history_into_parquet(ray_client, scenes, engine, tmp_path):
    paths, _ = scenes
    records = json.loads(paths.test.read_text())[:3]
    records[0]["conversations"] += [{"from": "human", "value": "Is it big?"}, {"from": "gpt", "value": "No."}]
    source = tmp_path / "conversations.json"
    source.write_text(json.dumps(records))
    summary = run_batch(_spec(input=source, image_folder=paths.image_folder, output=tmp_path / "out",
                              output_format="parquet"), log=lambda line: None)  # fmt: skip
    assert (summary.rows, summary.errors) == (4, {})
    rows = {r["question_id"]: r for r in answers_in(tmp_path / "out")}
    first = records[0]["conversations"]
    asked = {f"{r['id']}_0": ([Message("user", r["conversations"][0]["value"])], [r["image"]]) for r in records}
    asked[f"{records[0]['id']}_1"] = ([Message("user", first[0]["value"]), Message("assistant", first[1]["value"]),
                                       Message("user", "Is it big?")], [records[0]["image"]])  # fmt: skip
    assert {i: r["text"] for i, r in rows.items()} == engine_answers(engine, asked, paths.image_folder)
    assert rows[f"{records[0]['id']}_1"]["metadata"]["gold"] == "No."  # metadata read back from Parquet as a dict
    assert list((tmp_path / "out").glob("part-*.parquet"))


def test_an_image_folder_is_captioned_and_parquet_image_bytes_are_answered(ray_client, scenes, engine, tmp_path):
    paths, _ = scenes
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    names = ["a.png", "more/b.png", "more/c.png"]
    for i, name in enumerate(names):
        (folder / name).write_bytes((paths.image_folder / f"images/test_{i:05d}.png").read_bytes())
    (folder / "notes.txt").write_text("not an image: not asked")
    run_batch(_spec(input=folder, output=tmp_path / "captions", prompt="What is in the picture?"), log=lambda line: None)
    captions = {r["question_id"]: r["text"] for r in answers_in(tmp_path / "captions")}
    asked = {n: ([Message("user", "<image>\nWhat is in the picture?")], [n]) for n in names}
    assert captions == engine_answers(engine, asked, folder)

    table = pa.table({"question_id": ["p0", "p1", "p2"], "image": [(folder / n).read_bytes() for n in names[:2]] + [None],
                      "text": ["What color is the circle?", None, "Where?"], "answer": ["red", "blue", "x"]})  # fmt: skip
    pq.write_table(table, tmp_path / "images.parquet")
    summary = run_batch(_spec(input=tmp_path / "images.parquet", output=tmp_path / "from-parquet"), log=lambda line: None)
    rows = {r["question_id"]: r for r in answers_in(tmp_path / "from-parquet")}
    assert rows["p2"]["error"].startswith("missing_image") and summary.errors == {"missing_image": 1}
    assert [rows[i]["metadata"] for i in ("p0", "p1", "p2")] == [{"answer": "red"}, {"answer": "blue"}, {"answer": "x"}]
    asked = {"p0": ([Message("user", "<image>\nWhat color is the circle?")], [names[0]]),
             "p1": ([Message("user", "<image>\nDescribe the image.")], [names[1]])}  # no text: batch.prompt
    assert {i: rows[i]["text"] for i in ("p0", "p1")} == engine_answers(engine, asked, folder)


def test_evaluate_scores_the_scenes_as_the_demo_does(ray_client, scenes, tmp_path):
    paths, _ = scenes
    spec = load(REPO / "jobs/configs/eval/scenes.yaml", EvalJobSpec,
                [f"batch.input={paths.questions}", f"batch.image_folder={paths.image_folder}", f"batch.output={tmp_path}"])  # fmt: skip
    metrics = run_evaluation(spec, log=lambda line: None)
    demo = answer_held_out(TINY, paths.test, paths.image_folder)
    assert metrics["scores"]["all"] == {"accuracy": demo.accuracy, "count": 48}
    assert demo.accuracy > 0.5  # the tiny base answers most: a score that an off-by-one in reading rows would move
    assert json.loads((tmp_path / "metrics.json").read_text())["scores"] == metrics["scores"]
    predictions = {r["question_id"]: r["text"] for r in answers_in(tmp_path)}
    assert [predictions[f"test-{i:05d}"] for i in range(48)] == demo.predictions
