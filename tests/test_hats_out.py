"""HATS catalogues out as well as in: gal-embed and gal-ood score given a HATS catalogue (written here by lsdb) and
a folder write a HATS catalogue with the same partitions, which lsdb opens and cross-matches with the input; one
process or a sharded array of them, checked against the same tools writing one Parquet file."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, built_once, run_tool, tool_command
from conftest import assert_clean_error as refused
from test_own_data import ok

lsdb = pytest.importorskip("lsdb", reason="lsdb (the test extra) writes and reads the HATS catalogues here")
pd = pytest.importorskip("pandas")
pytest.importorskip("onnxruntime")
from test_knn_embed import SIZE, linear_encoder  # noqa: E402  (a tiny encoder.onnx written out by hand)

N = 240
CUTOUT = 12
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


BANDS = ("--bands", "g,r,i")   # lsdb's catalogue does not name the image planes: the user says which is which


def run(tool, *args, env=ENV):
    return run_tool(tool, *args, *(BANDS if tool == "gal-embed" else ()), env=env)


def image_column(images: np.ndarray) -> pa.ExtensionArray:
    """(n, 3, 12, 12) cutouts as Arrow's fixed_shape_tensor, as another program would write them."""
    storage = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), int(np.prod(images.shape[1:])))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), images.shape[1:]), storage)


def _write_survey(folder) -> None:
    """A HATS collection written by lsdb (cutouts with ra/dec, half of them crowded into one patch of sky so that
    the partitions have several orders), a tiny encoder, and gal-embed's embeddings of it: one Parquet file, and a
    HATS catalogue (the input of the gal-ood and gal-knn tests)."""
    from galtools.preprocess import Preprocess

    rng = np.random.default_rng(3)
    ra = np.concatenate([rng.uniform(0, 360, N // 2), rng.uniform(40, 45, N // 2)])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, N // 2))), rng.uniform(10, 15, N // 2)])
    images = rng.gamma(2.0, 1.0, (N, 3, CUTOUT, CUTOUT)).astype(np.float32)
    table = pa.table({"object_id": pa.array(np.arange(5000, 5000 + N, dtype=np.int64)), "ra": ra, "dec": dec,
                      "image": image_column(images)})
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    catalogue = lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", catalog_name="survey",
                                    lowest_order=0, highest_order=6, partition_rows=40,
                                    margin_threshold=3600.0)   # a margin cache too, which is not read
    collection = str(folder / "survey")
    catalogue.write_catalog(collection, progress_bar=False)
    preprocess = Preprocess.fit(images, ["g", "r", "i"])
    model = linear_encoder(folder / "encoder.onnx", rng.standard_normal((3 * SIZE * SIZE, 6)).astype(np.float32),
                           preprocess)
    ok(run("gal-embed", collection, "--model", model, "-o", str(folder / "emb.parquet")))
    ok(run("gal-embed", collection, "--model", model, "-o", str(folder / "emb_catalogue")))


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """The survey of ``_write_survey``, built once for the whole test run (test_knn_hats reads it too: read only),
    and ``tmp``, a folder of the module's own for what its tests write."""
    shared = built_once(tmp_path_factory, "hats-survey", _write_survey)
    return {"tmp": tmp_path_factory.mktemp("hats-out"), "collection": str(shared / "survey"),
            "catalogue": str(shared / "survey" / "survey"), "model": str(shared / "encoder.onnx"),
            "plain": str(shared / "emb.parquet"), "embedded": str(shared / "emb_catalogue")}


def partitions(catalogue: str) -> dict[str, pa.Table]:
    """Each partition file of a HATS catalogue, by its path under dataset/."""
    dataset = os.path.join(catalogue, "dataset")
    return {os.path.relpath(p, dataset): pq.read_table(p)
            for p in sorted(glob.glob(os.path.join(dataset, "Norder=*", "Dir=*", "Npix=*.parquet")))}


def vectors(column) -> np.ndarray:
    return np.stack(column.to_numpy(zero_copy_only=False))


def same_rows(catalogue: str, reference: pa.Table, columns=("embedding",)) -> None:
    """Every object_id once, with the reference's values (floats to 1e-5)."""
    table = pa.concat_tables(partitions(catalogue).values())
    ids = table.column("object_id").to_numpy()
    assert sorted(ids.tolist()) == sorted(reference.column("object_id").to_pylist())
    order = {i: k for k, i in enumerate(reference.column("object_id").to_pylist())}
    rows = [order[i] for i in ids]
    for column in columns:
        want = reference.column(column).take(pa.array(rows))
        if pa.types.is_fixed_size_list(want.type):
            np.testing.assert_allclose(vectors(table.column(column)), vectors(want), rtol=1e-5, atol=1e-5)
        elif pa.types.is_floating(want.type):
            np.testing.assert_allclose(table.column(column).to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)
        else:
            assert table.column(column).to_pylist() == want.to_pylist(), column


def opens_and_matches_itself(out: str, survey) -> None:
    """lsdb opens ``out`` with the input's partitions and cross-matches each object with itself in the input."""
    opened = lsdb.open_catalog(out)
    given = lsdb.open_catalog(survey["collection"])
    assert opened.get_healpix_pixels() == given.get_healpix_pixels()
    assert opened.hc_structure.catalog_info.total_rows == N
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # no margin caches: lsdb warns that matches near pixel edges may be lost
        matched = opened.crossmatch(given, radius_arcsec=0.01, n_neighbors=1, suffixes=("_out", "_in"),
                                    suffix_method="all_columns").compute()
    assert len(matched) == N
    assert (matched["object_id_out"].to_numpy() == matched["object_id_in"].to_numpy()).all()


def test_embed_writes_a_hats_catalogue_lsdb_opens_and_crossmatches(survey):
    out = str(survey["tmp"] / "emb_catalog")
    result = ok(run("gal-embed", survey["collection"], "--model", survey["model"], "-o", out + "/"))
    assert b"HATS catalogue complete" in result.stderr

    given, written = partitions(survey["catalogue"]), partitions(out)
    assert len(given) >= 6 and len({k.split(os.sep)[0] for k in given}) >= 2, sorted(given)   # several orders
    assert sorted(written) == sorted(given)
    for key, part in written.items():   # file for file: the same objects in the same order, and what lsdb needs
        assert part.column("object_id").equals(given[key].column("object_id")), key
        assert part.column_names == ["object_id", "ra", "dec", "_healpix_29", "embedding"], part.column_names
        assert part.column("_healpix_29").equals(given[key].column("_healpix_29"))
    same_rows(out, pq.read_table(survey["plain"]))

    properties = dict(line.split("=", 1) for line in open(os.path.join(out, "properties")).read().splitlines()
                      if "=" in line)
    assert properties["obs_collection"] == "emb_catalog" and properties["hats_nrows"] == str(N)
    assert properties["hats_col_ra"] == "ra" and properties["hats_col_healpix"] == "_healpix_29"
    assert open(os.path.join(out, "hats.properties")).read() == open(os.path.join(out, "properties")).read()
    info = open(os.path.join(out, "partition_info.csv")).read()
    assert info == open(os.path.join(survey["catalogue"], "partition_info.csv")).read()
    assert pq.read_metadata(os.path.join(out, "dataset", "_metadata")).num_rows == N
    assert "embedding" in pq.read_schema(os.path.join(out, "dataset", "_common_metadata")).names
    opens_and_matches_itself(out, survey)

    # the output reads back as a table too, as every galtools catalogue does
    assert ok(run("gal-info", out)).stdout.decode().startswith(f"{out}: {N} rows")


def test_a_sharded_array_writes_one_catalogue(survey):
    """Two tasks at once, one by --shard, one by its Slurm array variables: each writes its whole partitions into
    the same folder, and whichever finishes last writes the catalogue files."""
    out = str(survey["tmp"] / "array_catalogue")
    args = [survey["collection"], "--model", survey["model"], "-o", out, *BANDS]
    slurm = dict(ENV, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    tasks = [subprocess.Popen(tool_command("gal-embed") + args + ["--shard", "0/2"], env=ENV, stderr=subprocess.PIPE),
             subprocess.Popen(tool_command("gal-embed") + args, env=slurm, stderr=subprocess.PIPE)]
    errors = [task.communicate(timeout=600)[1].decode() for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], errors
    assert any("HATS catalogue complete" in e for e in errors), errors
    assert sorted(partitions(out)) == sorted(partitions(survey["catalogue"]))
    same_rows(out, pq.read_table(survey["plain"]))
    opens_and_matches_itself(out, survey)

    # a task run again (a crash, a requeue) rewrites its partitions; the catalogue stays whole
    ok(run("gal-embed", *args, "--shard", "1/2"))
    same_rows(out, pq.read_table(survey["plain"]))
    assert pq.read_metadata(os.path.join(out, "dataset", "_metadata")).num_rows == N


def test_ood_score_of_a_hats_catalogue_is_one(survey):
    tmp = survey["tmp"]
    embedded = survey["embedded"]   # gal-embed's HATS catalogue, as test_embed_writes_a_hats_catalogue... checks it
    model = str(tmp / "ood.model")
    ok(run("gal-ood", "fit", survey["plain"], "-k", "3", "-o", model))
    plain = str(tmp / "scored.parquet")
    ok(run("gal-ood", "score", survey["plain"], "--model", model, "-o", plain))

    out = str(tmp / "scored_catalogue")
    ok(run("gal-ood", "score", embedded, "--model", model, "-o", out + "/"))
    assert sorted(partitions(out)) == sorted(partitions(survey["catalogue"]))
    same_rows(out, pq.read_table(plain), columns=("embedding", "ood_score", "ood_raw", "trusted",
                                                    "nearest_reference_id"))
    opens_and_matches_itself(out, survey)


def test_refusals_and_a_rerun_after_a_failure(survey):
    tmp = survey["tmp"]
    model = survey["model"]
    embed = ["gal-embed", survey["collection"], "--model", model]

    # a folder holding another catalogue (lsdb's own) is refused without --overwrite, and replaced with it
    other = str(tmp / "other")
    shutil.copytree(survey["catalogue"], other)
    refused(run(*embed, "-o", other), 1, "already holds a HATS catalogue", "--overwrite")
    assert "embedding" not in pq.read_schema(os.path.join(other, "dataset", "_common_metadata")).names
    ok(run(*embed, "-o", other, "--overwrite"))
    same_rows(other, pq.read_table(survey["plain"]))
    assert not os.path.exists(os.path.join(other, "per_partition_statistics.parquet"))   # the old one's statistics

    # the same folder from another model is another catalogue
    second = linear_encoder(tmp / "second.onnx", np.ones((3 * SIZE * SIZE, 6), np.float32), _preprocess())
    refused(run("gal-embed", survey["collection"], "--model", second, "-o", other), 1, "another catalogue")

    # other files, the input itself, and '{shard}' in a catalogue folder
    busy = tmp / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused(run(*embed, "-o", str(busy)), 74, "not a HATS catalogue's (notes.txt)")
    # ...but another array task's hidden temporary (a catalogue file in the making) is not a stranger's file
    racing = tmp / "racing"
    racing.mkdir()
    (racing / ".properties.1a2b3c4d.tmp").write_text("being written by another task")
    ok(run(*embed, "-o", str(racing)))
    same_rows(str(racing), pq.read_table(survey["plain"]))
    refused(run(*embed, "-o", os.path.join(survey["catalogue"], "inside")), 2, "overlap the input")
    refused(run(*embed, "-o", str(tmp / "cat-{shard}")), 2, "drop '{shard}'")

    # a failure (NaN pixels in one partition) leaves no catalogue files and no temporary files; a rerun finishes
    broken = str(tmp / "broken")
    shutil.copytree(survey["collection"], broken)
    files = sorted(glob.glob(os.path.join(broken, "survey", "dataset", "Norder=*", "Dir=*", "Npix=*.parquet")))
    victim = files[len(files) // 2]
    good = pq.read_table(victim)
    pixels = vectors_of_images(good)
    pixels[0, 0, CUTOUT // 2, CUTOUT // 2] = np.nan   # inside the centre crop
    pq.write_table(good.set_column(good.column_names.index("image"), "image", image_column(pixels)), victim)
    out = str(tmp / "broken_out")
    refused(run("gal-embed", broken, "--model", model, "-o", out), 65, "NaN")
    assert not any(os.path.exists(os.path.join(out, n)) for n in ("properties", "hats.properties",
                                                                  "partition_info.csv"))
    assert not glob.glob(os.path.join(out, "**", ".*.tmp*"), recursive=True)
    assert len(partitions(out)) < len(files)
    refused(run("gal-info", out), 65, "an unfinished HATS catalogue")   # nothing reads it as complete
    pq.write_table(good, victim)
    ok(run("gal-embed", broken, "--model", model, "-o", out))
    same_rows(out, pq.read_table(survey["plain"]))


def _preprocess():
    from galtools.preprocess import Preprocess

    return Preprocess.fit(np.ones((4, 3, CUTOUT, CUTOUT), np.float32) + np.arange(4)[:, None, None, None],
                          ["g", "r", "i"])


def vectors_of_images(table: pa.Table) -> np.ndarray:
    storage = table.column("image").combine_chunks().storage
    return storage.flatten().to_numpy().reshape(table.num_rows, 3, CUTOUT, CUTOUT).copy()
