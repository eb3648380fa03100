"""A census folder: checked before anything is written, then appended to row by row.

::

    census.jsonl            one row per model matrix (io/jsonl.py: fsynced appends, torn tail ignored)
    census.md, census.html  the summary (render/census.py)
    models/<name>.json      each model's full scan JSON (and <name>.mask.safetensors)
    plots/*.png             the summary's figures
"""

from __future__ import annotations

import json
from pathlib import Path

from dataclasses import replace

from blackholes.errors import BlackholesError
from blackholes.io.jsonl import JsonlStore
from blackholes.io.paths import refuse_inputs
from blackholes.pipelines.census_scan import ScanOutcome, Task

MODEL_SUFFIXES = (".json", ".mask.safetensors", ".verification.json")  # models/<name><suffix>


class CensusStore:
    """A census folder: checked before anything is written, then appended to row by row.

    >>> store = CensusStore("census")          # doctest: +SKIP
    >>> store.append({"source": "org/model", ...})  # doctest: +SKIP
    """

    FILES = {"census.jsonl", "census.md", "census.html"}
    FOLDERS = {"models": (".json", ".safetensors"), "plots": (".png",)}

    def __init__(self, out):
        self.out = Path(out)
        self.jsonl = self.out / "census.jsonl"
        self.models = self.out / "models"
        self.store = JsonlStore(self.jsonl)
        check_census_dir(self.out)

    def open(self) -> None:
        """Create the folders, and cut a half-written last line (a crash mid-append) off census.jsonl."""
        self.models.mkdir(parents=True, exist_ok=True)
        self.store.repair()

    def rows(self) -> list[dict]:
        return read_rows(self.jsonl) if self.jsonl.is_file() else []

    def append(self, row: dict) -> None:
        """One JSON line, flushed and fsynced: a crash after this returns loses nothing."""
        self.store.append(row)

    def outputs(self, task: Task) -> list[Path]:
        """Every file the census may write for ``task`` (and for its input matrix, with ``--matrix both``)."""
        tasks = [task] + ([replace(task, request="input", follow_up=False)] if task.follow_up else [])
        return [self.models / f"{t.name}{suffix}" for t in tasks for suffix in MODEL_SUFFIXES]

    def check_inputs(self, tasks: list[Task], files_of) -> None:
        """Refuse, before anything is written, a census whose files would replace a file one of its
        models reads (``files_of(task)``: :func:`~blackholes.pipelines.census_scan.task_files`) —
        through symlinks, hard links and ``..`` — or that holds one already (it is replaced on --redo)."""
        outputs = [self.out / name for name in sorted(self.FILES)]  # and every file there (plots: only those)
        outputs += [p for folder in self.FOLDERS if (self.out / folder).is_dir()
                    for p in sorted((self.out / folder).iterdir())]
        inputs = []
        for task in tasks:
            inputs += files_of(task)
            outputs += self.outputs(task)
        refuse_inputs(outputs, inputs)

    def write_model(self, task: Task, outcome: ScanOutcome) -> None:
        """The model's scan JSON (and mask) into models/, atomically; their paths go into the row.
        Checked again against the files the worker read: a file the model reads is never replaced
        (the row then says so, and nothing is written)."""
        from blackholes.io.atomic import write_json

        if outcome.doc is None:
            return
        name = task.name
        try:
            refuse_inputs(self.outputs(task) + [self.jsonl], outcome.reads)
        except BlackholesError as e:
            outcome.row.update(error=str(e), scan_json=None, mask=None)
            outcome.doc = outcome.result = None
            return
        write_json(self.models / f"{name}.json", outcome.doc)
        outcome.row["scan_json"] = f"models/{name}.json"
        if outcome.result is not None:
            outcome.result.save_mask(self.models / f"{name}.mask.safetensors")
            outcome.row["mask"] = f"models/{name}.mask.safetensors"


def check_census_dir(out: Path) -> None:
    """Refuse, touching nothing, an ``out`` that holds anything but a census's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BlackholesError(f"--out must be a folder, but {out} is a file")
    for entry in sorted(out.iterdir()):
        if is_leftover(entry) or (entry.name in CensusStore.FILES and entry.is_file()):
            continue
        allowed = CensusStore.FOLDERS.get(entry.name)
        if allowed is not None and entry.is_dir():
            stray = [p for p in entry.iterdir() if not (is_leftover(p) or (p.is_file() and p.name.endswith(allowed)))]
            if not stray:
                continue
            entry = stray[0]
        raise BlackholesError(
            f"{out} holds something that is not part of a census ({entry}); choose an empty folder or a census's"
        )
    jsonl = out / "census.jsonl"
    if jsonl.is_file():
        read_rows(jsonl)  # raises when it is not a census's


def is_leftover(path: Path) -> bool:
    """A temporary file an interrupted atomic write left behind (``.name.xxxx.tmp``)."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp")


def read_rows(path: Path) -> list[dict]:
    """Every row of a census.jsonl (a torn last line is not a row); a line that is not a census
    row means the file is not a census's. A row lacking other fields is kept: it is not
    finished, never a crash."""
    rows = []
    for number, row in JsonlStore(path).numbered():
        if not (isinstance(row, dict) and isinstance(row.get("source"), str)):
            raise BlackholesError(f"{path} is not a census (line {number} is not a census row); choose another --out")
        rows.append(row)
    return rows


def row_key(row: dict) -> tuple:
    return (row["source"], row.get("request") or "default", json.dumps(row.get("options") or {}, sort_keys=True))


def latest_rows(rows: list[dict]) -> dict[tuple, dict]:
    """The newest row of every (source, request, options): later lines replace earlier ones."""
    return {row_key(row): row for row in rows}
