"""Batch inputs become questions, one row each, a bad one carrying its error instead of being dropped."""

from llava_platform.batch.questions import from_conversation, from_image, from_question_line
from llava_platform.data.templates import Message


def test_a_question_line_is_asked_image_first():
    q = from_question_line({"question_id": 7, "image": "a.jpg", "text": "What is it?", "category": "color"}, "line 1")
    assert (q.question_id, q.images, q.prompt, q.error) == ("7", ["a.jpg"], "What is it?", None)
    assert q.messages == [Message("user", "<image>\nWhat is it?")] and q.metadata == {"category": "color"}
    suffixed = from_question_line({"question_id": 8, "text": "Why?"}, "line 2", suffix="\nAnswer in one word.")
    assert suffixed.images == [] and suffixed.messages == [Message("user", "Why?\nAnswer in one word.")]


def test_bad_question_lines_are_rows_with_their_error():
    assert from_question_line("not an object", "line 3").error.startswith("bad_record") and \
        from_question_line("x", "line 3").question_id == "line 3"  # fmt: skip
    assert from_question_line({"question_id": 1, "image": "a.jpg", "text": "  "}, "line 1").error == "empty_question"
    assert "'text' must be" in from_question_line({"question_id": 2, "image": "a.jpg"}, "line 1").error
    assert "'image' must be a path" in from_question_line({"question_id": 3, "image": 5, "text": "q"}, "line 1").error
    assert "holds '<image>'" in from_question_line({"question_id": 4, "text": "<image> q"}, "line 1").error


def test_every_human_turn_of_a_conversation_is_asked_with_the_gold_history():
    record = {"id": "r1", "image": "a.jpg", "category": "scene", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the square?"}, {"from": "gpt", "value": "Blue."}]}  # fmt: skip
    first, second = from_conversation(record, "#0")
    assert (first.question_id, second.question_id) == ("r1_0", "r1_1")
    assert first.messages == [Message("user", "<image>\nWhat color is the circle?")] and first.images == ["a.jpg"]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"] and second.messages[1].content == "Red."
    assert second.images == ["a.jpg"] and second.prompt == "And the square?"
    assert first.metadata == {"category": "scene", "gold": "Red."} and second.metadata["gold"] == "Blue."


def test_bad_conversations_are_one_row_with_their_error():
    [bad] = from_conversation({"id": "r2", "conversations": []}, "#5")
    assert bad.question_id == "r2" and bad.error.startswith("bad_record: 'conversations' must be")
    [nameless] = from_conversation(["not a record"], "#6")
    assert nameless.question_id == "#6" and nameless.error.startswith("bad_record")
    empty = from_conversation({"id": "r3", "conversations": [{"from": "human", "value": "<image>"},
                                                             {"from": "gpt", "value": "x"}], "image": "a.jpg"}, "#0")  # fmt: skip
    assert [q.error for q in empty] == ["empty_question"]


def test_an_image_of_a_folder_is_captioned_with_the_jobs_prompt():
    q = from_image("imgs/b.png", "Describe the image.")
    assert (q.question_id, q.images, q.messages) == ("imgs/b.png", ["imgs/b.png"], [Message("user", "<image>\nDescribe the image.")])


def test_a_task_suffix_goes_on_each_asked_turn_not_on_the_history():
    record = {"id": "r1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich is it?\nA. cat\nB. dog"}, {"from": "gpt", "value": "A"},
        {"from": "human", "value": "And now?"}, {"from": "gpt", "value": "B"}]}  # fmt: skip
    first, second = from_conversation(record, "#0", suffix="\nAnswer with the option's letter.")
    assert first.messages[-1].content == "<image>\nWhich is it?\nA. cat\nB. dog\nAnswer with the option's letter."
    assert second.messages[0].content == "<image>\nWhich is it?\nA. cat\nB. dog"  # the gold history as it was
    assert second.prompt == "And now?\nAnswer with the option's letter."


def test_a_null_question_id_is_named_by_its_line():
    assert from_question_line({"question_id": None, "text": "q"}, "line 9").question_id == "line 9"


def test_image_globs_match_within_a_folder_and_across_with_double_star(tmp_path):
    from llava_platform.batch.inputs import image_paths
    from llava_platform.storage import Storage

    for name in ("x.png", "b/y.jpg", "b/c/q.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    storage = Storage()
    assert image_paths(str(tmp_path), storage) == (str(tmp_path), ["b/c/q.png", "b/y.jpg", "x.png"])
    assert image_paths(f"{tmp_path}/*.png", storage)[1] == ["x.png"]
    assert image_paths(f"{tmp_path}/**/*.png", storage)[1] == ["b/c/q.png", "x.png"]
    assert image_paths(f"{tmp_path}/b/*", storage) == (f"{tmp_path}/b", ["y.jpg"])
