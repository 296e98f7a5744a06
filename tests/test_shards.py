"""A records file read once, streaming, into cached Parquet shards; records then read back by index."""

import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llava_platform.data.shards as shards_module
from llava_platform.data.shards import ShardReader, iter_raw_entries, prepare_shards
from llava_platform.storage import Storage


def records(n=300, seed=0):
    rng = random.Random(seed)
    out = [{"id": f"r{i}", "image": f"img/{i}.png", "conversations": [{"from": "human", "value": "<image>\né" * rng.randint(1, 30)},
                                                                     {"from": "gpt", "value": "a, b] {c}" * rng.randint(0, 9)}]}
           for i in range(n)]  # fmt: skip
    return out + [12345, "a string", [1, {"x": 2}]]  # not records: the check calls them malformed


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_streams_element_by_element_whatever_the_chunk(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(shards_module, "CHUNK", chunk)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records(60), indent=indent, ensure_ascii=False), encoding="utf-8")
    got = list(iter_raw_entries(str(path)))
    assert [json.loads(raw) for _, raw in got] == records(60) and got[7][0] == "#7"


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_a_broken_json_array_names_the_line_and_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(shards_module, "CHUNK", chunk)
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b", "x": ]\n]')
    with pytest.raises(ValueError, match=r"broken.json: malformed JSON at line 3 column 19: Expecting value"):
        list(iter_raw_entries(str(path)))
    path.write_text('[{"id": "a"} {"id": "b"}]')
    with pytest.raises(ValueError, match=r"line 1 column 14: expected ',' or '\]' after element 0"):
        list(iter_raw_entries(str(path)))


def test_jsonl_lines_keep_their_numbers_and_parquet_rows_become_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a"}\n\n{not json\n{"id": "c"}')
    assert list(iter_raw_entries(str(path))) == [("line 1", '{"id": "a"}'), ("line 3", "{not json"), ("line 4", '{"id": "c"}')]
    table = pa.table({"id": ["p0", "p1"], "image": ["x.png", None],
                      "conversations": [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]] * 2})  # fmt: skip
    pq.write_table(table, tmp_path / "d.parquet")
    rows = [json.loads(raw) for _, raw in iter_raw_entries(str(tmp_path / "d.parquet"))]
    assert rows[0] == {"id": "p0", "image": "x.png", "conversations": table.column("conversations")[0].as_py()}
    assert "image" not in rows[1]  # a null column value is an absent field, as in JSON


def test_shards_are_made_once_and_read_back_by_index(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_module, "SHARD_ROWS", 64)  # several files and row groups from a small set
    monkeypatch.setattr(shards_module, "ROW_GROUP", 16)
    path, cache = tmp_path / "d.json", str(tmp_path / "cache")
    path.write_text(json.dumps(records(300), indent=1))
    logged = []
    shards = prepare_shards(str(path), Storage(), cache, log=logged.append)
    assert shards.count == 303 and len(shards.files) == 5 and len(logged) == 1
    assert shards.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # recorded with every model trained on it
    again = prepare_shards(str(path), Storage(), cache, log=logged.append)
    assert again == shards and len(logged) == 1  # the cache: nothing converted the second time
    order = random.Random(1).sample(range(303), 303)
    fetched = ShardReader(shards, Storage()).fetch(order + [5, 5])
    assert [json.loads(raw) for _, raw in fetched[:303]] == [records(300)[i] for i in order]
    assert fetched[303] == fetched[304] == ("#5", json.dumps(records(300)[5], indent=1).replace("\n", "\n "))
    with pytest.raises(IndexError, match="record indices \\[303\\] outside 0..302"):
        ShardReader(shards, Storage()).fetch([303])
    path.write_text(json.dumps(records(10)))  # a changed file: new shards
    assert prepare_shards(str(path), Storage(), cache, log=logged.append).count == 13 and len(logged) == 2


def test_unknown_formats_and_missing_files_are_named(tmp_path):
    (tmp_path / "d.csv").write_text("id\n1")
    with pytest.raises(ValueError, match=r"d.csv: unknown records format; use a .json .* .jsonl .* or .parquet"):
        prepare_shards(str(tmp_path / "d.csv"), Storage(), str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="data.path: .*nope.json does not exist"):
        prepare_shards(str(tmp_path / "nope.json"), Storage(), str(tmp_path / "cache"))


def test_records_and_shards_on_object_storage(s3_server, tmp_path):
    storage = s3_server.storage
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records(40)))
    source = s3_server.upload_folder(tmp_path / "src", "shards-test") + "/d.jsonl"
    shards = prepare_shards(source, storage, f"s3://{s3_server.BUCKET}/cache")
    assert shards.count == 43 and all(f.startswith("s3://llava/cache/records/") for f in shards.files)
    assert [json.loads(raw) for _, raw in ShardReader(shards, storage).fetch([39, 0])] == [records(40)[39], records(40)[0]]
