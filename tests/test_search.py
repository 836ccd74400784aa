"""galtools.search against independent references: a numpy brute force, FAISS flat, scikit-learn."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import brute_force
from galtools.errors import BadData, GalError, UsageProblem
from galtools.search import FaissIndex, all_rows_topk, exact_topk, recall_at_k, tie_ranks, unit_rows


def quarter_vectors(rng, n, dim=8):
    """Unit vectors with four entries of +-1/2: every cosine is a multiple of 1/4, exact in float32, so ties
    are real ties whatever order the matrix product sums in."""
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("block_bytes", [4 * 25 * 64, 256 * 2**20])  # many small tiles / one tile
def test_exact_matches_brute_force_random(rng, block_bytes):
    base = rng.standard_normal((900, 16)).astype(np.float32) * rng.uniform(0.5, 3, (900, 1)).astype(np.float32)
    ids = rng.permutation(10_000)[:900]
    queries = rng.standard_normal((25, 16)).astype(np.float32)
    got = exact_topk(queries, base, 12, base_ids=ids, block_bytes=block_bytes)
    want_rows, want_scores = brute_force(queries, base, ids, 12)
    np.testing.assert_array_equal(got.indices, want_rows)
    np.testing.assert_allclose(got.scores, want_scores, atol=2e-6)
    assert got.scores.dtype == np.float32


def test_exact_least_similar_and_self_exclusion(rng):
    base = rng.standard_normal((500, 8)).astype(np.float32)
    ids = np.arange(500)[::-1].copy()
    rows = np.array([0, 17, 499])
    for largest in (True, False):
        got = exact_topk(base[rows], base, 7, base_ids=ids, exclude=rows, largest=largest, block_bytes=4 * 3 * 40)
        want_rows, want_scores = brute_force(base[rows], base, ids, 7, exclude=rows, largest=largest)
        np.testing.assert_array_equal(got.indices, want_rows)
        np.testing.assert_allclose(got.scores, want_scores, atol=2e-6)
        assert all(row not in found for row, found in zip(rows, got.indices))
    assert (np.diff(got.scores, axis=1) >= 0).all()  # least similar first


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_ties_broken_by_object_id(rng, id_kind):
    base = quarter_vectors(rng, 600)
    base[300:] = base[rng.integers(0, 300, 300)]  # half the rows are exact duplicates of the other half
    numbers = rng.permutation(600)
    ids = numbers if id_kind == "int" else np.array([f"obj{n:04d}" for n in numbers[::-1]])
    queries = base[:40]
    exclude = np.arange(40)
    got = exact_topk(queries, base, 25, base_ids=ids, exclude=exclude, block_bytes=4 * 40 * 70)
    want_rows, want_scores = brute_force(queries, base, ids, 25, exclude=exclude)
    np.testing.assert_array_equal(got.indices, want_rows)
    np.testing.assert_array_equal(got.scores, want_scores.astype(np.float32))
    # the property itself: inside every run of equal similarity, object_id increases
    for row_ids, scores in zip(ids[got.indices], got.scores):
        for a in range(len(scores) - 1):
            if scores[a] == scores[a + 1]:
                assert row_ids[a] < row_ids[a + 1]


def test_all_rows_sharded_equals_per_query_search(rng):
    base = quarter_vectors(rng, 300, dim=6)  # heavy ties
    ids = rng.permutation(300)
    whole = [topk for _, topk in all_rows_topk(base, 5, base_ids=ids, query_block=64)]
    indices = np.concatenate([t.indices for t in whole])
    want_rows, _ = brute_force(base, base, ids, 5, exclude=np.arange(300))
    np.testing.assert_array_equal(indices, want_rows)
    # shards 0/3..2/3 concatenate to the whole
    bounds = [0, 100, 200, 300]
    sharded = []
    for start, stop in zip(bounds, bounds[1:]):
        for block_rows, topk in all_rows_topk(base, 5, rows=range(start, stop), base_ids=ids, query_block=37):
            assert block_rows.start >= start and block_rows.stop <= stop
            sharded.append(topk.indices)
    np.testing.assert_array_equal(np.concatenate(sharded), indices)


def _all_rows(base, k, pieces, **options):
    """all_rows_topk over consecutive row ranges (the shards), concatenated."""
    indices, scores = [], []
    for start, stop in zip(pieces, pieces[1:]):
        for _, topk in all_rows_topk(base, k, rows=range(start, stop), **options):
            indices.append(topk.indices)
            scores.append(topk.scores)
    return np.concatenate(indices), np.concatenate(scores)


@pytest.mark.parametrize("metric, normalized", [("cosine", False), ("cosine", True), ("ip", False)])
def test_all_rows_results_do_not_depend_on_shards_blocks_or_tiles(metric, normalized):
    """Exact by construction: every similarity is re-scored per pair in a fixed order, so shards of one row,
    query blocks and tile widths that divide nothing, and a single-query search all give the same bits."""
    rng = np.random.default_rng(11)
    n, dim, k = 401, 67, 6  # primes: no block, tile or shard divides them
    base = (rng.standard_normal((n, dim)) * rng.uniform(0.2, 5, (n, 1))).astype(np.float32)
    base[200] = base[13]  # an exact duplicate: a tie broken by object_id
    if normalized:
        base = unit_rows(base)
    ids = rng.permutation(n)
    common = dict(base_ids=ids, metric=metric, normalized=normalized)
    whole_rows, whole_scores = _all_rows(base, k, [0, n], **common)
    shapes = [
        ([0, n], dict(query_block=1, block_bytes=4 * 1 * 13)),
        ([0, 1, 2, 3, 150, 151, n - 1, n], dict(query_block=7, block_bytes=4 * 7 * 29)),   # 1-row shards
        ([0, 133, 267, n], dict(query_block=64)),                                           # 3 shards, as Slurm
        (list(range(0, n, 97)) + [n], dict(query_block=31, block_bytes=4 * 31 * 101)),
    ]
    for pieces, options in shapes:
        rows, scores = _all_rows(base, k, pieces, **common, **options)
        np.testing.assert_array_equal(rows, whole_rows)
        np.testing.assert_array_equal(scores, whole_scores)
    for largest in (True, False):  # a query search of each row on its own, and of 5 rows at once
        picked = np.array([0, 13, 200, 399, 400])
        together = exact_topk(base[picked], base, k, exclude=picked, largest=largest, **common)
        for i, row in enumerate(picked):
            alone = exact_topk(base[row:row + 1], base, k, exclude=np.array([row]), largest=largest,
                               block_bytes=4 * 53, **common)
            np.testing.assert_array_equal(alone.indices[0], together.indices[i])
            np.testing.assert_array_equal(alone.scores[0], together.scores[i])
        if largest:
            np.testing.assert_array_equal(together.indices, whole_rows[picked])
            np.testing.assert_array_equal(together.scores, whole_scores[picked])
    # against an independent reference: float64 similarities, stated tolerance on the scores
    b = base.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = b @ (base.astype(np.float64).T if metric == "ip" else b.T)
    np.fill_diagonal(sims, -np.inf)
    want = np.take_along_axis(sims, whole_rows, axis=1)
    np.testing.assert_allclose(whole_scores, want, rtol=1e-6, atol=1e-6)
    assert (np.sort(sims, axis=1)[:, ::-1][:, :k] - want <= 1e-5 * np.maximum(1, np.abs(want))).all()


def test_unit_rows_of_a_row_alone_equal_the_row_in_a_block(rng):
    vectors = rng.standard_normal((97, 131)).astype(np.float32)
    whole = unit_rows(vectors)
    for row in (0, 50, 96):
        np.testing.assert_array_equal(unit_rows(vectors[row:row + 1])[0], whole[row])
    np.testing.assert_array_equal(unit_rows(vectors[5:9]), whole[5:9])
    np.testing.assert_allclose(np.linalg.norm(whole.astype(np.float64), axis=1), 1, atol=1e-6)


def test_torch_code_path_gives_the_same_neighbours(rng):
    pytest.importorskip("torch")
    base = quarter_vectors(rng, 400)
    base[200:] = base[:200]
    ids = rng.permutation(400)
    for largest in (True, False):
        common = dict(base_ids=ids, exclude=np.arange(30), largest=largest, block_bytes=4 * 30 * 50)
        a = exact_topk(base[:30], base, 9, **common)
        b = exact_topk(base[:30], base, 9, device="torch-cpu", **common)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_inner_product_metric_and_normalized_flag(rng):
    base = rng.standard_normal((200, 5)).astype(np.float32)
    q = rng.standard_normal((3, 5)).astype(np.float32)
    got = exact_topk(q, base, 4, metric="ip")
    want = np.argsort(-(q.astype(np.float64) @ base.T.astype(np.float64)), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(got.indices, want)
    unit = unit_rows(base)
    np.testing.assert_array_equal(exact_topk(unit_rows(q), unit, 4, normalized=True).indices,
                                  exact_topk(q, base, 4).indices)


def test_tie_ranks_follow_object_id():
    import pyarrow as pa

    np.testing.assert_array_equal(tie_ranks(np.array([30, 10, 20, 10]), 4), [3, 0, 2, 1])
    np.testing.assert_array_equal(tie_ranks(pa.array(["b", "a", "c"]), 3), [1, 0, 2])
    np.testing.assert_array_equal(tie_ranks(None, 3), [0, 1, 2])


def test_errors(rng):
    base = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(BadData, match="k=10 is larger than the 9 candidate"):
        exact_topk(base[:1], base, 10, exclude=np.array([0]))
    with pytest.raises(BadData, match="k=11 is larger than the 10"):
        exact_topk(base[:1], base, 11)
    with pytest.raises(UsageProblem):
        exact_topk(base[:1], base, 0)
    bad = base.copy()
    bad[3, 1] = np.nan
    with pytest.raises(BadData, match="NaN"):
        list(all_rows_topk(bad, 2))
    with pytest.raises(BadData, match="NaN"):
        exact_topk(bad[3:4], base, 2)
    with pytest.raises(BadData, match="NaN"):
        exact_topk(base[:1], bad, 2)
    with pytest.raises(BadData, match="dimension 3 differs"):
        exact_topk(base[:1, :3], base, 2)
    zero = base.copy()
    zero[5] = 0
    with pytest.raises(BadData, match="all zeros"):
        exact_topk(base[:1], zero, 2)


# ---------------------------------------------------------------- FAISS

faiss = pytest.importorskip("faiss")


def clustered(rng, n=6000, dim=32, centres=60, spread=0.25):
    means = rng.standard_normal((centres, dim)).astype(np.float32)
    labels = rng.integers(0, centres, n)
    return (means[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32)


def test_faiss_flat_equals_exact(rng):
    base = rng.standard_normal((3000, 24)).astype(np.float32)
    ids = rng.permutation(3000)
    tie = tie_ranks(ids, 3000)
    index = FaissIndex.build(base, "flat")
    rows = rng.choice(3000, 50, replace=False)
    for largest in (True, False):
        approx = index.search(base[rows], 10, exclude=rows, largest=largest, tie_rank=tie)
        exact = exact_topk(base[rows], base, 10, tie_rank=tie, exclude=rows, largest=largest)
        np.testing.assert_array_equal(approx.indices, exact.indices)
        np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-5)


@pytest.mark.parametrize("kind,params", [("ivf", {"nlist": 64, "nprobe": 8}),
                                         ("hnsw", {"hnsw_m": 16, "ef_search": 64})])
@pytest.mark.slow
def test_recall_of_approximate_indexes_on_clustered_data(rng, kind, params):
    from sklearn.neighbors import NearestNeighbors

    base = clustered(rng)
    index = FaissIndex.build(base, kind, seed=3, **params)
    recall = recall_at_k(index, base, 10, sample=300, seed=5)
    assert recall >= 0.9, f"{kind} recall@10 = {recall}"
    # the same number computed independently: scikit-learn's brute-force cosine neighbours
    rows = np.sort(np.random.default_rng(5).choice(len(base), 300, replace=False))
    _, sk = NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute").fit(base).kneighbors(base[rows])
    truth = [r[r != row][:10] for r, row in zip(sk, rows)]
    approx = index.search(base[rows], 10, exclude=rows).indices
    manual = np.mean([np.intersect1d(t, a).size / 10 for t, a in zip(truth, approx)])
    assert recall == pytest.approx(manual, abs=0.01)
    # a tiny search budget must cost recall: the number measures something
    low = recall_at_k(index, base, 10, sample=300, seed=5, nprobe=1, ef=10)
    assert low < recall


def test_index_save_load_and_stale_checks(tmp_path, rng):
    base = rng.standard_normal((500, 8)).astype(np.float32)
    index = FaissIndex.build(base, "ivf", nlist=8, nprobe=2)
    path = tmp_path / "emb.faiss"
    index.save(path, embeddings_checksum="abc123", model_sha256="m" * 64, source="emb.parquet")
    sidecar = json.loads((tmp_path / "emb.faiss.json").read_text())
    assert sidecar["kind"] == "ivf" and sidecar["metric"] == "cosine" and sidecar["count"] == 500
    assert sidecar["params"]["nlist"] == 8 and sidecar["params"]["nprobe"] == 2
    assert sidecar["embeddings_checksum"] == "abc123" and sidecar["model_sha256"] == "m" * 64
    with pytest.raises(GalError, match="already exists"):
        index.save(path, embeddings_checksum="abc123", model_sha256=None)
    loaded = FaissIndex.load(path)
    loaded.check_matches(embeddings_checksum="abc123", model_sha256="m" * 64, count=500, dim=8)
    np.testing.assert_array_equal(loaded.search(base[:5], 3).indices, index.search(base[:5], 3).indices)
    with pytest.raises(BadData, match="stale"):
        loaded.check_matches(embeddings_checksum="abc124", model_sha256="m" * 64, count=500, dim=8)
    with pytest.raises(BadData, match="another model"):
        loaded.check_matches(embeddings_checksum="abc123", model_sha256="n" * 64, count=500, dim=8)
    with pytest.raises(BadData, match="dimension"):
        loaded.check_matches(embeddings_checksum="abc123", model_sha256="m" * 64, count=500, dim=9)
    (tmp_path / "emb.faiss.json").unlink()
    with pytest.raises(BadData, match="no sidecar"):
        FaissIndex.load(path)
