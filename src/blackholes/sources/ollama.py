"""Ollama models as sources: ``ollama:NAME[:TAG]`` read from the local Ollama store, as GGUF.

Ollama keeps ``manifests/<registry>/<namespace>/<name>/<tag>`` (an OCI-style JSON
manifest) and content-addressed ``blobs/sha256-<digest>`` under ``$OLLAMA_MODELS``,
else ``~/.ollama/models``. The manifest's layer with media type
``application/vnd.ollama.image.model`` is the model's GGUF file. Nothing here talks
to an Ollama server or downloads anything.

>>> parse_ollama_name("ollama:smollm2:135m")
('registry.ollama.ai', 'library', 'smollm2', '135m')
>>> parse_ollama_name("ollama:hf.co/bartowski/Qwen3-4B-GGUF")
('hf.co', 'bartowski', 'Qwen3-4B-GGUF', 'latest')
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from blackholes.errors import BlackholesError
from blackholes.io.untrusted import parse_json
from blackholes.sources.gguf import load_gguf
from blackholes.sources.matrix import Matrix

PREFIX = "ollama:"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MANIFEST_LIMIT = 1 << 20  # an OCI manifest is a few hundred bytes
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def ollama_store(store: str | os.PathLike | None = None) -> Path:
    """The Ollama model folder: ``store``, else ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    if store is not None:
        return Path(store).expanduser()
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """``[ollama:][registry/][namespace/]name[:tag]`` -> (registry, namespace, name, tag)."""
    text = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    head, _, last = text.rpartition("/")
    model, _, tag = last.partition(":")  # a tag comes after the last "/" (a registry may have a port)
    parts = head.split("/") if head else []
    parts.append(model)
    bad = any(p in ("", ".", "..") for p in parts) or tag in (".", "..") or ":" in tag
    if bad or len(parts) > 3:  # never a path outside the store
        raise BlackholesError(
            f"not an Ollama model name: {name!r} (expected ollama:NAME[:TAG], e.g. ollama:smollm2:135m)"
        )
    registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        registry, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    return registry, namespace, parts[-1], tag or DEFAULT_TAG


def short_name(registry: str, namespace: str, name: str, tag: str) -> str:
    """The name as Ollama prints it: defaults left out (``smollm2:135m``, ``user/model:tag``)."""
    if registry == DEFAULT_REGISTRY:
        return f"{name}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}:{tag}"
    return f"{registry}/{namespace}/{name}:{tag}"


def list_ollama_models(store: str | os.PathLike | None = None) -> list[str]:
    """Every model in the store, as ``ollama:``-less names, sorted (``[]`` if there is no store).

    >>> list_ollama_models("/nonexistent")
    []
    """
    manifests = ollama_store(store) / "manifests"
    if not manifests.is_dir():
        return []
    names = []
    for path in manifests.glob("*/*/*/*"):
        if path.is_file():
            registry, namespace, name, tag = path.relative_to(manifests).parts
            names.append(short_name(registry, namespace, name, tag))
    return sorted(names)


def resolve_ollama(
    name: str, store: str | os.PathLike | None = None, *, verify: bool = False
) -> tuple[Path, str]:
    """(blob path, sha256 hex digest) of an Ollama model's GGUF file.

    The blob must exist and have the size the manifest gives. It is not hashed unless
    ``verify``: reading a multi-GB blob to check its name would cost more than the scan.

    >>> resolve_ollama("ollama:smollm2:135m")                # doctest: +SKIP
    (PosixPath('/root/.ollama/models/blobs/sha256-f535f8...'), 'f535f8...')
    """
    root = ollama_store(store)
    if not root.is_dir():
        raise BlackholesError(
            f"no Ollama model store at {root} (set OLLAMA_MODELS to the folder holding manifests/ and blobs/)"
        )
    parts = parse_ollama_name(name)
    manifest = manifest_path(name, root)
    if not manifest.is_file():
        there = list_ollama_models(root)
        listed = ", ".join(there[:30]) + (f", ... ({len(there)} in all)" if len(there) > 30 else "")
        raise BlackholesError(
            f"Ollama model {short_name(*parts)!r} is not in {root}; models there: {listed or '(none)'}"
        )
    digest, size = model_layer(manifest)
    blob = root / "blobs" / f"sha256-{digest}"
    check_blob(blob, size, digest, verify)
    return blob, digest


def manifest_path(name: str, store: str | os.PathLike | None = None) -> Path:
    """Where the manifest of ``ollama:NAME[:TAG]`` lies in the store (it may not exist).

    >>> manifest_path("ollama:smollm2:135m", "/store").as_posix()
    '/store/manifests/registry.ollama.ai/library/smollm2/135m'
    """
    return ollama_store(store) / "manifests" / Path(*parse_ollama_name(name))


def model_layer(manifest: Path) -> tuple[str, int | None]:
    """(digest, size) of the manifest's model layer (the last one, as Ollama itself takes)."""
    try:
        if manifest.stat().st_size > MANIFEST_LIMIT:
            raise BlackholesError(f"Ollama manifest {manifest} is larger than {MANIFEST_LIMIT:,} bytes; not a manifest")
        raw = manifest.read_bytes()
    except OSError as e:
        raise BlackholesError(f"cannot read Ollama manifest {manifest}: {e.strerror or e}") from None
    doc = parse_json(raw, what=f"cannot read Ollama manifest {manifest}")
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise BlackholesError(f"Ollama manifest {manifest} has no list of layers")
    layers = [layer for layer in layers if isinstance(layer, dict)]
    models = [layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE]
    if not models:
        kinds = ", ".join(str(layer.get("mediaType")) for layer in layers) or "none"
        raise BlackholesError(f"Ollama manifest {manifest} has no model layer ({MODEL_MEDIA_TYPE}); layers: {kinds}")
    layer = models[-1]
    found = DIGEST.match(str(layer.get("digest", "")))
    if found is None:
        raise BlackholesError(
            f"Ollama manifest {manifest}: model layer digest {layer.get('digest')!r} is not sha256:<hex>"
        )
    size = layer.get("size")
    return found[1], size if isinstance(size, int) and not isinstance(size, bool) else None


def check_blob(blob: Path, size: int | None, digest: str, verify: bool) -> None:
    """The blob exists, has the manifest's size, and (``verify``) hashes to its name."""
    if not blob.is_file():
        raise BlackholesError(f"Ollama blob {blob.name} is missing from {blob.parent} (re-pull the model)")
    actual = blob.stat().st_size
    if size is not None and actual != size:
        raise BlackholesError(
            f"Ollama blob {blob} has {actual:,} bytes, the manifest says {size:,} (incomplete download?)"
        )
    if verify and sha256_file(blob) != digest:
        raise BlackholesError(f"Ollama blob {blob} does not hash to its name (corrupt)")


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_ollama(
    source: str, key: str | None = None, matrix: str | None = None, *, store: str | os.PathLike | None = None
) -> Matrix:
    """The embedding matrix of an Ollama model, memory-mapped from its GGUF blob.

    >>> m = load_ollama("ollama:smollm2:135m")               # doctest: +SKIP
    >>> m.format, m.key, m.revision[:13]                     # doctest: +SKIP
    ('gguf', 'token_embd.weight', 'sha256:f535f8')
    """
    blob, digest = resolve_ollama(source, store)
    m = load_gguf(blob, key, matrix)
    m.inputs = (manifest_path(source, store), *m.inputs)
    m.source = source
    m.revision = f"sha256:{digest}"
    return m
