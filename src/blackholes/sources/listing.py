"""Listing the models a census surveys: named sources, a list file, the HF cache, the Ollama store.

And what version of a source a census row describes (:func:`resolve_revision`), found
without reading the tensors, so a re-run can tell whether a row still stands.

>>> expand_sources(["a.safetensors", "org/x", "a.safetensors"])
['a.safetensors', 'org/x']
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from blackholes.errors import BlackholesError

MAX_LIST_BYTES = 64 * 2**20  # a list of sources larger than this is not a list of sources


def expand_sources(sources=(), *, from_file=None, hf_cache: bool = False, ollama: bool = False) -> list[str]:
    """Every source named: given ones, then ``from_file``'s lines, the HF cache's and Ollama's
    models; duplicates dropped, order kept.

    >>> expand_sources(["a.safetensors", "org/x", "a.safetensors"])
    ['a.safetensors', 'org/x']
    """
    names = [os.fspath(s) for s in sources]
    if from_file is not None:
        names += read_source_list(from_file)
    if hf_cache:
        names += hf_cache_sources()
    if ollama:
        names += ollama_sources()
    return list(dict.fromkeys(n for n in names if n))




def read_source_list(path) -> list[str]:
    """One source a line; blank lines and ``#`` comments (whole-line, or after a space) skipped.

    Only a regular file is read: a FIFO or a device (``/dev/zero``, ``/dev/stdin``) would never
    end or never stop growing, so it is refused with one line.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise BlackholesError(f"cannot read the source list {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode) else "a device"
        raise BlackholesError(f"--from-file {path} is {kind}, not a file; give a text file of sources, one a line")
    if info.st_size > MAX_LIST_BYTES:
        raise BlackholesError(f"--from-file {path} holds {info.st_size:,} bytes; a list of sources is smaller "
                              f"than {MAX_LIST_BYTES:,}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BlackholesError(f"cannot read the source list {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def hf_cache_sources() -> list[str]:
    """Every model in the local Hugging Face cache: ``org/name`` where it has a ``main`` ref,
    else ``org/name@<newest cached commit>``. Nothing is downloaded."""
    from huggingface_hub import scan_cache_dir

    from blackholes.sources.hf_cache import hf_cache_dir

    cache = hf_cache_dir()
    if not cache.is_dir():
        raise BlackholesError(f"no Hugging Face cache at {cache} (set HF_HUB_CACHE or HF_HOME)")
    try:
        info = scan_cache_dir(cache)
    except Exception as e:  # CacheNotFound, or a cache it cannot parse
        raise BlackholesError(f"cannot list the Hugging Face cache {cache}: {e}") from None
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        if any("main" in rev.refs for rev in repo.revisions):
            out.append(repo.repo_id)
        else:
            newest = max(repo.revisions, key=lambda rev: (rev.last_modified, rev.commit_hash))
            out.append(f"{repo.repo_id}@{newest.commit_hash}")
    return out


def ollama_sources() -> list[str]:
    """Every model in the local Ollama store, as ``ollama:NAME:TAG``."""
    try:
        from blackholes.sources.ollama import list_ollama_models
    except ImportError:
        raise BlackholesError("--ollama needs blackholes.sources.ollama, which this version lacks") from None
    return [n if n.startswith("ollama:") else f"ollama:{n}" for n in list_ollama_models()]


def resolve_revision(source: str) -> str | None:
    """What version of ``source`` a row describes, found cheaply (no tensor read, no network):
    a cached model's snapshot commit, or for a local file or folder ``local:<digest>`` of its
    files' names, sizes and modification times. ``None`` when it cannot be told here.

    >>> resolve_revision("https://example.com/model.safetensors") is None
    True
    """
    if "://" in source:
        return None
    path = Path(source).expanduser()
    try:
        if path.exists():
            return local_stamp(path)
        from blackholes.sources.hf_cache import cached_snapshot, looks_like_model_id

        if looks_like_model_id(source):
            return cached_snapshot(source).name
    except (BlackholesError, OSError):
        pass
    return None


def local_stamp(path: Path) -> str:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".gguf", ".model")
    )
    stamp = hashlib.sha256()
    for p in files:
        st = p.stat()
        stamp.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return "local:" + stamp.hexdigest()[:16]
