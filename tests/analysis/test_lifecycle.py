"""The per-step census of a recording: planted events, brute force, forced hash collisions, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.analysis import lifecycle
from blackholes.analysis.exact import hash_rows
from blackholes.analysis.lifecycle import census, census_of_recording
from blackholes.errors import BlackholesError
from blackholes.io.safetensors import save_safetensors
from blackholes.io.recording import encode_metadata

PHASE = {0: "forming", 1: "rigid", 2: "frozen"}


# ---------------------------------------------------------------------------- the brute-force oracle


def brute_partitions(emb: np.ndarray):
    """group_ids and changed, one row at a time, from ``row.tobytes()``."""
    R, V = emb.shape[:2]
    gids = np.empty((R, V), np.int32)
    changed = np.zeros((R, V), bool)
    for r in range(R):
        first: dict[bytes, int] = {}
        for v in range(V):
            gids[r, v] = first.setdefault(emb[r, v].tobytes(), v)
            changed[r, v] = r > 0 and emb[r, v].tobytes() != emb[r - 1, v].tobytes()
    return gids, changed


def groups_of(ids) -> dict[int, frozenset]:
    out: dict[int, set] = {}
    for t, g in enumerate(ids):
        out.setdefault(int(g), set()).add(t)
    return {g: frozenset(m) for g, m in out.items()}


def by_smallest(sets) -> list[list[int]]:
    return sorted((sorted(s) for s in sets), key=lambda s: s[0])


def brute_events(gids, steps):
    out = []
    for r in range(1, len(gids)):
        old, new = groups_of(gids[r - 1]), groups_of(gids[r])
        for g in sorted(old):
            parts = groups_of_subset(old[g], gids[r])
            if len(parts) > 1:
                out.append(("fission", int(steps[r]), sorted(old[g]), by_smallest(parts)))
        for g in sorted(new):
            parts = groups_of_subset(new[g], gids[r - 1])
            if len(parts) > 1:
                out.append(("merger", int(steps[r]), by_smallest(parts), sorted(new[g])))
    return out


def groups_of_subset(members, ids) -> list[set]:
    parts: dict[int, set] = {}
    for t in members:
        parts.setdefault(int(ids[t]), set()).add(t)
    return list(parts.values())


def brute_lineages(gids, changed, steps):
    """The lineage rules of census(), applied at every record with Python sets."""
    lin, alive = [], {}

    def born(r, members, origin):
        lin.append({"born": r, "origin": origin, "birth": sorted(members), "members": members, "codes": [],
                    "end": "alive", "into": None, "last": None})
        return len(lin) - 1

    for g, m in sorted(groups_of(gids[0]).items()):
        if len(m) >= 2:
            alive[m] = born(0, m, "initial")
    for r in range(1, len(gids)):
        new = groups_of(gids[r])
        claims: dict[int, list] = {}
        for m, k in sorted(alive.items(), key=lambda x: min(x[0])):
            counts = {g: len(m & G) for g, G in new.items() if m & G}
            heir = min(counts, key=lambda g: (-counts[g], g))
            if len(new[heir]) < 2:
                lin[k].update(end="dissolved", last=r - 1)
            else:
                claims.setdefault(heir, []).append((-counts[heir], min(m), k))
        alive = {}
        for g in sorted(new):
            G = new[g]
            if len(G) < 2:
                continue
            if g not in claims:
                origin = "split" if len({int(gids[r - 1][t]) for t in G}) == 1 else "merger"
                alive[G] = born(r, G, origin)
                continue
            ranked = sorted(claims[g])
            k = ranked[0][2]
            for _, _, other in ranked[1:]:
                lin[other].update(end="absorbed", into=k, last=r - 1)
            code = 0 if lin[k]["members"] != G else (1 if changed[r, min(G)] else 2)
            lin[k]["codes"].append((r, code))
            lin[k]["members"] = G
            alive[G] = k
    for k in alive.values():
        lin[k]["last"] = len(gids) - 1
    order = sorted(range(len(lin)), key=lambda k: (lin[k]["born"], lin[k]["birth"][0]))
    number = {k: i + 1 for i, k in enumerate(order)}
    out = []
    for k in order:
        x = lin[k]
        phases = []
        for r, code in x["codes"]:
            if phases and phases[-1][0] == PHASE[code]:
                phases[-1][2] = int(steps[r])
            else:
                phases.append([PHASE[code], int(steps[r]), int(steps[r])])
        phases = [tuple(p) for p in phases]
        frozen = phases[-1][1] if x["end"] == "alive" and phases and phases[-1][0] == "frozen" else None
        out.append({"id": number[k], "born": int(steps[x["born"]]), "origin": x["origin"],
                    "last_seen": int(steps[x["last"]]), "end": x["end"],
                    "absorbed_into": None if x["into"] is None else number[x["into"]],
                    "members_at_birth": x["birth"], "members": sorted(x["members"]), "phases": phases,
                    "frozen_from": frozen})
    return out


def brute_frozen_from(changed, tokens, steps):
    tokens = list(tokens)
    if not tokens:
        return None
    moved = [r for r in range(1, len(changed)) if changed[r, tokens].any()]
    if moved and moved[-1] == len(changed) - 1:
        return None
    return int(steps[moved[-1] + 1]) if moved else int(steps[1])


def assert_matches_brute_force(c, emb, steps, never_seen=None):
    """Every part of the census against the oracle."""
    gids, changed = brute_partitions(emb)
    np.testing.assert_array_equal(c.group_ids, gids)
    np.testing.assert_array_equal(c.changed, changed)
    for r in range(len(emb)):
        sizes = Counter(gids[r].tolist())
        holes = [s for s in sizes.values() if s >= 2]
        assert c.distinct[r] == len(sizes)
        assert c.holes[r] == len(holes)
        assert c.tokens_in_holes[r] == sum(holes)
        assert c.largest[r] == max(holes, default=0)
        if holes:
            assert c.largest_id[r] == min(g for g, s in sizes.items() if s == max(holes))
    assert [(e.kind, e.step, e.before, e.after) for e in c.events] == brute_events(gids, steps)
    for v in range(emb.shape[1]):
        moved = [r for r in range(1, len(emb)) if changed[r, v]]
        assert c.last_motion[v] == (int(steps[moved[-1]]) if moved else None)
    final_holes = [t for t in range(emb.shape[1]) if Counter(gids[-1].tolist())[int(gids[-1, t])] >= 2]
    assert c.frozen_from["matrix"] == brute_frozen_from(changed, range(emb.shape[1]), steps)
    assert c.frozen_from["holes"] == brute_frozen_from(changed, final_holes, steps)
    if never_seen is not None:
        trained = [t for t in range(emb.shape[1]) if t not in set(never_seen)]
        assert c.frozen_from["trained"] == brute_frozen_from(changed, trained, steps)
        assert c.never_seen["one_point_all_steps"] == all(len(set(gids[r, never_seen])) == 1 for r in range(len(emb)))
    got = [h.to_json() for h in c.lineages]
    for h in got:
        h["phases"] = [(p["phase"], p["from"], p["to"]) for p in h["phases"]]
    want = brute_lineages(gids, changed, steps)
    assert [{k: h[k] for k in want[0]} for h in got] == want if want else got == []
    json.dumps(c.to_json(), allow_nan=False)  # strict JSON


# ---------------------------------------------------------------------------- hypothesis: random recordings

ALPHABET = {"BF16": np.array([0, 0x8000, 0x3F80, 0x7FC0, 1], np.uint16),  # +0, -0, 1.0, NaN, a subnormal
            "F32": np.array([0, 0x80000000, 0x3F800000, 0x7FC00000, 0x7FC00001], np.uint32)}  # two NaNs


@st.composite
def recordings(draw):
    """Small recordings over a 5-value alphabet: many ties, frozen records, repeated partitions."""
    dtype = draw(st.sampled_from(["BF16", "F32"]))
    R, V, D = draw(st.integers(2, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
    picks = np.array(draw(st.lists(st.integers(0, 4), min_size=R * V * D, max_size=R * V * D)))
    emb = ALPHABET[dtype][picks].reshape(R, V, D)
    keep = draw(st.lists(st.integers(0, 2), min_size=R, max_size=R))  # 0: new, 1: copy record, 2: copy some rows
    for r in range(1, R):
        if keep[r] == 1:
            emb[r] = emb[r - 1]
        elif keep[r] == 2:
            emb[r, : V // 2 + 1] = emb[r - 1, : V // 2 + 1]
    if dtype == "F32":
        emb = emb.view(np.float32)
    gaps = draw(st.lists(st.integers(1, 5), min_size=R - 1, max_size=R - 1))
    return emb, dtype, np.r_[0, np.cumsum(gaps)]


HASHES = {
    "real": hash_rows,
    "constant": lambda rows: np.zeros(len(rows), np.uint64),  # every row collides
    "two buckets": lambda rows: hash_rows(rows) & np.uint64(1),
}


@pytest.mark.parametrize("hashing", sorted(HASHES))
@settings(max_examples=60, deadline=None)
@given(data=recordings(), chunk=st.sampled_from([1, 64, 1 << 20]))
def test_census_equals_brute_force_whatever_the_hash(hashing, data, chunk):
    emb, dtype, steps = data
    with mock.patch.object(lifecycle, "hash_rows", HASHES[hashing]), mock.patch.object(lifecycle, "CHUNK_BYTES", chunk):
        c = census(emb, dtype, steps, never_seen=[0])
    assert_matches_brute_force(c, emb, steps, never_seen=[0])


# ---------------------------------------------------------------------------- planted events


def moving_hole(records=10, vocab=6, dim=3) -> np.ndarray:
    """F32 records in which every row sits at one point that moves by +1 each record."""
    emb = np.zeros((records, vocab, dim), np.float32)
    emb += np.arange(records, dtype=np.float32)[:, None, None]
    return emb


def test_planted_fission_at_a_known_step():
    emb = moving_hole()
    emb[4:, 4:] += 100  # tokens 4 and 5 leave the hole together at record 4 ...
    emb[7:, 5] += 1  # ... and part at record 7
    steps = np.arange(10) * 5  # record 4 = step 20, record 7 = step 35
    c = census(emb, "F32", steps, never_seen=[0, 1, 2, 3])
    assert [(e.kind, e.step, e.before, e.after) for e in c.events] == [
        ("fission", 20, [0, 1, 2, 3, 4, 5], [[0, 1, 2, 3], [4, 5]]),
        ("fission", 35, [4, 5], [[4], [5]]),
    ]
    assert c.holes.tolist() == [1] * 4 + [2] * 3 + [1] * 3
    assert c.tokens_in_holes.tolist() == [6] * 4 + [6] * 3 + [4] * 3
    assert c.distinct.tolist() == [1] * 4 + [2] * 3 + [3] * 3
    first, pair = c.lineages
    assert (first.id, first.origin, first.members_at_birth, first.members, first.end) == (
        1, "initial", [0, 1, 2, 3, 4, 5], [0, 1, 2, 3], "alive")
    assert first.phases == [("rigid", 5, 15), ("forming", 20, 20), ("rigid", 25, 45)]
    assert (pair.born, pair.origin, pair.members, pair.end, pair.last_seen) == (20, "split", [4, 5], "dissolved", 30)
    assert pair.phases == [("rigid", 25, 30)]
    assert c.never_seen["one_point_all_steps"] and c.never_seen["alone_from"] == 20
    assert c.group_ids[8].tolist() == [0, 0, 0, 0, 4, 5]


def test_planted_merger_and_absorption():
    emb = moving_hole(records=8, vocab=5)
    emb[1:, 3] += 50  # 3 and 4 leave at record 1, each on its own
    emb[1:, 4] += 60
    emb[5:, 4] = emb[5:, 3]  # record 5: 4 lands exactly on 3 (a merger) ...
    emb[6:, 3:] = emb[6:, :1]  # record 6: both fall back into the hole (absorbed)
    c = census(emb, "F32", np.arange(8))
    kinds = [(e.kind, e.step, e.before, e.after) for e in c.events]
    assert kinds == [
        ("fission", 1, [0, 1, 2, 3, 4], [[0, 1, 2], [3], [4]]),
        ("merger", 5, [[3], [4]], [3, 4]),
        ("merger", 6, [[0, 1, 2], [3, 4]], [0, 1, 2, 3, 4]),
    ]
    hole, pair = c.lineages
    assert (pair.born, pair.origin, pair.end, pair.absorbed_into, pair.last_seen) == (5, "merger", "absorbed", 1, 5)
    assert hole.phases == [("forming", 1, 1), ("rigid", 2, 5), ("forming", 6, 6), ("rigid", 7, 7)]
    assert hole.members == [0, 1, 2, 3, 4] and hole.end == "alive"


def test_a_token_that_stops_moving_and_a_hole_that_freezes():
    emb = moving_hole(records=12, vocab=4)
    emb[1:, 3] += 0.5  # token 3 leaves at record 1 ...
    emb[6:, 3] = emb[6, 3]  # ... and stops at record 6 (its last change)
    emb[9:, :3] = emb[9, :3]  # the hole's last move is at record 9
    steps = np.arange(12) * 10
    c = census(emb, "F32", steps, never_seen=[0, 1, 2])
    assert c.last_motion == [90, 90, 90, 60]
    assert c.frozen_from == {"matrix": 100, "holes": 100, "trained": 70, "never_seen": 100}
    (hole,) = c.lineages
    assert hole.phases == [("forming", 10, 10), ("rigid", 20, 90), ("frozen", 100, 110)]
    assert hole.frozen_from == 100 and hole.phase_counts == {"forming": 1, "rigid": 8, "frozen": 2}


def test_a_matrix_that_never_moves_is_frozen_from_the_first_update():
    emb = np.zeros((4, 3, 2), np.uint16)
    emb[:, 2] = 5
    c = census(emb, "BF16", [0, 1, 2, 3])
    assert c.last_motion == [None, None, None]
    assert c.frozen_from["matrix"] == 1 and c.lineages[0].phases == [("frozen", 1, 3)]
    assert c.events == [] and c.partition_changes == []


def test_sign_of_zero_and_nan_bits_are_identity_as_scan():
    x = np.array([[0.0, 1.0], [-0.0, 1.0], [np.nan, 1.0], [np.nan, 1.0]], np.float32)
    emb = np.stack([x, x])
    c = census(emb, "F32", [0, 1])
    assert c.group_ids[0].tolist() == [0, 1, 2, 2]  # -0 is not +0; equal NaN bits are one point


def test_frozen_records_across_chunk_boundaries(monkeypatch):
    emb = moving_hole(records=9, vocab=4)
    emb[2:, 3] += 7
    emb[4:] = emb[4]  # records 4..8 frozen: whole chunks with no active record
    monkeypatch.setattr(lifecycle, "CHUNK_BYTES", 1)
    c = census(emb, "F32", np.arange(9))
    assert_matches_brute_force(c, emb, np.arange(9))
    assert c.frozen_from["matrix"] == 5


# ---------------------------------------------------------------------------- real recordings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3,000 bytes over 12 byte values (3..14): most of the vocabulary never occurs."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_bytes(np.arange(3, 15, dtype=np.uint8)[rng.integers(0, 12, 3000)].tobytes())
    return path


REAL = {  # sigma -> config: at width 4, sigma = 1e-4 rounds to bf16 into several holes at step 0
    0.0: dict(vocab=32, width=16, steps=20),
    1e-4: dict(vocab=128, width=4, steps=40),
    0.01: dict(vocab=32, width=16, steps=20),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request, corpus, tmp_path_factory):
    from blackholes.training.loop import TrainConfig, train

    sigma = request.param
    path = tmp_path_factory.mktemp("run") / f"sigma{sigma}.safetensors"
    cfg = TrainConfig(corpus=str(corpus), sigma=sigma, context=16, layers=1, heads=2, compile=False, **REAL[sigma])
    result = train(cfg, path, progress=False)
    return sigma, path, result


def test_real_recordings_match_a_per_step_tobytes_census(real):
    from blackholes.io.safetensors import open_tensor

    sigma, path, result = real
    c = census_of_recording(path)
    emb = np.asarray(open_tensor(path, "embeddings"))
    steps = np.asarray(result.recorded_steps)
    assert_matches_brute_force(c, emb, steps, never_seen=result.never_seen)
    assert c.recording == str(path) and c.never_seen["tokens"] == result.never_seen
    if sigma == 0.0:
        assert c.holes[0] == 1 and c.tokens_in_holes[0] == emb.shape[1]  # one shared point
        assert c.never_seen["one_point_all_steps"] and c.events[0].kind == "fission" and c.events[0].step == 1
        assert set(result.never_seen) <= set(c.lineages[0].members)
    elif sigma == 1e-4:
        assert c.holes[0] >= 3  # rounding to bf16 made several holes
        assert {e.kind for e in c.events} == {"fission", "merger"}
    else:
        assert c.holes[0] == 0 and c.distinct[0] == emb.shape[1]


def test_real_recording_with_every_row_colliding(real, monkeypatch):
    sigma, path, result = real
    expected = census_of_recording(path).to_json()
    monkeypatch.setattr(lifecycle, "hash_rows", HASHES["constant"])
    got = census_of_recording(path).to_json()
    expected.pop("seconds"), got.pop("seconds")
    assert got == expected


# ---------------------------------------------------------------------------- recording files, JSON, bad input


def save_recording(path: Path, emb: np.ndarray, dtype: str, **meta) -> Path:
    save_safetensors(path, {"embeddings": (emb, dtype)}, metadata=encode_metadata(meta) if meta else None)
    return path


def test_recording_file_uses_steps_and_never_seen_metadata(tmp_path):
    emb = moving_hole(records=4, vocab=3).view(np.uint32).copy()
    path = save_recording(tmp_path / "r.safetensors", emb, "F32", steps=[0, 10, 20, 30], never_seen=[0, 1])
    c = census_of_recording(path)
    assert c.steps.tolist() == [0, 10, 20, 30] and c.never_seen["tokens"] == [0, 1]
    assert c.trained_tokens == [2] and c.dtype == "F32"
    doc = json.loads(json.dumps(c.to_json(), allow_nan=False))
    assert doc["series"]["step"] == [0, 10, 20, 30] and doc["series"]["holes"] == [1, 1, 1, 1]
    runs = doc["group_ids"]
    rebuilt = [r["group_ids"] for r in runs for s in c.steps if r["from"] <= s <= r["to"]]
    assert rebuilt == c.group_ids.tolist()


def test_group_ids_runs_rebuild_the_array():
    emb = moving_hole(records=6, vocab=4)
    emb[2:, 3] += 9
    emb[4:, 3] = emb[4:, 0]
    c = census(emb, "F32", [0, 2, 4, 6, 8, 10])
    runs = c.group_ids_runs()
    assert [(r["from"], r["to"]) for r in runs] == [(0, 2), (4, 6), (8, 10)]
    rebuilt = [r["group_ids"] for r in runs for s in c.steps if r["from"] <= s <= r["to"]]
    assert rebuilt == c.group_ids.tolist()


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_steps_that_do_not_increase_are_refused(tmp_path):
    emb = np.zeros((3, 2, 2), np.uint16)
    with pytest.raises(BlackholesError) as e:
        census(emb, "BF16", [0, 5, 5])
    assert "must increase" in one_line(e) and "record 2 is step 5, after step 5" in one_line(e)
    path = save_recording(tmp_path / "r.safetensors", emb, "BF16", steps=[0, 2, 1])
    with pytest.raises(BlackholesError) as e:
        census_of_recording(path)
    assert "must increase" in one_line(e)


def test_a_recording_of_one_step_is_refused(tmp_path):
    path = save_recording(tmp_path / "one.safetensors", np.zeros((1, 4, 2), np.uint16), "BF16", steps=[0])
    with pytest.raises(BlackholesError) as e:
        census_of_recording(path)
    assert "at least 2 recorded steps" in one_line(e) and "has 1" in one_line(e)


@pytest.mark.parametrize("args, words", [
    ((np.zeros((3, 2), np.uint16), "BF16", [0, 1, 2]), "[steps, vocab, dim]"),
    ((np.zeros((3, 2, 2), np.uint16), "BF16", [0, 1]), "2 recorded steps for 3 records"),
    ((np.zeros((3, 2, 2), np.uint16), "F32", [0, 1, 2]), "cannot hold F32"),
    ((np.zeros((3, 2, 2), np.uint16), "X", [0, 1, 2]), "unknown dtype"),
    ((np.zeros((3, 0, 2), np.uint16), "BF16", [0, 1, 2]), "empty"),
    ((np.zeros((3, 2, 2), np.uint16), "BF16", [0.0, 1.5, 2.0]), "integers"),
])
def test_bad_arrays_are_refused_in_one_line(args, words):
    with pytest.raises(BlackholesError) as e:
        census(*args)
    assert words in one_line(e)


def test_bad_token_sets_and_files_are_refused(tmp_path):
    emb = np.zeros((2, 3, 1), np.uint16)
    with pytest.raises(BlackholesError) as e:
        census(emb, "BF16", [0, 1], never_seen=[0, 3])
    assert "not in the vocabulary (0-2)" in one_line(e)
    path = tmp_path / "other.safetensors"
    save_safetensors(path, {"weights": (np.zeros((2, 3, 1), np.uint16), "BF16")})
    with pytest.raises(BlackholesError) as e:
        census_of_recording(path)
    assert "no 'embeddings' tensor" in one_line(e)
    bad = save_recording(tmp_path / "bad.safetensors", emb, "BF16", steps="0,1")
    with pytest.raises(BlackholesError) as e:
        census_of_recording(bad)
    assert "'steps'" in one_line(e)


# ---------------------------------------------------------------------------- plots and summary


def test_plots_are_written_atomically_and_the_summary_reads(tmp_path):
    from blackholes.render.lifecycle import census_summary, plot_census, plot_last_motion

    emb = moving_hole(records=30, vocab=5)
    emb[3:, 4] += 9  # a fission at step 3 ...
    emb[10:, 3] = emb[10:, 4]  # ... a merger at step 10
    emb[20:] = emb[20]  # frozen from step 21
    c = census(emb, "F32", np.arange(30), never_seen=[0, 1, 2])
    a = plot_census(c, tmp_path / "census.png")
    b = plot_last_motion(c, tmp_path / "last.png", dead_ids=[0, 1, 2])
    for path in (a, b):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["census.png", "last.png"]  # no temporary files left
    text = census_summary(c)
    assert "2 fission(s), 1 merger(s) at 2 step(s)" in text and "holes from step 21" in text
    assert "never-seen tokens (3): one point at every step" in text
    no_holes = census(np.arange(12, dtype=np.uint16).reshape(2, 3, 2), "BF16", [0, 1])
    assert "holes (none at the end)" in census_summary(no_holes)
    plot_census(no_holes, tmp_path / "empty.png")
    plot_last_motion(no_holes, tmp_path / "empty_last.png", dead_ids=[])
