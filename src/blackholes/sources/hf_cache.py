"""Model ids (``org/name[@revision]``) found offline in the local Hugging Face cache.

Nothing is ever downloaded: a model that is not cached is refused with one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from blackholes.errors import BlackholesError


def looks_like_model_id(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?(@[\w.\-/]+)?", text)) and not text.endswith((".safetensors", ".gguf"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE / HF_HOME as set *now*.

    (``huggingface_hub.constants`` reads the environment once, at import.)
    """
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(model_id: str) -> Path:
    """The snapshot folder of ``org/name[@revision]`` in the local cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = model_id.partition("@")
    cache = hf_cache_dir()
    for name in ("config.json", "model.safetensors.index.json", "model.safetensors"):
        try:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision or None)
        except ValueError:  # not a valid repo id
            hit = None
        if isinstance(hit, str):
            return Path(hit).parent
    # No refs/main (e.g. copied by hand): accept a single snapshot.
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snaps = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir()) if repo.is_dir() else []
    if revision:
        matching = [p for p in snaps if p.name == revision]
        if not matching and snaps:
            raise BlackholesError(
                f"{repo_id} is in the local Hugging Face cache ({cache}) but not at revision {revision!r}; "
                f"cached: {_cached_revisions(repo, snaps)} (nothing is downloaded)"
            )
        snaps = matching
    if len(snaps) == 1:
        return snaps[0]
    if len(snaps) > 1:
        raise BlackholesError(
            f"{repo_id} has {len(snaps)} snapshots in {cache} and no refs/main; name one as "
            f"{repo_id}@<revision>: {', '.join(p.name for p in snaps)}"
        )
    raise BlackholesError(
        f"not a file or folder, and not in the local Hugging Face cache ({cache}): {model_id} "
        f"(nothing is downloaded; set HF_HUB_CACHE or HF_HOME, or pass a path)"
    )


def _cached_revisions(repo: Path, snaps: list[Path]) -> str:
    """ "snapshots abc, def; refs main -> abc" for one cached repository."""
    refs = []
    if (repo / "refs").is_dir():
        for ref in sorted(p for p in (repo / "refs").rglob("*") if p.is_file()):
            try:
                target = ref.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                target = "?"
            refs.append(f"{ref.relative_to(repo / 'refs').as_posix()} -> {target}")
    text = "snapshots " + ", ".join(p.name for p in snaps)
    return text + ("; refs " + ", ".join(refs) if refs else "; no refs")
