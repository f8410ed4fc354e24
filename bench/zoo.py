#!/usr/bin/env python
"""Coverage and speed of fxprune next to Torch-Pruning on the torchvision model zoo.

For every model both tools prune a fresh copy of the same network (same seed, eval mode, batch-1 example
input) by 50% of the channels of every group:

* fxprune: the one call ``fxprune.prune(model, x, ratio)`` with its defaults (analysis, plan, slimming in
  place, verification against the masked original, FLOPs report: ``fx prune s``); before it, on a copy,
  ``fxprune.analyze`` alone (``fx analyze s``) and re-planning that analysis to a FLOPs target of 1/3 with
  ``fxprune.targets.plan_for_target`` (``fx replan s``: importance scores, then a bisection over ratios,
  each candidate's FLOPs counted from the analysis's cost table without slimming a copy);
* Torch-Pruning with the settings of its README: ``GroupMagnitudeImportance(p=2)`` and ``MetaPruner``
  with ``pruning_ratio=0.5``; by default nothing is ignored (``--tp-ignore classifier`` ignores the final
  classifier as the README example does by hand).

Each tool runs per model in its own subprocess with a time limit. FLOPs and parameters are counted with
``fxprune.measure`` for both tools so the numbers are comparable. ``speed ratio`` = Torch-Pruning build +
prune over ``fx prune s``; ``analysis ratio`` = Torch-Pruning graph build over ``fx analyze s``. Whether
the pruned model still produces outputs of the dense shapes is checked for both tools.

    python bench/zoo.py --models resnet152,densenet201
    python bench/zoo.py --input-size 128 --out bench/RESULTS_zoo.json --markdown
    python bench/zoo.py --detection --models fasterrcnn_resnet50_fpn.backbone,fcn_resnet50
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.table import Table
from torch import nn

import fxprune
from fxprune.measure import count_flops, count_params
from fxprune.targets import plan_for_target

try:
    import torch_pruning as tp
except ImportError:  # bench-only dependency: pip install -e ".[bench]"
    tp = None

BACKBONE_SUFFIX = ".backbone"
# Models whose input size is fixed (the --input-size override does not apply to them).
FIXED_SIZES = {
    "inception_v3": 299,
    "ssd300_vgg16.backbone": 300,
    "ssdlite320_mobilenet_v3_large.backbone": 320,
}
FIXED_224_PREFIXES = ("vit_", "swin_", "maxvit_")
SEED = 0


# ----------------------------------------------------------------------------------------------- models


def zoo_names(detection: bool, classification: bool = True) -> list[str]:
    """Every torchvision classification model, plus segmentation models and detection backbones."""
    names = list(torchvision.models.list_models(module=torchvision.models)) if classification else []
    if detection:
        names += torchvision.models.list_models(module=torchvision.models.segmentation)
        detectors = torchvision.models.list_models(module=torchvision.models.detection)
        names += [n + BACKBONE_SUFFIX for n in detectors]
    return names


def input_size(name: str, override: int | None) -> int:
    if name in FIXED_SIZES:
        return FIXED_SIZES[name]
    if name.startswith(FIXED_224_PREFIXES):
        return 224
    return override or 224


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The model with seeded random weights in eval mode, and a seeded batch-1 input."""
    torch.manual_seed(SEED)
    if name.endswith(BACKBONE_SUFFIX):
        detector = name[: -len(BACKBONE_SUFFIX)]
        model = torchvision.models.get_model(detector, weights=None, weights_backbone=None).backbone
    elif name in torchvision.models.list_models(module=torchvision.models.segmentation):
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    else:
        model = torchvision.models.get_model(name, weights=None)
    model.eval()
    torch.manual_seed(SEED)
    x = torch.randn(1, 3, size, size)
    return model, x


def output_shapes(out: Any) -> list[list[int]]:
    """Shapes of every tensor in a (nested) model output, in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [list(out.shape)]
    if isinstance(out, dict):
        return [s for k in out for s in output_shapes(out[k])]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in output_shapes(o)]
    return []


def forward_shapes(model: nn.Module, x: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        return output_shapes(model(x))


def classifier_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The final classifiers, found as Torch-Pruning's README does: Linear layers with num_classes outputs."""
    if name.endswith(BACKBONE_SUFFIX):
        return []
    classes = 21 if name in torchvision.models.list_models(module=torchvision.models.segmentation) else 1000
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]


# ------------------------------------------------------------------------------------------ tool runs


def run_fxprune(name: str, size: int, ratio: float, tp_ignore: str, conn, rec: dict,
                replan: bool = True) -> None:
    """Analysis alone and FLOPs-target re-planning (unless ``replan`` is False) on one copy, then the one-call
    ``fxprune.prune``."""
    model, x = build(name, size)
    dense = forward_shapes(model, x)
    rec.update(dense_shapes=dense, params_dense=count_params(model))
    spare = copy.deepcopy(model)
    conn.send(("ready", None))
    stage(conn, rec, "analyze")
    t0, c0 = time.perf_counter(), time.process_time()
    analysis = fxprune.analyze(spare, x)
    rec.update(analyze_s=time.perf_counter() - t0, analyze_cpu_s=time.process_time() - c0,
               groups=len(analysis.groups),
               prunable_groups=len(analysis.prunable_groups), unsupported=len(analysis.unsupported),
               capture=analysis.captured.method)
    if replan:
        stage(conn, rec, "replan")
        t0 = time.perf_counter()
        plan_for_target(analysis, x, 1.0 / 3.0, "flops")
        rec["replan_s"] = time.perf_counter() - t0
    del analysis, spare
    stage(conn, rec, "prune")
    t0, c0 = time.perf_counter(), time.process_time()
    report = fxprune.prune(model, x, ratio)
    rec["prune_s"], rec["total_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    rec.update(timings=report.timings, slim_only_s=report.slim_seconds, flops_ratio=report.flops_ratio,
               params_ratio=report.params_ratio, flops_dense=report.flops_before,
               flops_pruned=report.flops_after, params_pruned=report.params_after,
               exact_error=report.exact_error, approx_error=report.approx_error,
               approx_groups=len(report.approx_groups), round_to=report.round_to)
    rec["total_s"] = rec["prune_s"]
    stage(conn, rec, "forward")
    rec["pruned_shapes"] = forward_shapes(model, x)
    rec["status"] = "ok" if rec["pruned_shapes"] == dense else "shape"


def run_torch_pruning(name: str, size: int, ratio: float, tp_ignore: str, conn, rec: dict,
                      replan: bool = True) -> None:
    """Torch-Pruning's build and prune, timed (``replan`` is fxprune's and is ignored)."""
    model, x = build(name, size)
    dense = forward_shapes(model, x)
    rec.update(dense_shapes=dense, params_dense=count_params(model), flops_dense=count_flops(model, x))
    ignored = classifier_layers(model, name) if tp_ignore == "classifier" else []
    rec["ignored_layers"] = len(ignored)
    conn.send(("ready", None))
    stage(conn, rec, "build")
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    t0, c0 = time.perf_counter(), time.process_time()
    pruner = tp.pruner.MetaPruner(model, example_inputs=x, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=ignored)
    t1, c1 = time.perf_counter(), time.process_time()
    rec["build_s"], rec["build_cpu_s"] = t1 - t0, c1 - c0
    stage(conn, rec, "step")
    pruner.step()
    t2, c2 = time.perf_counter(), time.process_time()
    rec["prune_s"] = t2 - t1
    rec["total_s"], rec["total_cpu_s"] = rec["build_s"] + rec["prune_s"], c2 - c0
    stage(conn, rec, "forward")
    model.eval()
    rec["pruned_shapes"] = forward_shapes(model, x)
    rec["params_pruned"] = count_params(model)
    rec["flops_pruned"] = count_flops(model, x)
    rec["flops_ratio"] = rec["flops_dense"] / max(rec["flops_pruned"], 1)
    rec["params_ratio"] = rec["params_dense"] / max(rec["params_pruned"], 1)
    rec["status"] = "ok" if rec["pruned_shapes"] == dense else "shape"


TOOLS = {"fx": run_fxprune, "tp": run_torch_pruning}


def stage(conn, rec: dict, name: str) -> None:
    rec["stage"] = name
    conn.send(("stage", name))


def warm_up(tool: str) -> None:
    """Run the tool once on a small ResNet-18 so one-time costs (lazy imports, first traces) are paid."""
    model, x = build("resnet18", 64)
    if tool == "fx":
        fxprune.prune(model, x, 0.5)
    else:
        tp.pruner.MetaPruner(model, example_inputs=x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                             pruning_ratio=0.5).step()


def _child(tool: str, name: str, size: int, ratio: float, tp_ignore: str, threads: int | None,
           memory_gb: float | None, warmup: bool, replan: bool, conn) -> None:
    if threads:
        torch.set_num_threads(threads)
    if memory_gb:  # an allocation failure inside the run beats the kernel killing a random process
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rec: dict[str, Any] = {}
    try:
        if warmup:
            warm_up(tool)
        TOOLS[tool](name, size, ratio, tp_ignore, conn, rec, replan)
    except Exception as e:
        rec.update(status="fail", error=short_error(e), traceback=traceback.format_exc(limit=-8))
    conn.send(("result", rec))
    conn.close()


def short_error(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_tool(tool: str, name: str, size: int, ratio: float, tp_ignore: str, timeout: float,
             setup_timeout: float, threads: int | None, memory_gb: float | None, warmup: bool,
             replan: bool = True) -> dict:
    """Run one tool on one model in a forked subprocess; ``timeout`` applies after the model is built.

    Every setting reaches the child as an argument (``replan``: time fxprune's FLOPs-target re-planning).
    """
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, daemon=True,
                       args=(tool, name, size, ratio, tp_ignore, threads, memory_gb, warmup, replan, send))
    start = time.monotonic()
    proc.start()
    send.close()
    deadline, current, ready_at, result = start + setup_timeout, "setup", None, None
    while result is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            limit = timeout if ready_at else setup_timeout
            result = {"status": "timeout", "stage": current,
                      "error": f"no result after {limit:g} s ({current})"}
            break
        if recv.poll(min(remaining, 1.0)):
            try:
                kind, payload = recv.recv()
            except EOFError:
                proc.join(5)
                result = {"status": "crash", "stage": current,
                          "error": f"process died with exit code {proc.exitcode} ({current})"}
                break
            if kind == "ready":
                ready_at = time.monotonic()
                deadline = ready_at + timeout
            elif kind == "stage":
                current = payload
            else:
                result = payload
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    recv.close()
    result["wall_s"] = time.monotonic() - start
    return result


def best_of(repeat: int, tool: str, *args) -> dict:
    """Run ``repeat`` times (fresh process each) and keep the fastest run; stop early on a failure."""
    runs: list[dict] = []
    for _ in range(max(repeat, 1)):
        runs.append(run_tool(tool, *args))
        if "total_s" not in runs[-1]:
            break
    timed = [r for r in runs if "total_s" in r]
    best = dict(min(timed, key=lambda r: r["total_s"]) if len(timed) == len(runs) else runs[-1])
    if len(runs) > 1:
        best["runs_total_s"] = [r.get("total_s") for r in runs]
    return best


# ------------------------------------------------------------------------------------------- reporting


def speed_ratio(fx: dict, tp: dict) -> float | None:
    """Torch-Pruning build + prune over fxprune.prune() (with verification)."""
    if fx.get("status") == "ok" and "total_s" in tp and fx.get("total_s"):
        return tp["total_s"] / fx["total_s"]
    return None


def analysis_ratio(fx: dict, tp: dict) -> float | None:
    """Torch-Pruning graph build over fxprune.analyze()."""
    if fx.get("analyze_s") and "build_s" in tp:
        return tp["build_s"] / fx["analyze_s"]
    return None


def cpu_ratios(fx: dict, tp: dict) -> tuple[float | None, float | None]:
    """The speed and analysis ratios in process CPU time (less sensitive to other load than wall time)."""
    speed = analysis = None
    if fx.get("status") == "ok" and fx.get("total_cpu_s") and "total_cpu_s" in tp:
        speed = tp["total_cpu_s"] / fx["total_cpu_s"]
    if fx.get("analyze_cpu_s") and "build_cpu_s" in tp:
        analysis = tp["build_cpu_s"] / fx["analyze_cpu_s"]
    return speed, analysis


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


COLUMNS = ["model", "size", "fx status", "fx groups", "fx FLOPs x", "fx err", "fx prune s", "fx analyze s",
           "fx replan s", "TP status", "TP FLOPs x", "TP build s", "TP prune s", "speed ratio",
           "analysis ratio", "speed ratio cpu", "analysis ratio cpu"]


def columns(tools: list[str]) -> list[str]:
    """The table columns for the tools that ran (the speed ratio needs both)."""
    both = len(tools) > 1
    keep = {"fx": "fx" in tools, "TP": "tp" in tools, "speed": both, "analysis": both}
    return [c for c in COLUMNS if keep.get(c.split()[0], True)]


def row(r: dict) -> dict[str, str]:
    fx, tp = r.get("fx", {}), r.get("tp", {})
    cells = [
        r["model"], str(r["input_size"]),
        fx.get("status", "-"),
        f"{fx['prunable_groups']}/{fx['groups']}" if "groups" in fx else "-",
        fmt(fx.get("flops_ratio"), ".2f"), fmt(fx.get("exact_error"), ".1e"),
        fmt(fx.get("prune_s"), ".2f"), fmt(fx.get("analyze_s"), ".2f"), fmt(fx.get("replan_s"), ".2f"),
        tp.get("status", "-"), fmt(tp.get("flops_ratio"), ".2f"),
        fmt(tp.get("build_s"), ".2f"), fmt(tp.get("prune_s"), ".2f"),
        fmt(r.get("speed_ratio"), ".2f"), fmt(analysis_ratio(fx, tp), ".2f"),
        *(fmt(v, ".2f") for v in cpu_ratios(fx, tp)),
    ]
    return dict(zip(COLUMNS, cells))


def describe_problem(rec: dict) -> str:
    if rec.get("status") == "shape":
        return f"output shape changed: {rec.get('dense_shapes')} -> {rec.get('pruned_shapes')}"
    return f"[{rec.get('stage', '?')}] {rec.get('error', '')}"


def summary(results: list[dict], tools: list[str]) -> dict:
    out: dict[str, Any] = {"models": len(results)}
    for tool in tools:
        recs = [(r["model"], r.get(tool, {})) for r in results]
        out[f"{tool}_correct_shape"] = sum(rec.get("status") == "ok" for _, rec in recs)
        out[f"{tool}_problems"] = {m: describe_problem(rec) for m, rec in recs if rec.get("status") != "ok"}
    pairs = [(r["fx"]["total_s"], r["tp"]["total_s"]) for r in results if r.get("speed_ratio") is not None]
    ratios = [r["speed_ratio"] for r in results if r.get("speed_ratio") is not None]
    out["timed_pairs"] = len(pairs)
    analysis = [a for a in (analysis_ratio(r.get("fx", {}), r.get("tp", {})) for r in results) if a]
    if analysis:
        out["median_analysis_ratio"] = statistics.median(analysis)
        out["min_analysis_ratio"] = min(analysis)
    cpu = [cpu_ratios(r.get("fx", {}), r.get("tp", {})) for r in results]
    for i, key in enumerate(("speed", "analysis")):
        values = [c[i] for c in cpu if c[i] is not None]
        if values:
            out[f"min_{key}_ratio_cpu"] = min(values)
            out[f"median_{key}_ratio_cpu"] = statistics.median(values)
    if ratios:
        out["median_speed_ratio"] = statistics.median(ratios)
        out["min_speed_ratio"] = min(ratios)
        out["max_speed_ratio"] = max(ratios)
        out["fx_total_s"] = sum(p[0] for p in pairs)
        out["tp_total_s"] = sum(p[1] for p in pairs)
        out["total_speed_ratio"] = out["tp_total_s"] / out["fx_total_s"]
    return out


def summary_lines(s: dict, tools: list[str]) -> list[str]:
    names = {"fx": "fxprune", "tp": "Torch-Pruning"}
    lines = [f"models: {s['models']}"]
    for tool in tools:
        lines.append(f"{names[tool]} correct-shape outputs: {s[f'{tool}_correct_shape']}/{s['models']}")
    if "median_speed_ratio" in s:
        lines.append(
            f"speed ratio (TP build+prune / fxprune.prune with verification) over {s['timed_pairs']} models: "
            f"median {s['median_speed_ratio']:.1f}x (min {s['min_speed_ratio']:.1f}x, max "
            f"{s['max_speed_ratio']:.1f}x); total {s['tp_total_s']:.1f} s / {s['fx_total_s']:.1f} s = "
            f"{s['total_speed_ratio']:.1f}x"
        )
    if "median_analysis_ratio" in s:
        lines.append(
            f"analysis ratio (TP graph build / fxprune.analyze): median {s['median_analysis_ratio']:.1f}x "
            f"(min {s['min_analysis_ratio']:.1f}x)"
        )
    if "median_speed_ratio_cpu" in s:
        lines.append(
            f"in process CPU time: speed ratio median {s['median_speed_ratio_cpu']:.2f}x (min "
            f"{s['min_speed_ratio_cpu']:.2f}x), analysis ratio median "
            f"{s.get('median_analysis_ratio_cpu', 0):.2f}x (min {s.get('min_analysis_ratio_cpu', 0):.2f}x)"
        )
    for tool in tools:
        problems = s[f"{tool}_problems"]
        lines.append(f"{names[tool]} problems ({len(problems)} models):")
        by_problem: dict[str, list[str]] = {}
        for model, problem in problems.items():
            by_problem.setdefault(problem, []).append(model)
        lines += [f"  - {', '.join(models)}: {problem}" for problem, models in by_problem.items()]
    return lines


def markdown_table(results: list[dict], tools: list[str]) -> str:
    cols = columns(tools)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(row(r)[c] for c in cols) + " |" for r in results]
    return "\n".join(lines)


def rich_table(results: list[dict], tools: list[str], title: str) -> Table:
    table = Table(title=title)
    cols = columns(tools)
    for i, col in enumerate(cols):
        table.add_column(col, justify="left" if i == 0 or "status" in col else "right")
    for r in results:
        cells = row(r)
        for col in cols:
            if "status" in col:
                colour = "green" if cells[col] == "ok" else "red"
                cells[col] = f"[{colour}]{cells[col]}[/{colour}]"
        table.add_row(*(cells[c] for c in cols))
    return table


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated model names (default: the whole zoo)")
    p.add_argument("--detection", action="store_true",
                   help="add segmentation models and detection backbones (<detector>.backbone)")
    p.add_argument("--detection-only", action="store_true",
                   help="only the segmentation models and detection backbones")
    p.add_argument("--input-size", type=int, default=None,
                   help="input side for models that accept any size (default 224; inception_v3 uses 299, "
                        "ViT/Swin/MaxViT 224, SSD backbones 300/320)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed (default 0.5)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per tool per model (default 240)")
    p.add_argument("--setup-timeout", type=float, default=600.0,
                   help="seconds allowed to build the model and run it once before the tool starts")
    p.add_argument("--tools", default="fx,tp", help="comma-separated subset of fx,tp (default both)")
    p.add_argument("--tp-ignore", choices=["none", "classifier"], default="none",
                   help="layers Torch-Pruning must not prune: none (default) or the final classifier")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per tool per model, each in a fresh process; the fastest is kept (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    p.add_argument("--memory-gb", type=float, default=18.0,
                   help="address-space limit of each run in GiB, 0 for none (default 18)")
    p.add_argument("--no-replan", action="store_true",
                   help="skip the FLOPs-target re-planning of the fxprune runs (fx replan s)")
    p.add_argument("--warmup", action="store_true",
                   help="before timing, run each tool once on a small ResNet-18 in the same process (both "
                        "tools then run without one-time start-up costs)")
    p.add_argument("--out", type=Path, help="write raw results as JSON (updated after every model)")
    p.add_argument("--report", type=Path, help="print the tables of a results file written by --out and exit")
    p.add_argument("--markdown", action="store_true", help="also print the table and summary as Markdown")
    p.add_argument("--timm-families", action="store_true",
                   help="one timm model per family instead of the zoo (bench/timm_families.py; --ratio, "
                        "--timeout, --tools and --out apply)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.timm_families:  # FLOPs kept per timm family, fxprune and Torch-Pruning
        from timm_families import family_models, sweep
        sweep(family_models(), args.ratio, args.timeout, args.out and str(args.out), args.tools.split(","))
        return 0
    if args.report:
        return report_from_json(args.report, args.markdown)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        raise SystemExit(f"--tools must be a subset of {','.join(TOOLS)}")
    zoo = zoo_names(True)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in zoo]
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(unknown)}")
    else:
        names = zoo_names(args.detection or args.detection_only, not args.detection_only)
    if "tp" in tools and tp is None:
        raise SystemExit('Torch-Pruning is not installed: pip install -e ".[bench]"')
    console = Console(width=None if sys.stdout.isatty() else 200)

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
        "torch_threads": args.threads or torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "torch_pruning": getattr(tp, "__version__", "?"), "ratio": args.ratio, "timeout_s": args.timeout,
        "tp_ignore": args.tp_ignore, "tools": tools,
        "repeat": args.repeat, "memory_gb": args.memory_gb, "warmup": args.warmup,
        "replan": not args.no_replan,
    }
    console.print(f"{len(names)} models, tools {tools}, ratio {args.ratio}, timeout {args.timeout:g} s, "
                  f"{meta['cpus']} CPUs, torch {meta['torch']}, torch-pruning {meta['torch_pruning']}")
    results: list[dict] = []
    for i, name in enumerate(names, 1):
        size = input_size(name, args.input_size)
        rec: dict[str, Any] = {"model": name, "input_size": size, "load_before": os.getloadavg()[0]}
        for tool in tools:
            rec[tool] = best_of(args.repeat, tool, name, size, args.ratio, args.tp_ignore, args.timeout,
                                args.setup_timeout, args.threads, args.memory_gb, args.warmup,
                                not args.no_replan)
        rec["speed_ratio"] = speed_ratio(rec.get("fx", {}), rec.get("tp", {}))
        rec["load_after"] = os.getloadavg()[0]
        results.append(rec)
        cells = row(rec)
        line = f"[{i}/{len(names)}] " + "  ".join(f"{c}={cells[c]}" for c in columns(tools))
        console.print(line, highlight=False, markup=False)
        for tool in tools:
            if rec[tool].get("status") not in ("ok", "shape"):
                console.print(f"    {tool}: {describe_problem(rec[tool])}", highlight=False, markup=False)
        if args.out:
            write_json(args.out, meta, results, summary(results, tools))
    if args.out:
        write_json(args.out, meta, results, summary(results, tools))
    print_report(console, results, tools, args.ratio, args.markdown)
    return 0


def print_report(console: Console, results: list[dict], tools: list[str], ratio: float,
                 markdown: bool) -> None:
    s = summary(results, tools)
    console.print(rich_table(results, tools, f"fxprune vs Torch-Pruning, ratio {ratio}"))
    for line in summary_lines(s, tools):
        console.print(line, highlight=False, markup=False)
    if markdown:
        print()
        print(markdown_table(results, tools))
        print()
        for line in summary_lines(s, tools):
            print(line if line.startswith("  ") else f"- {line}")


def report_from_json(path: Path, markdown: bool) -> int:
    """Print the tables and summary of a results file written by ``--out``."""
    data = json.loads(path.read_text())
    meta = data["meta"]
    print(f"{path}: {meta['command']} ({meta['date']}, {meta['cpus']} CPUs, torch {meta['torch']}, "
          f"torch-pruning {meta['torch_pruning']})")
    console = Console(width=None if sys.stdout.isatty() else 200)
    print_report(console, data["results"], meta["tools"], meta["ratio"], markdown)
    return 0


def write_json(path: Path, meta: dict, results: list[dict], s: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": s, "results": results}, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
