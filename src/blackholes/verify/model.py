"""A whole causal LM and its tokenizer, from anything that holds one, through transformers.

Sources: a Hugging Face model folder (one or sharded safetensors), a model id in the local Hugging Face cache,
a GGUF file or ``ollama:NAME[:TAG]`` (dequantised by transformers' GGUF loading, ``gguf_file=``), and
``hf://org/name[@revision]`` (its config, tokenizer and weights downloaded with huggingface_hub). The memory the
weights take in the chosen dtype is estimated from the files' headers and a model that would not fit is refused
before anything is loaded. torch and transformers are imported inside the functions only.

>>> dtype_name(None, "cpu"), dtype_name("bf16", "cpu")
('float32', 'bfloat16')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blackholes.errors import BlackholesError

DTYPES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
CANONICAL = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MARGIN = 1.2  # weights plus the activations and KV cache of a batch, and the allocator's slack
WEIGHT_FILES = ("*.safetensors",)


@dataclass
class ModelFiles:
    """Where a whole model lives: the folder transformers reads, and the GGUF file in it (or None)."""

    source: str
    folder: Path
    gguf_file: str | None = None
    revision: str | None = None

    def weights(self) -> list[Path]:
        if self.gguf_file:
            return [self.folder / self.gguf_file]
        return sorted(p for pattern in WEIGHT_FILES for p in self.folder.glob(pattern))


def dtype_name(dtype: str | None, device: str) -> str:
    """The torch dtype name for ``--dtype`` (default float32: the precision magikarp's published answers used)."""
    if dtype is None:
        return "float32"
    if dtype not in DTYPES:
        raise BlackholesError(f"--dtype must be one of float32, bfloat16, float16 (or fp32, bf16, fp16), not {dtype!r}")
    return CANONICAL.get(dtype, dtype)


def pick_device(device: str | None) -> str:
    """``auto`` (a GPU when torch sees one, else the CPU), ``cpu`` or ``cuda``; CUDA asked for where there is none
    is refused in one line."""
    import torch

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise BlackholesError(f"--device {device}: no CUDA device here ({why}); use --device cpu or auto")
        return device
    raise BlackholesError(f"--device must be auto, cpu or cuda, not {device!r}")


def locate(source: str) -> ModelFiles:
    """The folder (and GGUF file) of a whole model named by ``source``; one line when it holds no whole model."""
    text = os.fspath(source).strip()
    if not text:
        raise BlackholesError("no model given: the source is empty (an unset variable?)")
    if text.startswith("hf://"):
        return _download(text)
    if text.startswith("ollama:"):
        from blackholes.sources.ollama import resolve_ollama

        blob, digest = resolve_ollama(text)
        return ModelFiles(text, blob.parent, blob.name, digest)
    from blackholes.sources.remote import is_remote

    if is_remote(text):
        raise BlackholesError(f"verify runs the whole model, which it reads from a folder, the Hugging Face cache, "
                              f"hf://, a GGUF file or Ollama; download {text} first")
    path = Path(text).expanduser()
    if path.is_file():
        from blackholes.sources.load import is_gguf

        if is_gguf(path):
            return ModelFiles(text, path.parent, path.name)
        raise BlackholesError(f"{text} is a single weights file; verify needs the whole model: a folder with "
                              "config.json, the weights and the tokenizer")
    if not path.is_dir():
        from blackholes.sources.hf_cache import cached_snapshot, looks_like_model_id

        if not looks_like_model_id(text):
            raise BlackholesError(f"no such file or directory: {text}")
        path = cached_snapshot(text)
    ggufs = sorted(path.glob("*.gguf"))
    if not any(path.glob("*.safetensors")) and len(ggufs) == 1:
        return ModelFiles(text, path, ggufs[0].name)
    if not (path / "config.json").is_file():
        raise BlackholesError(f"no config.json in {path}: verify needs the whole model (config, weights, tokenizer)")
    return ModelFiles(text, path, None, path.name if "snapshots" in path.parts else None)


def _download(source: str) -> ModelFiles:
    """``hf://org/name[@rev]``: the files transformers needs, into the Hugging Face cache (then read offline)."""
    from huggingface_hub import constants, snapshot_download

    from blackholes.sources.hf_cache import hf_cache_dir

    repo, _, revision = source[len("hf://"):].strip("/").partition("@")
    # the endpoint and cache as the environment says now (huggingface_hub read them once, at import)
    where = {"endpoint": (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
             "cache_dir": hf_cache_dir()}
    patterns = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "*.model",
                "vocab.*", "merges.txt", "*.safetensors", "model.safetensors.index.json"]
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=patterns, **where)
    except Exception as e:  # huggingface_hub raises many kinds; the message is what the user needs
        raise BlackholesError(f"cannot download {source}: {type(e).__name__}: {_first_line(e)}") from None
    return ModelFiles(source, Path(folder), None, Path(folder).name)


def vocabulary_rows(files: ModelFiles) -> int | None:
    """The model's token count from its config (cheap: no weights read), or None when the config does not say."""
    require_transformers()
    from transformers import AutoConfig

    extra = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(files.folder, **extra)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        rows = getattr(text, "vocab_size", None)
    except Exception:  # an unusual config: the check after loading still stands
        return None
    return int(rows) if isinstance(rows, int) and rows > 0 else None


def parameter_count(files: ModelFiles) -> int:
    """Values in the model's weight files, read from their headers only."""
    weights = files.weights()
    if not weights:
        raise BlackholesError(f"no weights (*.safetensors or a GGUF file) in {files.folder}")
    total = 0
    for path in weights:
        if files.gguf_file:
            from blackholes.sources.gguf import read_gguf_header

            for t in read_gguf_header(path).tensors.values():
                n = 1
                for d in t.ne:
                    n *= int(d)
                total += n
        else:
            from blackholes.io.safetensors import read_header

            for info in read_header(path).tensors.values():
                n = 1
                for d in info.shape:
                    n *= int(d)
                total += n
    return total


def memory_estimate(files: ModelFiles, dtype: str) -> int:
    """Bytes the loaded model needs in ``dtype``: every weight at that width, with a margin for a batch."""
    return int(parameter_count(files) * DTYPES[dtype] * MARGIN)


def check_memory(files: ModelFiles, dtype: str, device: str, available: int | None = None) -> int:
    """Refuse, before loading, a model whose estimate exceeds the memory available (the host's for the CPU, the
    GPU's for CUDA); returns the estimate."""
    need = memory_estimate(files, dtype)
    if available is None:
        available = _available(device)
    if available is not None and need > available:
        where = "GPU memory" if device.startswith("cuda") else "memory available"
        raise BlackholesError(f"model too large: {files.source} needs about {need / 2**30:.1f} GiB in {dtype}, "
                              f"{where} is {available / 2**30:.1f} GiB (try --dtype bfloat16 or another machine)")
    return need


def _available(device: str) -> int | None:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    from blackholes.training.limits import available_memory

    return available_memory()


def require_transformers() -> None:
    """One line, not an ImportError, where the optional extra is not installed."""
    import importlib

    missing = []
    for name in ("transformers", "accelerate"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BlackholesError(f"verification needs {' and '.join(missing)}: pip install 'blackholes[verify]'")


def load(files: ModelFiles, dtype: str, device: str):
    """(model, tokenizer) in eval mode on ``device``; one line when the source has no tokenizer or no LM head."""
    require_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    extra = {"gguf_file": files.gguf_file} if files.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.folder, **extra)
    except Exception as e:
        raise BlackholesError(f"no tokenizer for {files.source} ({_first_line(e)}); verify needs the model's "
                              "tokenizer beside its weights") from None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(files.folder, dtype=getattr(torch, dtype),
                                                           output_loading_info=True, **extra)
    except (ValueError, KeyError, OSError) as e:
        raise BlackholesError(f"no language-model head: transformers cannot load {files.source} as a causal LM "
                              f"({_first_line(e)})") from None
    head = model.get_output_embeddings()
    missing = [k for k in info.get("missing_keys", ()) if head is not None and k.endswith(_head_name(model))]
    if head is None or missing:
        raise BlackholesError(f"no language-model head in {files.source}: its weights have no output matrix "
                              f"({', '.join(missing) or 'none'}); it cannot produce tokens")
    return model.to(device).eval(), tokenizer


def _head_name(model) -> str:
    for name, module in model.named_modules():
        if module is model.get_output_embeddings():
            return name + ".weight"
    return "lm_head.weight"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
