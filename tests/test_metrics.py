import pytest

from llava_platform.eval.metrics import accuracy, exact_match, normalize_answer


def test_exact_match_normalises_case_space_and_final_period():
    assert normalize_answer("  Top   Left. ") == "top left"
    assert exact_match("Red.", "red") and not exact_match("reddish", "red") and not exact_match("2", "two")


def test_accuracy():
    assert accuracy(["red", "Blue", "3"], ["red", "blue", "2"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        accuracy(["a", "b"], ["a"])
