"""gal-view on 10^5 cutouts: how long the server takes to open, and how fast a picture arrives; rows appended to
benchmarks/RESULTS.md.

    python benchmarks/bench_view.py                   # 100,000 cutouts of 3x32x32 (1.2 GB per format)
    python benchmarks/bench_view.py --n 20000         # smaller

Synthetic tables, made with numpy in a temporary folder (deleted afterwards): cutouts (a Gaussian galaxy plus
noise per band) as an Arrow IPC file and as Parquet (row groups of 4,096 rows), and 64-d embeddings with a class
and a number column.  For each cutout format a real ``gal-view`` process is started and timed until its first
answer (/api/info), then 300 pictures of random, never-requested ids are fetched over HTTP (cold: read, colour
mapping, PNG), and the same ids again (warm: the cache).  Baselines from the same run: reading the cutout table
whole (what the viewer avoids), and finding one cutout by scanning the table for its id (how a montage finds it).
Then one cached picture is fetched --connection-requests times by --clients threads, each on one reused (keep-alive)
connection as a browser does, against the same with a new connection for every request (the baseline).
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _record import record  # noqa: E402

BLOCK = 4096


def make_tables(folder: str, n: int, size: int, bands: int, dim: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa

    from galtools.io import open_output, tensor_column, vector_column

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    band_names = ",".join("ugriz"[5 - bands:] if bands <= 5 else [str(b) for b in range(bands)])
    metadata = {"galtools.bands": band_names}
    basis = rng.standard_normal((16, dim)).astype(np.float32)
    classes = np.array(["elliptical", "disk", "edge_on", "irregular"])
    outputs = [open_output(os.path.join(folder, "cutouts.arrow"), metadata=metadata, tool="bench_view"),
               open_output(os.path.join(folder, "cutouts.parquet"), metadata=metadata, tool="bench_view")]
    with open_output(os.path.join(folder, "emb.parquet"), metadata=metadata, tool="bench_view") as emb:
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            width = rng.uniform(1.5, 4.0, count).astype(np.float32)
            flux = rng.lognormal(3, 0.5, (count, bands)).astype(np.float32)
            profile = np.exp(-(x**2 + y**2)[None] / (2 * width[:, None, None] ** 2))
            images = flux[:, :, None, None] * profile[:, None] + rng.normal(0, 1, (count, bands, size, size))
            ids = pa.array(np.arange(start, start + count, dtype=np.int64))
            cutouts = pa.table({"object_id": ids, "image": tensor_column(images.astype(np.float32))})
            for out in outputs:
                out.write(cutouts)
            latent = rng.standard_normal((count, 16)).astype(np.float32)
            vectors = latent @ basis + 0.1 * rng.standard_normal((count, dim)).astype(np.float32)
            emb.write(pa.table({"object_id": ids, "z_true": pa.array(rng.uniform(0, 0.4, count)),
                                "morph_class": pa.array(classes[rng.integers(0, 4, count)]),
                                "embedding": vector_column(vectors)}))
    for out in outputs:
        out.commit()


def memory_mib(pid: int) -> dict:
    """Peak resident memory (VmHWM) and the current anonymous and file-backed parts (the file-backed part holds
    the pages of the memory-mapped cutout table, shared with the page cache)."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key = line.split(":")[0]
            if key in ("VmHWM", "RssAnon", "RssFile"):
                values[key] = int(line.split()[1]) / 1024
    return values


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def connection_latencies(url: str, path: str, requests: int, clients: int, reuse: bool) -> list[float]:
    """Seconds per GET of ``path`` (127.0.0.1 only): ``requests`` in all, shared by ``clients`` threads, each on one
    keep-alive connection (``reuse``) or on a new connection per request."""
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    assert host == "127.0.0.1", host   # loopback only
    times, lock = [], threading.Lock()

    def client(count: int) -> None:
        mine, connection = [], None
        for _ in range(count):
            begin = time.perf_counter()
            if connection is None:
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if not reuse:
                connection.close()
                connection = None
            mine.append(time.perf_counter() - begin)
            assert response.status == 200 and body[:4] == b"\x89PNG", response.status
        if connection is not None:
            connection.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client, args=(requests // clients + (i < requests % clients),))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def measure_server(folder: str, cutouts: str, n: int, requests: int, seed: int, connection_requests: int = 1000,
                   clients: int = 8) -> dict:
    import numpy as np

    command = [sys.executable, "-m", "galtools.cli.view", os.path.join(folder, "emb.parquet"), "--images",
               os.path.join(folder, cutouts), "--label", "morph_class", "-q"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        url = process.stdout.readline().decode().strip()
        get(url + "api/info")
        opened = time.perf_counter() - started
        ids = np.random.default_rng(seed).choice(n, requests, replace=False)
        cold, warm = [], []
        for object_id in ids:
            begin = time.perf_counter()
            body = get(f"{url}api/tile?id={object_id}")
            cold.append(time.perf_counter() - begin)
            assert body[:4] == b"\x89PNG"
        for object_id in ids:
            begin = time.perf_counter()
            get(f"{url}api/tile?id={object_id}")
            warm.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        get(f"{url}api/search?id={ids[0]}&k=10")
        search = time.perf_counter() - begin
        memory = memory_mib(process.pid)
        connections = {}
        for reuse in (True, False):   # the first picture is cached by now
            begin = time.perf_counter()
            times = connection_latencies(url, f"/api/tile?id={ids[0]}", connection_requests, clients, reuse)
            connections[reuse] = {"p50_ms": float(np.median(times) * 1e3),
                                  "p95_ms": float(np.percentile(times, 95) * 1e3),
                                  "per_s": len(times) / (time.perf_counter() - begin)}
    finally:
        process.terminate()
        process.wait(timeout=60)
    cold_ms = np.array(cold) * 1e3
    return {"open_s": opened, "cold_median_ms": float(np.median(cold_ms)),
            "cold_p95_ms": float(np.percentile(cold_ms, 95)), "warm_median_ms": float(np.median(warm) * 1e3),
            "search_ms": search * 1e3, "memory": memory, "reused": connections[True], "new": connections[False]}


def measure_baselines(path: str, n: int, seed: int) -> dict:
    """Read the table's images whole into memory (peak RSS in a child process), and find single cutouts by
    scanning the table for their id."""
    import numpy as np

    code = ("import resource, sys, time; from galtools.io import images_of, open_table\n"
            "t = time.perf_counter()\n"
            "with open_table(sys.argv[1]) as table:\n    whole = images_of(table.read_all(columns=['image']))\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout.split()
    read_s, read_rss = float(out[0]), float(out[1])
    import pyarrow as pa
    import pyarrow.compute as pc

    from galtools.io import images_of, open_table

    scans = []
    for object_id in np.random.default_rng(seed + 1).choice(n, 3, replace=False):
        begin = time.perf_counter()
        with open_table(path) as table:
            wanted = pa.array([int(object_id)], pa.int64())
            for batch in table.iter_batches(columns=["object_id", "image"]):
                chosen = pc.is_in(batch.column("object_id"), value_set=wanted)
                if pc.any(chosen).as_py():
                    images_of(batch.filter(chosen))
                    break
        scans.append(time.perf_counter() - begin)
    return {"read_s": read_s, "read_rss_mib": read_rss, "scan_ms": statistics.median(scans) * 1e3}


def load() -> str:
    return f"load avg {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--connection-requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="where to write the temporary tables (default: $TMPDIR)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="galview-bench-", dir=args.workdir)
    try:
        begin = time.perf_counter()
        make_tables(folder, args.n, args.size, args.bands, args.dim)
        table_mib = os.path.getsize(os.path.join(folder, "cutouts.arrow")) / 2**20
        print(f"tables written in {time.perf_counter() - begin:.0f} s ({table_mib:.0f} MiB per cutout table)")
        for name, label in (("cutouts.arrow", "Arrow IPC file"), ("cutouts.parquet", "Parquet, row groups of 4,096")):
            served = measure_server(folder, name, args.n, args.requests, seed=1,
                                    connection_requests=args.connection_requests, clients=args.clients)
            base = measure_baselines(os.path.join(folder, name), args.n, seed=1)
            what = (f"{args.n:,} cutouts {args.bands}x{args.size}x{args.size} ({table_mib:.0f} MiB), {label}, "
                    f"{args.dim}-d embeddings (bench_view.py; {load()})")
            record(f"gal-view open: process start to first answer, {what}",
                   f"{served['open_s']:.2f} s, server peak RSS {served['memory']['VmHWM']:.0f} MiB (at the end "
                   f"{served['memory']['RssAnon']:.0f} MiB anonymous + {served['memory']['RssFile']:.0f} MiB "
                   f"file-backed; exact search k=10 over all rows {served['search_ms']:.0f} ms)",
                   f"read the cutout images whole: {base['read_s']:.2f} s, peak RSS {base['read_rss_mib']:.0f} MiB",
                   f"{served['memory']['VmHWM'] / base['read_rss_mib']:.2f}x the memory")
            record(f"gal-view tile latency over HTTP, {args.requests} random ids, {what}",
                   f"cold median {served['cold_median_ms']:.1f} ms (p95 {served['cold_p95_ms']:.1f} ms), "
                   f"cached {served['warm_median_ms']:.1f} ms",
                   f"scan the table for one id (as a montage finds it): {base['scan_ms']:.0f} ms",
                   f"{base['scan_ms'] / served['cold_median_ms']:.1f}x faster")
            reused, new = served["reused"], served["new"]
            record(f"gal-view cached picture on reused (keep-alive) connections, {args.connection_requests} requests "
                   f"by {args.clients} clients on 127.0.0.1, {what}",
                   f"p50 {reused['p50_ms']:.2f} ms (p95 {reused['p95_ms']:.2f} ms), {reused['per_s']:.0f} requests/s",
                   f"a new connection per request: p50 {new['p50_ms']:.2f} ms (p95 {new['p95_ms']:.2f} ms), "
                   f"{new['per_s']:.0f} requests/s",
                   f"p50 reused / new {reused['p50_ms'] / new['p50_ms']:.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
