"""``target_latency`` inside ultralytics training, measured for real: YOLOv8n from its yaml, one epoch on
a few coco128 images, ``l1`` to a latency budget on a runtime. Prints the planning time (the layer table
built from scratch unless ``--keep-table``), the planner's rounds, and the dense vs pruned latency of the
saved checkpoints timed interleaved. A pipeline check: coco128's train and val sets are the same images.

    python bench/yolo_target_latency.py --imgsz 64 --target 0.5x --backend ort
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from yolo import dataset_yaml  # bench/yolo.py: run as `python bench/yolo_target_latency.py`


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--target", default="0.5x")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--keep-table", action="store_true", help="reuse the layer table in $FXPRUNE_CACHE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="fxprune-latency-"))
    if not args.keep_table:
        os.environ["FXPRUNE_CACHE"] = str(work / "cache")  # the layer table is measured from scratch

    import fxprune.deploy
    from fxprune.deploy import measure_latency, speedup
    from fxprune.integrations.ultralytics import STATE_ATTR, PruneDetectionTrainer, pruning_options
    from ultralytics import YOLO

    timings, real = {}, fxprune.deploy.LatencyPlanner

    class TimedPlanner(real):
        def plan(self, *a, **kw):
            start = time.perf_counter()
            try:
                return super().plan(*a, **kw)
            finally:
                timings.setdefault("plan_s", []).append(time.perf_counter() - start)

    fxprune.deploy.LatencyPlanner = TimedPlanner
    data = dataset_yaml(work / "data", args.images)
    train = dict(
        data=str(data), epochs=1, imgsz=args.imgsz, batch=2, nbs=2, workers=0, plots=False, amp=False
    )
    start = time.perf_counter()
    with pruning_options(method="l1", target_latency=args.target, backend=args.backend):
        YOLO("yolov8n.yaml").train(trainer=PruneDetectionTrainer, project=str(work), name="run", **train)
    total = time.perf_counter() - start
    best = YOLO(str(work / "run" / "weights" / "best.pt")).model.float().eval()
    summary = getattr(best, STATE_ATTR)["summary"]
    latency = summary["latency"]
    print(f"planning: {', '.join(f'{t:.1f}' for t in timings['plan_s'])} s; whole run {total:.1f} s")
    for r in latency["rounds"]:
        print(
            f"  round: internal {r['internal_target']:.3f} estimated {r['estimated_ratio']:.3f} "
            f"measured {r['measured_ratio']:.3f}"
        )
    flops = summary["pruned"]["flops"] / summary["dense"]["flops"]
    params = summary["pruned"]["params"] / summary["dense"]["params"]
    print(
        f"chosen: estimated {latency['estimated_ratio']:.3f}, measured {latency['measured_ratio']:.3f} "
        f"(target {latency['target_ratio']}); FLOPs {flops:.3f}, params {params:.3f} of dense"
    )
    dense = YOLO("yolov8n.yaml").model.float().eval()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    for i in range(2):
        res = measure_latency({"dense": dense, "pruned": best}, x, args.backend)
        ratio = 1.0 / speedup(res["dense"], res["pruned"])
        print(f"check {i}: dense {res['dense'].median_ms:.3f} ms, pruned/dense latency {ratio:.3f}")


if __name__ == "__main__":
    main()
