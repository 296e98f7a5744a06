"""The data check on Ray Data (the shared test cluster): every bad record found, the good samples' plan inputs,
the results cached per image stamp, records and images on object storage."""

import json

import numpy as np
import pytest
import torch

from conftest import make_image
from llava_platform.config import DataSpec
from llava_platform.data.pipeline import (EncoderConfig, GoodSamples, check_cache_fits, check_dataset, encoded_bytes,
                                          stream_samples)
from llava_platform.data.records import parse_record
from llava_platform.data.samples import SampleEncoder
from llava_platform.storage import Storage

pytestmark = pytest.mark.slow


def qa(rid, image="a.png", answer="red"):
    convs = [{"from": "human", "value": "<image>\nWhat color is it?" if image else "What is red?"}, {"from": "gpt", "value": answer}]
    return {"id": rid, "conversations": convs} | ({"image": image} if image else {})


@pytest.fixture
def dataset(tmp_path):
    """300 records: 240 with one of three images (b.png: 60 of them), 30 text-only, 30 missing their image."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, (w, h) in {"a.png": (64, 48), "b.png": (40, 90), "c.png": (120, 100)}.items():
        make_image(w, h, seed=len(name)).save(folder / name)
    records = [qa(f"r{i}", ["a.png", "b.png", "c.png", "a.png"][i % 4]) for i in range(240)]
    records += [qa(f"t{i}", image=None) for i in range(30)] + [qa(f"m{i}", image=f"gone/{i}.png") for i in range(30)]
    path = folder / "finetune.json"
    path.write_text(json.dumps(records, indent=2))
    return folder, path, records


def check(tiny_bundle, folder, path, cache, storage=None, logged=None):
    data = DataSpec(path=str(path), image_folder=str(folder), max_length=200, cache_dir=str(cache), preprocess_workers=2,
                    preprocess_cpus=0.5)  # fmt: skip
    encoder = EncoderConfig.for_data(data, tiny_bundle.processor, tiny_bundle.template.name, storage or Storage()).shared()
    return check_dataset(data, encoder, str(cache), log=(logged if logged is not None else []).append)


def test_the_check_finds_every_bad_record_and_keeps_the_good_ones_in_file_order(ray_client, tiny_bundle, dataset, tmp_path):
    folder, path, records = dataset
    checked = check(tiny_bundle, folder, path, tmp_path / "cache")
    report = checked.report
    assert (report.total, report.ok, report.counts["missing_image"]) == (300, 270, 30) and not checked.cached
    assert np.array_equal(checked.good.index, np.arange(270))  # file order: the plan's sample numbering
    assert checked.good.has_image.sum() == 240 and not checked.good.has_image[240:].any()
    encoder = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder, max_length=200)
    expected = [len(encoder.encode(parse_record(r)).input_ids) for r in records[:270]]
    assert checked.good.length.tolist() == expected  # from headers and text: the full encode's lengths
    lines = [json.loads(line) for line in open(report.problems_file)]  # every problem, not only the 50 listed
    assert len(report.problems) == 30 and len(lines) == 30 and {line["id"] for line in lines} == {f"m{i}" for i in range(30)}
    assert checked.shards.count == 300 and report.percentiles()["max"] == max(expected)


def test_a_resubmit_reuses_the_check_and_rechecks_only_changed_images(ray_client, tiny_bundle, dataset, tmp_path):
    folder, path, records = dataset
    cache = tmp_path / "cache"
    first = check(tiny_bundle, folder, path, cache)
    logged = []
    again = check(tiny_bundle, folder, path, cache, logged=logged)
    assert again.cached and "300 records from the cache (no image changed)" in logged[-1]
    assert again.report.counts == first.report.counts and np.array_equal(again.good.length, first.good.length)
    # b.png truncated (a new size and mtime): its 60 records are checked again and found unreadable
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])
    (folder / "gone").mkdir()
    make_image(30, 30).save(folder / "gone" / "3.png")  # and one missing image appears
    logged = []
    third = check(tiny_bundle, folder, path, cache, logged=logged)
    assert "(61 checked again: their images changed)" in logged[-1]
    assert third.report.counts["unreadable_image"] == 60 and third.report.counts["missing_image"] == 29
    assert third.report.ok == 211 and 273 in third.good.index and 1 not in third.good.index  # m3 is good now, r1 not
    fourth = check(tiny_bundle, folder, path, cache, logged=logged)  # the re-checked rows are the cache now
    assert "(no image changed)" in logged[-1] and fourth.report.counts == third.report.counts


def test_records_and_images_on_object_storage(ray_client, tiny_bundle, dataset, tmp_path, s3_server):
    folder, _, _ = dataset
    prefix = s3_server.upload_folder(folder, "check-test")
    checked = check(tiny_bundle, prefix, f"{prefix}/finetune.json", f"s3://{s3_server.BUCKET}/check-cache", s3_server.storage)
    assert (checked.report.ok, checked.report.counts["missing_image"]) == (270, 30)
    assert "image not found: s3://llava/check-test/gone/" in checked.report.problems[0].reason


def test_cache_encoded_refuses_a_set_the_object_store_cannot_hold(tiny_bundle):
    """uint8 pixels, 3 x 96 x 96 per tiny image, and 8 bytes a token; more than half the object store is refused."""
    good = GoodSamples(np.arange(10), np.full(10, 50, np.int32), np.array([True] * 6 + [False] * 4))
    need = encoded_bytes(good, tiny_bundle.processor)
    assert need == 6 * 3 * 96 * 96 + 8 * 500
    check_cache_fits(good, tiny_bundle.processor, capacity=2 * need, path="d.json")
    with pytest.raises(ValueError, match=r"data.cache_encoded: the 10 samples of d.json encode to ~0.0 GB, more than half "
                                         r"of this Ray cluster's object store .* set data.cache_encoded: false"):  # fmt: skip
        check_cache_fits(good, tiny_bundle.processor, capacity=need, path="d.json")


def test_a_worker_streams_its_samples_in_plan_order_and_text_only_blocks_too(ray_client, tiny_bundle, dataset, tmp_path):
    """stream_samples: the records at these file indices, encoded by Ray Data tasks (uint8 pixels), in the order
    asked, whatever mix of image and text-only rows a block holds; nothing else is read."""
    folder, path, records = dataset
    checked = check(tiny_bundle, folder, path, tmp_path / "cache")
    data = DataSpec(path=str(path), image_folder=str(folder), preprocess_workers=2, preprocess_cpus=0.5)
    encoder = EncoderConfig.for_data(data, tiny_bundle.processor, tiny_bundle.template.name, Storage()).shared()
    indices = np.array([259, 3, 250, 241] + list(range(240, 270)) + [7, 7, 0])  # text-only alone, mixed, repeated
    streamed = list(stream_samples(indices, checked.shards, encoder, data))
    local = SampleEncoder(tiny_bundle.processor, tiny_bundle.template, folder)
    assert [s.id for s in streamed] == [records[i]["id"] for i in indices]
    for sample, i in zip(streamed, indices):
        expected = local.encode(parse_record(records[i]))
        assert sample.input_ids == expected.input_ids and sample.labels == expected.labels
        assert (sample.pixel_values is None) == (expected.pixel_values is None)
        if expected.pixel_values is not None:
            assert sample.pixel_values.dtype == torch.uint8 and torch.equal(sample.pixel_values, expected.pixel_values)
