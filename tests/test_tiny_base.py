"""The tiny base, jobs/assets/tiny-base: the model `jobs.demo --data X --base` starts from. How it was built
(its recipe.json) and the check that it still scores what that record says are research, in
experiments/tests/test_rebuild_base.py."""

from conftest import REPO
from llava_platform.data.synthetic import generate
from llava_platform.eval.heldout import HeldOutAnswers, answer_held_out
from llava_platform.model.checkpoint import load_checkpoint_spec

SHIPPED = REPO / "jobs" / "assets" / "tiny-base"


def test_by_kind_scores_each_kind_and_skips_records_without_one():
    answers = HeldOutAnswers(questions=["q"] * 4, golds=["red", "2", "yes", "no"],
                             predictions=["Red.", "3", "yes", "yes"], kinds=["color", "count", "exists", None])  # fmt: skip
    assert answers.accuracy == 0.5
    assert answers.by_kind() == {"color": 1.0, "count": 0.0, "exists": 1.0}


def test_shipped_base_loads_and_answers(tmp_path):
    """An HF checkpoint with the tiny preset's template saved beside it, that answers the demo's questions
    (experiments/tests/test_rebuild_base.py re-scores it on the set its record names)."""
    data = generate(tmp_path, 0, 8, seed=0)
    answers = answer_held_out(SHIPPED, data.test, data.image_folder)
    assert load_checkpoint_spec(SHIPPED).template == "mistral_instruct"
    assert len(answers.predictions) == 8 and all(p.strip() for p in answers.predictions)
