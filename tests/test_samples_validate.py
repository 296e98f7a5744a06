"""Sample encoding equals the processor's; the data check, reading headers and text only, gives the full
encode's verdict and token length for every record."""

import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image, run_job
from llava_platform.config import ModelSpec
from llava_platform.data.encode import IGNORE_INDEX
from llava_platform.data.images import PixelNormalizer
from llava_platform.data.records import parse_raw, parse_record
from llava_platform.data.samples import SampleEncoder, blank_sample
from llava_platform.data.validate import Problem, ValidationReport, check_entries
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
    expected = tiny_bundle.processor(text=[text], images=[Image.open(folder / "a.png")], return_tensors="pt")
    assert sample.input_ids == expected["input_ids"][0].tolist()
    # pixels travel as uint8; the worker's normalisation gives the processor's floats, bit for bit
    assert sample.pixel_values.dtype == torch.uint8
    assert torch.equal(PixelNormalizer(tiny_bundle.processor.image_processor)(sample.pixel_values), expected["pixel_values"])
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
    pixels = PixelNormalizer(bundle.processor.image_processor)(sample.pixel_values)
    with torch.no_grad():
        out = bundle.model(input_ids=torch.tensor([sample.input_ids]), pixel_values=pixels,
                           image_sizes=sample.image_sizes, labels=torch.tensor([sample.labels]))  # fmt: skip
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("mode", ["pad", "anyres", "square"])
def test_the_blank_sample_is_an_image_the_model_takes_with_no_label(mode):
    bundle = build_model(ModelSpec(preset="tiny", image_mode=mode))
    blank = blank_sample(bundle.processor)
    assert set(blank.labels) == {IGNORE_INDEX} and set(blank.input_ids) == {bundle.tokenizer.image_token_id}
    pixels = PixelNormalizer(bundle.processor.image_processor)(blank.pixel_values)
    sizes = {"image_sizes": blank.image_sizes} if blank.image_sizes is not None else {}
    with torch.no_grad():  # the token count matches the features: transformers checks it
        bundle.model(input_ids=torch.tensor([blank.input_ids]), pixel_values=pixels, **sizes)


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


def check(records, encoder):
    """check_entries over records given as JSON objects, as the shards hand them to it."""
    return check_entries(list(range(len(records))), [f"#{i}" for i in range(len(records))],
                         [r if isinstance(r, str) else json.dumps(r) for r in records], encoder).to_pylist()  # fmt: skip


def report_of(rows) -> ValidationReport:
    report = ValidationReport("data.json")
    for row in rows:
        if row["kind"]:
            report.add(Problem(row["id"], row["kind"], row["reason"]))
        else:
            report.add_good(np.array([row["length"]]), np.array([row["truncated"]]))
    return report


def test_the_check_names_each_problem(tiny_bundle, folder):
    write_dataset(folder, BAD_DATASET)
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=200)
    rows = check(BAD_DATASET + ["{not json"], encoder)
    kinds = {row["id"]: row["kind"] for row in rows if row["kind"]}
    assert kinds == {"missing": "missing_image", "corrupt": "unreadable_image", "bad-turns": "malformed",
                     "long": "no_trained_token", "#6": "malformed"}  # fmt: skip
    good = [row for row in rows if not row["kind"]]
    assert [row["id"] for row in good] == ["good-1", "good-2"]
    assert [row["length"] for row in good] == [len(encoder.encode(parse_record(r)).input_ids) for r in BAD_DATASET[::5]]
    missing = next(row for row in rows if row["id"] == "missing")
    assert missing["image_sizes"] == [-1] and "image not found" in missing["reason"]  # no stamp: checked again next time
    assert rows[0]["image_sizes"] == [(folder / "a.png").stat().st_size]
    report = report_of(rows)
    text = report.format()
    assert "7 samples, 2 ok, 5 with problems" in text and "- missing: missing_image: image not found" in text
    # images whose tokens cannot fit are a different error from a text that is merely cut
    tight = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=36)  # "<s>[INST]" + 36 image tokens
    assert check([BAD_DATASET[0]], tight)[0]["kind"] == "too_long"


def test_policy_fails_or_skips_with_ids(tiny_bundle, folder):
    from llava_platform.data.validate import DataError

    write_dataset(folder, BAD_DATASET)
    report = report_of(check(BAD_DATASET, SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=200)))
    with pytest.raises(DataError, match=r"(?s)bad records \(set data.on_bad_record: skip.*- missing: missing_image"):
        report.enforce("fail", max_untrainable_fraction=1.0)
    with pytest.raises(DataError, match=r"1 of 6 samples have no trained token \(16.7% > data.max_untrainable_fraction=0.1\): long"):
        report.enforce("skip", max_untrainable_fraction=0.1)
    report.enforce("skip", max_untrainable_fraction=0.2)  # within the threshold: skipped and reported


def test_a_report_keeps_the_first_problems_and_counts_the_rest():
    report = ValidationReport("big.json")
    for i in range(500):
        report.add(Problem(f"r{i}", "missing_image", "image not found"))
    report.add_good(np.array([40]), np.array([False]))
    report.problems_file = "cache/problems.jsonl"
    assert report.bad == 500 and report.ok == 1 and len(report.problems) == 50
    assert "... and 450 more (every one in cache/problems.jsonl)" in report.format()


@pytest.mark.parametrize("mode", ["pad", "anyres"])
def test_the_check_agrees_with_the_full_encode_on_every_record(mode, tmp_path):
    """Header sizes -> image tokens -> the same ids, labels and truncation as decoding the pixels: here with images of
    many sizes (anyres: the token count depends on them), several images, text-only, long and cut samples."""
    bundle = build_model(ModelSpec(preset="tiny", image_mode=mode))
    rng = random.Random(0)
    sizes = [(rng.randint(8, 400), rng.randint(8, 400)) for _ in range(12)]
    for i, (w, h) in enumerate(sizes):
        make_image(w, h, seed=i).save(tmp_path / f"{i}.png")
    records = []
    for i in range(40):
        n = rng.choice([0, 1, 1, 1, 2])
        images = [f"{rng.randrange(12)}.png" for _ in range(n)]
        before, after = "where " * rng.choice([0, 0, 150, 260]), "how many " * rng.randint(1, 60)  # images late: too long
        question = before + " ".join("<image>" for _ in images) + " " + after
        convs = [{"from": "human", "value": question}, {"from": "gpt", "value": "many " * rng.randint(1, 40)}]
        records.append({"id": f"r{i}", "conversations": convs} | ({"image": images} if images else {}))
    late = [{"from": "human", "value": "where " * 260 + "<image> <image>"}, {"from": "gpt", "value": "here"}]
    records.append({"id": "late", "image": ["0.png", "1.png"], "conversations": late})  # (one image moves to the front)
    encoder = SampleEncoder(bundle.processor, bundle.template, tmp_path, max_length=256)
    rows = check(records, encoder)
    for record, row in zip(records, rows):
        try:
            sample = encoder.encode(parse_raw(json.dumps(record), "x"))
            expected = ("no_trained_token", 0) if sample.num_trained == 0 else ("", len(sample.input_ids))
        except ValueError as e:
            expected = ("too_long" if "max_length" in str(e) else "malformed", 0)
        assert (row["kind"], row["length"]) == expected, (record, row)
        if not row["kind"]:
            assert row["truncated"] == sample.truncated
    assert {row["kind"] for row in rows} >= {"", "too_long", "no_trained_token"} and any(row["truncated"] for row in rows)


def validate_data_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """jobs.validate_data's main() in this process (a driver of the shared cluster: ray_client): exit code, out, err."""
    from jobs.validate_data import main

    monkeypatch.setattr(sys, "argv", ["validate_data", *args])
    with pytest.raises(SystemExit) as exit:
        main()
    out, err = capsys.readouterr()
    return exit.value.code, out, err


def test_validate_data_cli(folder, ray_client, tmp_path, monkeypatch, capsys):
    path = write_dataset(folder, BAD_DATASET)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    address = {"RAY_ADDRESS": ray_client.gcs}  # the shared test cluster: no Ray start per call
    result = run_job("validate_data", "--data", str(path), "--image-folder", str(folder), "--template", "vicuna_v1",
                     "--max-length", "200", *cache, env=address)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    for rid in ("missing", "corrupt", "bad-turns", "long"):
        assert f"- {rid}: " in result.stdout
    assert "tokens per sample: p50" in result.stdout and "records checked in" in result.stdout
    # the same command in this process: a good set passes, and a second run comes from the cache
    good = folder / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in BAD_DATASET if r["id"].startswith("good")))
    code, out, err = validate_data_in_process(monkeypatch, capsys, "--data", str(good), "--image-folder", str(folder), *cache)
    assert code == 0 and "2 samples, 2 ok, 0 with problems" in out, out + err
    code, out, err = validate_data_in_process(monkeypatch, capsys, "--data", str(good), "--image-folder", str(folder), *cache)
    assert code == 0 and "from the cache (no image changed)" in out, out + err
    code, out, err = validate_data_in_process(monkeypatch, capsys, "--data", str(good), "--template", "vicunaa", *cache)
    assert code == 2 and "did you mean 'vicuna_v1'" in err


def test_the_first_trained_token_from_a_head_of_the_text_is_the_whole_texts(tiny_bundle):
    """The check finds whether a cut sample keeps a trained token from the head of its text (encode.first_trained_token):
    the same index as labelling the whole text, long prompts and empty replies included."""
    from llava_platform.data.encode import IGNORE_INDEX, encode_rendered, first_trained_token, token_ids_many

    rng = random.Random(3)
    for n in range(12):
        words = lambda k: " ".join(rng.choice(["red", "a cat", "where?", "é", "2"]) for _ in range(k))  # noqa: E731
        turns = [{"from": ("human", "gpt")[t % 2], "value": words(rng.choice([0, 1, 30, 300]) if t % 2 else rng.randint(1, 400))}
                 for t in range(2 * rng.randint(1, 4))]  # fmt: skip
        rendered = tiny_bundle.template.render(parse_record({"id": "x", "conversations": turns}).messages)
        whole = encode_rendered(tiny_bundle.tokenizer, rendered)
        [ids] = token_ids_many(tiny_bundle.tokenizer, [rendered.text])
        assert ids == whole.input_ids
        expected = next((i for i, label in enumerate(whole.labels) if label != IGNORE_INDEX), None)
        assert first_trained_token(tiny_bundle.tokenizer, rendered, ids) == expected, n
