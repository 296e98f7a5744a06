"""Batch outputs without Ray: answer rows in LLaVA's answers format, part files written whole, the ids a re-run
skips, the progress line, and the CPU stage's encoding (what the engine would encode, or the row's error)."""

import io
import json
import time

import pyarrow as pa
import pytest
import torch

from conftest import REPO
from llava_platform.batch.answers import ANSWER_SCHEMA, answer_row, read_answers, written_ids
from llava_platform.batch.inputs import question_table
from llava_platform.batch.preprocess import QuestionEncoder, decode_inputs, encode_questions
from llava_platform.batch.progress import Progress, duration
from llava_platform.batch.questions import from_question_line
from llava_platform.batch.writer import PartWriter, Tally, remove_unfinished_parts
from llava_platform.data.templates import Message
from llava_platform.inference.engine import GenerationRequest, GenerationResult, InferenceEngine
from llava_platform.storage import Storage

ROW = {"question_id": "7", "prompt": "What?", "metadata": json.dumps({"category": "c"}), "error": None}


def test_an_answer_row_and_a_refused_row_have_the_same_keys():
    row = answer_row(ROW, GenerationResult("Red", 40, 2, "stop"), "tiny")
    assert (row["question_id"], row["text"], row["prompt"], row["error"], row["finish_reason"]) == ("7", "Red", "What?", None, "stop")
    assert (row["prompt_tokens"], row["completion_tokens"], row["model_id"]) == (40, 2, "tiny")
    refused = answer_row({**ROW, "error": "missing_image: a.jpg"}, None, "tiny")
    assert set(refused) == set(row) == set(ANSWER_SCHEMA.names) and refused["text"] == "" and refused["completion_tokens"] == 0
    with pytest.raises(ValueError, match="no answer and no error"):
        answer_row(ROW, None, "tiny")


def _answers(ids, error=None) -> pa.Table:
    rows = [answer_row({**ROW, "question_id": i, "error": error}, None if error else GenerationResult("x", 3, 1, "stop"), "m")
            for i in ids]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA)


def test_parts_are_committed_whole_by_size_and_by_age_and_read_back(tmp_path):
    storage = Storage()
    writer = PartWriter(str(tmp_path), storage, "jsonl", rows_per_part=4, commit_every_s=0.2)
    writer.add(_answers(["1", "2", "3"]))
    assert written_ids(str(tmp_path), storage) == set()  # 3 rows pending, young: nothing committed yet
    writer.add(_answers(["4", "5"]))
    assert written_ids(str(tmp_path), storage) == {"1", "2", "3", "4"}  # one part of rows_per_part
    time.sleep(0.25)
    writer.add(_answers(["6"]))  # the pending part is old: committed with what it holds
    assert written_ids(str(tmp_path), storage) == {str(i) for i in range(1, 7)}
    writer.add(_answers(["7"], error="missing_image: x"))
    writer.close()
    rows = list(read_answers(str(tmp_path), storage))
    assert len(rows) == 7 and rows[0]["metadata"] == {"category": "c"} and rows[-1]["error"] == "missing_image: x"
    assert len(list(tmp_path.glob("part-*.jsonl"))) == 3 and not list(tmp_path.glob(".*"))  # [1-4], [5, 6], [7]

    parquet = PartWriter(str(tmp_path / "pq"), storage, "parquet", rows_per_part=2)
    parquet.add(_answers(["a", "b", "c"]))
    parquet.close()
    assert [r["metadata"] for r in read_answers(str(tmp_path / "pq"), storage)] == [{"category": "c"}] * 3


def test_written_ids_skip_unfinished_parts_and_sub_folders(tmp_path):
    storage = Storage()
    assert written_ids(str(tmp_path / "nothing yet"), storage) == set()
    (tmp_path / "part-0.jsonl").write_text("\n".join(json.dumps({"question_id": q}) for q in ["1", "2"]) + "\n")
    (tmp_path / "part-1.jsonl").write_text(json.dumps({"question_id": 3}) + "\n")
    (tmp_path / ".part-2.jsonl.tmp").write_text(json.dumps({"question_id": "4"}) + "\n")  # a killed run's
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "shard.jsonl").write_text(json.dumps({"question_id": "5"}) + "\n")
    (tmp_path / "summary.json").write_text("{}")
    assert written_ids(str(tmp_path), storage) == {"1", "2", "3"}
    assert remove_unfinished_parts(str(tmp_path), storage) == 1 and not (tmp_path / ".part-2.jsonl.tmp").exists()


def test_the_tally_counts_error_kinds_and_tokens():
    tally = Tally()
    tally.add(_answers(["1", "2"]))
    tally.add(_answers(["3"], error="missing_image: a"))
    tally.add(_answers(["4", "5"], error="too_long: 900 tokens"))
    assert (tally.rows, dict(tally.errors), tally.prompt_tokens, tally.completion_tokens) == \
        (5, {"missing_image": 1, "too_long": 2}, 6, 2)  # fmt: skip


def test_progress_lines_in_logs_and_at_a_terminal():
    log = io.StringIO()
    progress = Progress(total=100, done_before=20, every_s=1000, stream=log)
    progress.started -= 10  # 10 s in
    progress.add(40)  # the first add shows a line; the next ones wait every_s
    progress.add(10)
    assert log.getvalue() == "[batch] 60/100 rows, 4.0 rows/s, ETA 10s\n"
    progress.close()
    assert log.getvalue().splitlines()[-1] == "[batch] 70/100 rows, 5.0 rows/s, ETA 6s"
    assert Progress(None, 0, 1, io.StringIO()).line() == "[batch] 0 rows, 0.0 rows/s"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    live = Terminal()
    progress = Progress(total=10, done_before=0, every_s=1000, stream=live)
    progress.add(5)
    progress.close()
    assert live.getvalue().startswith("\r\033[K[batch] 5/10 rows") and live.getvalue().endswith("\n")
    assert (duration(5), duration(75), duration(7300)) == ("5s", "1m15s", "2h01m")


@pytest.mark.parametrize("image_mode", ["pad", "anyres"])
def test_the_cpu_stage_encodes_each_row_as_the_engine_and_refuses_rows_with_their_error(tiny_checkpoint, tmp_path, image_mode):
    """One processor call for a batch's prompts (pad: it splits by row) or one a row (anyres): either way each row's
    inputs are what InferenceEngine.encode builds for it alone, and generate on them answers the same."""
    from PIL import Image

    engine = InferenceEngine.from_checkpoint(tiny_checkpoint, image_mode=image_mode)
    for name, size, colour in (("a.png", (40, 30), "red"), ("b.png", (90, 50), "blue"), ("c.png", (20, 70), "green")):
        Image.new("RGB", size, colour).save(tmp_path / name)
    lines = [{"question_id": 1, "image": "a.png", "text": "What color?"},
             {"question_id": 2, "image": "gone.png", "text": "What?"},
             {"question_id": 3, "text": "x" * 400},
             {"question_id": 4, "text": ""},
             {"question_id": 5, "image": "b.png", "text": "And this one, what shape is it?"},
             {"question_id": 6, "text": "No image: say hello."},
             {"question_id": 7, "image": "c.png", "text": "Where?"}]  # fmt: skip
    questions = [from_question_line(line, f"line {i}") for i, line in enumerate(lines)]
    encoder = QuestionEncoder(engine.processor, "mistral_instruct", str(tmp_path), Storage(), 10_000, 300)
    rows = encode_questions(question_table(questions), encoder).to_pylist()
    errors = [r["error"] and r["error"].split(":")[0] for r in rows]
    assert errors == [None, "missing_image", "too_long", "empty_question", None, None, None]
    assert "over batch.max_prompt_tokens=300" in rows[2]["error"] and rows[1]["inputs"] is None
    for row, line in zip(rows, lines):
        if row["error"] is not None:
            continue
        images = [Image.open(tmp_path / line["image"]).convert("RGB")] if "image" in line else []
        request = GenerationRequest([Message("user", ("<image>\n" if images else "") + line["text"])], images)
        expected, got = engine.encode(request), decode_inputs(row["inputs"])
        assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected), line
        assert engine.generate([GenerationRequest([], encoded=got)])[0].text == engine.generate([request])[0].text


def test_the_shipped_tiny_batch_spec_is_valid():
    from llava_platform.batch.spec import BatchJobSpec
    from llava_platform.config import ConfigError, load

    spec = load(REPO / "jobs/configs/tiny_batch.yaml", BatchJobSpec)
    assert spec.model.checkpoint == "jobs/assets/tiny-base" and spec.batch.batch_size == 64
    with pytest.raises(ConfigError, match="model.checkpoint"):
        load(REPO / "jobs/configs/tiny_batch.yaml", BatchJobSpec, ["model.checkpoint=null", "model.preset=tiny"])
    with pytest.raises(ConfigError, match="batch.actor"):
        load(REPO / "jobs/configs/tiny_batch.yaml", BatchJobSpec, ["batch.actor=2"])


def test_one_job_at_a_time_writes_an_output_and_only_for_the_same_model_and_settings(tmp_path):
    from llava_platform.batch.writer import OutputLock, check_same_run

    with OutputLock(str(tmp_path)):
        with pytest.raises(ValueError, match=r"another batch job \(pid \d+\) is writing there"):
            OutputLock(str(tmp_path)).__enter__()
    with OutputLock(str(tmp_path)):  # released with the first
        pass
    identity = {"checkpoint": "runs/a/final", "sampling": {"max_new_tokens": 16}, "input": "q.jsonl"}
    check_same_run(str(tmp_path), Storage(), identity)  # the first run records what it is
    check_same_run(str(tmp_path), Storage(), dict(identity))
    with pytest.raises(ValueError, match=r"checkpoint: 'runs/a/final' there, 'runs/b/final' now.*another batch.output"):
        check_same_run(str(tmp_path), Storage(), {**identity, "checkpoint": "runs/b/final"})


def test_a_row_generate_fails_on_is_written_with_its_error_and_the_batch_answered(tiny_checkpoint, tmp_path):
    """A batch whose generate raises is answered row by row; the row that fails alone (here: pixels of the wrong
    size) gets generation_failed, the others their answers."""
    import pickle

    from PIL import Image

    from llava_platform.batch.predictor import BatchPredictor
    from llava_platform.config import ModelSpec, SamplingSpec

    engine = InferenceEngine.from_checkpoint(tiny_checkpoint)
    Image.new("RGB", (30, 30), "red").save(tmp_path / "a.png")
    lines = [{"question_id": i, "image": "a.png", "text": q} for i, q in enumerate(["What color?", "Where?", "Why?"])]
    encoder = QuestionEncoder(engine.processor, "mistral_instruct", str(tmp_path), Storage(), 10_000, 300)
    rows = encode_questions(question_table([from_question_line(x, "l") for x in lines]), encoder).to_pylist()
    broken = decode_inputs(rows[1]["inputs"])
    broken["pixel_values"] = broken["pixel_values"][:, :, :8, :8]  # not the tower's size
    rows[1]["inputs"] = pickle.dumps({k: v.numpy() for k, v in broken.items()})
    predictor = BatchPredictor(ModelSpec(checkpoint=str(tiny_checkpoint)), SamplingSpec(max_new_tokens=8), "m")
    answers = predictor(pa.Table.from_pylist(rows, schema=encode_questions(question_table([]), encoder).schema)).to_pylist()
    assert answers[1]["error"].startswith("generation_failed: ValueError: Input image size") and answers[1]["text"] == ""
    expected = engine.generate([GenerationRequest([], encoded=decode_inputs(rows[i]["inputs"])) for i in (0, 2)],
                               SamplingSpec(max_new_tokens=8))  # fmt: skip
    assert [answers[0]["text"], answers[2]["text"]] == [r.text for r in expected] and answers[0]["error"] is None


def test_a_very_thin_image_is_scaled_to_the_side_limit_before_the_processor(tiny_checkpoint, tmp_path):
    """pad mode pads to a square: 20000 x 2 would become 20000 x 20000 x 3 floats; scaled to 512 x 1 first."""
    from PIL import Image

    engine = InferenceEngine.from_checkpoint(tiny_checkpoint, image_mode="pad")
    Image.new("RGB", (20000, 2), "red").save(tmp_path / "thin.png")
    encoder = QuestionEncoder(engine.processor, "mistral_instruct", str(tmp_path), Storage(), 10**8, 300, max_image_side=512)
    assert encoder.read_image("thin.png", None).size == (512, 1)
    [row] = encode_questions(question_table([from_question_line({"question_id": 1, "image": "thin.png", "text": "q"},
                                                                "l")]), encoder).to_pylist()  # fmt: skip
    assert row["error"] is None and decode_inputs(row["inputs"])["pixel_values"].shape[-1] == 96
