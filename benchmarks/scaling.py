"""Scaling: conversion (Beam and single process) and training-input throughput vs data size.

    .venv/bin/python benchmarks/scaling.py --work runs/scaling                  # 10k, 50k, 200k
    .venv/bin/python benchmarks/scaling.py --work runs/scaling --sizes 10000 50000

For every size N it

1. writes N synthetic 48x48 RGB "shape scenes" as PNG files plus a CSV
   ``image,labels`` (the generator of ``benchmarks/shapes_csv.py``; the scenes of a
   smaller N are the first N of a larger one, so they are drawn once, by
   ``--gen-workers`` processes, and kept under ``--work``);
2. converts the CSV with ``cnnrnn data from-csv --beam`` (DirectRunner,
   multi_processing, ``--workers`` worker processes) and, unless ``--no-single``,
   with the single-process converter, each as a fresh process, recording the wall
   time and the peak resident memory: the sum over the process tree (driver and
   Beam workers, sampled every 0.2 s with psutil) and the driver's own;
3. reads the converted data for one epoch through
   ``cnnrnn_tf.inputs.dataset.make_dataset(..., mode="sequence", training=True)``
   (decode, resize to ``--image-size``, shuffle, batch) in a fresh process, with
   ``cache=False`` and, when the decoded images fit ``--cache-budget-mb``, with
   ``cache=True`` (an in-memory cache of the decoded images: its size grows with N).
   The vocabulary comes from the converter's ``label_counts.json``, not from a scan.

It prints two markdown tables (and writes them with the raw figures to
``WORK/results.json``). The sizes given are measured again; the images, and the
figures of other sizes measured by earlier runs into the same WORK, are kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
PER_FOLDER = 10000
SCENE_SIZE = 48


# ------------------------------------------------------------------ data
def _draw(args) -> List[List[str]]:
    """Draws scenes [start, stop) (each from its own seed: any split of the range
    gives the same images) and returns their CSV rows."""
    images_dir, start, stop = args
    sys.path.insert(0, HERE)
    import shapes_csv

    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([0, i])
        names = shapes_csv.sample_labels(rng)
        rel = os.path.join("images", f"{i // PER_FOLDER:03d}", f"{i:07d}.png")
        shapes_csv.render(rng, names, SCENE_SIZE).save(os.path.join(images_dir, rel))
        rows.append([rel, "|".join(names)])
    return rows


def make_scenes(work: str, count: int, workers: int) -> str:
    """Ensures WORK/images holds scenes 0..count-1 and WORK/rows.csv lists them; returns it."""
    from multiprocessing import Pool

    rows_path = os.path.join(work, "rows.csv")
    rows: List[List[str]] = []
    if os.path.exists(rows_path):
        with open(rows_path, newline="") as f:
            rows = list(csv.reader(f))[1:]
    if len(rows) >= count:
        return rows_path
    for k in range(len(rows) // PER_FOLDER, (count - 1) // PER_FOLDER + 1):
        os.makedirs(os.path.join(work, "images", f"{k:03d}"), exist_ok=True)
    t0 = time.time()
    chunk = 1000
    tasks = [(work, s, min(s + chunk, count)) for s in range(len(rows), count, chunk)]
    print(f"drawing scenes {len(rows)}..{count - 1} with {workers} processes", flush=True)
    with Pool(workers) as pool:
        for part in pool.imap(_draw, tasks):
            rows.extend(part)
    with open(rows_path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        writer.writerows(rows)
    os.replace(rows_path + ".tmp", rows_path)
    print(f"  {time.time() - t0:.0f} s", flush=True)
    return rows_path


def csv_for(work: str, rows_path: str, n: int) -> str:
    """WORK/scenes-N.csv: the first N scenes."""
    path = os.path.join(work, f"scenes-{n}.csv")
    if not os.path.exists(path):
        with open(rows_path, newline="") as f, open(path + ".tmp", "w", newline="") as out:
            for i, line in enumerate(f):
                if i > n:
                    break
                out.write(line)
        os.replace(path + ".tmp", path)
    return path


# ------------------------------------------------------------------ measuring
def run_measured(cmd: List[str]) -> Dict[str, float]:
    """Runs cmd; wall seconds, peak RSS of its process tree (sum) and of the process itself."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = {"tree": 0, "main": 0}
    done = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                main = root.memory_info().rss
                tree = main
                for child in root.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            peak["main"] = max(peak["main"], main)
            peak["tree"] = max(peak["tree"], tree)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return {"seconds": time.perf_counter() - t0, "peak_tree_mb": peak["tree"] / 2**20,
            "peak_main_mb": peak["main"] / 2**20, "stdout": out}


def convert(csv_path: str, out: str, beam: bool, workers: int) -> Dict[str, float]:
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "cnnrnn_tf.cli", "data", "from-csv", "--csv", csv_path,
           "--out", out, "--quiet"]
    if beam:
        cmd += ["--beam", "--direct-num-workers", str(workers)]
    result = run_measured(cmd)
    print("  " + result.pop("stdout").strip(), flush=True)
    return result


def input_pass(data: str, image_size: int, batch_size: int, cache: bool) -> Dict[str, float]:
    """One epoch of make_dataset(training=True) in this process (called as a subprocess)."""
    import resource

    from cnnrnn_tf.inputs.dataset import make_dataset
    from cnnrnn_tf.vocabulary import LabelVocabulary

    with open(os.path.join(data, "label_counts.json")) as f:
        counts = json.load(f)["label_counts"]
    ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0].encode("utf-8")), reverse=True)
    vocab = LabelVocabulary(tuple(k for k, _ in ordered), tuple(v for _, v in ordered))
    t0 = time.perf_counter()
    ds = make_dataset(data, vocab, mode="sequence", image_size=image_size,
                      batch_size=batch_size, training=True, cache=cache)
    n = first = 0
    t1 = None
    for features, _ in ds:
        n += int(features["images"].shape[0])
        if t1 is None:  # the first batch carries the tracing and the shuffle buffer's fill
            t1, first = time.perf_counter(), n
    seconds = time.perf_counter() - t0
    rest = time.perf_counter() - t1
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds,
            "first_batch_s": t1 - t0, "steady_images_per_s": (n - first) / rest if rest else 0.0,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------ report
def tables(results: Dict[str, dict], workers: int, image_size: int, budget_mb: int) -> str:
    lines = [f"Conversion (`cnnrnn data from-csv`; 48x48 PNG scenes; Beam: DirectRunner "
             f"multi_processing, {workers} workers)", "",
             "| N | Beam wall (s) | Beam images/s | Beam images/s, marginal | "
             "Beam peak RSS, driver + workers (MB) | Beam driver peak (MB) | "
             "single-process wall (s) | single images/s | single images/s, marginal | "
             "single peak RSS (MB) | shards MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    previous = None

    def marginal(key, n, r):
        """Images/s between the previous N and this one: the rate without start-up costs."""
        if previous is None or not r.get(key) or not previous[1].get(key):
            return "-"
        dt = r[key]["seconds"] - previous[1][key]["seconds"]
        return f"{(n - previous[0]) / dt:.0f}" if dt > 0 else "-"

    for n, r in sorted(((int(k), v) for k, v in results.items()), key=lambda kv: kv[0]):
        b, s = r["beam"], r.get("single")
        single = (f"{s['seconds']:.0f} | {n / s['seconds']:.0f} | {marginal('single', n, r)} | "
                  f"{s['peak_tree_mb']:.0f}" if s else "- | - | - | -")
        lines.append(f"| {n:,} | {b['seconds']:.0f} | {n / b['seconds']:.0f} | "
                     f"{marginal('beam', n, r)} | {b['peak_tree_mb']:.0f} | "
                     f"{b['peak_main_mb']:.0f} | {single} | {r['shard_mb']:.0f} |")
        previous = (n, r)
    lines += ["", f"Training input, one epoch of `make_dataset(mode=\"sequence\", "
              f"training=True)` at {image_size} px (decode, resize, shuffle 4096, batch); "
              f"cache=True only when N decoded images fit {budget_mb} MB", "",
              "| N | cache | images/s (epoch) | images/s after the first batch | "
              "first batch (s) | epoch wall (s) | peak RSS (MB) |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for n, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        for key, label in (("input_nocache", "off"), ("input_cache", "in memory")):
            if key in r:
                x = r[key]
                lines.append(f"| {int(n):,} | {label} | {x['images_per_s']:.0f} | "
                             f"{x['steady_images_per_s']:.0f} | {x['first_batch_s']:.1f} | "
                             f"{x['seconds']:.0f} | {x['maxrss_mb']:.0f} |")
            elif key == "input_cache":
                lines.append(f"| {int(n):,} | in memory | over the budget: not run | | | | |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/scaling")
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    p.add_argument("--workers", type=int, default=2, help="Beam DirectRunner worker processes")
    p.add_argument("--gen-workers", type=int, default=2, help="processes drawing the scenes")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-budget-mb", type=int, default=1024)
    p.add_argument("--no-single", action="store_true", help="skip the single-process converter")
    p.add_argument("--input-pass", default=None, help=argparse.SUPPRESS)  # internal
    p.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.input_pass:
        print(json.dumps(input_pass(args.input_pass, args.image_size, args.batch_size,
                                    args.cache)))
        return 0

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    rows_path = make_scenes(work, max(args.sizes), args.gen_workers)
    results: Dict[str, dict] = {}
    results_path = os.path.join(work, "results.json")
    if os.path.exists(results_path):  # sizes measured by an earlier run stay in the table
        with open(results_path) as f:
            results = json.load(f)["results"]
    for n in args.sizes:
        csv_path = csv_for(work, rows_path, n)
        r: Dict[str, dict] = {}
        print(f"N={n}: Beam conversion", flush=True)
        beam_out = os.path.join(work, f"data-{n}")
        r["beam"] = convert(csv_path, beam_out, True, args.workers)
        r["shard_mb"] = sum(os.path.getsize(os.path.join(beam_out, f))
                            for f in os.listdir(beam_out) if f.endswith(".tfrecord.gz")) / 2**20
        if not args.no_single:
            print(f"N={n}: single-process conversion", flush=True)
            single_out = os.path.join(work, f"data-{n}-single")
            r["single"] = convert(csv_path, single_out, False, args.workers)
            import shutil

            shutil.rmtree(single_out)
        caches = [False]
        if n * args.image_size ** 2 * 3 <= args.cache_budget_mb * 2**20:
            caches.append(True)
        for cache in caches:
            print(f"N={n}: input pass, cache={cache}", flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--input-pass", beam_out,
                   "--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
            measured = run_measured(cmd + (["--cache"] if cache else []))
            x = json.loads(measured["stdout"].strip().splitlines()[-1])
            x["maxrss_mb"] = max(x["maxrss_mb"], measured["peak_tree_mb"])
            r["input_cache" if cache else "input_nocache"] = x
            print(f"  {x['images']} images, {x['images_per_s']:.0f} images/s, "
                  f"peak {x['maxrss_mb']:.0f} MB", flush=True)
        r["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        results[str(n)] = r
    table = tables(results, args.workers, args.image_size, args.cache_budget_mb)
    load = os.getloadavg()
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_end": [round(x, 2) for x in load], "argv": sys.argv[1:]}
    with open(results_path, "w") as f:
        json.dump({"info": info, "results": results, "table": table}, f, indent=1)
    print()
    print(table)
    print(f"\n{os.cpu_count()} CPUs; load average at the end {load[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
