"""Models the act tests (tests/act/) build: a tiny Llama folder (transformers' own save_pretrained), GGUF files
(gguf.GGUFWriter), a sharded safetensors folder and an Ollama store, each with planted holes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

HOLE = list(range(10, 16))  # the planted hole of the tiny Llama: rows 10-15 identical in both matrices
VOCAB, DIM = 64, 16


def tiny_llama(folder: Path, *, eos_in_hole: bool = False) -> Path:
    """A LlamaForCausalLM of 64 tokens whose greedy choice is always the hole (ties: its first token).

    The layers write nothing (o_proj and down_proj are zero), so the last hidden state is the
    normalised input embedding, whose coordinate 0 is large and positive; the hole's output rows
    weigh that coordinate by 5, every other row by 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    hole = HOLE + ([2] if eos_in_hole else [])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 10.0
        emb[hole] = emb[hole[0]].clone()
        head = model.lm_head.weight
        head[:, 0] = 0.0
        head[hole] = head[hole[0]].clone()
        head[hole, 0] = 5.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def gguf_model(path: Path, qtype: str = "F32", *, tied: bool = True, rows: int = 32, width: int = 64,
               raw: bool = False) -> Path:
    """A GGUF file whose token_embd rows 3, 9 and 20 are one vector (and output.weight unless tied)."""
    import gguf

    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    x[[9, 20]] = x[3]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"\u2581t{i}" for i in range(rows)])
    w.add_token_types([1] * rows)
    w.add_eos_token_id(2)
    t = gguf.GGMLQuantizationType[qtype]
    if raw:  # a type gguf cannot write: random blocks of the right size
        block, size = gguf.GGML_QUANT_SIZES[t]
        data = rng.integers(0, 256, (rows, width // block * size), dtype=np.uint8)
        data.reshape(rows, -1, size)[:, :, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        data[[9, 20]] = data[3]
        w.add_tensor("token_embd.weight", data, raw_dtype=t)
    elif qtype == "F32":
        w.add_tensor("token_embd.weight", x)
    elif qtype == "F16":
        w.add_tensor("token_embd.weight", x.astype(np.float16))
    else:
        w.add_tensor("token_embd.weight", gguf.quants.quantize(x, t), raw_dtype=t)
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(width).astype(np.float32))
    if not tied:
        y = rng.standard_normal((rows, width)).astype(np.float32)
        y[[9, 20]] = y[3]
        w.add_tensor("output.weight", y)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def sharded(folder: Path) -> Path:
    """A two-shard safetensors folder with an index: embed_tokens in shard 1, lm_head in shard 2."""
    from blackholes.io.safetensors import save_safetensors

    folder.mkdir()
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((40, 8)).astype(np.float32)
    head = rng.standard_normal((40, 8)).astype(np.float32)
    emb[[5, 6, 7]] = emb[5]
    head[[5, 6, 7]] = head[5]
    norm = rng.standard_normal(8).astype(np.float32)
    save_safetensors(folder / "model-00001-of-00002.safetensors", {"model.embed_tokens.weight": emb,
                                                                    "model.norm.weight": norm})
    save_safetensors(folder / "model-00002-of-00002.safetensors", {"lm_head.weight": head})
    index = {"metadata": {"total_size": emb.nbytes + head.nbytes + norm.nbytes},
             "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "model.norm.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": False, "eos_token_id": 0}))
    return folder


def ollama_store(root: Path, gguf_file: Path, name: str = "tiny", tag: str = "latest") -> Path:
    """An Ollama store (manifests/ + blobs/) holding ``gguf_file`` as registry.ollama.ai/library/NAME:TAG."""
    data = gguf_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 9},
              {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64, "size": 2},
                                    "layers": layers}))
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (to prove a command wrote or changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_llama_with_tokenizer(folder: Path) -> tuple[Path, list[int]]:
    """A 300-token Llama with its byte-level BPE tokenizer (trained on the package's corpus) saved beside it, as
    `blackholes.verify` loads whole models; returns (folder, hole): merged tokens 280-285, one row in both matrices,
    whose output row points against the constant coordinate 0, so the model never produces them."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = Path(__file__).resolve().parents[1] / "src" / "blackholes" / "data" / "default_corpus.txt"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                 show_progress=False,
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = tok.get_vocab_size()
    hole = list(range(vocab - 20, vocab - 14))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=0, pad_token_id=None)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 8.0
        for m in (model.model.embed_tokens.weight, model.lm_head.weight):
            m[hole] = m[hole[0]].clone()
        model.lm_head.weight[hole, 0] = -6.0
    model.save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder, hole
