#!/usr/bin/env python
"""INT8 layer tables of one model measured in several passes, the per-entry median kept.

On a shared machine one pass of a layer table can be off by 10x or more for single entries (wide layers on
large maps are slowed by other jobs' memory traffic; narrow ones are not), and FLOPs plans follow such
entries. Each pass measures every grid shape of the model (conv-only and, with ``--activations``, conv + SiLU
as deployed) into its own file; entries are scaled to the pass's own reference layer, the median over passes
is written to the table the planners read (``fxprune.deploy.lut.default_table_path``, or ``--out``)::

    taskset -c 0 python bench/int8_tables.py --model yolov8n --backends ort,openvino --passes 3 --activations

The spread between passes (max / min of each entry) is printed: its median and the worst entries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

from fxprune.deploy.latency_model import LatencyModel  # noqa: E402
from fxprune.deploy.lut import REFERENCE_LAYER, LatencyTable, frozen_heap  # noqa: E402

import fxprune  # noqa: E402
from fxprune.models.spec import load_model  # noqa: E402

MODELS = {
    "yolov8n": ("yolov8n.yaml", (1, 3, 640, 640)),
    "resnet50": ("torchvision:resnet50", (1, 3, 224, 224)),
}
REFERENCE = REFERENCE_LAYER.key


def merged(passes: list[dict[str, float]]) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Per-entry median over passes, each pass scaled to its own reference layer; and each entry's spread."""
    ref = statistics.median(p[REFERENCE] for p in passes)
    keys = set.intersection(*(set(p) for p in passes))
    out = {k: ref * statistics.median(p[k] / p[REFERENCE] for p in passes) for k in keys}
    spread = sorted(
        (max(p[k] / p[REFERENCE] for p in passes) / min(p[k] / p[REFERENCE] for p in passes), k) for k in keys
    )
    return out, spread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov8n", choices=sorted(MODELS))
    p.add_argument("--backends", default="ort,openvino")
    p.add_argument("--round-to", type=int, default=16, help="channel step of the measured grid")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--activations", action="store_true", help="also time each conv with its SiLU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=0.25)
    p.add_argument("--out", default=None, help="folder for the merged tables (default: the planners' cache)")
    args = p.parse_args()
    torch.manual_seed(0)
    spec, shape = MODELS[args.model]
    model, _ = load_model(spec)
    x = torch.randn(*shape)
    analysis = fxprune.analyze(model.eval(), x, round_to=args.round_to)
    work = Path(tempfile.mkdtemp(prefix="int8-tables-"))
    for backend in [b for b in args.backends.split(",") if b]:
        passes = []
        for i in range(args.passes):
            start = time.time()
            table = LatencyTable(backend, "int8", 1, work / f"{backend}-{i}.json", repeats=args.repeats,
                                 budget_s=args.budget_s)  # fmt: skip
            with frozen_heap():
                for act in (False, True) if args.activations else (False,):
                    LatencyModel.build(analysis, x, table, args.round_to, activations=act)
            passes.append(table.entries)
            took = time.time() - start
            print(f"{backend} pass {i + 1}: {len(table.entries)} entries in {took:.0f} s", flush=True)
        entries, spread = merged(passes)
        worst = ", ".join(f"{k} {s:.1f}x" for s, k in spread[-3:])
        print(f"{backend} spread between passes: median {spread[len(spread) // 2][0]:.2f}x; worst {worst}")
        path = Path(args.out) / f"{backend}-int8.json" if args.out else None
        final = LatencyTable(backend, "int8", 1, path)
        final.entries.update(entries)
        final.save()
        print(f"{backend}: {len(entries)} merged entries written to {final.path}", flush=True)


if __name__ == "__main__":
    main()
