#!/usr/bin/env python
"""Where pruned INT8 models spend their time on onnxruntime (diagnostics behind bench/quantize.py's targets).

* ``stages``: ResNet-50 dense and pruned (``--target-flops``, ``--round-to``; ``--by-latency``: planned by
  ``fxprune.deploy.FlopsLatencyPlanner`` on onnxruntime's INT8 layer table), both quantized to QDQ ONNX by
  ``fxprune.deploy.quantize``; onnxruntime's per-node profile, convolution time and MACs summed per top-level
  stage (``conv1``, ``layer1`` ... ``layer4``), and the throughput of each stage in GMAC/s.
* ``yolo-ops``: YOLOv8n dense and pruned (FLOPs target with 32- and 16-channel steps, ratio 0.5 with 64),
  in ultralytics' export form (``fxprune.integrations.ultralytics.deployment_form``: the decoded
  predictions only, as deployed and as ``bench/quantize.py`` times them), INT8 on ``--backend`` (OpenVINO
  IR or QDQ ONNX), profiled per node with alternating calls: time outside
  the INT8 convolutions by op type, and the slowest such nodes of each pruned model (with their output
  layouts and shapes on OpenVINO).
* ``ort-static``: YOLOv8n dense and pruned, fp32 ONNX, NNCF QDQ (``fxprune.deploy.quantize``) and
  onnxruntime's own ``quantize_static`` QDQ (a quantizer after every convolution), six files timed in one
  interleaved run, and the fused op types onnxruntime runs for each INT8 file.

    python bench/quantize_profile.py --part stages
    python bench/quantize_profile.py --part ort-static
    python bench/quantize_profile.py --part yolo-ops --backend openvino --runs 5

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

import numpy as np
import onnx
import onnxruntime as ort
import torch
from fxprune.deploy import FlopsLatencyPlanner, measure_latency, quantize, speedup
from fxprune.integrations.ultralytics import deployment_form

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
    """ms per call of every node (after onnxruntime's fusions) of each file, from its profiler: the median
    over the calls (a call preempted by other load does not move it); the files' calls alternate so that
    all of them see the same machine load."""
    sessions = [session(path, f"{prefix}{i}") for i, path in enumerate(paths)]
    feeds = [{s.get_inputs()[0].name: x.numpy()} for s in sessions]
    for _ in range(runs):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    out = []
    for sess in sessions:
        calls: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for e in json.loads(Path(sess.end_profiling()).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                key = (e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))
                calls[key].append(e["dur"] / 1e3)
        out.append({key: float(np.median(durations)) for key, durations in calls.items()})
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
    if args.by_latency:  # the FLOPs target met where onnxruntime's INT8 layer table says latency falls most
        planner = FlopsLatencyPlanner(args.target_flops, "ort", "int8", args.round_to)
        fxprune.prune(pruned, x, planner=planner, round_to=args.round_to)
        log(f"FlopsLatencyPlanner: {planner.result.ranking} ranking, estimates {planner.result.candidates}")
    else:
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


def ov_node_profiles(paths: dict[str, Path], x: torch.Tensor, runs: int) -> dict[str, dict[str, dict]]:
    """OpenVINO INT8 IRs, calls alternating between files: per executed node, its type, kernel, ms per call,
    output layout and shape (from the compiled runtime model)."""
    import openvino as ov

    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": "1",
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": "YES",
    }
    core = ov.Core()
    compiled = {k: core.compile_model(str(p), "CPU", config) for k, p in paths.items()}
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    out: dict[str, dict[str, dict]] = {k: {} for k in paths}
    for i in range(2 + runs):
        for k, request in requests.items():
            request.infer({0: x.numpy()})
            if i < 2:
                continue
            for info in request.get_profiling_info():
                if info.status != info.Status.EXECUTED:
                    continue
                node = out[k].setdefault(
                    info.node_name, {"type": info.node_type, "exec": info.exec_type, "ms": 0.0}
                )
                node["ms"] += info.real_time.total_seconds() * 1000 / runs
    for k, c in compiled.items():
        for op in c.get_runtime_model().get_ordered_ops():
            node = out[k].get(op.get_friendly_name())
            if node is not None:
                rt = op.get_rt_info()
                node["layout"] = str(rt["outputLayouts"]) if "outputLayouts" in rt else "?"
                node["shape"] = str(op.get_output_partial_shape(0)) if op.get_output_size() else ""
    return out


def _is_int8_conv(node: dict) -> bool:
    return node["type"] == "QLinearConv" or (node["type"] == "Convolution" and "I8" in node["exec"])


def ort_node_profiles(paths: dict[str, Path], x: torch.Tensor, runs: int, prefix: str) -> dict[str, dict]:
    """onnxruntime: per node (after its fusions), type and ms per call; calls alternate between files."""
    times = node_times(list(paths.values()), x, runs, prefix)
    return {
        k: {name: {"type": op, "exec": "", "ms": ms} for (name, op), ms in t.items()}
        for k, t in zip(paths, times)
    }


def part_yolo_ops(args, tmp: Path) -> None:
    """YOLOv8n INT8 (``--backend``): where the time outside the INT8 convolutions goes, dense vs pruned."""
    torch.manual_seed(0)
    dense, _ = load_model("yolov8n.yaml")
    dense.eval()
    x = torch.randn(1, 3, 640, 640)
    models = {"dense": dense}
    for label, kw in (("flops rt32", {"target_flops": 0.5, "round_to": 32}),
                      ("flops rt16", {"target_flops": 0.5, "round_to": 16}),
                      ("ratio0.5 rt64", {"ratio": 0.5, "round_to": 64})):  # fmt: skip
        models[label] = copy.deepcopy(dense)
        fxprune.prune(models[label], x, **kw)
        models[label].eval()
        log(f"{label}: FLOPs {count_flops(dense, x) / count_flops(models[label], x):.2f}x")
    models = {k: deployment_form(m) for k, m in models.items()}  # the graph that is deployed and timed
    calib = [torch.randn(1, 3, 640, 640) for _ in range(args.calib_samples)]
    fmt, suffix = ("openvino", "xml") if args.backend == "openvino" else ("onnx", "onnx")
    paths = {
        k: quantize(m, x, calib, fmt, tmp / f"y-{k.replace(' ', '_')}.{suffix}", subset_size=len(calib)).path
        for k, m in models.items()
    }
    if args.backend == "openvino":
        profiles = ov_node_profiles(paths, x, args.runs)
    else:
        profiles = ort_node_profiles(paths, x, args.runs, str(tmp / "prof"))
    summary = {}
    for k, nodes in profiles.items():
        conv = sum(n["ms"] for n in nodes.values() if _is_int8_conv(n))
        other = sum(n["ms"] for n in nodes.values()) - conv
        by_type = collections.Counter()
        for n in nodes.values():
            if not _is_int8_conv(n):
                by_type[f"{n['type']}/{n['exec'].rsplit('_', 1)[-1]}"] += n["ms"]
        reorders = [n for n in nodes.values() if n["type"] == "Reorder"]
        summary[k] = {"conv": conv, "other": other, "by_type": by_type}
        log(
            f"{k}: INT8 conv {conv:.1f} ms, other {other:.1f} ms; {len(reorders)} Reorders "
            f"{sum(n['ms'] for n in reorders):.1f} ms; other by type: "
            + ", ".join(f"{t} {v:.1f}" for t, v in by_type.most_common(10))
        )
    for k in list(profiles)[1:]:
        growth = collections.Counter()
        for t in set(summary[k]["by_type"]) | set(summary["dense"]["by_type"]):
            growth[t] = summary[k]["by_type"][t] - summary["dense"]["by_type"][t]
        log(
            f"{k} - dense, other ops by type: " + ", ".join(f"{t} {v:+.1f}" for t, v in growth.most_common(6))
        )
        top = sorted(
            (n for n in profiles[k].values() if not _is_int8_conv(n)),
            key=lambda n: -n["ms"],
        )[:12]
        for name, n in ((nm, n) for nm, n in profiles[k].items() if any(n is t for t in top)):
            d = profiles["dense"].get(name)
            log(
                f"   {name[:60]:60s} {n['type']}/{n['exec']} {n['ms']:.2f} ms (dense "
                f"{d['ms'] if d else float('nan'):.2f}) {n.get('layout', '?')} {n.get('shape', '')}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("stages", "ort-static", "yolo-ops"), required=True)
    p.add_argument("--backend", choices=("openvino", "ort"), default="openvino", help="yolo-ops: runtime")
    p.add_argument("--round-to", type=int, default=None, help="default: 64 for stages, 32 for ort-static")
    p.add_argument("--target-flops", type=float, default=0.25, help="stages: FLOPs kept")
    p.add_argument(
        "--by-latency",
        action="store_true",
        help="stages: meet the FLOPs target with fxprune.deploy.FlopsLatencyPlanner (onnxruntime INT8 table)",
    )
    p.add_argument("--calib-samples", type=int, default=4, help="random calibration inputs")
    p.add_argument("--runs", type=int, default=8, help="stages: profiled calls per file")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=20.0, help="ort-static: timing seconds")
    args = p.parse_args()
    args.round_to = args.round_to or (64 if args.part == "stages" else 32)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        parts = {"stages": part_stages, "ort-static": part_ort_static, "yolo-ops": part_yolo_ops}
        parts[args.part](args, Path(tmp))


if __name__ == "__main__":
    main()
