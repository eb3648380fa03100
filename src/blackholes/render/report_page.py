"""The body of a model's report page: the introduction, the answer, the tables and the closing notes.

Each function adds its part to a :class:`~blackholes.render.page.Document`;
:func:`blackholes.render.model_report.write_report` calls them in order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from blackholes import defaults
from blackholes.render.page import Document
from blackholes.render.report_answer import (
    INDICATOR_WORDS, MATRIX_WORDS, REFERENCE_WORDS, answer, as_code, cell_counts, counted_words, facts, id_ranges,
    real_scripts, token_category, token_text, ulp_cell, ulps_text,
)

# How many rows each table shows (the JSON of `scan --json` has them all).
HOLES_SHOWN = 60
MEMBERS_SHOWN = 40  # decoded members per hole
MEMBER_HOLES = 30  # holes whose members are listed
CLUSTERS_SHOWN = 30
HALO_SHOWN = 60
CANDIDATES_SHOWN = 60


# ---------------------------------------------------------------------------- the page


def intro(doc: Document, result, parts) -> None:
    r = parts[0][1]
    matrices = "; ".join(
        f"{as_code(x.key)} ("
        + ", ".join(w for w in (MATRIX_WORDS.get(x.matrix), _own_note(x)) if w) + "): "
        + f"{x.shape[0]:,} × {x.shape[1]:,} {x.dtype}"
        + (f", identity of its stored {x.quantization} blocks" if x.quantization else "")
        for _, x, _, _ in parts).replace(" (): ", ": ")
    tok = (f"tokens decoded with {as_code(r.tokenizer)} ({r.vocab_size:,} tokens"
           + (f"; rows from {r.vocab_size:,} on are padding)" if r.vocab_size and r.shape[0] > r.vocab_size else ")")
           if r.tokenizer else "no tokenizer, so tokens are shown by id")
    text = (f"Scanned {as_code(r.source)}: {matrices}; {tok}. A **black hole** is a set of two or more tokens "
            "whose rows are bit-for-bit identical: dead vocabulary that training never pulled apart. Identity is "
            "of raw bits; nearness is counted in ULPs on the values' own grid, never decided from a float "
            "distance.")
    if getattr(result, "tied", False) and len(parts) == 1 and hasattr(result, "results"):
        text += " The model ties its output matrix to its input embedding: one matrix, scanned once."
    doc.para(text)


def _own_note(x) -> str:
    """Why this tensor was chosen, unless it only repeats which matrix it is."""
    note = x.note or ""
    return "" if x.matrix and note.startswith(x.matrix) else note


def answer_section(doc: Document, result, parts) -> list[str]:
    doc.heading("Answer")
    if len(parts) == 1:
        lines = answer(parts[0][1])
        doc.bullets(lines)
        return lines
    out = []
    for label, r, _, _ in parts:
        lines = answer(r)
        doc.heading(f"{label} ({as_code(r.key)})", 3)
        doc.bullets(lines)
        out += [f"{label}: {line}" for line in lines]
    a, b = parts[0][1], parts[1][1]
    if a.shape[0] == b.shape[0] and a.black_hole_tokens and b.black_hole_tokens:
        both = int((np.asarray(a.mask) & np.asarray(b.mask)).sum())
        line = f"**{both:,} tokens are dead in both matrices** (a hole in each)."
        doc.para(line)
        out.append(line)
    return out


def scan_tables(doc: Document, r, level: int) -> None:
    _holes_table(doc, r, level)
    if r.groups:
        _members(doc, r, level)
    if r.clusters is not None:
        _clusters_table(doc, r, level)
        _halo_table(doc, r, level)
    if r.anatomy is not None:
        _anatomy_table(doc, r, level)
    if r.indicators is not None:
        _candidates_table(doc, r, level)


def _holes_table(doc: Document, r, level: int) -> None:
    doc.heading("The black holes", level)
    if not r.groups:
        doc.para(f"None: all {r.shape[0]:,} rows are distinct.")
        return
    cats = r.categories is not None
    header = ["hole", "tokens", "token ids"] + (["examples", "categories", "scripts"] if cats else [])
    header += ["near cluster"] if r.clusters is not None else []
    rows = []
    for g in r.groups[:HOLES_SHOWN]:
        row = [f"#{g.id}", f"{g.size:,}", id_ranges(g.token_ids, 8)]
        if cats:
            shown = _examples(r, g.token_ids, 5)
            more = f" … (+{g.size - len(shown):,})" if g.size > len(shown) else ""
            row += [", ".join(token_text(r, i) for i in shown) + more,
                    cell_counts(r.categories.count_by(g.token_ids, "category")),
                    cell_counts(real_scripts(r.categories.count_by(g.token_ids, "script")))]
        if r.clusters is not None:
            row.append(f"#{r.clusters.cluster_of(g.id - 1).id}")
        rows.append(row)
    doc.table(header, rows)
    if len(r.groups) > HOLES_SHOWN:
        doc.para(f"… and {len(r.groups) - HOLES_SHOWN:,} more holes (all of them in `--json`).")


def _members(doc: Document, r, level: int) -> None:
    doc.heading("Who is in each hole", level)
    items = []
    for g in r.groups[:MEMBER_HOLES]:
        if r.categories is None:
            items.append(f"**#{g.id}** ({g.size:,} tokens): ids {id_ranges(g.token_ids, 200)}")
            continue
        kinds = _by_category(r, g.token_ids)
        each = max(3, MEMBERS_SHOWN // len(kinds))
        parts = []
        for cat, ids in kinds:
            if cat == "padding":  # no text to show: the rows are the story
                parts.append(f"{len(ids):,} padding: rows {id_ranges(ids, 8)}")
                continue
            more = f", … (+{len(ids) - each:,} more)" if len(ids) > each else ""
            parts.append(f"{len(ids):,} {cat}: " + ", ".join(f"{i} {token_text(r, i)}" for i in ids[:each]) + more)
        items.append(f"**#{g.id}** ({g.size:,} tokens) — " + "; ".join(parts))
    doc.bullets(items)
    if len(r.groups) > MEMBER_HOLES:
        doc.para(f"… {len(r.groups) - MEMBER_HOLES:,} more holes; every member of every hole is in `--json`.")


def _by_category(r, ids) -> list[tuple[str, list[int]]]:
    """``ids`` split by token category, the most common category first (ids ascending within each)."""
    split: dict[str, list[int]] = {}
    for i in ids:
        split.setdefault(token_category(r, i)[0], []).append(int(i))
    return sorted(split.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def _examples(r, ids, limit: int) -> list[int]:
    """Up to ``limit`` of ``ids``, taken in turn from each category (a hole of reserved tokens and
    padding rows shows both)."""
    queues = [list(v) if cat != "padding" else list(v[:1]) for cat, v in _by_category(r, ids)]  # one padding row says it
    out: list[int] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _clusters_table(doc: Document, r, level: int) -> None:
    c = r.clusters
    doc.heading("Near-duplicates: clusters and halos", level)
    doc.para(f"Rows within {c.k} ULPs of each other in every coordinate are joined into clusters; a hole counts "
             f"as one vector. The **halo** of a hole: the rows of its cluster that are in no hole. {c.grid_note}.")
    if not c.clusters:
        doc.para("No cluster: no two distinct vectors are that near.")
        return
    rows = []
    for x in c.clusters[:CLUSTERS_SHOWN]:
        halo = ", ".join(token_text(r, i) if r.categories is not None else str(i) for i in x.singletons[:4])
        halo += f" … (+{len(x.singletons) - 4:,})" if len(x.singletons) > 4 else ""
        rows.append([f"#{x.id}", f"{x.size:,}", ", ".join(f"#{h + 1}" for h in x.holes) or "none",
                     f"{len(x.singletons):,}", ulps_text(x.diameter_ulps),
                     f"{x.max_l2:.3g}" + ("" if x.max_l2_exact else " (bound)"), halo or "–"])
    doc.table(["cluster", "rows", "holes", "rows in no hole", "diameter", "max L2 distance", "those rows"], rows)
    if len(c.clusters) > CLUSTERS_SHOWN:
        doc.para(f"… and {len(c.clusters) - CLUSTERS_SHOWN:,} more clusters (all of them in `--json`).")


def _halo_table(doc: Document, r, level: int) -> None:
    members = [(x, m) for x in r.clusters.clusters if x.holes for m in x.members if m.hole is None]
    if not members:
        return
    doc.heading("The halo, row by row", level + 1)
    rows = []
    for x, m in members[:HALO_SHOWN]:
        cat, script = token_category(r, m.row)
        rows.append([str(m.row), token_text(r, m.row) if r.categories is not None else "–", cat, script, f"#{x.id}",
                     f"#{x.holes[0] + 1}", ulps_text(m.ulps), f"{m.differing:,}"])
    doc.table(["row", "token", "category", "script", "cluster", "cluster's largest hole",
               "distance to it", "coordinates that differ"], rows)
    if len(members) > HALO_SHOWN:
        doc.para(f"… and {len(members) - HALO_SHOWN:,} more halo rows (all of them in `--json`).")


def _anatomy_table(doc: Document, r, level: int) -> None:
    a = r.anatomy
    H = len(a.rows)
    shown = min(H, 16)
    doc.heading("Which coordinates separate the holes", level)
    doc.para(f"The {H} hole vectors have the same bits in every coordinate but these {len(a.coordinates):,}. Each "
             f"cell: the hole's value in ULPs from hole #1's ({a.grid} grid; 0 = the same bits)"
             + (f"; the first {shown} holes shown." if shown < H else "."))
    order = widest_coordinates(a, 40)
    rows = [[str(a.coordinates[j]), ulps_text(a.spread_ulps[j])] + [ulp_cell(a.offsets[h, j]) for h in range(shown)]
            for j in order]
    doc.table(["coordinate", "spread"] + [f"#{h + 1}" for h in range(shown)], rows)
    if len(order) < len(a.coordinates):
        doc.para(f"… {len(a.coordinates) - len(order):,} more coordinates with smaller spreads (all in `--json`).")
    chains = [c for c in a.one_ulp_components if len(c) > 1]
    if chains:
        doc.para("Holes one ULP apart in exactly one coordinate, chained: "
                 + "; ".join(" – ".join(f"#{h + 1}" for h in c) for c in chains) + ".")


def widest_coordinates(a, limit: int) -> list[int]:
    """Indices into ``a.coordinates`` of the ``limit`` widest spreads, in coordinate order."""
    spread = np.asarray(a.spread_ulps, dtype=np.float64)
    keep = np.argsort(-spread, kind="stable")[:limit]
    return sorted(int(j) for j in keep)


def _candidates_table(doc: Document, r, level: int) -> None:
    ind = r.indicators
    doc.heading("Under-trained candidates", level)
    ref = ("given with `--reference`" if "given" in ind.reference_from else "the union of "
           + ", ".join(f"{REFERENCE_WORDS.get(k, k)} ({n:,})" for k, n in ind.reference_from.items()))
    thr = f"at or below {ind.threshold:.4g}, " if ind.threshold is not None else ""
    doc.para(f"Indicator: {INDICATOR_WORDS[ind.main]}. Reference set (the known-dead rows whose mean gives the "
             f"dead direction): {len(ind.reference):,} rows, {ref}. Candidates: the tokens outside the "
             f"holes and the padding rows {thr}the lowest {ind.percentile:g}%; most dead first "
             f"({len(ind.candidates):,} in all).")
    if not len(ind.candidates):
        return
    halo = set(facts(r).halo_rows)
    values = ind.values()
    rows = []
    for rank, i in enumerate(ind.candidates[:CANDIDATES_SHOWN], start=1):
        cat, script = token_category(r, i)
        value = "undefined" if not np.isfinite(values[i]) else f"{values[i]:.4g}"
        rows.append([str(rank), str(int(i)), token_text(r, i) if r.categories is not None else "–", cat, script,
                     value, f"{ind.norm[i]:.4g}", "yes" if int(i) in halo else ""])
    doc.table(["rank", "id", "token", "category", "script", ind.main, "norm", "in the halo"], rows)
    if len(ind.candidates) > CANDIDATES_SHOWN:
        doc.para(f"… and {len(ind.candidates) - CANDIDATES_SHOWN:,} more candidates (all of them in `--json`).")
    if r.categories is not None:
        doc.para("All candidates by category: "
                 + counted_words(r.categories.count_by([int(i) for i in ind.candidates], "category"), limit=12) + ".")


def made_with(doc: Document, parts, folder: Path) -> None:
    doc.heading("How this was made")
    cmd = command(parts, str(folder))
    if cmd:
        doc.para("To scan it again:")
        doc.code(cmd)
    rows = []
    for label, r, _, _ in parts:
        tag = f"{label}: " if label else ""
        rows += [[f"{tag}{k}", v] for k, v in _settings(r)]
    doc.table(["setting", "value"], rows)
    doc.table(["software", "version"], [[k, v] for k, v in versions().items()])


def _settings(r) -> list[tuple[str, str]]:
    out = [("source", as_code(r.source)), ("tensor", as_code(r.key)), ("why this tensor", r.note or "–"),
           ("shape", f"{r.shape[0]:,} × {r.shape[1]:,}"), ("dtype", r.dtype), ("format", r.format)]
    if r.quantization:
        out.append(("identity", f"of the stored {r.quantization} row bytes"))
    if r.revision:
        out.append(("revision", r.revision))
    out.append(("tokenizer", as_code(r.tokenizer) if r.tokenizer else "none"))
    if r.clusters is not None:
        out += [("near (K)", f"{r.clusters.k} ULPs"), ("ULP grid", r.clusters.grid)]
    if r.indicators is not None:
        out += [("indicator", r.indicators.main), ("percentile", f"{r.indicators.percentile:g}")]
    out.append(("time to find the holes", f"{r.seconds:.2f} s"))
    return out


def command(parts, folder: str = "DIR") -> str | None:
    """The ``blackholes scan`` command line that repeats this scan (None for an in-memory array)."""
    import shlex

    r = parts[0][1]
    if r.format == "array" or r.source in (None, "<array>"):
        return None
    argv = ["blackholes", "scan", str(r.source)]
    step = re.search(r"at step (\d+)", r.note or "")
    if len(parts) > 1:
        argv += ["--matrix", "both"]
    elif r.key.startswith("embeddings[") and step:
        argv += ["--step", step[1]]
    elif r.key:
        argv += ["--key", r.key]
    if r.tokenizer and Path(r.tokenizer).is_file():
        argv += ["--tokenizer", r.tokenizer]
    if r.clusters is not None:
        argv += ["--near", str(r.clusters.k)]
    if r.indicators is not None:
        argv.append("--indicators")
        if "given" in r.indicators.reference_from:
            argv += ["--reference", id_ranges(r.indicators.reference, 10 ** 9).replace("–", "-").replace(" ", "")]
        if r.indicators.percentile != defaults.PERCENTILE:
            argv += ["--percentile", f"{r.indicators.percentile:g}"]
    return shlex.join(argv + ["--report", folder])


def versions() -> dict[str, str]:
    """Versions of what shaped the page (read from the installed metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("blackholes", "numpy", "tokenizers", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
