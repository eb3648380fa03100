"""The census summary: ``census.md`` and a self-contained ``census.html`` (plots embedded).

From the rows of ``census.jsonl`` (the newest row of each model matrix): the table sorted
by black-hole tokens, the models that share identical hole vectors or identical dead-token
sets (same tokenizer family, fine-tunes of one base), the models that failed, and three
plots — dead tokens per model, the distribution of hole sizes, and the share of the
vocabulary that is dead against the vocabulary size.

>>> md, html = write_summary(Path("census"), rows)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from blackholes.io.atomic import write_text
from blackholes.render.page import Document

BAR_MODELS = 40  # models shown in the bar chart (the most dead tokens first)


def write_summary(out_dir: Path, rows: list[dict], *, title: str = "Black-hole census") -> tuple[Path, Path]:
    """Draw the plots into ``out_dir/plots`` and write ``census.md`` and ``census.html``; returns both paths."""
    out_dir = Path(out_dir)
    plots = draw_plots(out_dir / "plots", ok_rows(rows))
    doc = census_document(out_dir, rows, plots, title=title)
    md, page = out_dir / "census.md", out_dir / "census.html"
    write_text(md, doc.markdown())
    write_text(page, doc.html())
    return md, page


# ---------------------------------------------------------------------------- what the page says


def ok_rows(rows: list[dict]) -> list[dict]:
    """The scanned rows, most black-hole tokens first (ties by source, then matrix).

    >>> [r["source"] for r in ok_rows([{"source": "a", "black_hole_tokens": 1, "error": None},
    ...                                {"source": "b", "black_hole_tokens": 5, "error": None},
    ...                                {"source": "c", "error": "no such file"}])]
    ['b', 'a']
    """
    good = [r for r in rows if r.get("error") is None]
    return sorted(good, key=lambda r: (-(r.get("black_hole_tokens") or 0), r["source"], r.get("matrix") or ""))


def label(row: dict, width: int = 48) -> str:
    """A model matrix's short name: a model id as it is, a path or URL by its last part (without
    ``.safetensors``/``.gguf``), shortened in the middle when long; the matrix when not the output.

    >>> label({"source": "org/name", "matrix": "input"}), label({"source": "/data/m/gpt2.safetensors"})
    ('org/name (input)', 'gpt2')
    """
    source = row["source"]
    if "://" in source or source.startswith(("/", ".", "~")) or source.count("/") > 1:
        name = source.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".safetensors", ".gguf"):
            name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        source = name or source
    if len(source) > width:
        source = source[: width // 2 - 1] + "…" + source[-(width // 2):]
    return source + (f" ({row['matrix']})" if row.get("matrix") == "input" else "")


def shared_hole_families(rows: list[dict]) -> list[tuple[list[dict], int]]:
    """Groups of model matrices linked by bit-identical hole vectors: (members, shared vectors),
    largest group first. Members of one group share at least one vector with another member.

    >>> a = {"source": "a", "hole_vectors": ["x", "y"]}; b = {"source": "b", "hole_vectors": ["y"]}
    >>> [([m["source"] for m in members], n) for members, n in shared_hole_families([a, b])]
    [(['a', 'b'], 1)]
    """
    owners: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for digest in dict.fromkeys(row.get("hole_vectors") or []):
            owners.setdefault(digest, []).append(i)
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    shared = {d: ids for d, ids in owners.items() if len(ids) > 1}
    for ids in shared.values():
        for i in ids[1:]:
            parent[root(i)] = root(ids[0])
    families: dict[int, list[int]] = {}
    for ids in shared.values():
        for i in ids:
            families.setdefault(root(i), [])
            if i not in families[root(i)]:
                families[root(i)].append(i)
    out = []
    for members in families.values():
        vectors = sum(1 for ids in shared.values() if root(ids[0]) == root(members[0]))
        out.append(([rows[i] for i in sorted(members)], vectors))
    return sorted(out, key=lambda fv: (-len(fv[0]), fv[0][0]["source"]))


def shared_dead_sets(rows: list[dict]) -> list[list[dict]]:
    """Groups of two or more model matrices whose dead tokens are the same set of ids, largest first.

    >>> rows = [{"source": s, "dead_tokens": d} for s, d in (("a", "x"), ("b", "x"), ("c", "z"))]
    >>> [[r["source"] for r in g] for g in shared_dead_sets(rows)]
    [['a', 'b']]
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("dead_tokens"):
            groups.setdefault(row["dead_tokens"], []).append(row)
    found = [g for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (-len(g), g[0]["source"]))


def _cell(value, fmt: str = "{:,}") -> str:
    return "–" if value is None else fmt.format(value)


def _table_rows(rows: list[dict]) -> list[list[str]]:
    table = []
    for i, r in enumerate(rows, start=1):
        shape = r.get("shape") or [None, None]
        kind = r.get("dtype") or "?"
        if r.get("format") and r["format"] != "safetensors":
            kind = f"{r['format']} {kind}"
        tied = {True: "yes", False: "no"}.get(r.get("tied"), "?")
        table.append([
            str(i), f"`{label(r)}`", kind, f"{shape[0]:,} × {shape[1]:,}", tied,
            _cell(r.get("holes")), f"**{r['black_hole_tokens']:,}**", _cell(r.get("black_hole_fraction"), "{:.2%}"),
            _cell(r.get("largest_hole")), _cell(r.get("halo_size")), _cell(r.get("candidates")),
            _cell(r.get("seconds"), "{:.2f}"),
        ])
    return table


TABLE_HEADER = ["#", "model", "dtype", "rows × dim", "tied", "holes", "black-hole tokens", "share", "largest hole",
                "halo", "candidates", "seconds"]


def census_document(out_dir: Path, rows: list[dict], plots: dict[str, Path], *, title: str) -> Document:
    """The summary page as a :class:`~blackholes.render.page.Document`."""
    good, failed = ok_rows(rows), [r for r in rows if r.get("error") is not None]
    doc = Document(title, out_dir)
    dead = sum(r["black_hole_tokens"] for r in good)
    with_holes = sum(1 for r in good if r["black_hole_tokens"])
    doc.para(
        f"**{len(good):,}** model matrices scanned ({len(failed):,} failed): **{with_holes:,}** have black holes, "
        f"**{dead:,}** black-hole tokens in all. A black hole is a set of tokens whose rows are bit-for-bit identical."
    )
    doc.heading("Models, by black-hole tokens")
    if good:
        doc.table(TABLE_HEADER, _table_rows(good))
    else:
        doc.para("No model could be scanned.")
    _families_section(doc, good)
    if plots:
        doc.heading("Plots")
        for name, caption in PLOT_CAPTIONS.items():
            if name in plots:
                doc.image(plots[name], caption)
    if failed:
        doc.heading("Failed")
        doc.table(["model", "asked for", "reason"],
                  [[f"`{r['source']}`", r.get("request") or "default", r["error"]] for r in failed])
    doc.para("Rows: `census.jsonl` (one per model matrix); each model's full scan: `models/`.")
    return doc


def _families_section(doc: Document, good: list[dict]) -> None:
    families, dead_sets = shared_hole_families(good), shared_dead_sets(good)
    doc.heading("Shared holes")
    if not families and not dead_sets:
        doc.para("No two model matrices share a hole vector or a dead-token set.")
        return
    if families:
        doc.para("Model matrices that hold **bit-identical hole vectors** (a shared base, or one tokenizer "
                 "family's untouched initialisation):")
        doc.bullets([f"{len(m)} models share {n} hole vector{'s' if n != 1 else ''}: "
                     + ", ".join(f"`{label(r)}`" for r in m) for m, n in families])
    if dead_sets:
        doc.para("Model matrices whose dead tokens are **the same set of token ids**:")
        doc.bullets([f"{g[0]['black_hole_tokens']:,} tokens: " + ", ".join(f"`{label(r)}`" for r in g)
                     for g in dead_sets])


# ---------------------------------------------------------------------------- plots

PLOT_CAPTIONS = {
    "dead_tokens": "Black-hole tokens per model matrix (the most first).",
    "hole_sizes": "Distribution of hole sizes over every model (tokens per hole, log scale).",
    "dead_share": "Share of the rows that are black-hole tokens, against the number of rows (vocabulary).",
}


def draw_plots(folder: Path, good: list[dict]) -> dict[str, Path]:
    """The three figures as PNGs in ``folder``; none when no model was scanned."""
    if not good:
        return {}
    from blackholes.render.plots import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    return {
        "dead_tokens": save_figure(_dead_tokens_figure(good), folder / "census_dead_tokens.png"),
        "hole_sizes": save_figure(_hole_sizes_figure(good), folder / "census_hole_sizes.png"),
        "dead_share": save_figure(_dead_share_figure(good), folder / "census_dead_share.png"),
    }


def _dead_tokens_figure(good: list[dict]):
    import matplotlib.pyplot as plt

    shown = good[:BAR_MODELS]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * len(shown)))
    y = range(len(shown))
    ax.barh(list(y), [r["black_hole_tokens"] for r in shown], color="#c0392b")
    ax.set_yticks(list(y), [label(r, 40) for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("black-hole tokens")
    more = f" (top {BAR_MODELS} of {len(good)})" if len(good) > BAR_MODELS else ""
    ax.set_title("Dead tokens per model" + more)
    return fig


def _hole_sizes_figure(good: list[dict]):
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = np.array([s for r in good for s in r.get("hole_sizes") or []], dtype=np.int64)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(sizes):
        edges = np.unique(np.round(np.geomspace(2, max(3, sizes.max() + 1), 30)).astype(np.int64))
        ax.hist(sizes, bins=edges, color="#2c3e50")
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no holes in any model", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("tokens in the hole")
    ax.set_ylabel("holes")
    ax.set_title(f"Hole sizes ({len(sizes):,} holes)")
    return fig


def _dead_share_figure(good: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = [r["shape"][0] for r in good]
    y = [100 * (r.get("black_hole_fraction") or 0.0) for r in good]
    ax.scatter(x, y, s=22, color="#2980b9")
    for r, xi, yi in zip(good[:5], x, y):  # name the five with the most dead tokens
        if yi > 0:
            ax.annotate(label(r, 28), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("rows (vocabulary size, padding included)")
    ax.set_ylabel("black-hole tokens (% of rows)")
    ax.set_title("Dead share vs vocabulary size")
    return fig
