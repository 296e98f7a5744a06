"""The tiny preset's byte-level tokenizer: no unknown tokens, deterministic, compact on its domain."""

import subprocess
import sys

from llava_platform.model.tokenizer import IMAGE_TOKEN, build_tiny_tokenizer


def test_any_text_round_trips_without_unknown_tokens():
    tok = build_tiny_tokenizer()
    for text in ["What color is the triangle?", "Zebra-crossing, naïve café; 東京 🚀 \t tabs\nnewlines", "~`|{}^"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_special_tokens_are_single_ids():
    tok = build_tiny_tokenizer()
    for token in [IMAGE_TOKEN, "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]:
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tok.image_token == IMAGE_TOKEN and tok.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tok("hi")["input_ids"][0] == tok.bos_token_id and tok.padding_side == "left"


def test_build_is_deterministic_across_processes():
    code = "import hashlib; from llava_platform.model.tokenizer import build_tiny_tokenizer as b; print(hashlib.sha256(b().backend_tokenizer.to_str().encode()).hexdigest())"
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(digests) == 1


def test_domain_text_is_compact():
    tok = build_tiny_tokenizer()
    question = "What color is the circle at the top left?"
    assert len(tok(question, add_special_tokens=False)["input_ids"]) <= 12
