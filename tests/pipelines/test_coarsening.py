"""The coarsening sweep against brute force: the rows built by the definition, holes found by a
``tobytes()`` dictionary, the spread by elementwise ULP distances — for every σ, in both groupings."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import to_float64, ulp_distance
from blackholes.pipelines import coarsening as C

DTYPES = ["BF16", "F16", "F32"]


# ---------------------------------------------------------------------------- brute-force references


def brute_holes(rows: np.ndarray) -> list[list[int]]:
    """Groups of >= 2 identical rows (raw bytes), largest first, ties by smallest id."""
    found = defaultdict(list)
    for i, row in enumerate(rows):
        found[row.tobytes()].append(i)
    groups = [ids for ids in found.values() if len(ids) >= 2]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def brute_max_ulps(rows: np.ndarray, centre_bits: np.ndarray, dtype: str) -> int:
    """The largest elementwise ULP distance of any row from the rounded centre."""
    as_values = lambda b: to_float64(b, dtype).astype(np.float32 if dtype == "F32" else np.float64)  # noqa: E731
    if dtype == "BF16":
        return int(np.max(ulp_distance(rows, np.broadcast_to(centre_bits, rows.shape), "BF16")))
    dt = np.float16 if dtype == "F16" else np.float32
    return int(np.max(ulp_distance(rows.view(dt), np.broadcast_to(centre_bits.view(dt), rows.shape), dtype)))


def check_against_brute_force(centre, eps, sigmas, dtype, mode):
    cloud = C.make_cloud(centre, eps, dtype)
    seen = 0
    for sigma, holes, ulps in C.coarsen(cloud, sigmas, mode=mode):
        rows = C.perturbed(centre, eps, sigma, dtype)
        assert [h.tolist() for h in holes] == brute_holes(rows), (sigma, dtype, mode)
        assert ulps == brute_max_ulps(rows, C.round_to(np.float32(centre), dtype), dtype), (sigma, dtype)
        seen += 1
    assert seen == len(sigmas)


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sparse", "dense", "auto"])
def test_holes_match_brute_force_over_a_sigma_grid(dtype, mode):
    rng = np.random.default_rng(7)
    centre = (rng.standard_normal(12) * 0.02).astype(np.float32)
    centre[3] = 0.0  # the finest grid: every σ > 0 tells rows apart here
    eps = rng.standard_normal((60, 12)).astype(np.float32)
    eps[rng.random(eps.shape) < 0.4] = 0.0  # many rows tied on many coordinates: holes at every σ
    sigmas = [0.0] + np.geomspace(1e-9, 10, 45).tolist()
    check_against_brute_force(centre, eps, sigmas, dtype, mode)


def test_a_centre_on_the_grid_rounds_back_until_sigma_reaches_half_a_ulp():
    # c = 1.0 in bf16: the neighbours are 1 - 2**-8 and 1 + 2**-7, and ties go to the even 1.0.
    eps = np.float32([[0.5], [1.0], [-0.5], [-1.0]])
    cloud = C.make_cloud(np.float32([1.0]), eps, "BF16")
    found = {s: [h.tolist() for h in holes] for s, holes, _ in C.coarsen(cloud, [2**-9, 2**-8, 2**-7])}
    assert found[2**-9] == [[0, 1, 2, 3]]  # 1 - 2**-9 is a tie: back to 1.0
    assert found[2**-8] == [[0, 1, 2]]  # 1 + 2**-8 is a tie (-> 1.0); 1 - 2**-8 is a bf16 value of its own
    assert found[2**-7] == []  # only 1 + 2**-8 (row 0) still rounds to 1.0


def test_signed_zeros_are_told_apart():
    # c = -0.0: -0.0 + (+0.0) is +0.0 but -0.0 + (-0.0) stays -0.0 — two different bit patterns
    eps = np.float32([[0.0], [-0.0], [1.0], [-1.0], [-0.0]])
    for dtype in DTYPES:
        check_against_brute_force(np.float32([-0.0]), eps, [0.0, 1e-30, 1.0], dtype, "sparse")
        cloud = C.make_cloud(np.float32([-0.0]), eps, dtype)
        assert [[h.tolist() for h in holes] for _, holes, _ in C.coarsen(cloud, [0.0, 1.0])] == [[[0, 1, 2, 3, 4]],
                                                                                               [[1, 4]]]


special = st.sampled_from([0.0, -0.0, 1e-40, -1e-40, 1.0, 1.00390625, -2.0078125, 65504.0, 3e38, 0.02, -0.02])
finite32 = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@st.composite
def clouds(draw):
    n, d = draw(st.integers(2, 24)), draw(st.integers(1, 6))
    centre = np.float32(draw(st.lists(special | special | finite32, min_size=d, max_size=d)))
    choices = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5]) | st.floats(-4, 4, allow_nan=False, width=32)
    eps = np.float32(draw(st.lists(st.lists(choices, min_size=d, max_size=d), min_size=n, max_size=n)))
    sigmas = draw(st.lists(st.sampled_from([0.0, 1e-45, 1e-30, 1e-8, 3e-4, 0.125, 1.0, 7.0, 1e38]), min_size=1,
                           max_size=4, unique=True))
    return centre, eps, sigmas


@settings(max_examples=150, deadline=None)
@given(clouds(), st.sampled_from(DTYPES), st.sampled_from(["sparse", "dense"]))
def test_hypothesis_any_centre_noise_and_sigma(cloud, dtype, mode):
    centre, eps, sigmas = cloud
    check_against_brute_force(centre, eps, sigmas, dtype, mode)


def test_the_rows_are_the_training_init_bit_for_bit():
    """`--centre random`, seed s, σ: the very embedding `blackholes train --init centre` starts from."""
    import torch

    from blackholes.training.model import GPT, GPTConfig

    for sigma, seed in ((0.0, 0), (3e-3, 1), (0.02, 5)):
        model = GPT(GPTConfig(vocab=32, context=4, width=8, layers=1, heads=1))
        model.init_weights(sigma, torch.Generator().manual_seed(seed), init="centre")
        model.to(torch.bfloat16)
        trained = model.embedding.detach().view(torch.int16).numpy().view(np.uint16)
        draw, eps = C.draw_noise(seed, 32, 8)
        assert np.array_equal(C.perturbed(draw * C.CENTRE_SCALE, eps, sigma, "BF16"), trained)


def test_the_sweep_counts_and_distances():
    target = [20, 5, 2]
    r = C.coarsening_sweep("0,1e-8:1e-3:11:log", seeds=[0, 3], tokens=40, dim=6, target=target)
    assert len(r.points) == 12 * 2 and r.sigmas[0] == 0.0
    for p in r.points:
        draw, eps = C.draw_noise(p.seed, 40, 6)
        sizes = [len(g) for g in brute_holes(C.perturbed(draw * C.CENTRE_SCALE, eps, p.sigma, "BF16"))]
        assert p.sizes == sizes and p.holes == len(sizes) and p.tokens_in_holes == sum(sizes)
        assert p.largest == max(sizes, default=0) and p.distance == C.size_distance(sizes, target)
    means = {row["sigma"]: row["distance"]["mean"] for row in r.by_sigma()}
    assert r.best()["sigma"] == min(means, key=lambda s: (means[s], s))
    assert r.points[0].sizes == [40]  # σ = 0: one point
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["format"] == "blackholes.coarsening" and doc["target"]["sizes"] == target


# ---------------------------------------------------------------------------- the distance


def optimal_matching(a, b) -> int:
    """The least total |size difference| over every pairing of the holes (zeros for missing ones)."""
    n = max(len(a), len(b))
    a, b = list(a) + [0] * (n - len(a)), list(b) + [0] * (n - len(b))
    return min(sum(abs(x - y) for x, y in zip(a, p)) for p in itertools.permutations(b))


sizes = st.lists(st.integers(2, 1000), max_size=6)


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, sizes)
def test_size_distance_is_the_optimal_matching_and_a_metric(a, b, c):
    d = C.size_distance
    assert d(a, b) == optimal_matching(a, b) == d(b, a)
    assert (d(a, b) == 0) == (sorted(a) == sorted(b))
    assert d(a, c) <= d(a, b) + d(b, c)


# ---------------------------------------------------------------------------- inputs


def test_grid_parsing_and_refusals():
    assert C.parse_grid("1e-6:1e-4:3:log,0") == [0.0, 1e-06, 1e-05, 0.0001]
    assert C.parse_grid(["0.5", 0.25, "0:1:3"]) == [0.0, 0.25, 0.5, 1.0]
    assert C.parse_grid("log:1e-6:1e-4:3") == C.parse_grid("1e-6:1e-4:3:log")  # the training sweep's syntax too
    assert C.parse_grid("0:1:3:lin") == [0.0, 0.5, 1.0]
    for bad, words in (("", "the grid is empty"), (",", "the grid is empty"), ("0:1:0", "between 1 and"),
                       ("-1", ">= 0"), ("nan", "finite"), ("1e39", "float32"), ("0:1e-3:5:log", "START > 0"),
                       ("a", "cannot read"), ("1:2", "cannot read")):
        with pytest.raises(BlackholesError, match=words):
            C.parse_grid(bad)
    assert C.parse_seeds("3, 1,1") == [1, 3] and C.parse_seeds("0-3") == [0, 1, 2, 3]
    with pytest.raises(BlackholesError, match="cannot read"):
        C.parse_seeds("x")


def _planted_bf16(tmp_path):
    from blackholes.analysis.groups import scan
    from blackholes.io.dtypes import bf16_from_float32

    rng = np.random.default_rng(3)
    x = bf16_from_float32(rng.standard_normal((50, 16)).astype(np.float32) * 0.05)
    x[10:22] = x[10]
    x[30:35] = x[30]
    r = scan(x, dtype="BF16")
    r.save_mask(tmp_path / "mask.safetensors")
    (tmp_path / "scan.json").write_text(json.dumps(r.to_json()))
    return x, r


def test_centre_and_target_from_a_real_scan(tmp_path):
    x, r = _planted_bf16(tmp_path)
    opts = C.coarsening_options("0,1e-3", centre=str(tmp_path / "mask.safetensors"), target=str(tmp_path / "scan.json"))
    assert opts.centre.kind == "mask" and opts.centre.key == "vectors" and opts.centre.grid == "BF16"
    assert np.array_equal(C.round_to(opts.centre.values, "BF16"), x[10])  # hole 1's vector, exactly
    assert opts.target.sizes == [12, 5] and opts.tokens == 17 and opts.dim == 16 and opts.dtype == "BF16"
    both = {"source": "m", "tied": False, "matrices": {"input": {"shape": [9, 16], "groups": [{"size": 3}]},
                                                       "output": json.loads((tmp_path / "scan.json").read_text())}}
    (tmp_path / "both.json").write_text(json.dumps(both))
    assert C.load_target(str(tmp_path / "both.json")).sizes == [12, 5]
    with_halo = dict(json.loads((tmp_path / "scan.json").read_text()), halo_size=40)
    (tmp_path / "halo.json").write_text(json.dumps(with_halo))
    assert C.coarsening_options("0", target=str(tmp_path / "halo.json")).tokens == 57
    assert C.coarsening_options("0", centre=str(tmp_path / "mask.safetensors")).tokens == 17  # the mask's count


@pytest.mark.parametrize("content, words", [
    ('{"a": 1}', "not a scan JSON"),
    ("[1, 2]", "not a scan JSON"),
    ("not json at all", "not JSON at all"),
    ('{"shape": [10, 4], "groups": [{"size": 1}]}', "not a scan JSON"),
    ('{"shape": [3, 4], "groups": [{"size": 2}, {"size": 2}]}', "not a scan JSON"),  # more tokens than rows
])
def test_a_target_that_is_not_a_scan_json(tmp_path, content, words):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(BlackholesError, match=words):
        C.coarsening_options("0", target=str(tmp_path / "t.json"))


def test_bad_centres_and_sizes(tmp_path):
    _planted_bf16(tmp_path)
    with pytest.raises(BlackholesError, match="holds no vectors"):
        C.load_centre(str(tmp_path / "scan.json"))
    with pytest.raises(BlackholesError, match="no such"):
        C.load_centre(str(tmp_path / "missing.safetensors"))
    from blackholes.analysis.groups import scan

    scan(np.eye(4, dtype=np.float32)).save_mask(tmp_path / "empty.safetensors")
    with pytest.raises(BlackholesError, match="holds no black hole"):
        C.load_centre(str(tmp_path / "empty.safetensors"))
    with pytest.raises(BlackholesError, match="non-finite"):
        C.load_centre(np.float32([1.0, np.inf]))
    mask = str(tmp_path / "mask.safetensors")
    for kwargs, words in ((dict(tokens=1), "at least 2"), (dict(dim=8, centre=mask), "differs from the centre"),
                          (dict(dtype="f8"), "bf16, f16 or f32"), (dict(tokens=3, target=[2, 2]), "fewer than"),
                          (dict(tokens=10**6, dim=10**4), "too large")):
        with pytest.raises(BlackholesError, match=words):
            C.coarsening_options("0", **kwargs)


# ---------------------------------------------------------------------------- the command


def test_run_coarsening_writes_the_pages_and_refuses_before_any_work(tmp_path, capsys):
    _planted_bf16(tmp_path)
    out = tmp_path / "sweep"
    parse = C.coarsening_parser().parse_args
    argv = ["--no-train", "--sigma", "0,1e-4:1e-2:4:log", "--seed", "0,1", "--centre",
            str(tmp_path / "mask.safetensors"), "--target", str(tmp_path / "scan.json"), "--out", str(out), "--quiet"]
    assert C.run_coarsening(parse(argv)) == 0
    assert "Report:" in capsys.readouterr().out
    data = json.loads((out / "coarsening.json").read_text())
    assert data["tokens"] == 17 and len(data["points"]) == 5 * 2 and data["best"] is not None
    assert {p.name for p in (out / "plots").iterdir()} == {"coarsening_holes.png", "coarsening_spread.png",
                                                           "coarsening_fit.png"}
    with pytest.raises(BlackholesError, match="--force"):
        C.run_coarsening(parse(argv))
    assert C.run_coarsening(parse(argv + ["--force"])) == 0
    for bad, words in ((["--sigma", ""], "grid is empty"), (["--target", str(tmp_path / "mask.safetensors")],
                                                             "not a scan JSON")):
        fresh = tmp_path / f"never-{len(words)}"
        args = parse(["--out", str(fresh), "--sigma", "0"] + bad)
        with pytest.raises(BlackholesError, match=words):
            C.run_coarsening(args)
        assert not fresh.exists()  # refused before any work: not even DIR was made


def test_the_sweep_command_runs_it(tmp_path):
    from blackholes.cli import main

    status = main(["sweep", "--no-train", "--sigma", "0,1e-3", "--tokens", "8", "--dim", "4",
                   "--out", str(tmp_path / "s"), "--quiet"])
    assert status == 0 and (tmp_path / "s" / "coarsening.json").is_file()
