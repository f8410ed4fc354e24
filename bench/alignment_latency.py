#!/usr/bin/env python
"""FLOPs kept and real latency at one ratio for several ``round_to`` values, side by side.

For each model, ``fxprune.prune(copy, x, ratio, round_to=R)`` runs for every ``--round-to`` value; the dense
model and the pruned copies are then timed interleaved (one ``measure_latency`` call per backend), so
the speed-ups compare within the run. It answers whether a finer alignment, which reaches a lower FLOPs
count on narrow models, is also faster on the runtimes:

    python -m bench.alignment_latency --models ghostnet_050,tv:shufflenet_v2_x0_5 --round-to 8,4,2,1
    python -m bench.alignment_latency --models repghostnet_050 --backends ort --budget-s 10 --out a.json

Names as in ``bench/timm_families.py`` (timm, ``tv:NAME``, ``yolo:CFG``); random weights, batch 1,
``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from typing import Any

import torch
from fxprune.deploy import measure_latency, speedup

import fxprune

from .timm_families import build


def compare(name: str, round_tos: list[int], ratio: float, size: int, backends: list[str], threads: int,
            budget_s: float) -> dict[str, Any]:
    """Prune ``name`` at ``ratio`` once per alignment and time dense and all pruned copies per backend."""
    model, x = build(name, size)
    sources: dict[str, torch.nn.Module] = {"dense": model}
    kept: dict[str, float] = {}
    for r in round_tos:
        pruned = copy.deepcopy(model)
        report = fxprune.prune(pruned, x, ratio=ratio, round_to=r)
        sources[f"round_to={r}"] = pruned
        kept[f"round_to={r}"] = round(report.flops_after / report.flops_before, 3)
    record: dict[str, Any] = {"model": name, "ratio": ratio, "input": list(x.shape), "flops_kept": kept}
    for backend in backends:
        times = measure_latency(sources, x, backend, threads=threads, budget_s=budget_s)
        dense = times["dense"]
        record[backend] = {
            "median_ms": {k: round(m.median_ms, 3) for k, m in times.items()},
            "speedup": {k: round(speedup(dense, m), 3) for k, m in times.items() if k != "dense"},
        }
    return record


def _line(record: dict[str, Any], backend: str) -> str:
    cells = [f"{record['flops_kept'][k]:.3f} / {v:.2f}x"
             for k, v in record[backend]["speedup"].items()]
    return f"| {record['model']} | {backend} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma-separated names (timm, tv:NAME, yolo:CFG)")
    p.add_argument("--round-to", default="8,4,2,1", help="comma-separated alignments to compare")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--size", type=int, default=224, help="input size for timm models")
    p.add_argument("--backends", default="ort,openvino")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=6.0, help="timing seconds per backend and model")
    p.add_argument("--out", help="JSON file of the records")
    args = p.parse_args(argv)
    round_tos = [int(r) for r in args.round_to.split(",")]
    records = []
    head = " | ".join(f"round_to {r}: FLOPs kept / speed-up" for r in round_tos)
    print(f"| model | backend | {head} |")
    print("|---|---|" + "---|" * len(round_tos))
    for name in args.models.split(","):
        rec = compare(name, round_tos, args.ratio, args.size, args.backends.split(","), args.threads,
                      args.budget_s)
        records.append(rec)
        for backend in args.backends.split(","):
            print(_line(rec, backend), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"load": os.getloadavg(), "threads": args.threads, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
