#!/usr/bin/env python
"""Where pruned INT8 models spend their time on onnxruntime (diagnostics behind bench/quantize.py's targets).

* ``stages``: ResNet-50 dense and pruned (``--target-flops``, ``--round-to``), both quantized to QDQ ONNX by
  ``fxprune.deploy.quantize``; onnxruntime's per-node profile, convolution time and MACs summed per top-level
  stage (``conv1``, ``layer1`` ... ``layer4``), and the throughput of each stage in GMAC/s.
* ``ort-static``: YOLOv8n dense and pruned, fp32 ONNX, NNCF QDQ (``fxprune.deploy.quantize``) and
  onnxruntime's own ``quantize_static`` QDQ (a quantizer after every convolution), six files timed in one
  interleaved run, and the fused op types onnxruntime runs for each INT8 file.

    python bench/quantize_profile.py --part stages
    python bench/quantize_profile.py --part ort-static

Batch 1, one thread, random weights and inputs (timing only); ratios within one run are what counts.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from fxprune.deploy import measure_latency, quantize, speedup

import fxprune
from fxprune.measure import count_flops
from fxprune.models.spec import load_model


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def session(path: Path, profile_prefix: str | None = None, optimized: Path | None = None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    if optimized:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def conv_macs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d, by module name."""
    out: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):

            def hook(mod, _, y, name=name):
                out[name] = (
                    y.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                )

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def node_times(
    paths: list[Path], x: torch.Tensor, runs: int, prefix: str
) -> list[dict[tuple[str, str], float]]:
    """ms per call of every node (after onnxruntime's fusions) of each file, from its profiler; the files'
    calls alternate so that all of them see the same machine load."""
    sessions = [session(path, f"{prefix}{i}") for i, path in enumerate(paths)]
    feeds = [{s.get_inputs()[0].name: x.numpy()} for s in sessions]
    for _ in range(runs):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    out = []
    for sess in sessions:
        times: dict[tuple[str, str], float] = collections.defaultdict(float)
        for e in json.loads(Path(sess.end_profiling()).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                key = (e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))
                times[key] += e["dur"] / 1e3 / runs
        out.append(times)
    return out


def module_of(node: str, names: set[str]) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (the exporter's scope path)."""
    parts = node.strip("/").split("/")[:-1]
    if not parts:
        return None
    candidates = [parts[i] + "." + parts[-1] for i in range(len(parts) - 1)] + parts[-1:]
    return next((c for c in candidates if c in names), None)


def part_stages(args, tmp: Path) -> None:
    torch.manual_seed(0)
    dense, _ = load_model("torchvision:resnet50")
    dense.eval()
    x = torch.randn(1, 3, 224, 224)
    pruned = copy.deepcopy(dense)
    fxprune.prune(pruned, x, target_flops=args.target_flops, round_to=args.round_to)
    pruned.eval()
    calib = [torch.randn(1, 3, 224, 224) for _ in range(args.calib_samples)]
    log(f"ResNet-50 round_to {args.round_to}: FLOPs {count_flops(dense, x) / count_flops(pruned, x):.2f}x")
    stages: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
    macs = [conv_macs(m, x) for m in (dense, pruned)]
    paths = [
        quantize(m, x, calib, "onnx", tmp / f"r50-{k}.onnx", subset_size=len(calib)).path
        for k, m in enumerate((dense, pruned))
    ]
    profiles = node_times(paths, x, args.runs, str(tmp / "prof"))
    totals = [sum(p.values()) for p in profiles]
    for k, times in enumerate(profiles):
        for (node, op), ms in times.items():
            name = module_of(node, set(macs[k])) if op == "QLinearConv" else None
            if name is None:
                continue
            row = stages[name.split(".")[0]]
            row[k] += ms
            row[2 + k] += macs[k][name]
    log(f"total {totals[0]:.1f} -> {totals[1]:.1f} ms ({totals[0] / totals[1]:.2f}x)")
    for stage, (td, tp, md, mp) in stages.items():
        log(
            f"{stage:7s} QLinearConv {td:6.1f} -> {tp:6.1f} ms ({td / tp:5.2f}x), MACs {md / 1e6:5.0f} -> "
            f"{mp / 1e6:5.0f} M ({md / mp:5.2f}x), {md / td / 1e6:3.0f} -> {mp / tp / 1e6:3.0f} GMAC/s, "
            f"{100 * tp / totals[1]:4.1f} % of the pruned time"
        )


def part_ort_static(args, tmp: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    dense, _ = load_model("yolov8n.yaml")
    dense.eval()
    x = torch.randn(1, 3, 640, 640)
    pruned = copy.deepcopy(dense)
    fxprune.prune(pruned, x, target_flops=0.5, round_to=args.round_to)
    pruned.eval()
    flops = count_flops(dense, x) / count_flops(pruned, x)
    calib = [torch.randn(1, 3, 640, 640) for _ in range(args.calib_samples)]

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.items = iter([{name: c.numpy()} for c in calib])

        def get_next(self):
            return next(self.items, None)

    files = {}
    for k, m in (("dense", dense), ("pruned", pruned)):
        q = quantize(m, x, calib, "onnx", tmp / f"y-{k}.onnx", subset_size=len(calib))
        files[f"{k} fp32"], files[f"{k} nncf"] = q.source_onnx, q.path
        name = onnx.load(str(q.source_onnx), load_external_data=False).graph.input[0].name
        out = tmp / f"y-{k}-ort.onnx"
        quantize_static(
            str(q.source_onnx),
            str(out),
            Reader(name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        files[f"{k} ort-static"] = out
    for key in ("dense nncf", "dense ort-static"):
        fused = tmp / "fused.onnx"
        session(files[key], optimized=fused)
        ops = collections.Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
        log(f"{key}: onnxruntime runs Conv x{ops['Conv']}, QLinearConv x{ops['QLinearConv']}")
    res = measure_latency(files, x, "ort", threads=1, repeats=args.repeats, budget_s=args.budget_s)
    for k, m in res.items():
        log(f"{k:18s} {m.median_ms:8.1f} ms")
    for v in ("fp32", "nncf", "ort-static"):
        s = speedup(res[f"dense {v}"], res[f"pruned {v}"])
        log(
            f"{v}: pruned/dense {s:.2f}x ({s / flops:.2f} of the FLOPs reduction {flops:.2f}x); dense over "
            f"dense fp32 {speedup(res['dense fp32'], res[f'dense {v}']):.2f}x"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("stages", "ort-static"), required=True)
    p.add_argument("--round-to", type=int, default=None, help="default: 64 for stages, 32 for ort-static")
    p.add_argument("--target-flops", type=float, default=0.25, help="stages: FLOPs kept")
    p.add_argument("--calib-samples", type=int, default=4, help="random calibration inputs")
    p.add_argument("--runs", type=int, default=8, help="stages: profiled calls per file")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=20.0, help="ort-static: timing seconds")
    args = p.parse_args()
    args.round_to = args.round_to or (64 if args.part == "stages" else 32)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        (part_stages if args.part == "stages" else part_ort_static)(args, Path(tmp))


if __name__ == "__main__":
    main()
