"""Talk to a checkpoint about an image: one answer with --prompt, an interactive chat without it.

    python -m jobs.chat --checkpoint runs/tiny/final --image cat.png --prompt "What is in the picture?"
    python -m jobs.chat --checkpoint runs/tiny/final --image cat.png          # multi-turn; empty line or Ctrl-D ends
    python -m jobs.chat --checkpoint runs/tiny/final --image cat.png --load-4bit   # the LLM in 4-bit

--load-8bit / --load-4bit load the LLM quantized with bitsandbytes (model.quantization: 8bit / 4bit, NF4)
and the rest in float16, as LLaVA's own CLI does; the vision tower and projector stay unquantized.

Answers stream token by token. The image goes with the first question ("<image>\\n" + text),
as in LLaVA's own CLI; later turns carry the whole conversation.
"""

import argparse

import torch

from llava_platform.cli import quiet_transformers, user_errors_exit
from llava_platform.config import SamplingSpec
from llava_platform.data.images import load_image
from llava_platform.data.templates import IMAGE_PLACEHOLDER, Message
from llava_platform.inference.engine import GenerationRequest, InferenceEngine


def answer(engine: InferenceEngine, messages: list[Message], image, sampling: SamplingSpec) -> str:
    """Stream one reply to stdout; returns its text."""
    text = ""
    for event in engine.stream([GenerationRequest(messages, [image])], sampling):
        print(event.delta, end="", flush=True)
        if event.result is not None:
            text = event.result.text
    print()
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="HF-format checkpoint directory")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--prompt", default=None, help="one question; omit for an interactive chat")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=None)
    bits = parser.add_mutually_exclusive_group()  # both: exit 2, "argument --load-4bit: not allowed with argument --load-8bit"
    bits.add_argument("--load-8bit", action="store_true", help="load the LLM in 8-bit (bitsandbytes), the rest in float16")
    bits.add_argument("--load-4bit", action="store_true", help="load the LLM in 4-bit NF4 (bitsandbytes), the rest in float16")
    return parser


def load_engine(args: argparse.Namespace) -> InferenceEngine:
    """The checkpoint as the flags ask. Quantized, the model loads in float16 (bitsandbytes' int8 matmul casts other
    inputs to float16, warning at every layer and token); without a flag, a saved spec's quantization (an adapter
    checkpoint's base) holds."""
    bits = "4bit" if args.load_4bit else "8bit" if args.load_8bit else None
    quantized = {"quantization": bits, "dtype": "float16"} if bits else {}
    device = "cuda" if torch.cuda.is_available() else None  # a GPU when there is one, as LLaVA's CLI
    return InferenceEngine.from_checkpoint(args.checkpoint, device, **quantized)


@user_errors_exit
def main() -> None:
    args = build_parser().parse_args()
    quiet_transformers()

    engine = load_engine(args)
    image = load_image(args.image)
    sampling = SamplingSpec(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
    messages: list[Message] = []
    first = True
    while True:
        if args.prompt is not None:
            question = args.prompt
        else:
            try:
                question = input("USER: ").strip()
            except EOFError:
                question = ""
            if not question:
                break
            print("ASSISTANT: ", end="", flush=True)
        messages.append(Message("user", (IMAGE_PLACEHOLDER + "\n" if first else "") + question))
        first = False
        messages.append(Message("assistant", answer(engine, messages, image, sampling)))
        if args.prompt is not None:
            break


if __name__ == "__main__":
    main()
