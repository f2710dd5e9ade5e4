"""The original Lucie run's tokenization rules, written plainly from its code, as the tests' reference.

Lucie-Training ``tokenization/tokenizer_apply.py`` (``Encoder.encode``) ``rstrip()``s each text; the
Megatron-DeepSpeed fork's ``_AutoTokenizer.tokenize`` encodes a text longer than 100,000 characters slice by
slice (``add_special_tokens=False``), then adds BOS and EOS, and a shorter text with the Hugging Face
tokenizer's own template plus ``add_eos_token``: ``<s> ids </s>``.
"""

from __future__ import annotations

from tokenizers import Tokenizer

CHUNK_MAX = 100000
BOS, EOS = 0, 1


def original_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids the original run stored for one document."""
    text = text.rstrip()
    if len(text) > CHUNK_MAX:
        tokens = []
        for i in range(0, len(text), CHUNK_MAX):
            tokens += tokenizer.encode(text[i : i + CHUNK_MAX], add_special_tokens=False).ids
        return [BOS] + tokens + [EOS]
    return tokenizer.encode(text).ids + [EOS]  # the template adds <s>; add_eos_token adds </s>
