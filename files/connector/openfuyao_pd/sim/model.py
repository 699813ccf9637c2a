"""The simulated model: a deterministic tokenizer, generator and KV-cache content.

Everything here is a pure function of its inputs so that a prefill/decode path and a direct
path produce the same tokens, and a decode instance can recompute the bytes it expects to
receive from a prefill instance and detect corrupted or foreign KV.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import struct
from collections.abc import Sequence

VOCAB_SIZE = 512  # the tiny llama's vocabulary
EOS_TOKEN_ID = 2
_FIRST_WORD_ID = 3  # 0 pad, 1 bos, 2 eos
_WORD_RE = re.compile(r"\S+")
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be", "fi", "ho", "ju")

# Default KV size per token of the tiny llama: 2 layers x (k, v) x 4 kv heads x head_dim 64 x bf16.
TINY_LLAMA_KV_BYTES_PER_TOKEN = 2 * 2 * 4 * 64 * 2


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Size of one token's KV cache for a decoder-only transformer."""
    return layers * 2 * kv_heads * head_dim * dtype_bytes


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}


def kv_bytes_per_token_from_hf_config(config: dict) -> int | None:
    """KV bytes per token from a Hugging Face config.json (None when the shape is incomplete)."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    dtype = _DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"), 2)
    return kv_bytes_per_token(layers, heads, head_dim, dtype)


@functools.lru_cache(maxsize=65536)
def _word_id(word: str) -> int:
    digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
    return _FIRST_WORD_ID + int.from_bytes(digest, "big") % (VOCAB_SIZE - _FIRST_WORD_ID)


def tokenize(text: str) -> list[int]:
    """One token per whitespace-separated word, so prompt lengths are easy to reason about."""
    return [_word_id(word) for word in _WORD_RE.findall(text)]


def token_text(token_id: int) -> str:
    """A pronounceable word for a token id (the same id always gives the same word)."""
    if token_id == EOS_TOKEN_ID:
        return ""
    high, low = divmod(token_id, len(_SYLLABLES))
    return " " + _SYLLABLES[high % len(_SYLLABLES)] + _SYLLABLES[low] + str(token_id % 7)


def render_chat(messages: Sequence[dict]) -> str:
    """A fixed chat template: one line per message, then the assistant turn."""
    parts = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        parts.append(f"<|{message.get('role', 'user')}|> {content}")
    parts.append("<|assistant|>")
    return "\n".join(parts)


def prompt_digest(prompt_ids: Sequence[int]) -> bytes:
    return hashlib.sha256(struct.pack(f"<{len(prompt_ids)}I", *prompt_ids)).digest()


def generate_token(digest: bytes, seed: int, position: int) -> int:
    """The output token at ``position`` (0 = first generated token): a pure function."""
    raw = hashlib.blake2b(digest + struct.pack("<qI", seed, position), digest_size=8).digest()
    return _FIRST_WORD_ID + int.from_bytes(raw, "big") % (VOCAB_SIZE - _FIRST_WORD_ID)


def block_hashes(prompt_ids: Sequence[int], block_size: int, model_tag: str) -> list[bytes]:
    """Chained hashes of the full blocks of a prompt (like vLLM's prefix-cache block hashes)."""
    hashes: list[bytes] = []
    parent = hashlib.sha256(model_tag.encode()).digest()
    for start in range(0, len(prompt_ids) - block_size + 1, block_size):
        chunk = prompt_ids[start:start + block_size]
        parent = hashlib.sha256(parent + struct.pack(f"<{len(chunk)}I", *chunk)).digest()
        hashes.append(parent)
    return hashes


_POOL_BYTES = 4 * 1024 * 1024


@functools.lru_cache(maxsize=4)
def _kv_pool(model_tag: str, size: int) -> bytes:
    """Pseudo-random bytes standing for the weights' output space (made once per model)."""
    return random.Random(hashlib.sha256(model_tag.encode()).digest()).randbytes(size)


def kv_content(prompt_ids: Sequence[int], bytes_per_token: int, model_tag: str, block_size: int = 16) -> bytes:
    """The prompt's KV cache bytes, block by block.

    A block's bytes are a window of a per-model pseudo-random pool at an offset given by the
    chained hash of the prefix up to the block's end (the prefix-cache hash for full blocks),
    so they depend on every earlier token and on position: a shifted, truncated or foreign
    read does not match. Cost: one hash and one memcpy per block. ``model_tag`` stands for
    the weights: two engines of the same model compute the same bytes.
    """
    if bytes_per_token <= 0 or not prompt_ids:
        return b""
    window = block_size * bytes_per_token
    pool = memoryview(_kv_pool(model_tag, max(_POOL_BYTES, 2 * window)))
    span = len(pool) - window
    hashes = block_hashes(prompt_ids, block_size, model_tag)
    tail = len(prompt_ids) % block_size
    if tail:  # the partial last block has its own hash (it is never prefix-cached)
        parent = hashes[-1] if hashes else hashlib.sha256(model_tag.encode()).digest()
        chunk = prompt_ids[len(prompt_ids) - tail:]
        hashes.append(hashlib.sha256(parent + b"partial" + struct.pack(f"<{tail}I", *chunk)).digest())
    parts = []
    for index, block_hash in enumerate(hashes):
        offset = int.from_bytes(block_hash[:8], "little") % span
        size = tail * bytes_per_token if tail and index == len(hashes) - 1 else window
        parts.append(pool[offset:offset + size])
    return b"".join(parts)


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
