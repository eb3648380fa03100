"""Which tensor is the embedding: the well-known names, and picking one in a file or a model.

Input embeddings are listed most common first. A name matches exactly, or as the end
of a key after a wrapper's prefix (``language_model.``), except for names generic
enough to occur inside a layer (``_EXACT_ONLY``).

>>> find_named(["model.layers.0.mlp.weight", "model.embed_tokens.weight"], INPUT_EMBEDDING_NAMES)
'model.embed_tokens.weight'
"""

from __future__ import annotations

from blackholes.errors import BlackholesError


INPUT_EMBEDDING_NAMES = (
    "model.embed_tokens.weight",  # Llama, Qwen, Mistral, Gemma, Phi-3, OPT-style decoders
    "transformer.wte.weight",  # GPT-2, GPT-J, Falcon-old, StarCoder
    "gpt_neox.embed_in.weight",  # Pythia / GPT-NeoX
    "embeddings.word_embeddings.weight",  # BERT-style encoders (saved without prefix)
    "bert.embeddings.word_embeddings.weight",
    "roberta.embeddings.word_embeddings.weight",
    "transformer.word_embeddings.weight",  # BLOOM, Falcon
    "model.decoder.embed_tokens.weight",  # OPT, BART decoder
    "transformer.embedding.word_embeddings.weight",  # ChatGLM
    "transformer.embd.wte.weight",  # phi-1
    "model.language_model.embed_tokens.weight",  # multimodal wrappers (Gemma 3, ...)
    "language_model.model.embed_tokens.weight",
    "shared.weight",  # T5
    "tok_embeddings.weight",  # original Llama checkpoints
    "embed_tokens.weight",
    "word_embeddings.weight",
    "wte.weight",
    "token_embedding.weight",
    "embeddings",  # a bare matrix saved by a notebook
    "embedding",
)


OUTPUT_EMBEDDING_NAMES = (
    "lm_head.weight",
    "gpt_neox.embed_out.weight",
    "embed_out.weight",  # Pythia / GPT-NeoX
    "language_model.lm_head.weight",
    "transformer.output_layer.weight",  # ChatGLM
    "output.weight",  # original Llama checkpoints
    "cls.predictions.decoder.weight",  # BERT MLM head
    "unembedding",
    "gamma",  # the original notebooks' name for the unembedding matrix
)


# Names that also occur inside layers (RWKV's "blocks.3.attention.output.weight"):
# matched only exactly, like the bare names ("embeddings", "gamma").
_EXACT_ONLY = frozenset({"output.weight", "shared.weight"})


def find_named(keys, names) -> str | None:
    """The first of ``names`` present in ``keys``: exactly, else after a wrapper's prefix
    that is not inside a numbered layer (``language_model.`` yes, ``blocks.3.`` no)."""
    keys = list(keys)
    present = set(keys)
    for name in names:
        if name in present:
            return name
    for name in names:
        if "." not in name or name in _EXACT_ONLY:
            continue
        hits = sorted(k for k in keys if k.endswith("." + name) and not _in_a_layer(k[: -len(name) - 1]))
        if hits:
            return hits[0]
    return None


def _in_a_layer(prefix: str) -> bool:
    return any(part.isdigit() for part in prefix.split("."))


def check_rows(output: str, input: str | None, shape_of, where) -> None:
    """An output matrix has one row per token, like the input embedding: refuse a pick that does not."""
    if input is None or input == output:
        return
    rows_out, rows_in = shape_of(output)[:1], shape_of(input)[:1]
    if rows_out != rows_in:
        raise BlackholesError(
            f"{output!r} (shape {list(shape_of(output))}) does not have the input embedding {input!r}'s "
            f"{rows_in[0] if rows_in else 0:,} rows, so it is not taken as the output matrix of {where}; "
            f"pick one with --key"
        )


def is_tied(config: dict) -> bool:
    """Whether the config says the output matrix is the input embedding.

    ``tie_word_embeddings`` may be a JSON boolean or, in hand-edited configs, a string
    (``"true"``/``"false"``) or 0/1: read as the boolean it spells; anything else is refused,
    never guessed.

    >>> is_tied({"tie_word_embeddings": "true"}), is_tied({"text_config": {"tie_word_embeddings": True}})
    (True, True)
    """
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg, dict) and "tie_word_embeddings" in cfg and _spelled_bool(cfg["tie_word_embeddings"]):
            return True
    return False


def _spelled_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None:
        return False
    raise BlackholesError(f"config.json: tie_word_embeddings is {value!r}, which is not a boolean")


def pick_in_file(header, matrix: str | None) -> tuple[str, str]:
    """Choose the tensor in a lone file: the only 2-D one, else a well-known name."""
    two_d = sorted(n for n, t in header.tensors.items() if len(t.shape) == 2)
    if matrix is None and len(two_d) == 1:
        return two_d[0], "the only 2-D tensor"
    if matrix == "input":
        names = INPUT_EMBEDDING_NAMES
    elif matrix == "output":
        names = OUTPUT_EMBEDDING_NAMES
    else:
        names = OUTPUT_EMBEDDING_NAMES + INPUT_EMBEDDING_NAMES
    found = find_named(two_d, names)
    if found is not None:
        if matrix != "input" and found == find_named(two_d, OUTPUT_EMBEDDING_NAMES):
            check_rows(found, find_named(two_d, INPUT_EMBEDDING_NAMES), lambda k: header.tensors[k].shape,
                        header.path)
        return found, "well-known name"
    if not header.tensors:
        raise BlackholesError(f"no tensors in {header.path}")
    if not two_d:
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in sorted(header.tensors.items())[:20])
        raise BlackholesError(f"no 2-D tensor in {header.path} (tensors: {shapes})")
    listed = ", ".join(two_d[:20]) + (f", ... ({len(two_d)} in all)" if len(two_d) > 20 else "")
    if matrix is not None:
        raise BlackholesError(
            f"no {matrix} embedding with a known name in {header.path}; pick one with --key: {listed}"
        )
    raise BlackholesError(f"several 2-D tensors in {header.path}; pick one with --key: {listed}")


def pick_in_model(keys, config: dict, matrix: str | None, folder: Path, shape_of) -> tuple[str, str]:
    matrix = matrix or "output"
    tied = is_tied(config)
    if matrix == "output" and not tied:
        found = find_named(keys, OUTPUT_EMBEDDING_NAMES)
        if found is not None:
            check_rows(found, find_named(keys, INPUT_EMBEDDING_NAMES), shape_of, folder)
            return found, "output matrix"
    found = find_named(keys, INPUT_EMBEDDING_NAMES)
    if found is not None:
        if matrix == "input":
            return found, "input embedding"
        why = "tie_word_embeddings" if tied else "no separate lm_head"
        return found, f"output matrix = input embedding ({why})"
    raise BlackholesError(
        f"no {matrix} embedding matrix with a known name in {folder}; pick one with --key "
        f"(keys: {short_list(keys)})"
    )


def short_list(keys, n: int = 30) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
