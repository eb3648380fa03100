"""An ordered series of checkpoints, from what a user names: the input of ``blackholes history``.

A series is a list of :class:`Checkpoint` s, each one source that :func:`~blackholes.sources.load_matrix`
reads (and, for a training recording, the recorded step). What can name one:

* several sources (anything ``scan`` takes: files, folders, ``org/name@revision``,
  ``hf://org/name@revision``, URLs), in the order given;
* one folder holding ``checkpoint-N``, ``step-N`` or ``stepN`` subfolders, ordered by N;
* one model (``org/name`` in the local cache, or ``hf://org/name``) with ``revisions``: a comma
  list of revision names, ranges ``step0-step143000:1000`` (first, last, stride) or globs over the
  repository's refs (``step*``; ``hf://`` lists them with ``HfApi.list_repo_refs``, a cached model
  from its ``refs/`` folder);
* one training recording (``blackholes train``): its recorded steps.

Each checkpoint's ``step`` is the number in its name when every name has one and they increase
(``step1000``, ``checkpoint-500``); otherwise its position in the series.

>>> [c.label for c in expand_series(["org/name"], revisions="step0-step2000:1000")]
['step0', 'step1000', 'step2000']
>>> [c.source for c in expand_series(["hf://org/name"], revisions="main,step5")]
['hf://org/name@main', 'hf://org/name@step5']
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blackholes.errors import BlackholesError

SUBFOLDER = re.compile(r"(?:checkpoint-|step-|step)(\d+)")  # a checkpoint folder's name, N captured
TRAILING_NUMBER = re.compile(r"(\d+)$")
RANGE = re.compile(r"([A-Za-z_\-]*?)(\d+)-([A-Za-z_\-]*?)(\d+)(?::(\d+))?")
MAX_CHECKPOINTS = 100_000  # a range that would name more is a typo, refused before anything is read


@dataclass(frozen=True)
class Checkpoint:
    """One point of a series: what to read, what to call it, and its step."""

    label: str  # as the report names it ("step1000", "checkpoint-500", a source)
    source: str  # what load_matrix reads
    step: int  # the x axis: the number in the name, or the position
    record_step: int | None = None  # a training recording's step (load_matrix(source, step=...))

    @property
    def key(self) -> str:
        """Unique and stable across runs (resume and ordering)."""
        return self.source if self.record_step is None else f"{self.source}#step={self.record_step}"


def expand_series(sources, *, revisions: str | None = None) -> list[Checkpoint]:
    """The checkpoints that ``sources`` (and ``revisions``) name, in order (see the module doc).

    >>> [c.step for c in expand_series(["a/checkpoint-10", "a/checkpoint-30"])]
    [10, 30]
    """
    sources = [os.fspath(s) for s in (sources or [])]
    if not sources:
        raise BlackholesError("no checkpoints given: name a folder of checkpoint-N folders, several sources, "
                              "a training recording, or org/name --revisions LIST")
    if revisions is not None:
        if len(sources) != 1:
            raise BlackholesError(f"--revisions applies to one model; {len(sources)} sources were given")
        names = revision_names(sources[0], revisions)
        base = sources[0].rstrip("/")
        return _numbered([(r, f"{base}@{r}") for r in names])
    if len(sources) == 1:
        one = sources[0]
        path = Path(one).expanduser()
        if path.is_dir() and subfolders(path):
            return _numbered([(p.name, str(p)) for p in subfolders(path)])
        if path.is_file() and _is_recording(path):
            return recording_checkpoints(path)
    return _numbered([(s, s) for s in sources])


def subfolders(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` / ``step-N`` / ``stepN`` subfolders of ``folder``, ordered by N."""
    found = [p for p in folder.iterdir() if p.is_dir() and SUBFOLDER.fullmatch(p.name)]
    numbers = {}
    for p in found:
        n = int(SUBFOLDER.fullmatch(p.name).group(1))
        if n in numbers:
            raise BlackholesError(f"two checkpoint folders for step {n} in {folder}: {numbers[n].name}, {p.name}")
        numbers[n] = p
    return [numbers[n] for n in sorted(numbers)]


def _is_recording(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from blackholes.io.safetensors import read_header
    from blackholes.sources.local import is_recording

    return is_recording(read_header(path))


def recording_checkpoints(path: Path) -> list[Checkpoint]:
    """One checkpoint per recorded step of a training recording."""
    from blackholes.io.recording import Recording

    rec = Recording(path)
    return [Checkpoint(f"step {int(s)}", str(path), int(s), int(s)) for s in rec.steps]


def _numbered(pairs: list[tuple[str, str]]) -> list[Checkpoint]:
    """Checkpoints with steps: the names' numbers when all have one and they increase, else positions."""
    numbers = []
    for label, _ in pairs:
        m = TRAILING_NUMBER.search(label.rstrip("/"))
        numbers.append(int(m.group(1)) if m else None)
    usable = all(n is not None for n in numbers) and all(b > a for a, b in zip(numbers, numbers[1:]))
    steps = numbers if usable else list(range(len(pairs)))
    return [Checkpoint(label, source, step) for (label, source), step in zip(pairs, steps)]


def revision_names(model: str, spec: str) -> list[str]:
    """The revisions ``spec`` names for ``model``: a comma list of names, ranges and globs.

    Names from ranges and globs are ordered by their numbers; the list keeps its order.

    >>> revision_names("org/name", "step0-step10:5")
    ['step0', 'step5', 'step10']
    """
    names: list[str] = []
    refs = None
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        m = RANGE.fullmatch(item)
        if any(ch in item for ch in "*?["):
            if refs is None:
                refs = list_refs(model)
            hits = sorted((r for r in refs if fnmatch.fnmatchcase(r, item)), key=_name_order)
            if not hits:
                raise BlackholesError(f"--revisions {item!r} matches none of {model}'s {len(refs):,} refs")
            names += hits
        elif m and (m.group(1) == m.group(3)):
            names += _range(item, m)
        else:
            names.append(item)
    if not names:
        raise BlackholesError(f"--revisions {spec!r} names no revision")
    seen = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def _range(item: str, m: re.Match) -> list[str]:
    prefix, first, last, stride = m.group(1), int(m.group(2)), int(m.group(4)), int(m.group(5) or 1)
    if stride < 1 or last < first:
        raise BlackholesError(f"--revisions {item!r}: a range goes up, by a stride of at least 1 "
                              "(e.g. step0-step143000:1000)")
    if (last - first) // stride + 1 > MAX_CHECKPOINTS:
        raise BlackholesError(f"--revisions {item!r} names more than {MAX_CHECKPOINTS:,} revisions")
    out = [f"{prefix}{n}" for n in range(first, last + 1, stride)]
    if (last - first) % stride:
        out.append(f"{prefix}{last}")  # the last named revision is always in
    return out


def _name_order(name: str) -> tuple:
    m = TRAILING_NUMBER.search(name)
    return (name[: m.start()], int(m.group(1))) if m else (name, -1)


def list_refs(model: str) -> list[str]:
    """The branch and tag names of ``model``: ``hf://org/name`` on the Hub (HfApi.list_repo_refs,
    at ``HF_ENDPOINT``), else ``org/name`` in the local Hugging Face cache (its ``refs/`` files)."""
    if model.startswith("hf://"):
        return _hub_refs(model)
    from blackholes.sources.hf_cache import hf_cache_dir, looks_like_model_id

    if "@" in model or not looks_like_model_id(model):
        raise BlackholesError(f"--revisions globs over a model's refs: name it as org/name or hf://org/name, "
                              f"not {model}")
    refs_dir = hf_cache_dir() / ("models--" + model.replace("/", "--")) / "refs"
    if not refs_dir.is_dir():
        raise BlackholesError(f"{model} has no refs in the local Hugging Face cache ({hf_cache_dir()}); "
                              "nothing is downloaded (use hf://org/name to list the Hub's)")
    return sorted(p.relative_to(refs_dir).as_posix() for p in refs_dir.rglob("*") if p.is_file())


def _hub_refs(model: str) -> list[str]:
    from huggingface_hub import HfApi, constants

    from blackholes.sources.remote import hub_call

    repo = model[len("hf://"):].strip("/")
    if "@" in repo or repo.count("/") != 1:
        raise BlackholesError(f"--revisions globs over one Hub model's refs: hf://org/name, not {model}")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    refs = hub_call(model, endpoint, lambda: HfApi(endpoint=endpoint).list_repo_refs(repo))
    return sorted({r.name for r in [*refs.branches, *refs.tags]})
