"""YOLO inside ultralytics' pipeline: the neck, every method, and pruned-vs-dense fine-tuning on coco128.

coco128's train and val sets are the same 128 images: its figures check the pipeline, they are not COCO
results. Latency under a shared machine is noisy: only the interleaved dense/pruned ratios mean anything.

  python bench/yolo.py neck                       FLOPs kept at ratio 0.5, feats frozen vs the YOLO interface
  python bench/yolo.py methods                    every fxprune method, one short run each (8 images)
  python bench/yolo.py baseline --epochs 60       train YOLOv8n from its yaml (the dense baseline)
  python bench/yolo.py arms --baseline best.pt    prune to half FLOPs (l1, greg1, tpp), fine-tune
  python bench/yolo.py arms --baseline best.pt --methods l1 --distill 1.0   the same, distilling from dense
  python bench/yolo.py arms --baseline best.pt --methods l1 --cost-weight 0.25   ranking weighted by FLOPs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("FXPRUNE_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
NECK_MODELS = ["yolov8n", "yolo11n", "yolov5nu", "yolov3-tiny", "yolov3", "yolov8n-seg", "yolo11n-seg",
               "yolov8n-pose", "yolo11n-pose", "yolo26n"]  # fmt: skip
FAST_CONSTANTS = {  # schedules short enough for a few iterations on 8 images
    "taylor": {"iterations": 2},
    "bn_scale": {"iterations": 2},
    "greg1": {"update_every": 1, "delta": 0.5, "stabilize": 1},
    "greg2": {"update_every": 1, "delta": 0.5, "stabilize": 1, "pick_delta": 0.005, "pick_ceiling": 0.01},
    "tpp": {"update_every": 1, "delta": 0.5, "stabilize": 1},
    "admm": {"update_every": 1, "rounds": 2},
    "slr": {"update_every": 1, "rounds": 2},
    "ccm": {"steps": 0, "criterion": "variance"},  # nuclear-norm selection takes minutes on YOLOv8n
}


def _offline() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.home() / ".cache/fxprune/venv/yolo-config"))
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))


def dataset_yaml(folder: Path, images: int | None = None) -> Path:
    """A coco128 yaml with an absolute path (optionally a copy of the first ``images`` images)."""
    import yaml

    src = SHARED / "coco128"
    root = src
    if images is not None:
        root = folder / f"coco{images}"
        for sub in ("images", "labels"):
            (root / sub / "train2017").mkdir(parents=True, exist_ok=True)
        for img in sorted((src / "images" / "train2017").glob("*.jpg"))[:images]:
            _copy_once(img, root / "images" / "train2017")
            label = src / "labels" / "train2017" / f"{img.stem}.txt"
            if label.exists():
                _copy_once(label, root / "labels" / "train2017")
    data = yaml.safe_load((src / "coco128.yaml").read_text())
    data["path"] = str(root)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"coco{images or 128}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def _copy_once(src: Path, folder: Path) -> None:
    """Copy ``src`` into ``folder`` unless an equal-sized copy is there: arms running side by side share
    the copy, and rewriting a file another run is reading would hand it a truncated label file."""
    dst = folder / src.name
    if not (dst.exists() and dst.stat().st_size == src.stat().st_size):
        shutil.copy(src, dst)


def neck(args: argparse.Namespace) -> dict:
    """FLOPs kept at ratio 0.5 with every output frozen (before) and with the YOLO interface (after)."""
    from fxprune.integrations.ultralytics import yolo_interface
    from ultralytics import YOLO

    import fxprune

    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    rows = {}
    for name in NECK_MODELS:
        row = {}
        for label, outputs in (("all outputs frozen", None), ("yolo_interface", yolo_interface)):
            model = YOLO(f"{name}.yaml").model
            try:
                report = fxprune.prune(model, x, 0.5, outputs=outputs, importance="l1")
                row[label] = round(report.flops_after / report.flops_before, 4)
            except Exception as e:  # noqa: BLE001 - a bench row records what failed
                row[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows[name] = row
        print(name, row, flush=True)
    return {"imgsz": args.imgsz, "ratio": 0.5, "flops_kept": rows}


def _train_args(data: Path, project: Path, name: str, **kw) -> dict:
    base = dict(data=str(data), workers=0, plots=False, amp=False, project=str(project), name=name)
    return {**base, "exist_ok": True, "verbose": False, "seed": 0, **kw}


def methods(args: argparse.Namespace) -> dict:
    """One epoch on 8 images at 64 px per method: the slim checkpoint reloads and validates."""
    from fxprune.integrations.ultralytics import STATE_ATTR, PruneDetectionTrainer, pruning_options
    from ultralytics import YOLO

    from fxprune.regularize import method_names

    out = Path(args.out)
    data = dataset_yaml(out, images=8)
    dense = sum(p.numel() for p in YOLO("yolov8n.yaml").model.parameters())
    rows = {}
    for method in method_names():
        start = time.perf_counter()
        try:
            model = YOLO("yolov8n.yaml")
            with pruning_options(method=method, ratio=0.5, method_options=FAST_CONSTANTS.get(method, {})):
                model.train(
                    trainer=PruneDetectionTrainer,
                    **_train_args(data, out / "methods", method, epochs=1, imgsz=64, batch=2, nbs=2),
                )
            best = YOLO(str(out / "methods" / method / "weights" / "best.pt"))
            state = getattr(best.model, STATE_ATTR)
            metrics = best.val(data=str(data), imgsz=64, batch=2, plots=False, verbose=False)
            rows[method] = {
                "params": sum(p.numel() for p in best.model.parameters()),
                "dense_params": dense,
                "phase": state["phase"],
                "pruned_at": state["summary"].get("at"),
                "map50_95": float(metrics.box.map),
                "seconds": round(time.perf_counter() - start, 1),
            }
        except Exception as e:  # noqa: BLE001
            rows[method] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(method, rows[method], flush=True)
    return {"methods": rows}


def baseline(args: argparse.Namespace) -> dict:
    """Train YOLOv8n from its yaml on coco128 (the dense baseline)."""
    from ultralytics import YOLO

    out = Path(args.out)
    data = dataset_yaml(out)
    model = YOLO(args.init or f"{args.model}.yaml")
    extra = {"time": args.hours} if args.hours else {}
    model.train(
        **_train_args(
            data, out, args.name or "baseline", epochs=args.epochs, imgsz=args.imgsz, batch=args.batch
        ),
        nbs=args.batch,
        **extra,
        **json.loads(args.train),
    )
    weights = out / (args.name or "baseline") / "weights"
    name = Path(str(model.model.yaml.get("yaml_file", args.model))).stem  # the checkpoint's, with --init
    result = {"model": name, "init": args.init, "epochs": args.epochs, "imgsz": args.imgsz}
    for which in ("last", "best"):
        metrics = YOLO(str(weights / f"{which}.pt")).val(
            data=str(data), imgsz=args.imgsz, batch=args.batch, plots=False, verbose=False
        )
        result[f"{which}_map50_95"] = float(metrics.box.map)
        result[f"{which}_map50"] = float(metrics.box.map50)
    return {"baseline": result}


def arms(args: argparse.Namespace) -> dict:
    """From the baseline: each method at half FLOPs and the dense model ("dense"), fine-tuned ``--epochs``."""
    from fxprune.integrations.ultralytics import STATE_ATTR, PruneDetectionTrainer, pruning_options
    from ultralytics import YOLO

    from fxprune.cli.yolo import compare

    out = Path(args.out)
    data = dataset_yaml(out, images=128)  # a copy: ultralytics writes its label cache beside the labels
    common = dict(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch)
    common.update(json.loads(args.train))
    dense_model = YOLO(args.baseline)
    dense_map = _map(dense_model, data, args)
    results = {"baseline_map50_95": dense_map, "epochs": args.epochs, "imgsz": args.imgsz, "arms": {}}
    arms_ = [(m, None if m == "dense" else m) for m in args.methods.split(",")]
    for name, method in arms_:
        start = time.perf_counter()
        model = YOLO(args.baseline)
        if method is None:
            model.train(**_train_args(data, out, f"arm-{name}", **common))
        else:
            constants = json.loads(args.constants).get(method, {})
            size = dict(target_flops=args.target_flops, round_to=args.round_to)
            if args.min_width is not None:
                size["min_width"] = args.min_width
            if args.ranking is not None:
                size["global_ranking"] = args.ranking == "global"
            if args.cost_weight is not None:
                size["cost_weight"] = args.cost_weight
            size.update(distill=args.distill, distill_feat=args.distill_feat, teacher=args.teacher)
            size["ignore"] = list(args.ignore)
            with pruning_options(method=method, method_options=constants, **size):
                model.train(trainer=PruneDetectionTrainer, **_train_args(data, out, f"arm-{name}", **common))
        best = YOLO(str(out / f"arm-{name}" / "weights" / "last.pt"))  # the model after the last epoch
        row = {"map50_95": _map(best, data, args), "seconds": round(time.perf_counter() - start)}
        if method is not None:
            row["fxprune"] = getattr(best.model, STATE_ATTR, {}).get("summary")
            table = compare(copy.deepcopy(dense_model.model), best.model, args.imgsz, {}, {})
            row["table"] = [[w, d, p, n] for w, d, p, n in table]
        results["arms"][name] = row
        print(name, row, flush=True)
    return results


def _map(model, data: Path, args: argparse.Namespace) -> float:
    metrics = model.val(data=str(data), imgsz=args.imgsz, batch=args.batch, plots=False, verbose=False)
    return float(metrics.box.map)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["neck", "methods", "baseline", "arms"])
    p.add_argument("--out", default=str(HERE / "runs" / "yolo"))
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hours", type=float, default=None, help="ultralytics time= budget for the baseline")
    p.add_argument("--model", default="yolov8n", help="the model's yaml name (baseline)")
    p.add_argument("--init", help="start the baseline from these weights instead of the yaml")
    p.add_argument("--name", help="run folder name (baseline; default: baseline)")
    p.add_argument("--baseline", help="the dense baseline checkpoint (arms)")
    p.add_argument("--methods", default="dense,l1,greg1,tpp", help="arms; dense: the unpruned model")
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="pruned widths in multiples of this (arms; default: the "
        "integration's, the CPU backends' alignment)",
    )
    p.add_argument(
        "--min-width", type=int, help="channels every group keeps at least (arms; default: the integration's)"
    )
    rank = p.add_mutually_exclusive_group()
    rank.add_argument(
        "--global-ranking",
        dest="ranking",
        action="store_const",
        const="global",
        help="rank channels across groups (arms; the integration's default)",
    )
    rank.add_argument(
        "--group-ranking",
        dest="ranking",
        action="store_const",
        const="group",
        help="prune each group by the same ratio (arms)",
    )
    p.add_argument(
        "--cost-weight",
        type=float,
        help="rank by importance x FLOPs per channel ** W (arms; default: the integration's)",
    )
    p.add_argument("--distill", type=float, default=0.0, help="distillation weight, head outputs (arms)")
    p.add_argument("--distill-feat", type=float, default=0.0, help="SP distillation weight, neck (arms)")
    p.add_argument("--teacher", help="the teacher's checkpoint (arms; default: the baseline)")
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--ignore", nargs="*", default=[], help="module globs whose channels stay (arms)")
    greg = {m: {"update_every": 1, "delta": 0.05, "stabilize": 8} for m in ("greg1", "tpp")}
    p.add_argument("--constants", default=json.dumps(greg), help="JSON: method -> schedule constants")
    p.add_argument("--train", default="{}", help="JSON: more ultralytics train arguments")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    _offline()
    results = {"neck": neck, "methods": methods, "baseline": baseline, "arms": arms}[args.what](args)
    results["command"] = "python bench/yolo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = json.dumps(results, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
