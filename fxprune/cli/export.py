"""``fxprune export``: a model (and its pruned version) as ONNX, fp16 ONNX, QDQ INT8 ONNX, OpenVINO IR (fp32
and INT8) and TensorRT engines, with a parity table against torch and a latency table on local runtimes."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from .args import add_model_args, positive_int
from .common import Steps, load_input

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8", "engine")
RUNTIME_OF = {
    "onnx": "ort",
    "onnx-fp16": "ort",
    "onnx-int8": "ort",
    "openvino": "openvino",
    "openvino-int8": "openvino",
}

_EPILOG = """\
formats: onnx (fp32), onnx-fp16, onnx-int8 (QDQ, NNCF), openvino (fp32 IR), openvino-int8 (NNCF IR),
engine (TensorRT: fp16, plus int8 from the QDQ ONNX when onnx-int8 is asked; needs TensorRT and a GPU)

--calib (INT8 formats): a folder of images, an .npz (x_train/x/images array) or an ultralytics dataset yaml
(its val split). Images are letterboxed to the input size and scaled to [0, 1]; --calib-normalize imagenet
standardises them (auto: imagenet for built-in and torchvision models, none for ultralytics models).

examples:
  fxprune export cifar_resnet56 --weights resnet56.th --pruned slim.pt \\
      --formats onnx,onnx-int8,openvino-int8 --calib cifar10.npz --out export/
  fxprune export yolov8n.yaml --pruned yolo-slim.pt --formats openvino,openvino-int8 --calib coco128.yaml"""


def format_list(text: str) -> list[str]:
    """``onnx,openvino-int8`` -> a list of known export formats."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(bad) or text!r}; known: {', '.join(FORMATS)}"
        )
    return names


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    p = sub.add_parser(
        "export",
        help="write ONNX / fp16 / INT8 / OpenVINO / TensorRT files with parity and latency tables",
        description="Export a model (and its pruned version) to deployment formats, check every file against "
        "torch and time the files on the local runtimes, dense and pruned interleaved.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    add_model_args(p)
    p.add_argument("--pruned", metavar="PATH", help="pruned model saved by 'fxprune prune --out'")
    p.add_argument("--formats", type=format_list, default=["onnx"], help="comma-separated (default onnx)")
    p.add_argument("--calib", metavar="DATA", help="calibration data for the INT8 formats")
    p.add_argument(
        "--calib-size", metavar="N", type=positive_int, default=300, help="calibration inputs (default 300)"
    )
    p.add_argument("--calib-normalize", choices=("auto", "none", "imagenet"), default="auto")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the files and export.json")
    p.add_argument("--threads", metavar="N", type=positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--seconds", type=float, default=4.0, help="timing budget per runtime (default 4 s)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency table")


def calibration_normalize(args: argparse.Namespace) -> str | None:
    """The --calib-normalize choice (auto: imagenet except for ultralytics models)."""
    chosen = getattr(args, "calib_normalize", "auto")
    if chosen != "auto":
        return None if chosen == "none" else chosen
    return None if args.spec.lower().endswith((".yaml", ".yml", ".pt")) else "imagenet"


def _calibration(
    args: argparse.Namespace, shape: tuple[int, ...]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Calibration inputs (``--calib-size``) and a held-out set after them (the calibration set if none)."""
    from fxprune.deploy import load_calibration

    if args.calib is None:
        raise ValueError(
            "the INT8 formats need calibration data: pass --calib DATA (images folder, .npz, yaml)"
        )
    data = list(
        load_calibration(args.calib, shape, normalize=calibration_normalize(args), limit=args.calib_size + 64)
    )
    calib, held = data[: args.calib_size], data[args.calib_size :]
    if len(calib) < args.calib_size:
        raise ValueError(f"{args.calib} holds {len(calib)} inputs, fewer than --calib-size {args.calib_size}")
    return calib, held or calib[:64]


def _agreement(ref: np.ndarray, got: np.ndarray, detection: bool) -> float:
    """Top-1 agreement: per row for (N, C) logits; per confident anchor for (N, 4 + classes, anchors).

    A row agrees when the file's score at torch's top class is its own top score (exact ties count)."""
    if ref.ndim > 2 and detection:
        ref, got = ref[:, 4:], got[:, 4:]
    top = np.take_along_axis(got, ref.argmax(1)[:, None], 1)[:, 0]
    agree = top >= got.max(1)
    keep = ref.max(1) > 0.25 if detection and ref.ndim > 2 else np.ones(agree.shape, bool)
    return float(agree[keep].mean() if keep.any() else agree.mean())


def _parity(path: Path, model: nn.Module, inputs: list[torch.Tensor], threads: int, detection: bool) -> dict:
    from fxprune.deploy.artifacts import artifact_runner
    from fxprune.verify.compare import flatten_outputs

    half = path.name.endswith("-fp16.onnx")
    run = artifact_runner(path, threads)
    worst = rel = 0.0
    agree = []
    with torch.inference_mode():
        for x in inputs:
            ref = flatten_outputs(model(x))[0][1].float().numpy()
            got = np.asarray(run([(x.half() if half else x).numpy()])[0], dtype=np.float32)
            err = float(np.abs(ref - got).max())
            worst, rel = max(worst, err), max(rel, err / (float(np.abs(ref).max()) + 1e-12))
            agree.append(_agreement(ref, got, detection))
    return {"max abs error": worst, "max rel error": rel, "top-1 agreement": float(np.mean(agree))}


def _deployed(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """ultralytics models as their exporter writes them (decoded predictions only); others unchanged."""
    try:
        from fxprune.integrations.ultralytics import deployment_form, is_ultralytics_model
    except ImportError:  # no ultralytics: no ultralytics model either
        return models
    return {k: deployment_form(m) if is_ultralytics_model(m) else m for k, m in models.items()}


def _export_one(fmt: str, name: str, model: nn.Module, x: torch.Tensor, out: Path, calib, done: dict) -> Path:
    from fxprune.deploy import export_onnx, quantize

    if fmt == "onnx":
        return export_onnx(model, x, out / f"{name}.onnx", parity=False).path
    if fmt == "onnx-fp16":
        return export_onnx(
            copy.deepcopy(model).half(), x.half(), out / f"{name}-fp16.onnx", parity=False
        ).path
    if fmt in ("onnx-int8", "openvino-int8"):
        backend, suffix = ("onnx", "onnx") if fmt == "onnx-int8" else ("openvino", "xml")
        return quantize(model, x, calib, backend, out / f"{name}-int8.{suffix}", subset_size=len(calib)).path
    if fmt == "openvino":
        import openvino as ov

        source = done.get("onnx") or export_onnx(model, x, out / f"{name}.onnx", parity=False).path
        ov.save_model(ov.convert_model(str(source)), str(out / f"{name}.xml"), compress_to_fp16=False)
        return out / f"{name}.xml"
    return _engine(name, model, x, out, done)


def _engine(name: str, model: nn.Module, x: torch.Tensor, out: Path, done: dict) -> Path:
    from fxprune.deploy import export_onnx, get_backend
    from fxprune.deploy.backends.tensorrt import build_engine

    backend = get_backend("trt")
    half = backend.export_dtype("fp16") == torch.float16
    source = export_onnx(
        copy.deepcopy(model).half() if half else model,
        x.half() if half else x,
        out / f"{name}-trt.onnx",
        parity=False,
    ).path
    engine, _ = build_engine(source, "fp16", input_shapes=[tuple(x.shape)])
    (out / f"{name}-fp16.engine").write_bytes(bytes(engine))
    if "onnx-int8" in done:
        engine, _ = build_engine(done["onnx-int8"], "int8", input_shapes=[tuple(x.shape)])
        (out / f"{name}-int8.engine").write_bytes(bytes(engine))
    return out / f"{name}-fp16.engine"


def _latency(files: dict[str, dict[str, Path]], x: torch.Tensor, args, steps: Steps) -> list[dict]:
    from fxprune.deploy import get_backend, measure_latency, speedup

    rows = []
    for runtime in ("ort", "openvino"):
        sources = {
            f"{name}|{fmt}": by_fmt[fmt]
            for fmt in FORMATS
            if RUNTIME_OF.get(fmt) == runtime
            for name, by_fmt in files.items()
            if fmt in by_fmt
        }
        if not sources:
            continue
        with steps(f"timing on {runtime}, dense and pruned interleaved"):
            res = measure_latency(
                sources, x, get_backend(runtime), threads=args.threads, budget_s=args.seconds
            )
        for key, m in res.items():
            name, fmt = key.split("|")
            dense = res.get(f"dense|{fmt}")
            fp32 = res.get(f"{name}|{'onnx' if runtime == 'ort' else 'openvino'}")
            rows.append(
                {
                    "runtime": runtime,
                    "format": fmt,
                    "model": name,
                    "median ms": round(m.median_ms, 3),
                    "vs dense": "" if dense is None or dense is m else f"{speedup(dense, m):.2f}x",
                    "vs fp32": "" if fp32 is None or fp32 is m else f"{speedup(fp32, m):.2f}x",
                    "conditions": m.conditions(),
                }
            )
    return rows


def _table(title: str, rows: list[dict], console: Console, skip: tuple[str, ...] = ()) -> None:
    table = Table(title=title)
    cols = [c for c in rows[0] if c not in skip]
    for c in cols:
        table.add_column(c, justify="left" if c in ("format", "model", "runtime", "file") else "right")
    for r in rows:
        table.add_row(*(escape(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in cols))
    console.print(table)


def run(args: argparse.Namespace, console: Console) -> int:
    from fxprune.deploy import get_backend
    from fxprune.deploy.quantize import detection_head_names

    if "engine" in args.formats:
        get_backend("trt").check()  # fail before any long work
    steps = Steps(console)
    torch.manual_seed(0)
    dense, x = load_input(args, steps)
    models = {"dense": dense.eval()}
    if args.pruned:
        from ..io import load

        models["pruned"] = load(args.spec, args.pruned).eval()
    models = _deployed(models)
    int8 = [f for f in args.formats if f.endswith("int8")]
    calib, held = _calibration(args, tuple(x.shape)) if int8 else ([], [])
    parity_inputs = held[:16] if int8 else [x]
    detection = bool(detection_head_names(dense))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Path]] = {}
    artifacts = []
    order = sorted(args.formats, key=FORMATS.index)
    for name, model in models.items():
        files[name] = {}
        for fmt in order:
            with steps(f"{name}: {fmt}") as s:
                path = _export_one(fmt, name, model, x, out, calib, files[name])
                files[name][fmt] = path
                row: dict[str, Any] = {"model": name, "format": fmt, "file": path.name}
                parts = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
                row["MB"] = round(sum(f.stat().st_size for f in parts) / 1e6, 2)
                if fmt in RUNTIME_OF:
                    row.update(_parity(path, model, parity_inputs, args.threads, detection))
                    s["detail"] = f"{path.name}, max abs error {row['max abs error']:.3g}"
                artifacts.append(row)
    console.print()
    _table(f"files in {out} (parity against torch on {len(parity_inputs)} input(s))", artifacts, console)
    latency = [] if args.no_latency else _latency(files, x, args, steps)
    if latency:
        _table("latency (median of interleaved runs)", latency, console, skip=("conditions",))
        console.print(escape(latency[0]["conditions"]), style="dim")
    report = {"spec": args.spec, "input": list(x.shape), "artifacts": artifacts, "latency": latency}
    (out / "export.json").write_text(json.dumps(report, indent=1))
    console.print(escape(f"written: {out / 'export.json'}"))
    return 0
