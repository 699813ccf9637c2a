"""Build the embedded default model: a tiny random-weight Llama plus a locally trained tokenizer.

Nothing is downloaded. The same seed always gives the same bytes, so the model directory can be
rebuilt on any host and compared, and an existing complete build is left alone (the cache).
vLLM's CPU attention rejects head_dim 16, hence hidden 256 with 4 heads (head_dim 64).

Needs `torch`, `safetensors` and `tokenizers`, which every vLLM environment has; it is run with
the vLLM venv's python by the `vllm_pd` role.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

NAME = "tiny-llama"
SCHEMA = 1  # bump when the layout below changes so cached builds are rebuilt
DEFAULT_SEED = 1234

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2: match CONFIG's pad/bos/eos
_WORD_TEXT = (
    "the a of to and in is it you that he was for on are with as his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find prefill "
    "decode cache block token model server request proxy transfer memory layer tensor device "
    "你好 你是谁 模型 推理 服务 缓存 解码 预填充"
)
WORDS = _WORD_TEXT.split(" ")
STAMP = ".openfuyao-tiny-model.json"
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json")


def corpus(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic training text: seeded sentences over a fixed word list plus ASCII/digits."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        n = rng.randint(4, 16)
        out.append(" ".join(rng.choice(WORDS) for _ in range(n)) + f" {i % 100}.")
    return out


def build_tokenizer(seed: int) -> tuple[str, dict[str, Any]]:
    """Train a byte-level BPE of CONFIG's vocab size; return (tokenizer.json text, tokenizer_config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    # Prepend BOS like Llama tokenizers do, so prompts carry the same shape as real ones.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    if tok.get_vocab_size() != CONFIG["vocab_size"]:
        raise RuntimeError(f"trained vocab is {tok.get_vocab_size()}, want {CONFIG['vocab_size']}")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "model_max_length": CONFIG["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    return tok.to_str(pretty=True), tok_config


def build_weights(seed: int) -> dict[str, Any]:
    """Random normal(0, 0.02) weights in bf16, ones for the RMSNorm gains, named as HF Llama."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h, inter, vocab = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]

    def rnd(*shape: int) -> Any:
        return (torch.randn(*shape, generator=gen) * CONFIG["initializer_range"]).to(torch.bfloat16)

    tensors: dict[str, Any] = {"model.embed_tokens.weight": rnd(vocab, h)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = rnd(h, h)
        tensors[p + "self_attn.k_proj.weight"] = rnd(kv, h)
        tensors[p + "self_attn.v_proj.weight"] = rnd(kv, h)
        tensors[p + "self_attn.o_proj.weight"] = rnd(h, h)
        tensors[p + "mlp.gate_proj.weight"] = rnd(inter, h)
        tensors[p + "mlp.up_proj.weight"] = rnd(inter, h)
        tensors[p + "mlp.down_proj.weight"] = rnd(h, inter)
        tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    tensors["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    tensors["lm_head.weight"] = rnd(vocab, h)
    return tensors


def stamp_for(seed: int) -> dict[str, Any]:
    return {"name": NAME, "schema": SCHEMA, "seed": seed}


def is_built(dest: Path, seed: int) -> bool:
    """A build is complete when every file exists and the stamp (written last) matches."""
    try:
        stamp = json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("build") == stamp_for(seed) and all((dest / f).is_file() for f in FILES)


def _write(path: Path, data: bytes) -> None:
    # Write then rename, so a reader (or an interrupted build) never sees half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def build(dest: Path, seed: int = DEFAULT_SEED, force: bool = False) -> bool:
    """Build the model into dest; return False (and touch nothing) when it is already there."""
    if not force and is_built(dest, seed):
        return False
    from safetensors.torch import save

    dest.mkdir(parents=True, exist_ok=True)
    (dest / STAMP).unlink(missing_ok=True)
    tok_json, tok_config = build_tokenizer(seed)
    _write(dest / "tokenizer.json", tok_json.encode())
    _write(dest / "tokenizer_config.json", _json(tok_config))
    _write(dest / "special_tokens_map.json",
           _json({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    _write(dest / "config.json", _json(CONFIG))
    _write(dest / "generation_config.json", _json(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}))
    _write(dest / "model.safetensors", save(build_weights(seed), metadata={"format": "pt"}))
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((dest / name).read_bytes())
    _write(dest / STAMP, _json({"build": stamp_for(seed), "sha256": digest.hexdigest()}))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pd-tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="model directory to create")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="rebuild even when present")
    args = parser.parse_args(argv)
    try:
        changed = build(args.dest, args.seed, args.force)
    except ImportError as exc:
        print(f"pd-tiny-model: {exc.name} is missing; run with the vLLM venv's python", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pd-tiny-model: cannot write {args.dest}: {exc.strerror}", file=sys.stderr)
        return 1
    # One JSON line: the role reads `changed` from it.
    print(json.dumps({"changed": changed, "path": str(args.dest), "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
