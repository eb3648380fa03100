"""A tiny causal LM for the verify tests, built the way a user's model folder is: a Llama config and random
weights saved with ``save_pretrained`` (safetensors, optionally sharded), a byte-level BPE tokenizer trained with
``tokenizers`` and saved beside it, and the same model as a GGUF file written with ``gguf.GGUFWriter``.

Planted behaviour (everything else is random):
- DEAD tokens: their output row points against a residual direction every position carries (dimension 0 of
  every embedding is a large constant and no layer writes to it), so their logit is always very negative and the
  model can never produce them: verification must call them verified.
- COPY tokens: each owns one residual dimension; its embedding is large there and its output row reads it, so
  wherever the token is the current input the model predicts it again: verification must reject them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from support import ROOT

CORPUS = ROOT / "src" / "blackholes" / "data" / "default_corpus.txt"
VOCAB = 400
HIDDEN = 48
EOS = "<|endoftext|>"


def train_tokenizer(vocab: int = VOCAB):
    """A GPT-2-style byte-level BPE trained on the package's own corpus (the end-of-text token is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(CORPUS)], trainer)
    return tok


def planted_ids(tok) -> tuple[list[int], list[int]]:
    """(dead, copy): dead = short merged tokens (never the long alphabetic placeholder); copy = single bytes."""
    vocab = tok.get_vocab()
    merged = sorted(i for t, i in vocab.items() if i > 256 and 2 <= len(t) <= 3)
    dead = merged[:12]
    copy = [vocab[c] for c in "QXZJKV"] + [vocab[c] for c in "#%&"]
    return dead, copy


def build_model(tok, *, seed: int = 0, layers: int = 2, hidden: int = HIDDEN):
    """The planted LlamaForCausalLM (float32, untied) for ``tok``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=None,
                      eos_token_id=tok.token_to_id(EOS), pad_token_id=None, rms_norm_eps=1e-6,
                      rope_theta=10000.0)
    model = LlamaForCausalLM(cfg).eval()
    dead, copy = planted_ids(tok)
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.normal_(0, 0.5)
        head.normal_(0, 0.5)
        emb[:, 0] = 8.0  # every position carries dimension 0 ...
        for layer in model.model.layers:  # ... and no layer writes to it
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
        head[:, 0] = 0
        head[dead] = 0
        head[dead, 0] = -3.0
        for k, t in enumerate(copy, start=1):
            emb[:, k] = 0
            emb[t, k] = 12.0
            head[:, k] = 0
            head[t, k] = 40.0
    return model


def save_model(folder: Path, *, seed: int = 0, shard: str | None = None) -> Path:
    """The model folder: config, weights (``shard``: e.g. "20KB" for several files), tokenizer files."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer()
    model = build_model(tok, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    fast.save_pretrained(folder)
    return folder


def write_gguf(folder: Path, path: Path) -> Path:
    """The model of ``folder`` as a llama GGUF (F32 tensors, GPT-2 tokenizer metadata), as llama.cpp's converter
    writes one: q and k rows permuted into its rotary layout, which transformers' loader undoes."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    _tokenizer_metadata(w, tok, cfg)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, array in tensors.items():
        if key in names:
            name = names[key]
        else:
            _, _, n, rest = key.split(".", 3)
            name = f"blk.{n}.{parts[rest.rsplit('.', 1)[0]]}.weight"
        if name.endswith("attn_q.weight"):
            array = _rotary_layout(array, heads)
        elif name.endswith("attn_k.weight"):
            array = _rotary_layout(array, kv)
        w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _rotary_layout(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation: each head's halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_metadata(w, tok: dict, cfg: dict) -> None:
    vocab = tok["model"]["vocab"]
    pieces = [None] * len(vocab)
    for piece, i in vocab.items():
        pieces[i] = piece
    special = {t["id"] for t in tok.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_types([3 if i in special else 1 for i in range(len(pieces))])
    w.add_token_merges(merges)
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)
