"""What a repair changed, proven: byte comparison, per-tensor sha256, and a re-scan.

:func:`prove` compares every file of the copy with the source's: a file without a repaired
matrix must hash the same; in a file with one, every differing byte must lie inside a repaired
row, and every tensor but the repaired ones must hash the same before and after.
:func:`rescan` scans the repaired matrices with :func:`blackholes.analysis.groups.scan`: under
``mean`` and ``zero`` the repaired rows form one known group (one vector written many times);
under ``mean-cov`` no two of them may share a vector. :func:`write_report` writes both into
``repair.json`` and a short ``repair.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

BLOCK = 8 << 20  # bytes compared at a time


def tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Every tensor of a safetensors or GGUF file: name -> (start, stop) byte offsets."""
    from blackholes.sources.load import is_gguf

    if is_gguf(path):
        from blackholes.sources.gguf import read_gguf_header

        return {t.name: (t.offset, t.offset + (t.nbytes or 0)) for t in read_gguf_header(path).tensors.values()}
    from blackholes.io.safetensors import read_header

    return {t.name: (t.start, t.end) for t in read_header(path).tensors.values()}


def compare(before: Path, after: Path, tensors: dict[str, tuple[int, int]], spans: np.ndarray) -> tuple[int, dict]:
    """One pass over both files, a block at a time: (bytes that differ outside ``spans``,
    name -> (sha256 before, sha256 after) of each of ``tensors``; the whole file as "" when
    ``tensors`` is empty). The two files are hashed in two threads (hashlib lets go of the GIL).

    ``spans``: sorted, disjoint [start, stop) rows of int64, the repaired rows' bytes."""
    from concurrent.futures import ThreadPoolExecutor

    size = before.stat().st_size
    if after.stat().st_size != size:
        raise BlackholesError(f"internal: the copy {after} changed size")
    ranges = sorted((a, b, n) for n, (a, b) in (tensors or {"": (0, size)}).items())
    hashes = {n: (hashlib.sha256(), hashlib.sha256()) for _, _, n in ranges}
    outside = 0
    with open(before, "rb") as fa, open(after, "rb") as fb, ThreadPoolExecutor(1) as pool:
        pos = 0
        while pos < size:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if not x or len(x) != len(y):
                raise BlackholesError(f"internal: {before} or {after} changed while it was compared")
            end = pos + len(x)
            parts = [(n, max(a, pos) - pos, min(b, end) - pos) for a, b, n in ranges if a < end and b > pos]
            other = pool.submit(_update, [(hashes[n][1], y, lo, hi) for n, lo, hi in parts])
            _update([(hashes[n][0], x, lo, hi) for n, lo, hi in parts])
            if x != y:  # a block holding repaired rows: every difference must lie inside one
                outside += _outside(x, y, pos, spans)
            other.result()
            pos = end
    return outside, {n: (hb.hexdigest(), ha.hexdigest()) for n, (hb, ha) in hashes.items()}


def _update(work) -> None:
    for h, data, lo, hi in work:
        h.update(memoryview(data)[lo:hi])


def _outside(x: bytes, y: bytes, pos: int, spans: np.ndarray) -> int:
    """Differing bytes of two blocks at ``pos`` that lie outside every span."""
    end = pos + len(x)
    first = max(0, int(np.searchsorted(spans[:, 1], pos, side="right")))
    last = int(np.searchsorted(spans[:, 0], end, side="left"))
    cut, n = pos, 0
    for start, stop in spans[first:last].tolist():  # the gaps between the spans inside this block
        n += _differ(x, y, cut - pos, max(cut, start) - pos)
        cut = max(cut, stop)
    return n + _differ(x, y, cut - pos, len(x)) if cut < end else n


def _differ(x: bytes, y: bytes, lo: int, hi: int) -> int:
    if hi <= lo or x[lo:hi] == y[lo:hi]:
        return 0
    return int((np.frombuffer(x, np.uint8, hi - lo, lo) != np.frombuffer(y, np.uint8, hi - lo, lo)).sum())


def rows_changed(before: Path, after: Path, t, ids: list[int]) -> int:
    """Bytes of target ``t``'s repaired rows that differ between the two files."""
    n = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        for i in ids:
            a.seek(t.offset + i * t.row_bytes)
            b.seek(t.offset + i * t.row_bytes)
            x, y = a.read(t.row_bytes), b.read(t.row_bytes)
            n += int((np.frombuffer(x, np.uint8) != np.frombuffer(y, np.uint8)).sum())
    return n


def prove(p, tmp: Path, ids: list[int]) -> dict:
    """The ``changed`` matrices and the ``unchanged`` tensors and files, each with its sha256s."""
    by_file: dict[Path, list] = {}
    for t in p.targets:
        by_file.setdefault(t.file, []).append(t)
    changed, tensors, files, outside = [], {}, {}, 0
    for src, rel in p.files.items():
        targets = by_file.get(src, [])
        spans = np.array(sorted((t.offset + i * t.row_bytes, t.offset + (i + 1) * t.row_bytes)
                                for t in targets for i in ids), np.int64).reshape(-1, 2)
        out_of_rows, digests = compare(src, tmp / rel, tensor_spans(src) if targets else {}, spans)
        outside += out_of_rows
        if not targets:
            before, after = digests[""]
            files[rel] = {"sha256_before": before, "sha256_after": after, "identical": before == after}
            continue
        repaired = {t.key: t for t in targets}
        for name, (before, after) in digests.items():
            if name in repaired:
                t = repaired[name]
                changed.append({"matrix": t.which, "key": name, "file": rel, "dtype": t.matrix.dtype,
                                "shape": list(t.matrix.shape), "row_bytes": t.row_bytes, "rows": len(ids),
                                "bytes_written": len(ids) * t.row_bytes,
                                "bytes_changed": rows_changed(src, tmp / rel, t, ids),
                                "sha256_before": before, "sha256_after": after})
            else:
                tensors.setdefault(rel, {})[name] = {"sha256_before": before, "sha256_after": after,
                                                     "identical": before == after}
    same = outside == 0 and all(v["identical"] for v in files.values()) and all(
        v["identical"] for per in tensors.values() for v in per.values())
    if not same:
        raise BlackholesError("internal: the copy differs from the source outside the repaired rows; nothing written")
    return {"changed": changed, "unchanged_tensors": tensors, "unchanged_files": files,
            "bytes_outside_rows_identical": same}


def rescan(p, tmp: Path, ids: list[int], recipe: str) -> dict:
    """Scan each repaired matrix of the copy: the groups its repaired rows form now."""
    from blackholes.analysis.groups import scan
    from blackholes.sources.load import load_matrix

    chosen = set(ids)
    per_matrix, known, distinct = [], True, True
    for t in p.targets:
        result = scan(load_matrix(str(tmp / p.files[t.file]), key=t.key))
        together = [sorted(set(g.token_ids) & chosen) for g in result.groups]
        together = [g for g in together if len(g) > 1]
        per_matrix.append({"matrix": t.which, "key": t.key, "holes_after": len(result.groups),
                           "hole_tokens_after": result.black_hole_tokens, "repaired_rows_in_holes": together})
        known &= len(ids) < 2 or (len(together) == 1 and len(together[0]) == len(ids))
        distinct &= not together
    one_vector = recipe in ("mean", "zero")
    if one_vector:
        words = (f"the {len(ids):,} repaired rows form one known group: the {recipe} recipe writes one vector"
                 if known else f"the {recipe} rows do not form the one group the recipe writes")
    else:
        words = ("no two repaired rows are bit-identical any more" if distinct
                 else "some repaired rows are still bit-identical to each other (see repaired_rows_in_holes)")
    return {"matrices": per_matrix, "known_group": one_vector and known, "distinct": distinct,
            "ok": known if one_vector else distinct, "summary": words}


def verdicts(model: str, ids: list[int]) -> dict[int, dict]:
    """id -> the verifier's {max_prob, verdict, text} for ``ids`` of ``model`` (magikarp's method)."""
    from blackholes.verify import verify

    result = verify(model, ids, progress=False)
    return {t.id: {"text": t.text, "max_prob": t.max_prob, "verdict": t.verdict} for t in result.tokens}


def side_by_side(before: dict[int, dict], after: dict[int, dict]) -> dict:
    """The verdicts of each repaired token before and after, and how many changed."""
    rows = [{"id": i, "text": (before.get(i) or after.get(i) or {}).get("text"),
             "before": {k: before[i][k] for k in ("max_prob", "verdict")} if i in before else None,
             "after": {k: after[i][k] for k in ("max_prob", "verdict")} if i in after else None}
            for i in sorted(set(before) | set(after))]
    changed = sum(1 for r in rows if r["before"] and r["after"] and r["before"]["verdict"] != r["after"]["verdict"])
    return {"method": "magikarp", "tokens": rows, "verdicts_changed": changed}


def write_report(folder: Path, report: dict) -> None:
    """repair.json (everything) and repair.md (the short version) into ``folder``."""
    from blackholes.io.atomic import write_json, write_text

    write_json(folder / "repair.json", report)
    write_text(folder / "repair.md", report_markdown(report))


def report_markdown(r: dict) -> str:
    """A page a person reads: what changed, in bytes and rows, and the proof nothing else did."""
    lines = [f"# Repair of {r['source']}", "",
             f"Recipe **{r['recipe']}**" + (f" (seed {r['seed']})" if r.get("seed") is not None else "")
             + f", {r['rows']:,} rows (`--tokens {r['tokens']}`" + (f", from {r['from']}" if r.get("from") else "")
             + ").", "", "| matrix | tensor | file | dtype | rows | bytes written | bytes changed | sha256 before "
             "| sha256 after |", "|---|---|---|---|---|---|---|---|---|"]
    for c in r["changed"]:
        lines.append(f"| {c['matrix']} | `{c['key']}` | {c['file']} | {c['dtype']} | {c['rows']:,} | "
                     f"{c['bytes_written']:,} | {c['bytes_changed']:,} | `{c['sha256_before'][:16]}` | "
                     f"`{c['sha256_after'][:16]}` |")
    n_tensors = sum(len(v) for v in r["unchanged_tensors"].values())
    lines += ["", f"Nothing else changed: every byte outside the repaired rows is the source's "
              f"({'checked' if r['bytes_outside_rows_identical'] else 'NOT the case'}); {n_tensors:,} other "
              f"tensors and {len(r['unchanged_files']):,} other files hash the same before and after "
              "(sha256 of each in repair.json).", "", f"Re-scan: {r['check']['summary']}.", "",
              f"Metadata: {r['metadata']}.", ""]
    lines += [f"Note: {note}" for note in r.get("notes", [])] + ([""] if r.get("notes") else [])
    if r.get("verification"):
        lines += _verification_lines(r["verification"])
    return "\n".join(lines)


def _verification_lines(v: dict, top: int = 30) -> list[str]:
    """The repaired tokens' verdicts before and after, side by side (the first ``top``)."""
    lines = [f"Verified before and after ({v['method']}; {v['verdicts_changed']:,} verdicts changed):", "",
             "| id | text | max prob before | verdict before | max prob after | verdict after |",
             "|---:|---|---:|---|---:|---|"]
    for row in v["tokens"][:top]:
        b, a = row["before"] or {}, row["after"] or {}
        lines.append(f"| {row['id']} | {row['text']!r} | {b.get('max_prob', float('nan')):.2e} | {b.get('verdict')} | "
                     f"{a.get('max_prob', float('nan')):.2e} | {a.get('verdict')} |")
    if len(v["tokens"]) > top:
        lines.append(f"| ... | {len(v['tokens']) - top:,} more in repair.json | | | | |")
    return lines + [""]
