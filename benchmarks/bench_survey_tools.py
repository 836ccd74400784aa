"""gal-ood and gal-view on a survey through one compressed index, the table never in RAM: time, peak RSS, latency.

    python benchmarks/bench_scale.py --n 100000000 --parts 10 --shards 10 --jobs 2 --nlist 8192 --kinds ivfpq
    python benchmarks/bench_survey_tools.py --n 100000000      # then this, on the table and index it built
    python benchmarks/bench_survey_tools.py --n 100000000 --view-only --images cutouts.parquet   # gal-view alone

Three steps, each a real process (OMP_NUM_THREADS=1), its peak RSS from /usr/bin/time (VmHWM: it counts clean pages
of memory-mapped files, which the kernel can drop) and, for the server, its anonymous memory apart:
  gal-ood fit SURVEY --reference-index INDEX --calibration-fraction F  (knn, k = 10, calibrated leave-one-out through
      the index on F x N rows);
  gal-ood score QUERIES --model ...: 10,000 fresh vectors from the survey's mixture and 100 from elsewhere (uniform
      on the sphere, standing in for another survey); AUROC of the two groups as a check that the scores mean
      something (not a quality claim: the outsiders are easy);
  with --images CUTOUTS (gal-view shows pictures, so it needs the survey's cutouts, which bench_scale's vectors
  do not have): gal-view SURVEY --index INDEX --images CUTOUTS --sample 100000: time until it serves /api/info,
      /api/search for 50 ids (p50/p99), then SIGTERM.
Baseline in the same run: `gal-knn SURVEY --index INDEX --query ID` for one id (what the other tools add to it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_scale import ROOT, WORK, _draw, load_text, mixture, run  # noqa: E402


def write_queries(path: str, dim: int = 128, inside: int = 10_000, outside: int = 100) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    weights, means, factors = mixture()
    rng = np.random.default_rng(7)
    vectors = np.concatenate([_draw(rng, inside, weights, means.astype(np.float32), factors.astype(np.float32)),
                              rng.standard_normal((outside, dim)).astype(np.float32)])
    ids = np.arange(len(vectors), dtype=np.int64) + 10 ** 12
    pq.write_table(pa.table({"object_id": ids, "outsider": np.arange(len(vectors)) >= inside,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)}), path)


def auroc(scores, positive) -> float:
    import numpy as np
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def view_measures(table: str, index: str, images: str, n: int, sample: int) -> dict:
    import numpy as np

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "galtools.cli.view", table, "--index", index, "--images", images, "--sample",
                                str(sample), "-k", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        process.kill()
        raise SystemExit(f"gal-view gave no URL: {url!r} {process.stderr.read().decode()}")

    def get(path):
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=600) as response:
            return json.loads(response.read())

    info = get("/api/info")
    ready = time.perf_counter() - started
    ids = np.random.default_rng(3).choice(n, 50, replace=False)
    times = []
    for object_id in ids:
        began = time.perf_counter()
        body = get("/api/search?" + urllib.parse.urlencode({"id": int(object_id), "k": 10}))
        times.append(time.perf_counter() - began)
        assert len(body["results"][0]["neighbors"]) == 10, body
    status = dict(line.split(":", 1) for line in open(f"/proc/{process.pid}/status").read().splitlines() if ":" in line)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    mib = lambda key: int(status[key].split()[0]) / 1024   # noqa: E731
    return {"view_ready": ready, "view_p50": statistics.median(times) * 1e3,
            "view_p99": float(np.percentile(times, 99)) * 1e3, "view_hwm": mib("VmHWM"),
            "view_anon": mib("RssAnon"), "view_file": mib("RssFile"), "view_rows": info.get("rows", info)}


def view_text(m: dict, sample: int) -> str:
    return (f"gal-view --sample {sample:,}: serving after {m['view_ready']:.0f} s, /api/search p50 {m['view_p50']:.0f} "
            f"ms p99 {m['view_p99']:.0f} ms over 50 ids, peak RSS {m['view_hwm']:.0f} MiB ({m['view_anon']:.0f} MiB "
            f"anonymous + {m['view_file']:.0f} mapped file pages at the end); ")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000_000, help="the bench_scale --parts run to use")
    parser.add_argument("--calibration-fraction", type=float, default=1e-4)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--images", help="the survey's cutouts: also measure gal-view")
    parser.add_argument("--view-only", action="store_true", help="measure gal-view alone (needs --images)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    table = os.path.join(WORK, f"gmm-{args.n}-parts")
    index = os.path.join(WORK, f"ivfpq-{args.n}.faiss")
    model = os.path.join(WORK, "ood-survey.model")
    queries = os.path.join(WORK, "ood-queries.parquet")
    scored = os.path.join(WORK, "ood-scored.parquet")
    m = {}
    if args.view_only:
        m.update(view_measures(table, index, args.images, args.n, args.sample), load=load_text())
        print(json.dumps(m), flush=True)
        if not args.no_record:
            from _record import record

            record("bench_survey_tools gal-view", (
                f"{args.n:,} x 128 survey (bench_scale --parts table) through its ivfpq index (nlist 8,192), --images "
                f"{os.path.basename(args.images)}: " + view_text(m, args.sample) + m["load"]),
                "gal-knn --query of one id through the same index (bench_scale, same day): 1.0 s, 528 MiB peak", "-")
        return
    m["knn_wall"], m["knn_rss"], _ = run(["galtools.cli.knn", table, "--index", index, "--query", str(args.n // 7),
                                          "-k", "10", "-o", os.path.join(WORK, "one.parquet"), "--overwrite"])
    m["fit_wall"], m["fit_rss"], _ = run(["galtools.cli.ood", "fit", table, "--reference-index", index,
                                          "--calibration-fraction", str(args.calibration_fraction), "-o", model,
                                          "--overwrite"])
    print(f"fit {m['fit_wall']:.0f} s ({load_text()})", flush=True)
    write_queries(queries)
    m["score_wall"], m["score_rss"], _ = run(["galtools.cli.ood", "score", queries, "--model", model, "-o", scored,
                                              "--overwrite"])
    import pyarrow.parquet as pq

    out = pq.read_table(scored, columns=["outsider", "ood_score"])
    m["auroc"] = auroc(out.column("ood_score").to_numpy(), out.column("outsider").to_numpy(zero_copy_only=False))
    if args.images:
        m.update(view_measures(table, index, args.images, args.n, args.sample))
    m["load"] = load_text()
    print(json.dumps(m), flush=True)
    if not args.no_record:
        from _record import record

        record("bench_survey_tools", (
            f"{args.n:,} x 128 survey (bench_scale --parts table: 10 float16 Parquet parts) through its ivfpq index "
            f"(nlist 8,192), one thread: gal-ood fit --reference-index (calibrated on {args.calibration_fraction:g} of "
            f"the rows, leave-one-out) {m['fit_wall']:.0f} s/{m['fit_rss']:.0f} MiB peak; gal-ood score of 10,100 "
            f"rows {m['score_wall']:.0f} s/{m['score_rss']:.0f} MiB peak (AUROC of 100 uniform outsiders against 10,000 "
            f"mixture rows {m['auroc']:.3f}); "
            + (view_text(m, args.sample) if args.images else "gal-view not measured (no cutouts for these vectors); ")
            + m["load"]),
            f"gal-knn --query of one id through the same index: {m['knn_wall']:.1f} s/{m['knn_rss']:.0f} MiB peak",
            "-")


if __name__ == "__main__":
    main()
