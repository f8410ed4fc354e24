#!/usr/bin/env python
"""INT8 after pruning: accuracy of NNCF-quantized models and latency of dense/pruned fp32/INT8 on CPU.

Parts (``--parts``, default all):

* ``cifar``: the shared CIFAR ResNet-56 checkpoint, top-1 on the full 10,000-image test set in fp32
  (torch) and INT8 (OpenVINO IR and onnxruntime QDQ), calibrated on the first 300 train images.
  Target: INT8 within 0.5 pp of fp32.
* ``latency``: ResNet-50 (to 1/4 FLOPs) and YOLOv8n (to 1/2 FLOPs), random weights, pruned with the INT8
  alignment of this CPU (``int8_multiple("cpu")``) by each of ``--plans`` (``flops``: the FLOPs target;
  ``ratio``: ``ratio=0.5``, the library's default path; ``flops-latency``: the FLOPs target met where each
  runtime's INT8 layer table says latency falls most, ``fxprune.deploy.FlopsLatencyPlanner``, one plan per
  runtime, timed on that runtime; ``flops-latency-act``: the same with every conv followed by SiLU timed
  with it, as deployed); dense and every pruned model, fp32 and INT8,
  timed in one interleaved run per runtime (OpenVINO, onnxruntime). Calibration for timing only:
  ``--calib-samples`` random inputs. Target: pruned-INT8 over dense-INT8 >= 0.8x the FLOPs reduction.
  YOLO heads are timed in ultralytics' export form (the decoded predictions only); ``--pruned-files``
  adds saved pruned models (e.g. ``fxprune.deploy.prune(target_latency=..., precision="int8")``).
* ``yolo-agree``: a trained YOLOv8n (``--yolo-weights``): detections of its QDQ ONNX, NNCF alone and with
  the requantized convolutions, against fp32 on coco128, and the convolutions onnxruntime runs in INT8.
* ``sweep``: INT8 models pruned at ``--ratios`` with the INT8 alignment, all timed with dense INT8 in one
  run on the first backend. Target: no ratio slower than dense INT8.

    python bench/quantize.py --parts cifar --out bench/RESULTS_quantize.json
    python bench/quantize.py --parts latency --models resnet50,yolov8n --backends openvino,ort
    python bench/quantize.py --parts sweep --models resnet50 --backends openvino --ratios 0.05,0.2,0.5,0.9

Batch 1, ``--threads`` intra-op threads (1 by default: the timing machine is shared); absolute times from
different runs are not comparable, ratios within one run are.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from fxprune.deploy import FlopsLatencyPlanner, measure_latency, quantize, speedup  # noqa: E402
from fxprune.deploy.alignment import int8_multiple  # noqa: E402
from fxprune.deploy.artifacts import artifact_runner  # noqa: E402
from fxprune.deploy.backends import get_backend  # noqa: E402
from fxprune.deploy.backends.base import cpu_name  # noqa: E402
from fxprune.integrations.ultralytics import deployment_form  # noqa: E402

import fxprune  # noqa: E402
from fxprune.data import load_cifar10, shared_data_dir  # noqa: E402
from fxprune.measure import count_flops  # noqa: E402
from fxprune.models import create_model, load_cifar_checkpoint  # noqa: E402
from fxprune.models.spec import load_model  # noqa: E402

MODELS = {
    "resnet50": ("torchvision:resnet50", (1, 3, 224, 224), 0.25),
    "yolov8n": ("yolov8n.yaml", (1, 3, 640, 640), 0.5),
    "resnet18-small": ("torchvision:resnet18", (1, 3, 64, 64), 0.5),  # quick check of the bench itself
}
QUANT_FORMAT = {"openvino": "openvino", "ort": "onnx"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def predictions(path: Path, images: torch.Tensor, threads: int) -> np.ndarray:
    """Top-1 class of every image, one image per call (the artifacts have a static batch of 1)."""
    run = artifact_runner(path, threads)
    return np.array([int(np.argmax(run([images[i : i + 1].numpy()])[0])) for i in range(len(images))])


def _resnet56_weights() -> Path:
    root = shared_data_dir()
    weights = sorted((root / "weights").glob("resnet56-*.th")) if root else []
    if not weights:
        raise SystemExit("ResNet-56 checkpoint not found: set FXPRUNE_SHARED_DATA")
    return weights[0]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4) and horizontal flip of a CIFAR batch."""
    n = len(x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx, dy = (torch.randint(0, 9, (n,), generator=gen) for _ in range(2))
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def finetuned_resnet56(args) -> torch.nn.Module:
    """The shared ResNet-56 pruned with L1 at ``--ft-ratio`` (the methods bench's restricted scope: the first
    conv of every residual block) and fine-tuned ``--ft-epochs`` epochs; loaded from ``--pruned-checkpoint``
    when that file exists, else made and saved there."""
    ckpt = Path(args.pruned_checkpoint)
    if ckpt.is_file():
        log(f"loading the pruned ResNet-56 from {ckpt}")
        return fxprune.load("cifar_resnet56", ckpt).eval()
    model = load_cifar_checkpoint(create_model("cifar_resnet56"), str(_resnet56_weights()))
    example = torch.randn(1, 3, 32, 32)
    pruner = fxprune.Pruner(
        model, example, "l1", args.ft_ratio, scope="restricted", round_to=args.ft_round_to
    )
    report = pruner.prune()
    log(
        f"ResNet-56 l1 r={args.ft_ratio} round_to {args.ft_round_to}: FLOPs {report.flops_ratio:.2f}x smaller"
    )
    x, y = load_cifar10("train")
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=args.ft_lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for epoch in range(args.ft_epochs):
        if epoch == args.ft_epochs // 2 and epoch:
            for g in opt.param_groups:
                g["lr"] = args.ft_lr / 10
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for it, begin in enumerate(range(0, len(x) - 127, 128)):
            idx = order[begin : begin + 128]
            loss = torch.nn.functional.cross_entropy(model(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it % 100 == 0:
                log(
                    f"  ft epoch {epoch} it {it} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
                )
    model.eval()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    fxprune.save(model, ckpt, spec="cifar_resnet56")
    log(f"saved {ckpt} after {time.perf_counter() - start:.0f} s of fine-tuning")
    return model


def part_cifar(args, tmp: Path, pruned: bool = False) -> dict[str, Any]:
    if pruned:
        model = finetuned_resnet56(args)
    else:
        model = load_cifar_checkpoint(create_model("cifar_resnet56"), str(_resnet56_weights())).eval()
    name = "ResNet-56 pruned+FT" if pruned else "ResNet-56"
    calib, _ = load_cifar10("train", limit=args.calib_images)
    test_x, test_y = load_cifar10("test", limit=args.test_images)
    with torch.inference_mode():
        fp32 = torch.cat([model(test_x[i : i + 500]).argmax(1) for i in range(0, len(test_x), 500)]).numpy()
    labels = test_y.numpy()
    out: dict[str, Any] = {
        "model": "cifar_resnet56" + ("_l1_finetuned" if pruned else ""),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, test_x[:1]),
        "test_images": len(labels),
        "calibration_images": len(calib),
        "fp32_top1": float((fp32 == labels).mean()),
    }
    if pruned:
        out.update(checkpoint=str(args.pruned_checkpoint), ratio=args.ft_ratio, round_to=args.ft_round_to)
    log(f"{name} fp32 (torch) top-1 {100 * out['fp32_top1']:.2f} % on {len(labels)} test images")
    for runtime in args.backends:
        fmt = QUANT_FORMAT[runtime]
        start = time.perf_counter()
        res = quantize(
            model,
            test_x[:1],
            [calib],
            fmt,
            tmp / f"resnet56-int8.{'xml' if fmt == 'openvino' else 'onnx'}",
            subset_size=len(calib),
        )
        q_time = time.perf_counter() - start
        pred = predictions(res.path, test_x, args.threads)
        top1 = float((pred == labels).mean())
        out[runtime] = {
            "int8_top1": top1,
            "delta_pp": 100 * (top1 - out["fp32_top1"]),
            "agreement_with_fp32": float((pred == fp32).mean()),
            "quantized_ops": res.quantized_ops,
            "quantize_seconds": q_time,
        }
        log(
            f"{name} INT8 {runtime}: top-1 {100 * top1:.2f} % ({out[runtime]['delta_pp']:+.2f} pp), "
            f"agreement with fp32 {100 * out[runtime]['agreement_with_fp32']:.2f} %, "
            f"{res.quantized_ops} quantizers, quantized in {q_time:.0f} s"
        )
    return out


def pruned_variants(name: str, dense: torch.nn.Module, x: torch.Tensor, args) -> dict[str, dict[str, Any]]:
    """The pruned models of ``--plans``: ``flops`` (the model's FLOPs target with the INT8 multiple, halved
    until reachable), ``ratio`` (``fxprune.prune(ratio=0.5)`` with the INT8 multiple, the library's default
    INT8 path), ``flops-latency`` (the FLOPs target met by :class:`fxprune.deploy.FlopsLatencyPlanner` from
    each runtime's INT8 layer table: one plan per runtime, ``flops-latency-<runtime>``), ``-rt16`` (the
    same with 16-channel steps); then every
    ``--pruned-files`` entry of this model (``fxprune.save`` files, e.g. a latency-target INT8 plan)."""
    spec = MODELS[name][0]
    out = {}
    for entry in args.pruned_files:
        label, _, path = entry.partition("=")
        if label.split("-")[0] != name:
            continue
        pruned = fxprune.load(spec, path).eval()
        flops = count_flops(dense, x) / count_flops(pruned, x)
        out[label] = {"model": pruned, "round_to": 0, "flops_ratio": flops}
        log(f"{label}: {flops:.2f}x fewer FLOPs (from {path})")
    for plan in args.plans:
        kind, _, rt = plan.partition("-rt")
        # flops-latency: one plan per runtime, from that runtime's INT8 layer table
        for backend in args.backends if kind.startswith("flops-latency") else [None]:
            label = plan if backend is None else f"{kind}-{backend}" + (f"-rt{rt}" if rt else "")
            pruned, round_to = _prune_variant(name, dense, x, kind, int(rt) if rt else None, backend, args)
            flops = count_flops(dense, x) / count_flops(pruned, x)
            out[label] = {"model": pruned, "round_to": round_to, "flops_ratio": flops, "backend": backend}
            log(f"{name} {label}: {flops:.2f}x fewer FLOPs with round_to {round_to}")
    return out


def _prune_variant(name: str, dense, x, kind: str, round_to: int | None, backend: str | None, args):
    """A pruned copy of ``dense`` for one plan kind; the channel multiple (default: the INT8 multiple) is
    halved until a FLOPs target is reachable (YOLOv8n, 16..256 channels, cannot reach it in steps of 64)."""
    target = MODELS[name][2]
    round_to = round_to or int8_multiple("cpu")
    while True:
        pruned = copy.deepcopy(dense)
        try:
            if kind == "flops":
                fxprune.prune(pruned, x, target_flops=target, round_to=round_to)
            elif kind in ("flops-latency", "flops-latency-act"):
                act = kind.endswith("act")  # each conv timed with its SiLU
                planner = FlopsLatencyPlanner(target, backend, "int8", round_to, activations=act)
                fxprune.prune(pruned, x, planner=planner, round_to=round_to)
                r = planner.result
                estimates = ", ".join(f"{k} {v:.3f}" for k, v in r.candidates.items())
                log(f"{name} {kind} {backend} round_to {round_to}: {r.ranking} plan; estimated INT8 "
                    f"latency ratio per ranking: {estimates}")  # fmt: skip
            else:
                fxprune.prune(pruned, x, ratio=args.ratio, round_to=round_to)
            return pruned.eval(), round_to
        except ValueError as e:
            if round_to <= 8 or kind == "ratio":
                raise
            log(f"{name} {kind}: round_to {round_to}: {e}; trying {round_to // 2}")
            round_to //= 2


def part_latency(name: str, args, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    spec, shape, target = MODELS[name]
    dense, _ = load_model(spec)
    dense.eval()
    x = torch.randn(*shape)
    plans = pruned_variants(name, dense, x, args)
    calib = [torch.randn(*shape) for _ in range(args.calib_samples)]
    out: dict[str, Any] = {
        "model": name,
        "target_flops": target,
        "ratio": args.ratio,
        "plans": {
            k: {"round_to": v["round_to"], "flops_ratio": v["flops_ratio"], "backend": v.get("backend")}
            for k, v in plans.items()
        },
        "runtimes": {},
    }
    models = {"dense": dense, **{k: v["model"] for k, v in plans.items()}}
    models = {k: deployment_form(m) for k, m in models.items()}
    for runtime in args.backends:
        fmt, files, requantized = QUANT_FORMAT[runtime], {}, {}
        suffix = "xml" if fmt == "openvino" else "onnx"
        own = {k: v for k, v in plans.items() if v.get("backend") in (None, runtime)}  # planned for it
        for label, m in models.items():
            if label != "dense" and label not in own:
                continue
            res = quantize(m, x, calib, fmt, tmp / f"{name}-{label}-int8.{suffix}", subset_size=len(calib))
            files[f"{label} fp32"], files[f"{label} int8"] = res.source_onnx, res.path
            requantized[label] = {"convs": len(res.requantized), "gates": len(res.gates)}
        res = measure_latency(
            files,
            x,
            get_backend(runtime),
            threads=args.threads,
            repeats=args.repeats,
            budget_s=args.budget_s * len(files) / 4,
        )
        row: dict[str, Any] = {
            "conditions": res["dense fp32"].conditions(),
            "median_ms": {k: m.median_ms for k, m in res.items()},
            "int8_over_fp32_dense": speedup(res["dense fp32"], res["dense int8"]),
            "requantized_convs": requantized,
            "plans": {},
        }
        ms = ", ".join(f"{k} {v:.1f}" for k, v in row["median_ms"].items())
        log(f"{name} {runtime} (ms): {ms}; INT8/fp32 dense {row['int8_over_fp32_dense']:.2f}x")
        for plan, info in own.items():
            p = {
                "pruned_over_dense_fp32": speedup(res["dense fp32"], res[f"{plan} fp32"]),
                "pruned_over_dense_int8": speedup(res["dense int8"], res[f"{plan} int8"]),
                "int8_over_fp32_pruned": speedup(res[f"{plan} fp32"], res[f"{plan} int8"]),
            }
            p["int8_speedup_over_flops"] = p["pruned_over_dense_int8"] / info["flops_ratio"]
            row["plans"][plan] = p
            log(
                f"  {plan} (FLOPs {info['flops_ratio']:.2f}x, round_to {info['round_to']}): pruned/dense "
                f"INT8 {p['pruned_over_dense_int8']:.2f}x = {p['int8_speedup_over_flops']:.2f} of the FLOPs "
                f"ratio; fp32 {p['pruned_over_dense_fp32']:.2f}x; INT8/fp32 pruned "
                f"{p['int8_over_fp32_pruned']:.2f}x"
            )
        out["runtimes"][runtime] = row
    return out


def part_sweep(name: str, args, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    spec, shape, _ = MODELS[name]
    dense, _ = load_model(spec)
    dense.eval()
    x = torch.randn(*shape)
    round_to, runtime = int8_multiple("cpu"), args.backends[0]
    fmt = QUANT_FORMAT[runtime]
    suffix = "xml" if fmt == "openvino" else "onnx"
    calib = [torch.randn(*shape) for _ in range(args.calib_samples)]
    variants, flops = {"dense": dense}, {}
    for r in args.ratios:
        variants[f"{r:g}"] = copy.deepcopy(dense)
        fxprune.prune(variants[f"{r:g}"], x, ratio=r, round_to=round_to)
        flops[f"{r:g}"] = count_flops(dense, x) / count_flops(variants[f"{r:g}"].eval(), x)
    variants = {k: deployment_form(m) for k, m in variants.items()}
    files = {
        k: quantize(m, x, calib, fmt, tmp / f"{name}-sweep-{k}.{suffix}", subset_size=len(calib)).path
        for k, m in variants.items()
    }
    res = measure_latency(
        files,
        x,
        get_backend(runtime),
        threads=args.threads,
        repeats=args.repeats,
        budget_s=2 * args.budget_s,
    )
    points = [
        {"ratio": float(k), "flops_ratio": flops[k], "speedup": speedup(res["dense"], res[k])}
        for k in files
        if k != "dense"
    ]
    slower = [p["ratio"] for p in points if p["speedup"] < 0.97]
    text = ", ".join(f"{p['ratio']:g}:{p['speedup']:.2f}x (FLOPs {p['flops_ratio']:.2f}x)" for p in points)
    log(
        f"{name} INT8 sweep {runtime} round_to {round_to}: {text}; slower than dense INT8: {slower or 'none'}"
    )
    return {
        "model": name,
        "runtime": runtime,
        "round_to": round_to,
        "points": points,
        "slower": slower,
        "conditions": res["dense"].conditions(),
    }


def _detections(run, image: torch.Tensor) -> torch.Tensor:
    from ultralytics.utils.nms import non_max_suppression

    out = torch.from_numpy(np.asarray(run([image.numpy()])[0]))
    return non_max_suppression(out, conf_thres=0.25, iou_thres=0.7)[0]


def _matched(ref: torch.Tensor, got: torch.Tensor) -> int:
    """Detections of ``ref`` with a detection of the same class in ``got`` at IoU >= 0.5."""
    from ultralytics.utils.metrics import box_iou

    if not len(ref) or not len(got):
        return 0
    same = ref[:, 5:6] == got[:, 5].view(1, -1)
    return int(((box_iou(ref[:, :4], got[:, :4]) >= 0.5) & same).any(1).sum())


def _ort_op_counts(path: Path) -> dict[str, int]:
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(path.with_suffix(".optimized.onnx")), 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {k: ops[k] for k in ("QLinearConv", "Conv", "FusedConv")}


def part_yolo_agree(args, tmp: Path) -> dict[str, Any]:
    """A trained YOLOv8n (``--yolo-weights``): detections (NMS at conf 0.25) of the onnxruntime QDQ files,
    NNCF alone and with requantized convolutions, against the fp32 ONNX on coco128's images at
    ``--yolo-imgsz`` (calibration: every second image), and the convolutions onnxruntime runs in INT8."""
    from fxprune.deploy import load_calibration
    from ultralytics import YOLO

    model = deployment_form(YOLO(str(args.yolo_weights)).model.float().eval().fuse())
    shape = (1, 3, args.yolo_imgsz, args.yolo_imgsz)
    images = list(load_calibration(shared_data_dir() / "coco128" / "images", shape))
    calib = images[::2]
    out: dict[str, Any] = {"weights": str(args.yolo_weights), "imgsz": args.yolo_imgsz, "images": len(images)}
    files = {}
    for label, requant in (("nncf", False), ("requantized", True)):
        res = quantize(model, images[0], calib, "onnx", tmp / f"yolo-{label}.onnx", subset_size=len(calib),
                       requantize_convs=requant)  # fmt: skip
        files["fp32"], files[label] = res.source_onnx, res.path
    runs = {k: artifact_runner(p, args.threads) for k, p in files.items()}
    dets = {k: [_detections(run, img) for img in images] for k, run in runs.items()}
    total = sum(len(d) for d in dets["fp32"])
    for label in ("nncf", "requantized"):
        found = sum(_matched(r, g) for r, g in zip(dets["fp32"], dets[label]))
        extra = sum(len(g) - _matched(g, r) for r, g in zip(dets["fp32"], dets[label]))
        ops = _ort_op_counts(files[label])
        out[label] = {
            "fp32_detections_found": found / max(total, 1),
            "unmatched_int8_detections": extra,
            "int8_detections": sum(len(g) for g in dets[label]),
            "onnxruntime_ops": ops,
        }
        log(
            f"YOLOv8n {label}: {found}/{total} fp32 detections found by INT8 "
            f"({100 * found / max(total, 1):.1f} %), {extra} INT8 detections without an fp32 match; "
            f"onnxruntime runs {ops}"
        )
    out["fp32_detections"] = total
    return out


def _ort_profile(path: Path, x: torch.Tensor, runs: int, threads: int) -> dict[str, float]:
    """onnxruntime: ms per call spent in each op type (after graph fusion), from its profiler."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling, opts.log_severity_level = True, 3
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(3 + runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000 / (3 + runs)
    return totals


def _ov_profile(path: Path, x: torch.Tensor, runs: int, threads: int) -> dict[str, float]:
    """OpenVINO: ms per call by layer type and executed precision (``Convolution/I8``, ``Eltwise/FP32``)."""
    import openvino as ov

    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": "YES",
    }
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    for _ in range(3):
        request.infer({0: x.numpy()})
    totals: dict[str, float] = {}
    for _ in range(runs):
        request.infer({0: x.numpy()})
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            key = f"{info.node_type}/{info.exec_type.rsplit('_', 1)[-1]}"
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1000 / runs
    return totals


def part_alignment(name: str, args, tmp: Path) -> dict[str, Any]:
    """Pruned-INT8 over dense-INT8 for several ``--round-tos`` at the model's FLOPs target, one interleaved
    run per runtime, and where the time goes (per-op profiles of dense and pruned INT8)."""
    torch.manual_seed(0)
    spec, shape, target = MODELS[name]
    dense, _ = load_model(spec)
    dense.eval()
    x = torch.randn(*shape)
    calib = [torch.randn(*shape) for _ in range(args.calib_samples)]
    models, flops = {"dense": dense}, {}
    for rt in args.round_tos:
        pruned = copy.deepcopy(dense)
        try:
            fxprune.prune(pruned, x, target_flops=target, round_to=rt)
        except ValueError as e:
            log(f"{name}: round_to {rt} cannot reach FLOPs {target}: {e}")
            continue
        models[f"round_to {rt}"] = pruned.eval()
        flops[f"round_to {rt}"] = count_flops(dense, x) / count_flops(pruned, x)
        log(f"{name}: round_to {rt}: FLOPs {flops[f'round_to {rt}']:.2f}x smaller")
    out: dict[str, Any] = {"model": name, "target_flops": target, "flops_ratio": flops, "runtimes": {}}
    for runtime in args.backends:
        fmt = QUANT_FORMAT[runtime]
        suffix = "xml" if fmt == "openvino" else "onnx"
        files = {
            k: quantize(
                m, x, calib, fmt, tmp / f"{name}-{k.replace(' ', '')}.{suffix}", subset_size=len(calib)
            )
            for k, m in models.items()
        }
        res = measure_latency(
            {k: f.path for k, f in files.items()},
            x,
            runtime,
            precision="int8",
            threads=args.threads,
            repeats=args.repeats,
            budget_s=args.budget_s * len(files) / 2,
        )
        profile = _ov_profile if runtime == "openvino" else _ort_profile
        row: dict[str, Any] = {"median_ms": {k: m.median_ms for k, m in res.items()}, "points": {}}
        row["profile_ms"] = {k: profile(f.path, x, args.profile_runs, args.threads) for k, f in files.items()}
        for k in flops:
            s = speedup(res["dense"], res[k])
            row["points"][k] = {"speedup": s, "of_flops_reduction": s / flops[k]}
        out["runtimes"][runtime] = row
        text = ", ".join(
            f"{k}: {p['speedup']:.2f}x ({p['of_flops_reduction']:.2f} of {flops[k]:.2f}x)"
            for k, p in row["points"].items()
        )
        log(f"{name} {runtime} INT8 pruned over dense INT8: {text}")
        for k, prof in row["profile_ms"].items():
            top = sorted(prof.items(), key=lambda kv: -kv[1])[:8]
            log(f"  {k} profile ({sum(prof.values()):.1f} ms): " + ", ".join(f"{o} {v:.1f}" for o, v in top))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--parts",
        default="cifar,latency",
        help="cifar, cifar-pruned, yolo-agree, latency, sweep, alignment (comma-separated)",
    )
    p.add_argument("--models", default="resnet50,yolov8n", help="latency models: resnet50, yolov8n")
    p.add_argument("--backends", default="openvino,ort", help="openvino, ort (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=10.0, help="timing seconds per runtime and model")
    p.add_argument("--calib-images", type=int, default=300, help="CIFAR train images to calibrate on")
    p.add_argument("--test-images", type=int, default=None, help="CIFAR test images (default all 10,000)")
    p.add_argument("--calib-samples", type=int, default=16, help="random calibration inputs for timing")
    p.add_argument("--ratios", default="0.05,0.1,0.2,0.3,0.5,0.7,0.9", help="sweep ratios")
    p.add_argument(
        "--pruned-checkpoint",
        default=str(Path(tempfile.gettempdir()) / "fxprune-resnet56-l1-ft.pt"),
        help="cifar-pruned: fxprune.save file of the pruned + fine-tuned ResNet-56 (made when absent)",
    )
    p.add_argument("--ft-ratio", type=float, default=0.5, help="cifar-pruned: L1 pruning ratio")
    p.add_argument("--ft-round-to", type=int, default=1, help="cifar-pruned: channel multiple")
    p.add_argument("--ft-epochs", type=int, default=2, help="cifar-pruned: fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, default=0.01, help="cifar-pruned: SGD lr (10x lower half-way)")
    p.add_argument("--round-tos", default="16,32,64", help="alignment: channel multiples to compare")
    p.add_argument(
        "--plans",
        default="flops,ratio",
        help="latency: pruned models timed with dense: flops, ratio, flops-latency (a FLOPs target met "
        "where each runtime's INT8 layer table says latency falls most: one plan per runtime), "
        "flops-latency-act (the same with each conv timed with its SiLU); suffix -rtN: "
        "N-channel steps (flops-rt16, ratio-rt16, flops-latency-rt16)",
    )
    p.add_argument("--ratio", type=float, default=0.5, help="latency: the ratio of the 'ratio' plans")
    p.add_argument(
        "--pruned-files",
        default="",
        help="latency: more pruned models, LABEL=FILE (fxprune.save; LABEL starts with the model name)",
    )
    p.add_argument("--profile-runs", type=int, default=5, help="alignment: profiled calls per file")
    p.add_argument("--yolo-weights", default=None, help="yolo-agree: a trained YOLOv8n checkpoint (.pt)")
    p.add_argument("--yolo-imgsz", type=int, default=160, help="yolo-agree: input size")
    p.add_argument("--out", default=None, help="JSON file to write (appends to an existing list)")
    args = p.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    args.ratios = [float(r) for r in args.ratios.split(",") if r]
    args.round_tos = [int(r) for r in args.round_tos.split(",") if r]
    args.plans = [p for p in args.plans.split(",") if p]
    args.pruned_files = [f for f in args.pruned_files.split(",") if f]
    torch.set_num_threads(args.threads)
    row: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "results": [],
    }
    parts = args.parts.split(",")
    out = Path(args.out) if args.out else None
    previous = json.loads(out.read_text()) if out and out.exists() else []

    def add(result: dict[str, Any]) -> None:  # the file is rewritten after every result
        row["results"].append(result)
        if out:
            out.write_text(json.dumps(previous + [row], indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        if "cifar" in parts:
            add({"part": "cifar", **part_cifar(args, Path(tmp))})
        if "yolo-agree" in parts:
            add({"part": "yolo-agree", **part_yolo_agree(args, Path(tmp))})
        if "cifar-pruned" in parts:
            add({"part": "cifar-pruned", **part_cifar(args, Path(tmp), pruned=True)})
        for part, run in (("latency", part_latency), ("sweep", part_sweep), ("alignment", part_alignment)):
            if part in parts:
                for name in args.models.split(","):
                    add({"part": part, **run(name, args, Path(tmp))})
    if out:
        log(f"written to {out}")


if __name__ == "__main__":
    main()
