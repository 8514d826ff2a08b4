"""Benchmark: the synthetic generator's compiled kernels vs its numpy + scipy + k-d tree version.

The baseline is ``unetflow/synthetic.py`` as it was before any kernel (``--baseline-ref``, read
from git history, so no copy of the old code lives in the tree). Both render the same
``--chunk``^2 regions at several origins, interleaved so a busy machine slows both alike; the
best of the repeats counts. Printed: wall and CPU seconds per megapixel, MP/s, the speed-up, the
time a 32768^2 (1.07 GP) slide would take at that rate, and whether the outputs are identical.

    .venv/bin/python benchmarks/synthetic.py
    .venv/bin/python benchmarks/synthetic.py --chunk 2048 --regions 4
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from unetflow import synthetic

REPO = Path(__file__).resolve().parents[1]
BEFORE_KERNELS = "f2910ca"  # the last commit with the numpy + scipy + cKDTree generator


def baseline_module(ref: str, folder: Path) -> ModuleType:
    """``unetflow/synthetic.py`` at git ``ref``, imported as the module ``synthetic_baseline``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:unetflow/synthetic.py"], capture_output=True, text=True, check=True
    ).stdout
    path = folder / "synthetic_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synthetic_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["synthetic_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1024, help="region edge (a slide chunk)")
    parser.add_argument("--regions", type=int, default=3, help="regions rendered by each version, interleaved")
    parser.add_argument("--baseline-ref", default=BEFORE_KERNELS, help="git ref of the baseline generator")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_module(args.baseline_ref, Path(tmp))
        versions = {f"numpy + scipy + cKDTree ({args.baseline_ref})": old, "numba kernels (this tree)": synthetic}
        for module in versions.values():
            module.render_region(1, 0, 0, 64, 64)  # warm-up: numba loads or compiles its kernels
        wall = {label: [] for label in versions}
        cpu = {label: [] for label in versions}
        identical = True
        for index in range(args.regions):
            origin = (7919 * index, 104729 * index % 30000)
            outputs = []
            for label, module in versions.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs.append(module.render_region(1, *origin, args.chunk, args.chunk))
                wall[label].append(time.perf_counter() - start)
                cpu[label].append(time.process_time() - start_cpu)
            (old_image, old_labels), (new_image, new_labels) = outputs
            identical &= np.array_equal(old_image, new_image) and np.array_equal(old_labels, new_labels)

    mp = args.chunk**2 / 1e6
    header = f"{'generator':<36} {'wall s/MP':>10} {'CPU s/MP':>9} {'MP/s':>7} {'1.07 GP slide':>14}"
    print(f"render_region of {args.regions} regions of {args.chunk}^2, best of each")
    print(header)
    print("-" * len(header))
    for label in versions:
        per_mp = min(wall[label]) / mp
        print(f"{label:<36} {per_mp:>10.3f} {min(cpu[label]) / mp:>9.3f} {1 / per_mp:>7.2f} {1073.7 * per_mp / 60:>11.1f} min")
    old_label, new_label = versions
    print(
        f"speed-up: {min(wall[old_label]) / min(wall[new_label]):.1f}x wall,"
        f" {min(cpu[old_label]) / min(cpu[new_label]):.1f}x CPU time; outputs identical: {identical}"
    )


if __name__ == "__main__":
    main()
