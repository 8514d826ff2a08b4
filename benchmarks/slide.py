"""Benchmark: a gigapixel slide end to end (make, ingest, predict) on a small CPU budget.

Two slides of ``--size``^2 pixels (default 32768^2 = 1.07 GP):

  synthetic  the seeded generator streamed into a raw zarr array (``write_giant_slide``);
  mosaic     real texture: 512^2 tiles of scikit-image's bundled immunohistochemistry micrograph
             (``skimage.data.immunohistochemistry``), each flipped/rotated at random, written tile by tile as a
             tiled RGB BigTIFF that ingest reads lazily.

Each goes through the pipeline's own functions, every stage in a fresh child process whose
whole process tree's RSS the parent samples (every 0.1 s): ``ingest_slide`` (streamed
statistics, normalisation, rechunking; luminance of the RGB mosaic), then ``predict_image``
with a small seeded U-Net (base 16, depth 4, valid convolutions) and every output it writes
(probabilities, argmax, instance labels, pyramid). Printed per stage: wall seconds, megapixels
per second, CPU seconds (user + system of the process tree; on a shared machine MP per CPU
second is the steadier figure), peak RSS of the process tree. Then

* predict MP/s / raw MP/s: the same net's bare forward + softmax on the input windows of the
  first ``--raw-chunks`` output chunks, already in memory (target >= 0.9);
* resume: a second prediction is killed with SIGKILL once about half of its chunks are marked
  done, then rerun; the rerun must recompute exactly the chunks without a marker (counted by
  wrapping ``predict_chunk`` in the rerun's process).

Targets: peak RSS <= 4 GB at any size, predict/raw >= 0.9, resume recomputes only unfinished
chunks. A benchmark, not a test: the full size needs about 2 x 2200 CPU seconds of prediction
(two passes: the first, then the killed one and its rerun), so about 40 min on 2 idle cores and
many hours where other work has the cores; each stage's figures are printed as it finishes.

    .venv/bin/python benchmarks/slide.py                                # 32768^2, both slides
    .venv/bin/python benchmarks/slide.py --size 4096 --sources synthetic   # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

NAME = "slide"
MOSAIC_TILE = 512


# -- stages, each run in a child process ----------------------------------------------------------
def make_synthetic(args: argparse.Namespace, work: Path) -> None:
    from unetflow.synthetic import write_giant_slide

    write_giant_slide(work / "raw.zarr", args.size, args.chunk, seed=1)


def make_mosaic(args: argparse.Namespace, work: Path) -> None:
    """A tiled RGB BigTIFF, written one tile at a time (never the whole slide in memory)."""
    import tifffile
    from skimage import data

    base = data.immunohistochemistry()[:MOSAIC_TILE, :MOSAIC_TILE]
    rng = np.random.default_rng(0)
    n = -(-args.size // MOSAIC_TILE)

    def tiles():
        for _ in range(n * n):
            yield np.ascontiguousarray(np.rot90(base[:, ::-1] if rng.random() < 0.5 else base, rng.integers(4)))

    tifffile.imwrite(
        work / "raw.tif", tiles(), shape=(args.size, args.size, 3), dtype=np.uint8, tile=(MOSAIC_TILE, MOSAIC_TILE),
        photometric="rgb", bigtiff=True,
    )  # fmt: skip


def ingest(args: argparse.Namespace, work: Path) -> None:
    from unetflow.ingest import ingest_slide

    path, fmt = (work / "raw.zarr", "zarr") if args.source == "synthetic" else (work / "raw.tif", "tiff")
    slide = {"name": NAME, "format": fmt, "path": str(path), "size": args.size, "seed": 1, "chunk": args.chunk}
    ingest_slide(slide, 1, "luminance", work / "slide.zarr")


def predict(args: argparse.Namespace, work: Path) -> None:
    """``predict_image`` into ``--out``; prints how many chunks this process predicted."""
    import torch

    from predict import options  # benchmarks/predict.py

    from unetflow import predict as predict_module

    torch.set_num_threads(args.cores)
    computed = []
    original = predict_module.predict_chunk

    def counting(job):  # the threaded scheduler runs chunk tasks in this process
        original(job)
        computed.append(job.index)

    predict_module.predict_chunk = counting
    predict_module.predict_image(work / "model.pt", work / "slide.zarr", NAME, work / args.out, options(args))
    print(json.dumps({"computed": len(computed)}))


def raw(args: argparse.Namespace, work: Path) -> None:
    """MP/s of the bare model on the input windows of the first ``--raw-chunks`` output chunks."""
    import torch
    import zarr
    from predict import make_model, options, raw_forward, windows_in_memory  # benchmarks/predict.py

    from unetflow.devices import resolve_precision

    torch.set_num_threads(args.cores)
    net = make_model(work / "model.pt", args.base_channels, args.depth)
    image = zarr.open_group(str(work / "slide.zarr"), mode="r")[f"images/{NAME}"]
    windows = windows_in_memory(net, image, args, chunks=args.raw_chunks)
    precision = resolve_precision(options(args).precision, torch.device("cpu"))  # as the predict stage does
    net = precision.prepare_model(net)
    raw_forward(net, windows[: args.batch_size], args.batch_size, precision)  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    raw_forward(net, windows, args.batch_size, precision)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(json.dumps({"megapixels": args.raw_chunks * args.chunk**2 / 1e6, "seconds": seconds, "forward_cpu": cpu,
                      "precision": precision.name}))  # fmt: skip


CHILDREN = {"make-synthetic": make_synthetic, "make-mosaic": make_mosaic, "ingest": ingest, "predict": predict, "raw": raw}


# -- the parent: runs children, samples their RSS, kills one -------------------------------------
def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and all its descendants, in bytes (0 once it is gone)."""
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            total += p.memory_info().rss
    except psutil.NoSuchProcess:
        pass
    return total


def _children_cpu() -> float:
    """User + system CPU seconds of all finished (waited-for) children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args: argparse.Namespace, work: Path, stage: str, kill_when=None, **extra: str) -> dict:
    """Run one stage in a child process; its wall time, peak tree RSS, last JSON line, and
    whether it was killed (``kill_when()`` true -> SIGKILL to its process group)."""
    command = [sys.executable, __file__, "--child", stage, "--workdir", str(work), *args.forward]
    command += [f"--{key}={value}" for key, value in extra.items()]
    start, cpu = time.perf_counter(), _children_cpu()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    proc, peak, killed = psutil.Process(child.pid), 0, False
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        if kill_when is not None and not killed and kill_when():
            os.killpg(child.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    out = child.stdout.read()
    if child.returncode != 0 and not killed:
        raise SystemExit(f"stage {stage} failed with exit code {child.returncode}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = {"seconds": seconds, "cpu": cpu, "peak_mb": peak / 2**20, "killed": killed}
    result.update(json.loads(lines[-1]) if lines else {})
    print(f"stage {stage} {extra} done: {json.dumps(result)}", flush=True)  # a long run stopped early keeps these
    return result


def bench_source(args: argparse.Namespace, work: Path) -> list[tuple[str, dict]]:
    """Make, ingest and predict one slide; then the raw-forward sample and the kill/resume check."""
    from unetflow.prediction_store import DONE_DIR, PARTIAL

    rows = [("make", run_child(args, work, f"make-{args.source}"))]
    rows.append(("ingest", run_child(args, work, "ingest")))
    shutil.rmtree(work / "raw.zarr", ignore_errors=True)
    (work / "raw.tif").unlink(missing_ok=True)
    rows.append(("raw forward (sample)", run_child(args, work, "raw")))
    rows.append(("predict", run_child(args, work, "predict", out="out.ome.zarr")))
    shutil.rmtree(work / "out.ome.zarr")

    markers = work / f"resumed.ome.zarr{PARTIAL}" / DONE_DIR
    total = (-(-args.size // args.chunk)) ** 2

    def half_done() -> bool:
        return markers.is_dir() and sum(1 for _ in markers.iterdir()) >= total / 2

    killed = run_child(args, work, "predict", kill_when=half_done, out="resumed.ome.zarr")
    done_at_kill = sum(1 for _ in markers.iterdir()) if markers.is_dir() else 0
    killed["megapixels"] = done_at_kill * args.chunk**2 / 1e6  # MP/s of these rows: of the chunks done
    rows.append(("predict, SIGKILL at ~50 %", killed))
    resumed = run_child(args, work, "predict", out="resumed.ome.zarr")
    resumed.update(total=total, done_at_kill=done_at_kill, was_killed=killed["killed"])
    resumed["megapixels"] = resumed["computed"] * args.chunk**2 / 1e6
    rows.append(("predict, rerun after the kill", resumed))
    shutil.rmtree(work / "resumed.ome.zarr")
    return rows


def report(args: argparse.Namespace, source: str, rows: list[tuple[str, dict]]) -> None:
    mp = args.size**2 / 1e6
    precision = dict(rows)["raw forward (sample)"]["precision"]
    print(f"\n{source}: {args.size}^2 = {mp:.0f} MP, chunk {args.chunk}, tile {args.tile}, batch {args.batch_size},"
          f" U-Net base {args.base_channels} depth {args.depth} in {precision}, {args.cores} torch threads,"
          f" {os.cpu_count()} CPUs")  # fmt: skip
    header = f"{'stage':<32} {'seconds':>9} {'MP/s':>7} {'CPU s':>8} {'MP/CPU-s':>9} {'peak RSS MB':>12}"
    print(header)
    print("-" * len(header))
    for label, row in rows:
        stage_mp = row.get("megapixels", mp)  # the raw forward and resume rows cover part of the slide
        print(
            f"{label:<32} {row['seconds']:>9.1f} {stage_mp / row['seconds']:>7.3f} {row['cpu']:>8.1f}"
            f" {stage_mp / row['cpu']:>9.3f} {row['peak_mb']:>12.0f}"
        )
    by = dict(rows)
    ratio = (mp / by["predict"]["seconds"]) / (by["raw forward (sample)"]["megapixels"] / by["raw forward (sample)"]["seconds"])
    peak = max(row["peak_mb"] for _, row in rows)
    resumed = by["predict, rerun after the kill"]
    expected = resumed["total"] - resumed["done_at_kill"]
    print(f"peak RSS of any stage: {peak:.0f} MB (target <= 4096)")
    raw_row = by["raw forward (sample)"]
    cpu_ratio = (raw_row["forward_cpu"] / raw_row["megapixels"]) / (by["predict"]["cpu"] / mp)
    print(f"predict MP/s / raw forward MP/s: {ratio:.2f} (target >= 0.9)")
    print(
        f"the same by CPU time (forward alone vs the whole predict process, start-up included): {cpu_ratio:.2f}"
        " (steadier than wall time on a shared machine)"
    )
    print(
        f"resume: killed={resumed['was_killed']} with {resumed['done_at_kill']} of {resumed['total']} chunks marked done;"
        f" the rerun predicted {resumed['computed']} chunks, {expected} expected"
        f" ({'only the unfinished ones' if resumed['computed'] == expected else 'MISMATCH'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32768, help="slide edge in pixels")
    parser.add_argument("--sources", nargs="+", choices=["synthetic", "mosaic"], default=["synthetic", "mosaic"])
    parser.add_argument("--chunk", type=int, default=1024, help="zarr chunk edge of the stores (predict.chunk)")
    parser.add_argument("--tile", type=int, default=256, help="requested output tile edge (predict.tile)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2, help="torch threads of each stage")
    parser.add_argument("--raw-chunks", type=int, default=4, help="output chunks whose windows the raw forward runs")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--source", choices=["synthetic", "mosaic"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = ("size", "chunk", "tile", "batch_size", "base_channels", "depth", "cores", "raw_chunks")
    args.forward = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names]

    if args.child:
        CHILDREN[args.child](args, Path(args.workdir))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="unetflow-slide-"))
    start = time.perf_counter()
    try:
        for source in args.sources:
            work = root / source
            work.mkdir(parents=True, exist_ok=True)
            args.forward.append(f"--source={source}")
            args.source = source
            report(args, source, bench_source(args, work))
            args.forward.pop()
            shutil.rmtree(work)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
