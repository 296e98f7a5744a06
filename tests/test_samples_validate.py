"""Sample encoding equals the processor's; dataset validation names every bad record and its kind."""

import json

import pytest
import torch

from conftest import make_image, run_job
from llava_platform.config import ModelSpec
from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.records import parse_record
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.validate import validate_dataset
from llava_platform.model import build_model


def qa(rid, image="a.png", question="<image>\nWhat color is it?", answer="red", **extra):
    out = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **extra}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture
def folder(tmp_path):
    make_image(64, 48).save(tmp_path / "a.png")
    make_image(30, 90, seed=1).save(tmp_path / "b.png")
    return tmp_path


def test_encoded_sample_equals_processor_output(tiny_bundle, folder):
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder)
    record = parse_record(qa("x"))
    sample = encoder.encode(record)
    text = tiny_bundle.template.render(record.messages).text
    from PIL import Image

    expected = tiny_bundle.processor(text=[text], images=[Image.open(folder / "a.png")], return_tensors="pt")
    assert sample.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(sample.pixel_values, expected["pixel_values"])
    trained = [t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert tiny_bundle.tokenizer.decode(trained) == " red </s>"  # mistral_instruct: reply, space, </s>
    assert sample.input_ids.count(tiny_bundle.tokenizer.image_token_id) == 36  # (96 / 16)^2


def test_anyres_samples_carry_image_sizes(folder):
    bundle = build_model(ModelSpec(preset="tiny", image_mode="anyres"))
    encoder = SampleEncoder(bundle.processor, bundle.template, folder)
    convs = [{"from": "human", "value": "<image> and <image>?"}, {"from": "gpt", "value": "two"}]
    sample = encoder.encode(parse_record({"id": "m", "image": ["a.png", "b.png"], "conversations": convs}))
    assert sample.image_sizes.tolist() == [[48, 64], [90, 30]]
    assert sample.pixel_values.shape[0] == 2 and sample.pixel_values.shape[2:] == (3, 96, 96)  # tiles at the tower size
    with torch.no_grad():
        out = bundle.model(input_ids=torch.tensor([sample.input_ids]), pixel_values=sample.pixel_values,
                           image_sizes=sample.image_sizes, labels=torch.tensor([sample.labels]))  # fmt: skip
    assert torch.isfinite(out.loss)


def write_dataset(folder, records):
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    (folder / "corrupt.png").write_bytes((folder / "a.png").read_bytes()[:100])
    return path


BAD_DATASET = [
    qa("good-1"),
    qa("missing", image="nope.png"),
    qa("corrupt", image="corrupt.png"),
    qa("bad-turns", question=None) | {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
    qa("long", question="<image>\n" + "why " * 400),
    qa("good-2", image="b.png"),
]


def test_validation_report_names_each_problem(tiny_bundle, folder):
    path = write_dataset(folder, BAD_DATASET)
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=200)
    report, good = validate_dataset(str(path), encoder)
    kinds = {p.id: p.kind for p in report.problems}
    assert kinds == {"missing": "missing_image", "corrupt": "unreadable_image", "bad-turns": "malformed", "long": "no_trained_token"}
    assert [s.id for s in good] == ["good-1", "good-2"] and report.total == 6 and report.ok == 2
    assert report.percentiles()["max"] == max(len(s.input_ids) for s in good)
    text = report.format()
    assert "6 samples, 2 ok, 4 with problems" in text and "- missing: missing_image: image not found" in text
    # images whose tokens cannot fit are a different error from a text that is merely cut
    tight = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=36)  # "<s>[INST]" + 36 image tokens + text
    report, _ = validate_dataset(str(path), tight)
    assert {p.id: p.kind for p in report.problems}["good-1"] == "too_long"


def test_policy_fails_or_skips_with_ids(tiny_bundle, folder):
    from llava_platform.data.validate import DataError

    path = write_dataset(folder, BAD_DATASET)
    report, _ = validate_dataset(str(path), SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=200))
    with pytest.raises(DataError, match=r"(?s)bad records \(set data.on_bad_record: skip.*- missing: missing_image"):
        report.enforce("fail", max_untrainable_fraction=1.0)
    with pytest.raises(DataError, match=r"1 of 6 samples have no trained token \(16.7% > data.max_untrainable_fraction=0.1\): long"):
        report.enforce("skip", max_untrainable_fraction=0.1)
    report.enforce("skip", max_untrainable_fraction=0.2)  # within the threshold: skipped and reported


def test_validate_data_cli(tiny_bundle, folder):
    path = write_dataset(folder, BAD_DATASET)
    result = run_job("validate_data", "--data", str(path), "--image-folder", str(folder), "--template", "vicuna_v1", "--max-length", "200")
    assert result.returncode == 1
    for rid in ("missing", "corrupt", "bad-turns", "long"):
        assert f"- {rid}: " in result.stdout
    assert "tokens per sample: p50" in result.stdout
    good = folder / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in BAD_DATASET if r["id"].startswith("good")))
    result = run_job("validate_data", "--data", str(good), "--image-folder", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 samples, 2 ok, 0 with problems" in result.stdout
    result = run_job("validate_data", "--data", str(good), "--template", "vicunaa")
    assert result.returncode == 2 and "did you mean 'vicuna_v1'" in result.stderr


def test_the_check_stage_keeps_exactly_what_the_encode_stage_makes(tiny_bundle, folder):
    """data.cache_encoded trains on the check's rows: they must equal EncodeRecords' (a bad record: empty)."""
    from llava_platform.data.pipeline import EncoderConfig, check_records, encode_records, record_rows, row_to_sample
    from llava_platform.data.records import Record

    config = EncoderConfig(tiny_bundle.processor, tiny_bundle.template.name, str(folder), 200, 10**8)
    records = [parse_record(r) for r in (qa("good-1"), qa("missing", image="nope.png"), qa("good-2", image="b.png"))]
    assert all(isinstance(r, Record) for r in records)

    def columns(rows):
        return {k: [row[k] for row in rows] for k in rows[0]}

    def samples(out):
        return [row_to_sample({k: out[k][i] for k in out}) for i in range(len(out["id"]))]

    kept = check_records(columns(record_rows(records, [7, 8, 9])), config, keep_encoded=True)
    assert kept["index"] == [7, 8, 9] and kept["kind"] == ["", "missing_image", ""]
    checked, encoded = samples(kept), samples(encode_records(columns(record_rows([records[0], records[2]])), config))
    for ours, theirs in zip([checked[0], checked[2]], encoded):
        assert ours.id == theirs.id and ours.input_ids == theirs.input_ids and ours.labels == theirs.labels
        assert torch.equal(ours.pixel_values, theirs.pixel_values) and ours.image_sizes == theirs.image_sizes
    assert checked[1].input_ids == [] and checked[1].pixel_values is None
    assert "pixel_values" not in check_records(columns(record_rows(records)), config)  # no pixels leave a plain check
