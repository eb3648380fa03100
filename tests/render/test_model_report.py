"""The report page per model (``scan --report DIR``): every combination of --near, --indicators and a
tokenizer writes both pages, self-contained; the answer's numbers are the result's; the tables name the
holes, the halo and the candidates; the plots are drawn; the real CLI writes it all.

The realistic case (built here, deterministic): a 20,000 x 256 bf16 matrix whose rows belong to a
byte-level BPE tokenizer of 19,703 tokens (Latin, Cyrillic, Thai and Han words; special and reserved
tokens; 297 padding rows), with six planted holes (the reserved tokens with the padding rows, Thai
tokens, invalid-UTF-8 bytes, Han, Cyrillic, Latin), a halo of 24 rows 1-3 ULPs from the holes, and 8
low-norm dead rows that only the indicator finds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
tokenizers = pytest.importorskip("tokenizers")

from blackholes.analysis.groups import scan  # noqa: E402
from blackholes.errors import BlackholesError  # noqa: E402
from blackholes.io.dtypes import bf16_from_float32  # noqa: E402
from blackholes.io.safetensors import save_safetensors  # noqa: E402
from blackholes.render.model_report import OWNED_PLOTS, PLOT_NAMES, report_paths, write_report  # noqa: E402
from blackholes.render.report_answer import facts, id_ranges  # noqa: E402

V, D = 20_000, 256
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|reserved_special_token_{i}|>" for i in range(100)]
ALPHABETS = {"Latin": "abcdefghijklmnopqrstuvwxyz", "Cyrillic": "".join(map(chr, range(0x430, 0x450))),
             "Thai": "".join(map(chr, range(0xE01, 0xE2F))), "Han": "".join(map(chr, range(0x4E00, 0x4E00 + 400)))}


# ---------------------------------------------------------------------------- the realistic model


def byte_level_bpe(size: int, rng) -> tuple:
    """A byte-level BPE of ``size`` pieces (256 bytes + word prefixes, one merge each) plus SPECIAL,
    and the ids each script's words added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from blackholes.analysis.scripts import byte_level_alphabet

    char = {b: c for c, b in byte_level_alphabet().items()}
    vocab = {char[b]: b for b in range(256)}
    merges, by_script = [], {s: [] for s in ALPHABETS}
    scripts = list(ALPHABETS)
    while len(vocab) < size:
        script = scripts[int(rng.integers(len(scripts)))]
        letters = ALPHABETS[script]
        word = (" " if rng.random() < 0.5 else "") + "".join(letters[int(rng.integers(len(letters)))]
                                                             for _ in range(int(rng.integers(2, 7))))
        piece = "".join(char[b] for b in word.encode())
        for k in range(2, len(piece) + 1):
            if piece[:k] not in vocab and len(vocab) < size:
                by_script[script].append(len(vocab))
                vocab[piece[:k]] = len(vocab)
                merges.append((piece[: k - 1], piece[k - 1]))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    return tok, by_script


def nudged(row: np.ndarray, rng, coords, most: int) -> np.ndarray:
    """bf16 bits ``row`` moved 1..``most`` ULPs (either way) in each of ``coords``: for a normal
    value, bits +- n is the value n representable steps away."""
    out = row.copy()
    for c in coords:
        out[c] = np.uint16(int(out[c]) + int(rng.integers(1, most + 1)) * int(rng.choice([-1, 1])))
    return out


def realistic_model(folder: Path, rows: int = V, dim: int = D, *, seed: int = 7, tokenizer: bool = True) -> dict:
    """Write model.safetensors (bf16 ``lm_head.weight``) and tokenizer.json; return what was planted:
    six holes (reserved tokens + the 297 padding rows, Thai, bytes 0xC0-0xFF, Han, Cyrillic, Latin),
    24 halo rows 1-3 ULPs from a hole, 8 low-norm dead rows (half the holes' vector, plus noise)."""
    rng = np.random.default_rng(seed)
    tok, by_script = byte_level_bpe(rows - 297 - len(SPECIAL), rng)
    vocab = tok.get_vocab_size()
    x = rng.standard_normal((rows, dim)).astype(np.float32) * 0.02
    bits = bf16_from_float32(x + rng.standard_normal(dim).astype(np.float32) * 0.01)
    base = bf16_from_float32(rng.standard_normal(dim).astype(np.float32) * 0.008 + 0.004)
    separating = rng.choice(dim, 6, replace=False)
    reserved = [tok.token_to_id(s) for s in SPECIAL[3:]]
    members = [reserved + list(range(vocab, rows)), by_script["Thai"][:220], list(range(0xC0, 0x100)),
               by_script["Han"][:12], by_script["Cyrillic"][:3], by_script["Latin"][:2]]
    holes = [base] + [nudged(base, rng, rng.choice(separating, int(rng.integers(1, 4)), replace=False), 6)
                      for _ in members[1:]]
    for ids, vector in zip(members, holes):
        bits[ids] = vector
    taken = {i for ids in members for i in ids}
    free = [i for i in by_script["Latin"] + by_script["Cyrillic"] if i not in taken]
    picks = rng.permutation(free)[:32].tolist()
    halo, dead = sorted(picks[:24]), sorted(picks[24:])
    for i in halo:
        near = holes[int(rng.integers(len(holes)))]
        bits[i] = nudged(near, rng, rng.choice(dim, int(rng.integers(1, 4)), replace=False), 3)
    small = 0.5 * (base.astype(np.uint32) << 16).view(np.float32)  # half the holes' vector: 128 ULPs away
    for i in dead:
        bits[i] = bf16_from_float32(small + rng.standard_normal(dim).astype(np.float32) * 0.0004)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "model.safetensors", {"lm_head.weight": (bits, "BF16")})
    if tokenizer:
        tok.save(str(folder / "tokenizer.json"))
    return {"holes": [sorted(m) for m in members], "halo": halo, "dead": dead, "vocab": vocab, "bits": bits}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realistic")
    planted = realistic_model(folder / "model")
    return folder / "model", planted


@pytest.fixture(scope="module")
def full(model):
    """The realistic model scanned with everything: --near 8 --indicators, tokenizer beside it."""
    folder, planted = model
    return scan(folder / "model.safetensors", near=8, indicators=True), planted


@pytest.fixture(scope="module")
def full_report(full, tmp_path_factory):
    r, planted = full
    return r, planted, write_report(r, tmp_path_factory.mktemp("full") / "out")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same kind of model at 2,000 x 32, once with its tokenizer beside it and once without."""
    root = tmp_path_factory.mktemp("small")
    planted = realistic_model(root / "named", 2_000, 32, seed=3)
    realistic_model(root / "bare", 2_000, 32, seed=3, tokenizer=False)
    return root, planted


# ---------------------------------------------------------------------------- helpers


def read(report) -> tuple[str, str]:
    return report.markdown.read_text(encoding="utf-8"), report.html.read_text(encoding="utf-8")


def assert_self_contained(page: str) -> None:
    """Every image is a data URI; nothing is fetched from anywhere (no src/href to another file or host
    but the "full size" links to the plots beside the page, which are not needed to read it)."""
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    for href in re.findall(r'\bhref="([^"]*)"', page):
        assert href.startswith("plots/") and "://" not in href


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading`` in the Markdown."""
    after = md[md.index(heading):].split("\n")
    start = next(i for i, line in enumerate(after) if line.startswith("| "))
    rows = []
    for line in after[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def command_line(md: str) -> str:
    """The command the page gives to scan again."""
    return md[md.index("To scan it again:"):].split("```")[1].strip()


@pytest.fixture
def quick_plots(monkeypatch):
    """Plots replaced by a stub that writes a 1-pixel PNG (which plots are drawn is still decided by the
    report): for tests about the page; the pictures themselves are drawn by the other tests."""
    import blackholes.render.report_plots as report_plots
    import blackholes.render.plots as plots

    pixel = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                          "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")

    def stub(*args, **kw):
        path = Path(next(a for a in args if isinstance(a, Path)))
        path.write_bytes(pixel)
        return path

    for name in ("plot_norms", "plot_indicator", "plot_holes"):
        monkeypatch.setattr(report_plots, name, stub)
    monkeypatch.setattr(plots, "plot_density_map", stub)


def png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- the realistic case


def test_realistic_report_answers_first_with_the_results_numbers(full_report):
    r, planted, report = full_report
    md, page = read(report)
    assert_self_contained(page)
    f = facts(r)
    # the scan itself found what was planted: the report's numbers must then be exactly these
    assert sorted(sorted(g.token_ids) for g in r.groups) == sorted(planted["holes"])
    assert f.halo_rows == planted["halo"] and set(planted["dead"]) <= set(r.candidates)
    assert (f.dead, f.holes, f.halo, f.candidates) == (r.black_hole_tokens, len(r.groups), r.to_json()["halo_size"],
                                                      len(r.to_json()["candidates"]))
    assert f.further == len(set(r.candidates) - set(planted["halo"]))
    dead, who, halo, anatomy, cands = report.answer
    assert dead.startswith(f"**{r.black_hole_tokens:,} of {V:,} tokens are dead**") and "**6 black holes**" in dead
    assert f"{f.categories['padding']} padding rows" in who and "100 unused / reserved slots" in who
    assert "Thai 219" in who
    assert halo.startswith("**The halo: 24 more tokens**")
    assert f"differ only in {len(r.anatomy.coordinates)} (" in anatomy
    assert cands.startswith(f"**{f.further:,} further candidates**") and "**8 of them stand apart**" in cands
    assert md.index("## Answer") < md.index("## The black holes") < md.index("## Plots")
    assert "- " + dead in md and dead.replace("**", "") in re.sub(r"</?strong>", "", page).replace("&#x27;", "'")


def test_realistic_tables_name_holes_members_halo_coordinates_and_candidates(full_report):
    r, planted, report = full_report
    md, _ = read(report)
    holes = table_rows(md, "## The black holes")
    assert [(row[0], row[1]) for row in holes] == [(f"#{g.id}", f"{g.size:,}") for g in r.groups]
    assert holes[0][2] == f"{planted['vocab'] - 100}–{V - 1}"  # the reserved tokens run into the padding rows
    assert "padding" in holes[0][4] and "unused" in holes[0][4] and "Thai" in holes[1][5]
    members = md[md.index("## Who is in each hole"):md.index("## Near-duplicates")]
    assert "`'<|reserved_special_token_0|>'`" in members and f"297 padding: rows {planted['vocab']}–{V - 1}" in members
    halo = table_rows(md, "### The halo, row by row")
    assert sorted(int(row[0]) for row in halo) == planted["halo"]
    coordinates = table_rows(md, "## Which coordinates separate the holes")
    assert [int(row[0]) for row in coordinates] == r.anatomy.coordinates
    for row, j in zip(coordinates, range(len(r.anatomy.coordinates))):  # each cell: ULPs from hole #1, as computed
        assert row[2:] == [f"{int(u):+,}" for u in r.anatomy.offsets[:, j]]
    cands = table_rows(md, "## Under-trained candidates")
    assert [int(row[1]) for row in cands] == r.candidates[:len(cands)]
    assert {int(row[1]) for row in cands[:32]} == set(planted["halo"]) | set(planted["dead"])  # the near-zero ones


def test_realistic_plots_are_drawn_embedded_and_referenced(full_report):
    r, _, report = full_report
    md, page = read(report)
    assert [p.name for p in report.plots] == list(PLOT_NAMES) and not report.notes
    for p in report.plots:
        assert p.parent == report.folder / "plots" and png(p)
        assert f"](plots/{p.name})" in md
    assert page.count("data:image/png;base64,") == len(PLOT_NAMES)


# ---------------------------------------------------------------------------- every combination


@pytest.mark.parametrize("near", [None, 8])
@pytest.mark.parametrize("indicators", [False, True])
@pytest.mark.parametrize("named", [True, False])
def test_every_combination_writes_both_pages(small, tmp_path, quick_plots, near, indicators, named):
    root, planted = small
    r = scan(root / ("named" if named else "bare") / "model.safetensors", near=near, indicators=indicators)
    report = write_report(r, tmp_path / "out")
    md, page = read(report)
    assert_self_contained(page)
    assert report.answer[0].startswith(f"**{r.black_hole_tokens:,} of 2,000 tokens are dead**")
    assert [row[0] for row in table_rows(md, "## The black holes")] == [f"#{g.id}" for g in r.groups]
    drawn = {p.name for p in report.plots}
    assert drawn == {"norms.png", "map.png"} | ({"indicator.png"} if indicators else set()) \
        | ({"holes.png"} if near else set())
    assert ("## Near-duplicates" in md) == bool(near) and ("## Under-trained candidates" in md) == indicators
    assert ("**Who they are**" in md) == named
    if not named:
        assert "give `--tokenizer PATH`" in report.answer[1]
    if not near:
        assert "the holes' ULP heat map (scan with `--near`)" in md
    if not indicators:
        assert "the indicator plot (scan with `--indicators`)" in md
    again = command_line(md)
    assert again.startswith("blackholes scan ") and again.endswith(f"--report {tmp_path / 'out'}")
    assert ("--near 8" in again) == bool(near) and ("--indicators" in again) == indicators


def test_a_matrix_without_holes_reads_well(tmp_path):
    rng = np.random.default_rng(0)
    save_safetensors(tmp_path / "m.safetensors", {"w": rng.standard_normal((400, 16)).astype(np.float32)})
    r = scan(tmp_path / "m.safetensors", near=2, indicators=True)
    report = write_report(r, tmp_path / "out")
    md, page = read(report)
    assert_self_contained(page)
    assert report.answer[0] == ("**No black holes**: all 400 rows of the matrix are distinct (no two are "
                                "bit-for-bit identical).")
    assert "None: all 400 rows are distinct." in md and "fewer than two holes to compare" in md
    assert "row norm (low = dead)" in report.answer[-1]  # no reference set: the norm is the indicator
    assert {p.name for p in report.plots} == {"norms.png", "indicator.png", "map.png"}


def test_a_matrix_scanned_from_memory_gets_its_map_when_given(tmp_path):
    x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    x[5:9] = x[5]
    r = scan(x)
    kept = write_report(r, tmp_path / "kept")  # scan() keeps the matrix it read: the map is drawn
    assert [p.name for p in kept.plots] == ["norms.png", "map.png"]
    r.source_matrix = None
    report = write_report(r, tmp_path / "a")
    assert [p.name for p in report.plots] == [] and any("scanned from memory" in n for n in report.notes)
    again = write_report(r, tmp_path / "b", matrix=x)
    assert [p.name for p in again.plots] == ["norms.png", "map.png"] and report.answer == again.answer
    with pytest.raises(BlackholesError, match="not the one scanned"):
        raise BlackholesError(write_report(r, tmp_path / "c", matrix=x[:, :4]).notes[-1])


def test_token_text_cannot_inject_markup(tmp_path, quick_plots):
    """Tokens full of Markdown and HTML marks are shown as literals, never rendered."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["a", "b", "**bold**", "`tick`", "<s>", "x|y", "$x^2$"] + [f"w{i}" for i in range(53)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    x = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    x[[2, 3, 4, 5, 6]] = x[2]
    save_safetensors(tmp_path / "model.safetensors", {"lm_head.weight": x})
    md, page = read(write_report(scan(tmp_path / "model.safetensors", near=1), tmp_path / "out"))
    assert "<s>" not in page and "&lt;s&gt;" in page and "<strong>bold" not in page
    assert r"`'\x2a\x2abold\x2a\x2a'`" in md and r"`'\x60tick\x60'`" in md and r"`'x\|y'`" in md


# ---------------------------------------------------------------------------- both matrices, recordings


def two_matrix_model(folder: Path, tied: bool) -> Path:
    rng = np.random.default_rng(4)
    emb, head = (rng.standard_normal((200, 16)).astype(np.float32) for _ in range(2))
    emb[10:20] = emb[10]
    head[15:18] = head[15]
    head[30:32] = head[30]
    folder.mkdir()
    tensors = {"model.embed_tokens.weight": emb} if tied else {"model.embed_tokens.weight": emb, "lm_head.weight": head}
    save_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": tied}))
    return folder


def test_both_matrices_get_a_section_each(tmp_path, quick_plots):
    from blackholes.analysis.groups import scan_both

    both = scan_both(two_matrix_model(tmp_path / "m", tied=False), near=4, indicators=True)
    report = write_report(both, tmp_path / "out")
    md, page = read(report)
    assert_self_contained(page)
    assert "## Input embedding: `model.embed_tokens.weight`" in md
    assert "## Output (unembedding) matrix: `lm_head.weight`" in md
    assert {p.name for p in report.plots} == {f"{m}_{n}" for m in ("input", "output") for n in PLOT_NAMES} \
        - {"input_holes.png"}  # one hole in the input embedding: nothing to compare it with
    assert "Input embedding: **10 of 200 tokens are dead**" in report.answer[0]
    assert any(line.startswith("Output (unembedding) matrix: **5 of 200 tokens are dead**") for line in report.answer)
    assert "**3 tokens are dead in both matrices**" in md  # rows 15-17 are in a hole of each
    assert "--matrix both" in command_line(md)


def test_a_tied_model_says_so_and_writes_one_section(tmp_path):
    from blackholes.analysis.groups import scan_both

    both = scan_both(two_matrix_model(tmp_path / "m", tied=True))
    report = write_report(both, tmp_path / "out")
    md, _ = read(report)
    assert "ties its output matrix to its input embedding" in md
    assert {p.name for p in report.plots} == {"input_norms.png", "input_map.png"}


def test_a_training_recording_is_read_again_at_its_step(tmp_path):
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((3, 32, 8)).astype(np.float32)
    emb[:, 20:] = emb[:, 20:21]  # 12 tokens share one vector
    meta = {"steps": json.dumps([0, 5, 10]), "never_seen": json.dumps(list(range(20, 32))), "complete": "true"}
    save_safetensors(tmp_path / "run.safetensors", {"embeddings": emb, "grads": np.zeros_like(emb),
                                                     "logits": np.zeros((3, 32), np.float32)}, metadata=meta)
    from blackholes.sources import load_matrix

    r = scan(load_matrix(tmp_path / "run.safetensors", step=5))
    report = write_report(r, tmp_path / "out")
    assert {p.name for p in report.plots} == {"norms.png", "map.png"}
    assert not any("histogram" in n or "density map" in n for n in report.notes)
    assert "--step 5" in command_line(report.markdown.read_text())


def test_a_quantised_gguf_matrix_is_mapped_from_its_dequantised_rows(tmp_path):
    gguf = pytest.importorskip("gguf")
    x = np.random.default_rng(6).standard_normal((64, 64)).astype(np.float32)
    x[8:16] = x[8]
    data = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_tensor("token_embd.weight", data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = scan(tmp_path / "m.gguf", indicators=True)
    report = write_report(r, tmp_path / "out")
    assert {p.name for p in report.plots} == {"norms.png", "indicator.png", "map.png"}
    assert "identity of its stored Q8_0 blocks" in report.markdown.read_text()


# ---------------------------------------------------------------------------- files and the CLI


def test_report_paths_and_stale_plots(small, tmp_path, quick_plots):
    root, _ = small
    out = tmp_path / "out"
    assert report_paths(out) == [out / "report.md", out / "report.html"]
    first = write_report(scan(root / "named" / "model.safetensors", near=8, indicators=True), out)
    listed = report_paths(out)
    assert set(first.plots) <= set(listed) and len(listed) == 2 + 3 * len(OWNED_PLOTS)
    second = write_report(scan(root / "named" / "model.safetensors"), out)
    assert sorted((out / "plots").iterdir()) == sorted(second.plots)  # the previous report's extra plots are gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(BlackholesError, match="takes a folder"):
        report_paths(tmp_path / "file")


def test_cli_near_indicators_report(small, tmp_path, capsys):
    from blackholes.cli import main

    root, planted = small
    out = tmp_path / "report"
    assert main(["scan", str(root / "named"), "--near", "--indicators", "--report", str(out)]) == 0
    assert f"Page written to {out}" in capsys.readouterr().out
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert_self_contained(page)
    assert md.startswith("# Black-hole tokens in named [lm_head.weight]")
    assert sum(len(h) for h in planted["holes"]) == int(re.search(r"\*\*([\d,]+) of 2,000 tokens", md)[1])
    assert sorted(int(row[0]) for row in table_rows(md, "### The halo, row by row")) == planted["halo"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOT_NAMES)


def test_cli_refuses_a_report_folder_that_is_a_file_or_an_input(small, cli_error):
    root, _ = small
    model = root / "named" / "model.safetensors"
    cli_error(["scan", root / "named", "--report", model], "--report takes a folder")
    (root / "named" / "plots").mkdir(exist_ok=True)
    try:  # a plot path that is the tokenizer itself (through a link) is refused before any work
        link = root / "named" / "plots" / "norms.png"
        link.symlink_to(root / "named" / "tokenizer.json")
        cli_error(["scan", root / "named", "--report", root / "named"], "is an input of this command")
    finally:
        (root / "named" / "plots" / "norms.png").unlink(missing_ok=True)
        (root / "named" / "plots").rmdir()


# ---------------------------------------------------------------------------- the small helpers


from hypothesis import given, settings, strategies as st  # noqa: E402

from blackholes.render.report_answer import standing_apart  # noqa: E402


def parse_ranges(text: str) -> list[int]:
    out = []
    for part in text.split(", "):
        a, _, b = part.partition("–")
        out += list(range(int(a), int(b or a) + 1))
    return out


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 300), min_size=1, max_size=80))
def test_id_ranges_round_trip(ids):
    text = id_ranges(ids, limit=10 ** 6)
    assert parse_ranges(text) == sorted(ids)
    assert all(int(b) - int(a) >= 2 for a, b in (p.split("–") for p in text.split(", ") if "–" in p))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=40))
def test_standing_apart_is_a_gap_wider_than_half_the_range(values):
    v = np.array(values)
    got = standing_apart(v, list(range(len(v))))
    s = np.sort(v)
    gaps = np.diff(s)
    if got is None:
        assert len(s) < 10 or s[-1] == s[0] or gaps.max() < 0.5 * (s[-1] - s[0])
    else:
        n, last, following = got
        assert n == int((v <= last).sum()) and following == s[n] and following - last == gaps.max()
        assert following - last >= 0.5 * (s[-1] - s[0])
