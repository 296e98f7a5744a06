"""The tiny preset's tokenizer, built by code (no download), and token set-up for any LLM tokenizer.

The tiny tokenizer is byte-level BPE: every UTF-8 string encodes with no unknown
token. Its merges are learnt, deterministically, from a fixed corpus (the
templates' fixed text plus plain English), so prompts stay short.

A leaf of the loading chain (no import from the package): assemble uses it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llava_platform.data.templates import TEMPLATES

__all__ = ["IMAGE_TOKEN", "PAD_TOKEN", "build_tiny_tokenizer", "add_platform_tokens"]

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]  # so chatml_direct works with the tiny model too
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD_TOKEN, IMAGE_TOKEN, *CHATML_TOKENS]

# Words the tiny model will see most; merges make them one or two tokens each.
_ENGLISH = """
the a an and or of to in on at is are was were be it this that these those there here what which who where
when why how many much one two three four five six seven eight nine ten zero yes no not nothing something
color colour shape object objects image picture photo left right top bottom middle center corner
red green blue yellow orange purple black white gray grey brown pink circle square triangle rectangle star
big small large tiny above below next between describe answer question please briefly word phrase
I you we they he she can could would should do does did have has had with without from for by as
"""


def _corpus() -> list[str]:
    texts = [t.system for t in TEMPLATES.values() if t.system]
    texts += [" ".join(t.roles) for t in TEMPLATES.values()]
    texts += ["[INST] [/INST] <<SYS>> <</SYS>> USER: ASSISTANT: Answer the question using a single word or phrase."]
    words = _ENGLISH.split()
    texts += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    texts += [w.capitalize() + "?" for w in words] + [f" {w}." for w in words] + [str(n) for n in range(100)]
    return texts * 4


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE with <s> prepended (like Llama), <image> and <pad> as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    bos_id = tok.token_to_id(BOS)
    # Offsets are kept untrimmed: label masking maps characters to tokens through them.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD_TOKEN,
        additional_special_tokens=CHATML_TOKENS,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",  # generation pads on the left; training collate pads explicitly
        model_max_length=4096,
    )


def add_platform_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Give an LLM's tokenizer the <image> token and a pad token; returns how many tokens were added.

    The caller resizes the embeddings to `len(tokenizer)` afterwards.
    """
    added = 0
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        added += tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    tokenizer.padding_side = "left"
    return added
