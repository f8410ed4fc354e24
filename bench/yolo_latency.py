"""Dense vs pruned YOLO checkpoints on onnxruntime and OpenVINO CPU, at several image sizes and thread counts.

All models of one (image size, threads, backend) cell are timed interleaved in one process (batch 1, the
head in ultralytics' export form: decoded boxes and scores, conv+BN fused as ultralytics' exporter does);
only the ratios to dense mean anything on a shared machine. ``--round-to`` adds one-shot ``l1`` prunes of
the dense checkpoint at ``--target-flops`` with those width multiples (latency only: no fine-tuning).
``--profile NAME`` adds an OpenVINO per-node profile of dense vs NAME (1 thread, largest image size),
summed per top-level block and per node type, next to each block's multiply-accumulates::

    python bench/yolo_latency.py --weights dense=dense.pt l1=l1.pt --imgsz 160 640 --threads 1 2 \\
        --round-to 1 8 16 32 --profile l1 --json bench/RESULTS_yolo_latency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")


def export_form(model: nn.Module) -> nn.Module:
    """A fused fp32 eval copy whose heads return the decoded predictions only (ultralytics' export form)."""
    net = copy.deepcopy(model).float().eval()
    net = net.fuse() if hasattr(net, "fuse") else net
    for m in net.modules():
        if hasattr(m, "export"):
            m.export = True
    return net


def load(path: str) -> nn.Module:
    from ultralytics import YOLO

    return YOLO(path).model  # an ultralytics checkpoint is a pickle: load only files you trust


def one_shot(dense: nn.Module, imgsz: int, target_flops: float, round_to: int) -> nn.Module:
    """``l1`` at ``target_flops`` with widths in multiples of ``round_to`` (the neck pruned)."""
    from fxprune.integrations.ultralytics import yolo_interface

    import fxprune

    model = copy.deepcopy(dense).float().train()  # traced in training mode (see the ultralytics notes)
    for name, param in model.named_parameters():  # as the trainer does; frozen parameters are not pruned
        param.requires_grad_(".dfl" not in name)
    x = torch.zeros(1, 3, imgsz, imgsz)
    fxprune.prune(
        model, x, importance="l1", target_flops=target_flops, round_to=round_to, outputs=yolo_interface
    )
    return model.eval()


def block_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every conv and linear layer, summed per top-level block (``model.N``)."""
    macs: dict[str, int] = defaultdict(int)
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            block = ".".join(name.split(".")[:2])

            def hook(mod, inp, out, block=block):
                k = mod.weight[0].numel()  # in/groups * kh * kw (or in_features)
                macs[block] += int(out.numel() // out.shape[0] * k)

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return dict(macs)


def cell(nets: dict[str, nn.Module], imgsz: int, threads: int, backends: list[str]) -> dict:
    from fxprune.deploy.runtime_latency import measure_latency, speedup

    from fxprune.measure import count_flops

    x = torch.zeros(1, 3, imgsz, imgsz)
    row: dict = {"flops": {k: count_flops(n, x) for k, n in nets.items()}}
    for backend in backends:
        m = measure_latency(nets, x, backend, threads=threads, budget_s=6.0, repeats=5)
        row[backend] = {k: {"median_ms": round(v.median_ms, 3), "speedup": round(speedup(m["dense"], v), 3)}
                        for k, v in m.items()}  # fmt: skip
    return row


def profile(dense: nn.Module, pruned: nn.Module, imgsz: int, runs: int = 40) -> dict:
    """OpenVINO CPU per-node times (1 thread) of dense and pruned, run alternately; per block and node type.

    Each figure is the median over ``runs`` inferences of that block's (or node type's) summed node times.
    """
    import statistics

    import openvino as ov
    from fxprune.deploy.onnx_export import export_onnx

    x = torch.zeros(1, 3, imgsz, imgsz)
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": "1",
        "PERF_COUNT": "YES",
    }
    requests, feeds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in (("dense", dense), ("pruned", pruned)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(net, (x,), path, parity=False)
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
            requests[name] = compiled.create_infer_request()
            feeds[name] = {compiled.inputs[0].get_any_name(): x.numpy()}
    samples = {name: {"block": defaultdict(list), "type": defaultdict(list)} for name in requests}
    for i in range(runs + 5):
        for name, request in requests.items():
            request.infer(feeds[name])
            if i < 5:
                continue  # warm-up
            block, kind = defaultdict(float), defaultdict(float)
            for info in request.get_profiling_info():
                ms = info.real_time.total_seconds() * 1e3
                match = re.search(r"model\.(\d+)", info.node_name)
                block[f"model.{match.group(1)}" if match else "other"] += ms
                kind[info.node_type] += ms
            for key, ms in block.items():
                samples[name]["block"][key].append(ms)
            for key, ms in kind.items():
                samples[name]["type"][key].append(ms)
    out: dict = {}
    for name, net in (("dense", dense), ("pruned", pruned)):
        med = {
            w: {k: round(statistics.median(v), 4) for k, v in samples[name][w].items()} for w in samples[name]
        }
        out[name] = {"macs": block_macs(net, x), "block_ms": med["block"], "type_ms": med["type"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", nargs="+", required=True, metavar="NAME=PT", help="dense=... first")
    p.add_argument("--imgsz", nargs="+", type=int, default=[160, 640])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--backends", nargs="+", default=["ort", "openvino"])
    p.add_argument("--round-to", nargs="*", type=int, default=[])
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--prune-imgsz", type=int, default=160, help="image size of the one-shot prunes")
    p.add_argument("--profile", help="name of the model profiled against dense on OpenVINO")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    models = {}
    for item in args.weights:
        name, _, path = item.partition("=")
        models[name] = load(path)
    if "dense" not in models:
        raise SystemExit("--weights needs a dense=PATH entry")
    for r in args.round_to:
        models[f"l1-oneshot-round{r}"] = one_shot(models["dense"], args.prune_imgsz, args.target_flops, r)
    nets = {k: export_form(m) for k, m in models.items()}
    results: dict = {
        "params": {k: sum(t.numel() for t in m.parameters()) for k, m in nets.items()},
        "cells": {},
    }
    for imgsz in args.imgsz:
        for threads in args.threads:
            key = f"imgsz{imgsz}-threads{threads}"
            results["cells"][key] = cell(nets, imgsz, threads, args.backends)
            print(key, json.dumps(results["cells"][key]), flush=True)
    if args.profile:
        results["profile"] = profile(nets["dense"], nets[args.profile], max(args.imgsz))
        prof = results["profile"]
        print("| block | dense ms | pruned ms | time ratio | MACs ratio |\n|---|---:|---:|---:|---:|")
        for block in sorted(prof["dense"]["block_ms"], key=lambda b: -prof["dense"]["block_ms"][b]):
            d, q = prof["dense"]["block_ms"][block], prof["pruned"]["block_ms"].get(block, 0.0)
            dm, qm = prof["dense"]["macs"].get(block, 0), prof["pruned"]["macs"].get(block, 0)
            print(f"| {block} | {d:.2f} | {q:.2f} | {d / max(q, 1e-9):.2f} | {dm / max(qm, 1):.2f} |")
    results["command"] = "python bench/yolo_latency.py " + " ".join(os.sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
