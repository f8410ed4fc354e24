"""``fxprune yolo``: prune and fine-tune an ultralytics model inside ultralytics' own training run."""

from __future__ import annotations

import argparse
import copy
import difflib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PRUNING_KEYS = (
    "method",
    "ratio",
    "target_flops",
    "target_params",
    "target_latency",
    "backend",
    "ratios",
    "ignore",
    "round_to",
    "min_width",
    "global_ranking",
    "cost_weight",
    "scope",
    "distill",
    "distill_feat",
    "teacher",
)
LATENCY_BACKENDS = ("ort", "openvino")

_EPILOG = """\
KEY=VALUE arguments, in ultralytics' style:
  pruning        method=l1|l2|taylor|bn_scale|greg1|greg2|tpp|...  (fxprune methods lists them)
                 ratio=R | target_flops=F | target_params=P | target_latency=0.5x|12ms [backend=ort]
                 ratios=PATTERN:R,PATTERN:R  ignore=PATTERN,PATTERN  round_to=N  min_width=N (32)
                 scope=group|restricted  global_ranking=False (default: ranked across groups)
                 cost_weight=W (targets: rank by importance x FLOPs per channel ** W; 0.25, 0: importance)
  distillation   distill=W (head outputs of the dense model)  distill_feat=W (neck, similarity-preserving)
                 teacher=PATH (default: MODEL itself)
  constants      the method's schedule constants, e.g. delta=1e-4 update_every=10 stabilize=10000
  ultralytics    data=... epochs=... imgsz=... batch=... device=... project=... name=... and any
                 other train argument (yolo cfg lists them)
  report         report=DIR (or --report DIR): summary.md, summary.json and a widths plot

The run folder is where ultralytics would write it; the weights are YOLO-loadable checkpoints of the
slim model (val, predict, export work on them). The table at the end compares dense and pruned models:
parameters, FLOPs, mAP50-95 (and mask/pose mAP), onnxruntime and OpenVINO CPU latency timed interleaved.

examples:
  fxprune yolo yolov8n.pt data=coco128.yaml method=l1 target_flops=0.5 epochs=30 imgsz=640
  fxprune yolo yolov8n.yaml data=coco128.yaml method=greg1 ratio=0.5 update_every=5 epochs=50
  fxprune yolo last.pt resume=True                          continue an interrupted run"""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    p = sub.add_parser(
        "yolo",
        help="prune and fine-tune an ultralytics YOLO model inside its own training pipeline",
        description="Prune an ultralytics model during ultralytics training (the neck included), fine-tune "
        "it, and compare it with the dense model.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("model", metavar="MODEL", help="an ultralytics .pt checkpoint or model .yaml")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="pruning, method and train arguments")
    p.add_argument("--report", metavar="DIR", help="write summary.md/json and plots to DIR")


def split_settings(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str | None]:
    """``key=value`` strings -> (pruning fields, method constants, ultralytics train args, report dir)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, smart_value

    from fxprune.regularize import Pruner, method_names

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        values[key] = text if key in ("ignore", "ratios", "target_latency") else smart_value(text)
    method = str(values.get("method", "l1"))
    if method not in method_names():
        raise ValueError(f"unknown pruning method {method!r}; known: {', '.join(method_names())}")
    constants = set(Pruner.options_of(method))
    train_keys = set(DEFAULT_CFG_DICT) - {"mode", "model", "task"}
    pruning, method_options, train = {}, {}, {}
    for key, value in values.items():
        if key in PRUNING_KEYS:
            pruning[key] = _pruning_value(key, value)
        elif key in constants:
            method_options[key] = value
        elif key in train_keys:
            train[key] = value
        elif key != "report":
            raise ValueError(_unknown_key(key, method, constants, train_keys))
    return pruning, method_options, train, values.get("report")


def _pruning_value(key: str, value: Any) -> Any:
    if key == "ignore":
        return [p for p in str(value).split(",") if p]
    if key == "ratios":
        out = {}
        for item in str(value).split(","):
            pattern, sep, ratio = item.rpartition(":")
            if not sep or not pattern:
                raise ValueError(f"ratios: expected PATTERN:RATIO items like model.9*:0.3, got {item!r}")
            out[pattern] = float(ratio)
        return out
    return value


def _unknown_key(key: str, method: str, constants: set[str], train_keys: set[str]) -> str:
    close = difflib.get_close_matches(key, [*PRUNING_KEYS, *constants, *train_keys, "report"], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown key {key!r}{hint}. Valid keys: pruning {', '.join(PRUNING_KEYS)}, report; "
        f"{method} constants {', '.join(sorted(constants)) or 'none'}; any ultralytics train argument "
        "(yolo cfg lists them)"
    )


def load_yolo(spec: str) -> Any:
    """``YOLO(spec)``, or one ``ValueError`` when ``spec`` is not an ultralytics model."""
    from ultralytics import YOLO

    if not spec.lower().endswith((".pt", ".yaml", ".yml")):
        raise ValueError(f"MODEL must be an ultralytics .pt checkpoint or model .yaml, got {spec!r}")
    if spec.lower().endswith(".pt") and not Path(spec).is_file():
        raise FileNotFoundError(f"{spec} (no pretrained weights are downloaded: pass a local checkpoint)")
    try:
        return YOLO(spec)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{spec} is not an ultralytics model: {first}") from None


def check_dataset(data: Any, task: str) -> dict:
    """The dataset dict ultralytics would build, or one ``ValueError`` saying why it does not load."""
    from ultralytics.data.utils import check_cls_dataset, check_det_dataset

    if not data:
        raise ValueError("data=... is required (a dataset yaml, e.g. data=coco128.yaml)")
    try:
        return check_cls_dataset(data) if task == "classify" else check_det_dataset(data)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"dataset {data} does not load: {first}") from None


def run(args: argparse.Namespace, console: Console) -> int:
    from fxprune.integrations.ultralytics import TRAINERS, PruningOptions, pruning_options

    pruning, method_options, train, report = split_settings(args.settings)
    report = args.report or report
    resume = bool(train.get("resume"))
    options = None if resume else PruningOptions(**pruning, method_options=method_options)
    yolo = load_yolo(args.model)
    if yolo.task not in TRAINERS:
        raise ValueError(f"task {yolo.task!r} has no pruning trainer; supported: {', '.join(TRAINERS)}")
    imgsz = int(train.get("imgsz", 640))
    if not resume:
        check_dataset(train.get("data"), yolo.task)
    dense = copy.deepcopy(yolo.model).float() if not resume else None
    dense_metrics = _val(yolo, train, imgsz) if not resume else {}
    if options is not None:
        console.print(f"pruning {args.model} with {options.method} ({options.size}, {options.alignment})")
        with pruning_options(options):
            yolo.train(trainer=TRAINERS[yolo.task], **train)
    else:
        yolo.train(trainer=TRAINERS[yolo.task], **train)
    best = Path(yolo.trainer.best if Path(yolo.trainer.best).is_file() else yolo.trainer.last)
    console.print(f"pruned weights: {best}")
    if dense is None:
        return 0
    pruned = load_yolo(str(best))
    rows = compare(dense, pruned.model, imgsz, dense_metrics, _val(pruned, train, imgsz))
    console.print(_table(rows, args.model))
    if report:
        write_report(Path(report), rows, pruned.model)
        console.print(f"report: {report}")
    return 0


def _val(yolo: Any, train: dict, imgsz: int) -> dict[str, float]:
    """mAP50-95 figures of a validation run (box, and mask/pose for those tasks)."""
    keep = ("data", "batch", "device", "split", "workers", "half")
    metrics = yolo.val(
        **{k: v for k, v in train.items() if k in keep}, imgsz=imgsz, plots=False, verbose=False
    )
    return {k: float(v) for k, v in metrics.results_dict.items() if "mAP50-95" in k}


def compare(dense: Any, pruned: Any, imgsz: int, dense_map: dict, pruned_map: dict) -> list[tuple]:
    """Rows (what, dense, pruned, ratio text) of the dense-vs-pruned table."""
    import torch

    from fxprune.deploy.runtime_latency import measure_latency, speedup
    from fxprune.integrations.ultralytics import deployment_form
    from fxprune.measure import count_flops, count_params

    x = torch.zeros(1, 3, imgsz, imgsz)
    dense_net, pruned_net = deployment_form(dense), deployment_form(pruned)
    rows: list[tuple] = [
        ("parameters", count_params(dense_net), count_params(pruned_net), ""),
        (f"FLOPs at {imgsz}", count_flops(dense_net, x), count_flops(pruned_net, x), ""),
    ]
    rows = [(w, d, p, f"{d / max(p, 1):.2f}x smaller") for w, d, p, _ in rows]
    for key in dense_map:
        rows.append((key.replace("metrics/", ""), dense_map[key], pruned_map.get(key, float("nan")), ""))
    for backend in LATENCY_BACKENDS:
        try:
            m = measure_latency({"dense": dense_net, "pruned": pruned_net}, x, backend, budget_s=4.0)
        except Exception as e:  # a missing runtime must not lose the trained model
            rows.append((f"latency {backend}", "-", "-", f"not measured: {type(e).__name__}: {e}"))
            continue
        ratio = speedup(m["dense"], m["pruned"])
        rows.append(
            (
                f"latency {backend} CPU (ms)",
                m["dense"].median_ms,
                m["pruned"].median_ms,
                f"{ratio:.2f}x faster",
            )
        )
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v < 10 else f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(rows: list[tuple], title: str) -> Table:
    table = Table(title=f"{title}: dense vs pruned (latency interleaved, batch 1, 1 thread)")
    for col in ("", "dense", "pruned", ""):
        table.add_column(col, justify="left" if not col else "right")
    for what, d, p, note in rows:
        table.add_row(what, _fmt(d), _fmt(p), note)
    return table


def write_report(folder: Path, rows: list[tuple], pruned: Any) -> None:
    """summary.json, summary.md (the table, the pruning summary) and widths.png (needs matplotlib)."""
    from fxprune.integrations.ultralytics import STATE_ATTR

    folder.mkdir(parents=True, exist_ok=True)
    state = getattr(pruned, STATE_ATTR, {}) or {}
    (folder / "summary.json").write_text(json.dumps({"rows": rows, "fxprune": state}, indent=1, default=str))
    lines = ["| | dense | pruned | |", "|---|---:|---:|---|"]
    lines += [f"| {w} | {_fmt(d)} | {_fmt(p)} | {n} |" for w, d, p, n in rows]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    widths = (state.get("summary") or {}).get("widths") or []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(max(6, len(widths) * 0.18), 3.5))
    ax.bar(range(len(widths)), [w[2] for w in widths], color="#ccc", label="dense")
    ax.bar(range(len(widths)), [w[3] for w in widths], color="#1f77b4", label="pruned")
    ax.set_xlabel("channel group")
    ax.set_ylabel("channels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "widths.png", dpi=120)
    plt.close(fig)
