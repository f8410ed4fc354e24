"""``fxprune bench``: latency of a model (and its pruned version) on deployment runtimes."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from fxprune.deploy.sweep import DEFAULT_RATIOS

from .args import add_model_args, backend_list, fraction, positive_int, ratio_list
from .common import Steps, analyze_model, load_input
from .deploy_steps import print_sweep_table
from .export import calibration_normalize

_BENCH_EPILOG = """\
MODEL is a model SPEC (as for prune), an ONNX file or an OpenVINO IR (.xml, openvino backend only).
With a SPEC, --ratio or --target-flops prunes a copy (aligned to the first backend's default round_to
unless --round-to is given), or --pruned loads a model saved by 'fxprune prune --out'; dense and pruned
are then timed interleaved on every backend and their latency ratio is reported. --sweep times dense
against pruning ratios 0.05..0.9 in one run.

backends: ort (onnxruntime CPU), openvino (OpenVINO CPU), trt (TensorRT Python API), trtexec,
ort-cuda (onnxruntime-gpu), torch (eager), torch-compile

examples:
  fxprune bench torchvision:resnet50 --backend ort,openvino --target-flops 0.25
  fxprune bench yolov8n.yaml --ratio 0.3 --sweep --report bench-report/
  fxprune bench model.onnx --backend ort --threads 2
  fxprune bench torchvision:resnet50 --backend openvino,ort --target-flops 0.25 --precision int8
  fxprune bench resnet50.onnx --pruned resnet50-slim.onnx --backend trt --precision fp16"""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    p = sub.add_parser(
        "bench",
        help="measure latency on onnxruntime, OpenVINO, TensorRT or torch, dense against pruned",
        description="Time a model (and a pruned version) on deployment backends, interleaved.",
        epilog=_BENCH_EPILOG,
        formatter_class=fmt,
    )
    add_model_args(p)
    p.add_argument(
        "--backend", type=backend_list, default=["ort"], help="comma-separated backends (default ort)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="default fp32; int8 quantizes every model (and --sweep ratio) with NNCF first",
    )
    p.add_argument(
        "--calib",
        metavar="DATA",
        help="INT8 calibration data: images folder, .npz or dataset yaml (default: the example input only, "
        "enough for timing, not for accuracy)",
    )
    p.add_argument(
        "--threads", metavar="N", type=positive_int, default=1, help="CPU runtime threads (default 1)"
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=fraction(False), help="prune a copy by this fraction of every group")
    amount.add_argument(
        "--target-flops", metavar="FRACTION", type=fraction(True), help="prune a copy to these FLOPs"
    )
    amount.add_argument(
        "--pruned", metavar="PATH", help="pruned model (fxprune.save file, or ONNX with an ONNX MODEL)"
    )
    p.add_argument(
        "--round-to", metavar="N", type=positive_int, help="channel alignment (default: the backend's)"
    )
    p.add_argument(
        "--sweep",
        metavar="RATIOS",
        nargs="?",
        const=",".join(map(str, DEFAULT_RATIOS)),
        type=ratio_list,
        help="also time dense against these pruning ratios (default 0.05,0.1,...,0.9)",
    )
    p.add_argument("--export", metavar="DIR", help="write dense/pruned ONNX files to DIR, with parity checks")
    p.add_argument(
        "--repeats", metavar="N", type=positive_int, default=5, help="interleaved rounds (default 5)"
    )
    p.add_argument("--seconds", type=float, default=4.0, help="timing budget per backend (default 4 s)")
    p.add_argument("--report", metavar="DIR", help="write DIR/report.md with PNG plots")


def _onnx_shape(path: str) -> tuple[int, ...]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"{path} has a dynamic input shape; give one with --input, e.g. 1,3,224,224")
    return tuple(dims)


def _sources(args: argparse.Namespace, steps: Steps) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
    """Models to time (name -> module or ONNX path), the example input and what pruning did."""
    info: dict[str, Any] = {}
    if args.spec.lower().endswith((".onnx", ".xml")):
        if args.ratio is not None or args.target_flops is not None or args.sweep:
            raise ValueError("--ratio, --target-flops and --sweep need a model SPEC, not a model file")
        from fxprune.deploy.artifacts import ir_input_shape

        ir = args.spec.lower().endswith(".xml")
        shape = args.input or (ir_input_shape(args.spec) if ir else _onnx_shape(args.spec))
        sources: dict[str, Any] = {"dense": Path(args.spec)}
        if args.pruned:
            sources["pruned"] = Path(args.pruned)
        return sources, torch.randn(*shape), info
    model, x = load_input(args, steps)
    sources = {"dense": model}
    if args.pruned:
        from ..io import load

        sources["pruned"] = load(args.spec, args.pruned).eval()
    elif args.ratio is not None or args.target_flops is not None:
        from fxprune.deploy.alignment import default_round_to

        from ..prune import apply_plan
        from ..targets import plan_for_target

        round_to = args.round_to or default_round_to(args.backend[0], args.precision)
        pruned = copy.deepcopy(model)
        analysis = analyze_model(pruned, x, args, steps)
        with steps("pruning a copy") as s:
            if args.target_flops is not None:
                plan = plan_for_target(analysis, x, args.target_flops, "flops", round_to=round_to)
            else:
                plan = analysis.plan(args.ratio, round_to=round_to)
            report = apply_plan(analysis, plan, x)
            s["detail"] = f"round_to {round_to}, FLOPs {report.flops_ratio:.2f}x smaller, verified"
        info.update(report=report, round_to=round_to)
        sources["pruned"] = pruned
    return sources, x, info


def _all_files(sources: dict[str, Any]) -> bool:
    return all(isinstance(src, Path) for src in sources.values())


def _latency_table(results: dict, console: Console) -> None:
    from fxprune.deploy.report import measurement_rows

    rows = measurement_rows(results)
    table = Table(title="latency (median of interleaved runs)")
    for col in ("backend", "model", "median ms", "p90 ms", "items/s", "speed-up"):
        table.add_column(col, justify="left" if col in ("backend", "model") else "right")
    for r in rows:
        table.add_row(
            *(escape(str(r[c])) for c in ("backend", "model", "median ms", "p90 ms", "items/s", "speed-up"))
        )
    console.print(table)
    for backend, by_name in results.items():
        console.print(escape(f"{backend}: {next(iter(by_name.values())).conditions()}"), style="dim")


def _calibration(args: argparse.Namespace, x: torch.Tensor, console: Console) -> list | None:
    """INT8 calibration batches: up to 300 from ``--calib``, else the example input (said so)."""
    if args.precision != "int8":
        return None
    if args.calib:
        from fxprune.deploy import load_calibration

        norm = calibration_normalize(args)
        return list(load_calibration(args.calib, tuple(x.shape), normalize=norm, limit=300))
    console.print(
        "no --calib: INT8 models are calibrated on the example input only (valid for timing, not for "
        "accuracy)",
        style="yellow",
    )
    return [x]


def run(args: argparse.Namespace, console: Console) -> int:
    from fxprune.deploy import export_onnx, get_backend, measure_latency
    from fxprune.deploy.backends import Settings

    steps = Steps(console)
    torch.manual_seed(0)
    for name in args.backend:  # fail before any long work
        backend = get_backend(name)
        backend.validate(Settings(args.precision, args.threads))
        backend.check()
    sources, x, info = _sources(args, steps)
    exports = []
    if args.export:
        for name, src in sources.items():
            if isinstance(src, nn.Module):
                with steps(f"exporting {name} to ONNX") as s:
                    res = export_onnx(src, x, Path(args.export) / f"{name}.onnx")
                    s["detail"] = f"{res.path}, checker ok, max abs error {res.max_abs_error:.2g}"
                    exports.append({"model": name, **res.as_dict()})
    calibration = _calibration(args, x, console)
    results = {}
    for backend in args.backend:
        int8 = " (quantized to INT8 first)" if calibration is not None and not _all_files(sources) else ""
        with steps(f"timing on {backend}{int8}") as s:
            results[backend] = measure_latency(
                sources,
                x,
                get_backend(backend),
                precision=args.precision,
                calibration=calibration,
                threads=args.threads,
                repeats=args.repeats,
                budget_s=args.seconds,
            )
            s["detail"] = ", ".join(f"{n} {m.median_ms:.3g} ms" for n, m in results[backend].items())
    console.print()
    _latency_table(results, console)
    points = None
    if args.sweep:
        from fxprune.deploy.sweep import latency_sweep, slower_points

        with steps(f"ratio sweep on {args.backend[0]}") as s:
            points, _ = latency_sweep(
                sources["dense"],
                x,
                tuple(args.sweep),
                args.backend[0],
                round_to=args.round_to,
                precision=args.precision,
                calibration=calibration,
                threads=args.threads,
                repeats=args.repeats,
                budget_s=2 * args.seconds,
            )
            slow = slower_points(points)
            s["detail"] = (
                f"round_to {points[0].round_to}; slower than dense at: {[p.ratio for p in slow] or 'none'}"
            )
        print_sweep_table(points, console)
    if args.report:
        path = _write_report(args, results, exports, points, info)
        console.print(escape(f"report written to {path}"))
    return 0


def _write_report(args, results, exports, points, info) -> Path:
    from fxprune.deploy.report import measurement_rows, plot_sweep, sweep_rows

    from ..report import plot_group_widths, write_markdown_report

    folder = Path(args.report)
    settings = [
        {"setting": "model", "value": args.spec},
        {"setting": "input", "value": "x".join(map(str, args.input)) if args.input else "default"},
        {"setting": "backends", "value": ", ".join(args.backend)},
        {"setting": "precision", "value": args.precision},
        {"setting": "threads", "value": args.threads},
    ]
    sections = [("Settings", settings), ("Latency, dense and pruned", measurement_rows(results))]
    images = []
    report = info.get("report")
    if report is not None:
        sections.append(
            (
                "Size",
                [
                    {"metric": "parameters", "dense": report.params_before, "pruned": report.params_after},
                    {"metric": "FLOPs", "dense": report.flops_before, "pruned": report.flops_after},
                ],
            )
        )
        widths = [w for w in report.widths if w[3] < w[2]]
        sections.append(
            ("Group widths", [{"group": g, "module": m, "before": b, "after": a} for g, m, b, a in widths])
        )
        images.append(
            plot_group_widths(
                [w[2] for w in widths],
                [w[3] for w in widths],
                [f"{w[0]} {w[1]}" for w in widths],
                folder / "group_widths.png",
            )
        )
    if exports:
        sections.append(("ONNX export", exports))
    if points:
        sections.append((f"Latency against pruning ratio ({args.backend[0]})", sweep_rows(points)))
        images.append(
            plot_sweep(points, folder / "latency_sweep.png", title=f"{args.spec} on {args.backend[0]}")
        )
    return write_markdown_report(folder / "report.md", f"fxprune bench: {args.spec}", sections, images)
