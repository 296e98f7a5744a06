"""The embedded demo: synthetic scenes -> tiny LLaVA checkpoint -> dataset check -> answers on held-out questions.

    python -m jobs.demo --out demo_output

No cluster, no downloads. The tiny model is random-init here (training arrives with
jobs.pretrain / jobs.finetune), so its answers are noise and its accuracy is ~0: the demo
proves the path data -> model -> checkpoint -> engine end to end, not the learning.
"""

import argparse
import json
import time
from pathlib import Path

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import ModelSpec, SamplingSpec
from llava_platform.data.images import load_image
from llava_platform.data.records import read_records
from llava_platform.data.samples import SampleEncoder
from llava_platform.data.synthetic import generate
from llava_platform.data.validate import validate_dataset
from llava_platform.eval.metrics import accuracy
from llava_platform.inference.engine import GenerationRequest, InferenceEngine
from llava_platform.model import build_model, load_checkpoint, save_checkpoint


def step(title: str, started: float) -> float:
    print(f"\n== {title} (t={time.perf_counter() - started:.1f}s)")
    return time.perf_counter()


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="folder for the data and checkpoints")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--show", type=int, default=5, help="question/answer pairs to print")
    args = parser.parse_args()
    quiet_transformers()
    started = time.perf_counter()
    out = Path(args.out)

    step("1. synthetic scenes", started)
    data = generate(out / "data", args.num_train, args.num_test, seed=0)
    print(f"{args.num_train} train scenes (captions + QA), {args.num_test} held-out test questions in {data.root}")

    step("2. tiny LLaVA checkpoint (random init)", started)
    bundle = build_model(ModelSpec(preset="tiny"))
    checkpoint = save_checkpoint(bundle, out / "tiny-init")
    params = sum(p.numel() for p in bundle.model.parameters())
    print(f"{type(bundle.model).__name__}: {params / 1e6:.2f} M parameters, template {bundle.spec.template} -> {checkpoint}")

    step("3. dataset check (same as jobs.validate_data)", started)
    encoder = SampleEncoder(bundle.processor, bundle.template, data.image_folder)
    report, _ = validate_dataset(str(data.finetune), encoder)
    print(report.format())

    step("4. answers on held-out questions (engine, batched greedy decoding)", started)
    engine = InferenceEngine(load_checkpoint(checkpoint))
    tests = list(read_records(data.test))
    requests = [GenerationRequest(r.messages[:1], [load_image(data.image_folder / r.images[0])]) for r in tests]
    results = []
    for i in range(0, len(requests), 32):
        results += engine.generate(requests[i : i + 32], SamplingSpec(max_new_tokens=8))
    predictions = [r.text for r in results]
    golds = [r.extra["answer"] for r in tests]
    for record, prediction in list(zip(tests, predictions))[: args.show]:
        question = record.messages[0].content.removeprefix("<image>\n")
        print(f"Q: {question}\n   gold: {record.extra['answer']!r}  model: {prediction!r}")
    score = accuracy(predictions, golds)
    print(f"\nexact-match accuracy on {len(tests)} held-out questions: {score:.1%} (untrained model)")
    (out / "demo_results.json").write_text(json.dumps({"accuracy": score, "num_test": len(tests)}, indent=1))
    print(f"done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
