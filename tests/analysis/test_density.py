"""`blackholes map`: streaming randomised PCA, density maps with and without the mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blackholes.cli import main
from blackholes.analysis.density import density_map, read_mask
from blackholes.analysis.pca import pca, pca_sets
from blackholes.errors import BlackholesError
from blackholes.io.dtypes import bf16_from_float32, to_float32
from blackholes.io.safetensors import save_safetensors


def _matrix(V=4000, D=48, seed=0, offset=3.0):
    """Rows with a decaying spectrum (so the leading directions are well defined), off the origin."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    x = (rng.standard_normal((V, D)) * np.geomspace(6, 0.1, D)) @ basis + offset
    return x.astype(np.float32)


def _planted(V=4000, D=48):
    """A matrix with a 600-token black hole (rows 100..699) and a 7-token one (rows 3..9)."""
    x = _matrix(V, D)
    x[100:700] = x[100]
    x[3:10] = x[3]
    mask = np.zeros(V, bool)
    mask[100:700] = True
    mask[3:10] = True
    return x, mask


def _reference(x: np.ndarray, rows=None, k=2):
    sub = x if rows is None else x[rows]
    sub = sub.astype(np.float64)
    centred = sub - sub.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:k], s**2 / (len(sub) - 1)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the row spaces of a and b (orthonormal rows)."""
    return np.linalg.svd(a @ b.T, compute_uv=False)


@pytest.mark.parametrize("rows", [None, "planted"])
def test_pca_matches_full_svd(rows):
    x, mask = _planted()
    sel = None if rows is None else ~mask
    proj = pca(x, rows=sel, k=2)
    vt, var = _reference(x, sel)
    assert _cosines(proj.components, vt).min() > 0.9999
    np.testing.assert_allclose(proj.explained_variance, var[:2], rtol=1e-4)
    np.testing.assert_allclose(proj.total_variance, var.sum(), rtol=1e-4)
    # coordinates: every row (fitted or not) projected on the fitted mean and directions
    sub = x if sel is None else x[sel]
    ref = (x.astype(np.float64) - sub.astype(np.float64).mean(axis=0)) @ proj.components.T
    np.testing.assert_allclose(proj.coords, ref, atol=1e-3 * np.abs(ref).max())


def test_pca_bf16_equals_pca_of_widened_matrix():
    bits = bf16_from_float32(_matrix(1000, 32))
    a = pca(bits, "BF16")
    b = pca(to_float32(bits, "BF16"), "F32")
    np.testing.assert_allclose(a.coords, b.coords, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_pca_streams_in_chunks(monkeypatch, bf16):
    """Many small chunks (the last one short) give the same answer as one: centring is exact per chunk."""
    import blackholes.analysis.pca as streamed

    x = _matrix(3000, 40)
    x, dtype = (bf16_from_float32(x), "BF16") if bf16 else (x, "F32")
    whole = pca(x, dtype)
    monkeypatch.setattr(streamed, "_CHUNK_BYTES", 40 * 4 * 7)  # 7 rows a chunk: 3000 = 428 * 7 + 4
    chunked = pca(x, dtype)
    np.testing.assert_allclose(chunked.coords, whole.coords, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(chunked.total_variance, whole.total_variance, rtol=1e-5)


def test_pca_sets_shares_passes_and_returns_norms():
    x, mask = _planted()
    (full, kept), norms = pca_sets(x, rows=[None, ~mask])
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-6)
    assert full.n_rows == len(x) and kept.n_rows == int((~mask).sum())
    # A 600-token hole pulls the first direction of the unmasked fit; the masked fit ignores it.
    vt_kept, _ = _reference(x, ~mask)
    assert _cosines(kept.components, vt_kept).min() > 0.9999


def test_masked_map_loses_the_spike():
    x, mask = _planted()
    m = density_map(x, mask=mask, bins=60)
    assert m.peak_bin_count() >= 600  # the black hole: one bin
    assert m.peak_bin_count(masked=True) < 100
    assert m.hist_masked.counts.sum() + m.hist_masked.outside == (~mask).sum()
    assert m.hist_full.counts.sum() + m.hist_full.outside == len(x)
    # groups recovered from raw bytes when only a mask is given
    assert [(g, s) for g, s, _ in m.group_sizes()] == [(1, 600), (2, 7)]
    doc = m.to_json()
    assert doc["black_hole_tokens"] == 607
    assert doc["without_mask"]["peak_bin_count"] >= 600
    assert doc["with_mask"]["peak_bin_count"] < 100
    json.dumps(doc, allow_nan=False)


def test_density_map_without_mask():
    m = density_map(_matrix(500, 16))
    assert m.masked is None and m.black_hole_tokens == 0
    assert "with_mask" not in m.to_json()


@pytest.fixture
def planted_file(tmp_path):
    x, mask = _planted()
    path = tmp_path / "emb.safetensors"
    save_safetensors(path, {"weight": (bf16_from_float32(x), "BF16")})
    save_safetensors(tmp_path / "mask.safetensors", {"mask": mask})
    return path, mask


def test_cli_map_with_mask_file(planted_file, tmp_path, capsys):
    from matplotlib.image import imread

    path, mask = planted_file
    out, js = tmp_path / "map.png", tmp_path / "map.json"
    rc = main(["map", str(path), "--mask", str(tmp_path / "mask.safetensors"), "--out", str(out),
               "--json", str(js), "--quiet", "--bins", "50"])
    assert rc == 0
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 900
    doc = json.loads(js.read_text())
    assert doc["shape"] == [4000, 48] and doc["dtype"] == "BF16"
    assert doc["black_hole_tokens"] == int(mask.sum())
    assert doc["with_mask"]["peak_bin_count"] < doc["without_mask"]["peak_bin_count"]
    assert capsys.readouterr().out == ""


def test_cli_map_auto_mask(planted_file, tmp_path):
    pytest.importorskip("blackholes.analysis.groups")
    path, mask = planted_file
    js = tmp_path / "map.json"
    assert main(["map", str(path), "--auto-mask", "--out", str(tmp_path / "m.png"), "--json", str(js), "--quiet"]) == 0
    doc = json.loads(js.read_text())
    assert doc["mask_source"] == "scan"
    assert doc["black_hole_tokens"] == int(mask.sum())
    assert [g["size"] for g in doc["groups"]] == [600, 7]


def test_read_mask_length_mismatch(tmp_path):
    save_safetensors(tmp_path / "mask.safetensors", {"mask": np.zeros(10, bool)})
    with pytest.raises(BlackholesError, match="has shape \\[10\\] but the matrix has 4000 rows"):
        read_mask(tmp_path / "mask.safetensors", 4000)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--mask", str(d / "short.safetensors")], "but the matrix has 4000 rows"),
        (lambda d: ["--mask", str(d / "emb.safetensors")], "has no 'mask' tensor"),
        (lambda d: ["--mask", str(d / "missing.safetensors")], "no such file"),
    ],
)
def test_cli_map_bad_mask(planted_file, tmp_path, capsys, make_args, message):
    path, _ = planted_file
    save_safetensors(tmp_path / "short.safetensors", {"mask": np.zeros(17, bool)})
    rc = main(["map", str(path), *make_args(tmp_path), "--out", str(tmp_path / "m.png"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("blackholes: error: ") and err.count("\n") == 1
    assert not (tmp_path / "m.png").exists()


def test_cli_map_bad_output(planted_file, tmp_path, capsys):
    path, _ = planted_file
    assert main(["map", str(path), "--out", str(tmp_path / "nowhere" / "m.png")]) == 2
    assert "output directory does not exist" in capsys.readouterr().err
    assert main(["map", str(path), "--out", str(tmp_path / "m.jpg")]) == 2
    assert "--out must name a .png" in capsys.readouterr().err


def test_cli_map_mask_and_auto_mask_exclusive(planted_file, tmp_path):
    path, _ = planted_file
    with pytest.raises(SystemExit):
        main(["map", str(path), "--mask", "m.safetensors", "--auto-mask", "--out", str(tmp_path / "m.png")])


def test_non_finite_rows_are_a_clear_error():
    x = _matrix(200, 8)
    x[5, 3] = np.nan
    x[9, 0] = np.inf
    with pytest.raises(BlackholesError, match="2 rows hold NaN or infinite values"):
        density_map(x)


def test_empty_mask_draws_one_map(tmp_path):
    x = _matrix(300, 8)
    m = density_map(x, mask=np.zeros(300, bool))
    assert m.masked is None and m.black_hole_tokens == 0
    from blackholes.render.plots import plot_density_map

    plot_density_map(m, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000


def test_one_column_matrix_is_a_clear_error(tmp_path, capsys):
    """D = 1 has no second principal direction: one line, before anything is drawn or printed."""
    x = _matrix(300, 1)
    with pytest.raises(BlackholesError, match="2 columns"):
        pca(x)
    path = tmp_path / "narrow.safetensors"
    save_safetensors(path, {"weight": x})
    assert main(["map", str(path), "--out", str(tmp_path / "m.png")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("blackholes: error: ") and captured.err.count("\n") == 1
    assert "2 columns for a 2-D projection, got shape [300, 1]" in captured.err and captured.out == ""
    assert not (tmp_path / "m.png").exists()


def test_ids_from_mask_groups_raw_bits_with_scan_find_groups(monkeypatch):
    """Group ids of a mask without black_hole_id: scan's grouping, checked against a tobytes() dict."""
    import blackholes.analysis.exact
    from blackholes.analysis.density import _ids_from_mask

    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    x[10:40] = x[10]
    x[50:70] = x[50]
    x[80:100] = x[80]  # ties with the group at 50: the smaller first row gets the smaller id
    x[120, 0], x[121, 0] = 0.0, -0.0  # equal in value, different bits: two groups of one
    x[121, 1:] = x[120, 1:]
    mask = np.zeros(400, bool)
    mask[5:130] = True
    calls = []
    real = blackholes.analysis.exact.find_groups
    monkeypatch.setattr(blackholes.analysis.exact, "find_groups", lambda a, **kw: calls.append(a.shape) or real(a, **kw))
    ids = _ids_from_mask(x, mask)
    assert calls == [(125, 6)]  # one call, on the masked rows only

    by_bits: dict[bytes, list[int]] = {}
    for r in np.flatnonzero(mask):
        by_bits.setdefault(x[r].tobytes(), []).append(int(r))
    expected_groups = sorted(by_bits.values(), key=lambda g: (-len(g), g[0]))
    assert [len(g) for g in expected_groups[:3]] == [30, 20, 20]
    for gid, rows in enumerate(expected_groups, start=1):
        assert (ids[rows] == gid).all()
    assert (ids[~mask] == 0).all() and ids[120] != ids[121]


def test_map_panels_leave_room_between_colorbar_label_and_norm_label(monkeypatch):
    """The middle colorbar's label and the norm panel's y-label must not crowd each other."""
    import blackholes.render.plots as plots

    x, mask = _planted(V=2000, D=16)
    m = density_map(x, mask=mask)
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plots.plot_density_map(m, "unused.png")
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    norms = fig.axes[2]
    colorbar = [a for a in fig.axes if a.get_ylabel().startswith("tokens per bin (log scale; white")][1]
    gap = (norms.yaxis.label.get_window_extent(renderer).x0
           - colorbar.yaxis.label.get_window_extent(renderer).x1) / fig.dpi
    assert gap >= 0.3, f"only {gap:.2f} inch between the labels"


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-5, 1.0, 1e5, 1e18, 1e30])
def test_pca_agrees_with_the_exact_svd_at_any_scale(scale):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((600, 12)) @ np.diag(np.linspace(4, 0.2, 12)) * scale).astype(np.float32)
    exact = np.linalg.svd(x.astype(np.float64) - x.astype(np.float64).mean(0), compute_uv=False) ** 2
    p = pca(x, k=2)
    np.testing.assert_allclose(p.explained_variance_ratio, exact[:2] / exact.sum(), rtol=1e-4)
    np.testing.assert_allclose(p.total_variance, exact.sum() / 599, rtol=1e-4)
    assert np.isfinite(p.coords).all() and np.abs(p.coords).max() == pytest.approx(np.abs(x).max(), rel=2)


def test_mask_files_are_validated(tmp_path):
    from blackholes.io.safetensors import save_safetensors

    mask = np.zeros(10, bool)
    mask[[2, 3]] = True
    for ids, words in ((np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, -1], np.int32), "outside"),
                       (np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 99], np.int32), "outside"),
                       (np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], np.int32), "disagrees with its mask"),
                       (np.zeros(10, np.float32), "must hold integers"),
                       (np.zeros(9, np.int32), "has shape")):
        path = tmp_path / "m.safetensors"
        save_safetensors(path, {"mask": mask, "black_hole_id": ids})
        with pytest.raises(BlackholesError, match=words):
            read_mask(path, 10)
    save_safetensors(path, {"mask": mask, "black_hole_id": np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0], np.int32)})
    assert read_mask(path, 10)[1].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
