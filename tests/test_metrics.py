import pytest

from llava_platform.eval.answers import option_letter, vqa_normalize, yes_no
from llava_platform.eval.metrics import (
    accuracy, by_category, circular_accuracy, exact_match, normalize_answer, pope_scores, vqa_accuracy,
)  # fmt: skip


def test_exact_match_normalises_case_space_and_final_period():
    assert normalize_answer("  Top   Left. ") == "top left"
    assert exact_match("Red.", "red") and not exact_match("reddish", "red") and not exact_match("2", "two")


def test_accuracy():
    assert accuracy(["red", "Blue", "3"], ["red", "blue", "2"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        accuracy(["a", "b"], ["a"])


# ----------------------------------------------------------------- benchmark answers and scores


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs.", "2 dogs"),  # number words to digits, final period dropped
    ("none", "0"),
    ("The dog", "dog"),  # articles dropped
    ("an apple.", "apple"),
    ("Yes!", "yes"),
    ("1,000", "1000"),  # a comma inside a number joins it
    ("3.5 inches", "3.5 inches"),  # a period between digits stays
    ("dont know", "don't know"),  # the contraction table
    ("couldnt've", "couldn't've"),  # the table has this spelling (not "couldntve", which stays)
    ("Left-hand side", "left hand side"),  # a dash between words splits them
    ("red - blue", "red blue"),  # next to a space it just goes
    ("What's up?", "what 's up"),
])  # fmt: skip
def test_vqa_answer_normalisation(raw, normalised):
    assert vqa_normalize(raw) == normalised


def test_vqa_soft_accuracy_hand_computed():
    # 3 of 10 humans said "2": leaving out one of those 3 leaves 2 matches (2/3), any other leaves 3 (1)
    assert vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("2", ["2"] * 2 + ["x"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("two", ["2"] * 4 + ["x"] * 6) == 1.0
    assert vqa_accuracy("cat", ["dog"] * 10) == 0.0
    with pytest.raises(ValueError, match="no gold answers"):
        vqa_accuracy("cat", [])


@pytest.mark.parametrize("answer, read", [
    ("Yes", "yes"), ("No", "no"), ("No, there is no dog in the image.", "no"),
    ("There is not a cat.", "no"), ("Yes, there is a dog. No other animal.", "yes"),  # the first sentence only
    ("Nope", "yes"),  # not one of POPE's words: read as yes, as POPE's script does
])  # fmt: skip
def test_pope_reads_answers_as_its_script_does(answer, read):
    assert yes_no(answer) == read


def test_pope_scores_from_a_confusion_matrix():
    # labels yes,yes,yes,no,no,no,no,no ; answers give TP 2, FN 1, FP 1, TN 4
    labels = ["yes"] * 3 + ["no"] * 5
    answers = ["Yes", "yes.", "No", "Yes", "no", "No.", "No, not", "There is no cat."]
    scores = pope_scores(answers, labels)
    assert (scores["tp"], scores["fn"], scores["fp"], scores["tn"]) == (2, 1, 1, 4)
    assert scores["accuracy"] == pytest.approx(6 / 8) and scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)
    assert scores["yes_ratio"] == pytest.approx(3 / 8)
    none_yes = pope_scores(["no", "no"], ["yes", "no"])
    assert none_yes["precision"] == 0.0 and none_yes["f1"] == 0.0 and none_yes["accuracy"] == 0.5


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("C. A cat on a mat", "C"), ("Let me think. The answer is D.", "D"),
    ("E", None),  # only 4 options
    ("a cat", None), ("B is my guess", None),  # no form ScienceQA's scorer accepts: None, counted wrong
])  # fmt: skip
def test_option_letter_extraction(answer, letter):
    assert option_letter(answer, 4) == letter


def test_circular_accuracy_and_categories():
    assert circular_accuracy({"q1": [True, True, True, True], "q2": [True, False, True, True], "q3": [True]}) == 2 / 3
    breakdown = by_category([1.0, 0.0, 1.0, 1.0], ["color", "color", "shape", "count"])
    assert breakdown["color"] == {"score": 0.5, "count": 2} and breakdown["all"] == {"score": 0.75, "count": 4}
