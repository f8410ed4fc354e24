#!/usr/bin/env python
"""Real latency of pruned models: dense and pruned side by side on onnxruntime / OpenVINO CPU.

Parts (``--parts``, default all):

* ``flops``: ResNet-50 pruned to 1/4 of its FLOPs and YOLOv8n to 1/2, timed against dense (interleaved,
  median of repetitions) on every ``--backends`` entry. Target: speed-up >= 0.8 x the FLOPs ratio.
* ``sweep``: ResNet-50 and YOLOv8n pruned at ratios 0.05 .. 0.9 with the backend's default alignment
  (and ``--sweep-unaligned`` adds round_to=1 for contrast), all timed in one run. Target: never slower.
* ``export``: dense and pruned models exported to ONNX, checked, compared with torch on onnxruntime.
* ``budget``: the latency-budget planner at ``--budgets`` (fractions of dense latency) against uniform
  per-group pruning whose estimated latency is the same, all three timed in one run. Targets: measured
  latency within 10 % of the budget; more kept importance than uniform at the same latency.

    python bench/latency.py --out bench/RESULTS_latency.json
    python bench/latency.py --parts sweep --models resnet50 --backends ort --threads 1
    python bench/latency.py --parts flops --models resnet50,yolov8n,lane_resnet18 \
        --backends torch,torch-compile,ort-cuda,trt --precision fp16      # on a GPU machine

Random weights (no downloads), batch 1, ``--threads`` intra-op threads (1 by default: the timing machine
is shared); absolute times from different runs are not comparable, ratios within one run are.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from fxprune.deploy import measure_latency, speedup  # noqa: E402
from fxprune.deploy.alignment import default_round_to  # noqa: E402
from fxprune.deploy.backends.base import cpu_name  # noqa: E402
from fxprune.deploy.budget import kept_importance, plan_for_latency  # noqa: E402
from fxprune.deploy.latency_model import LatencyModel  # noqa: E402
from fxprune.deploy.lut import LatencyTable  # noqa: E402
from fxprune.deploy.sweep import DEFAULT_RATIOS, latency_sweep, slower_points  # noqa: E402

import fxprune  # noqa: E402
from fxprune.measure import count_flops  # noqa: E402
from fxprune.models.spec import load_model  # noqa: E402
from fxprune.plan import make_plan  # noqa: E402
from fxprune.targets import slimmed_copy  # noqa: E402

MODELS = {
    "resnet50": ("torchvision:resnet50", (1, 3, 224, 224), 0.25, 3.2),
    "yolov8n": ("yolov8n.yaml", (1, 3, 640, 640), 0.5, 1.6),
    "lane_resnet18": ("lane_resnet18", (1, 3, 288, 800), 0.5, 1.6),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    spec, shape, _, _ = MODELS[name]
    model, _ = load_model(spec)
    return model.eval(), torch.randn(*shape)


def part_flops(name: str, args) -> dict[str, Any]:
    model, x = build(name)
    _, _, target, expected = MODELS[name]
    out: dict[str, Any] = {
        "model": name,
        "target_flops": target,
        "expected_speedup": expected,
        "global_ranking": args.global_ranking,
        "backends": {},
    }
    for backend in args.backends:
        rt = args.round_to or default_round_to(backend, args.precision)
        pruned = copy.deepcopy(model)
        report = fxprune.prune(
            pruned, x, target_flops=target, round_to=rt, global_ranking=args.global_ranking
        )
        res = measure_latency(
            {"dense": model, "pruned": pruned},
            x,
            backend,
            precision=args.precision,
            threads=args.threads,
            repeats=args.repeats,
            budget_s=args.budget_s,
        )
        s = speedup(res["dense"], res["pruned"])
        row = {
            "round_to": rt,
            "flops_ratio": report.flops_ratio,
            "params_ratio": report.params_ratio,
            "speedup": s,
            "speedup_over_flops": s / report.flops_ratio,
            "dense": res["dense"].as_dict(),
            "pruned": res["pruned"].as_dict(),
            "conditions": res["dense"].conditions(),
        }
        out["backends"][backend] = row
        log(f"{name} {backend}: FLOPs {report.flops_ratio:.2f}x, latency {s:.2f}x ({row['conditions']})")
    return out


def part_sweep(name: str, args) -> dict[str, Any]:
    model, x = build(name)
    out: dict[str, Any] = {"model": name, "runs": []}
    for backend in args.backends[:1]:
        for rt in [None] + ([1] if args.sweep_unaligned else []):
            points, dense = latency_sweep(
                model,
                x,
                tuple(args.ratios),
                backend,
                round_to=rt,
                threads=args.threads,
                repeats=args.repeats,
                budget_s=args.budget_s * 2,
            )
            slow = slower_points(points)
            out["runs"].append(
                {
                    "backend": backend,
                    "round_to": points[0].round_to,
                    "points": [p.as_dict() for p in points],
                    "slower": [p.ratio for p in slow],
                    "conditions": dense.conditions(),
                }
            )
            text = ", ".join(f"{p.ratio:g}:{p.speedup:.2f}x" for p in points)
            log(
                f"{name} sweep {backend} round_to={points[0].round_to}: {text}; "
                f"slower: {[q.ratio for q in slow]}"
            )
    return out


def _uniform_bracket(analysis, scores, lm: LatencyModel, est: float, rt: int):
    """Uniform ratios whose estimated latency lies just above and just below ``est`` (bisection)."""

    def plan_at(ratio: float):
        return make_plan(analysis.groups, scores, ratio, round_to=rt)

    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        plan = plan_at(mid)
        if lm.ratio({g: len(i) for g, i in plan.remove.items()}) > est:
            lo = mid
        else:
            hi = mid
    return (lo, plan_at(lo)), (hi, plan_at(hi))


def part_budget(name: str, args) -> dict[str, Any]:
    model, x = build(name)
    backend = args.backends[0]
    rt = default_round_to(backend)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    table = LatencyTable(backend, "fp32", args.threads)
    start = time.perf_counter()
    lm = LatencyModel.build(analysis, x, table, rt)
    lut_s = time.perf_counter() - start
    log(
        f"{name}: latency model of {len(lm.layers)} layer calls, "
        f"{table.measured} shapes measured in {lut_s:.0f} s"
    )
    out: dict[str, Any] = {
        "model": name,
        "backend": backend,
        "round_to": rt,
        "lut_seconds": lut_s,
        "budgets": [],
    }
    scores = analysis.scores("l2")
    dense_flops = count_flops(analysis.model, x)
    for budget in args.budgets:
        mkw = {"repeats": args.repeats, "budget_s": args.budget_s}
        res = plan_for_latency(
            analysis, x, budget, backend, latency_model=lm, round_to=rt, threads=args.threads, measure_kw=mkw
        )
        hal = slimmed_copy(analysis, res.plan)
        (r_slow, p_slow), (r_fast, p_fast) = _uniform_bracket(analysis, scores, lm, res.estimated_ratio, rt)
        slow, fast = slimmed_copy(analysis, p_slow), slimmed_copy(analysis, p_fast)
        m = measure_latency(
            {"dense": analysis.model, "budget": hal, "uniform_slower": slow, "uniform_faster": fast},
            x,
            backend,
            threads=args.threads,
            repeats=args.repeats,
            budget_s=args.budget_s * 2,
        )
        ratio = {k: 1 / speedup(m["dense"], m[k]) for k in ("budget", "uniform_slower", "uniform_faster")}
        row = {
            "budget": budget,
            "planner_rounds": res.rounds,
            "planner_measured_ratio": res.measured_ratio,
            "within": res.within,
            "final_budget_ratio": ratio["budget"],
            "uniform": {
                "slower": {
                    "ratio_param": r_slow,
                    "measured_ratio": ratio["uniform_slower"],
                    "kept_importance": kept_importance(analysis.groups, scores, p_slow),
                    "flops_kept": count_flops(slow, x) / dense_flops,
                },
                "faster": {
                    "ratio_param": r_fast,
                    "measured_ratio": ratio["uniform_faster"],
                    "kept_importance": kept_importance(analysis.groups, scores, p_fast),
                    "flops_kept": count_flops(fast, x) / dense_flops,
                },
            },
            "budget_kept_importance": res.kept_importance,
            "budget_flops_kept": count_flops(hal, x) / dense_flops,
            "conditions": m["dense"].conditions(),
        }
        u = row["uniform"]
        log(
            f"{name} budget {budget}: planner measured {res.measured_ratio:.3f} (within {res.within:.1%}); "
            f"re-measured: budget plan {ratio['budget']:.3f} keeps importance {res.kept_importance:.3f}, "
            f"FLOPs {row['budget_flops_kept']:.3f}; "
            f"uniform r={r_slow:.4f}: {u['slower']['measured_ratio']:.3f}, "
            f"{u['slower']['kept_importance']:.3f}, {u['slower']['flops_kept']:.3f}; uniform r={r_fast:.4f}: "
            f"{u['faster']['measured_ratio']:.3f}, {u['faster']['kept_importance']:.3f}, "
            f"{u['faster']['flops_kept']:.3f}"
        )
        out["budgets"].append(row)
    return out


def part_export(name: str, args) -> dict[str, Any]:
    import tempfile

    from fxprune.deploy import export_onnx

    model, x = build(name)
    pruned = copy.deepcopy(model)
    fxprune.prune(pruned, x, 0.4, round_to=default_round_to(args.backends[0]))
    out: dict[str, Any] = {"model": name, "input": list(x.shape), "exports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in (("dense", model), ("pruned 0.4", pruned)):
            res = export_onnx(m, x, Path(tmp) / "m.onnx")
            out["exports"][label] = {k: v for k, v in res.as_dict().items() if k != "path"}
            log(
                f"{name} {label}: checker ok, {res.outputs} outputs, max abs {res.max_abs_error:.2e}, "
                f"max rel {res.max_rel_error:.2e}"
            )
    return out


PARTS = {"flops": part_flops, "sweep": part_sweep, "budget": part_budget, "export": part_export}


FLOPS_COLUMNS = (
    "model|backend|round_to|FLOPs target|FLOPs x|params x|dense ms|pruned ms|speed-up|"
    "speed-up / FLOPs x|rounds x calls"
).split("|")
BUDGET_COLUMNS = (
    "model|backend|round_to|budget|planner measured|off by|plan|latency / dense|kept importance|FLOPs kept"
).split("|")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(record: dict[str, Any]) -> str:
    """The tables of ``RESULTS.md`` from a results JSON."""
    res = record["results"]
    out = []
    rows = []
    for key, r in res.items():
        if key.startswith("export/"):
            for label, e in r["exports"].items():
                rows.append(
                    [
                        r["model"],
                        "x".join(map(str, r["input"])),
                        label,
                        e["outputs"],
                        f"{e['max_abs_error']:.1e}",
                        f"{e['max_rel_error']:.1e}",
                    ]
                )
    if rows:
        out.append(
            _md_table(["model", "input", "variant", "outputs", "max abs error", "max rel error"], rows)
        )
    rows = []
    for key, r in res.items():
        if not key.startswith("flops/"):
            continue
        for backend, b in r["backends"].items():
            rows.append(
                [
                    r["model"] + (" (global ranking)" if r.get("global_ranking") else ""),
                    backend,
                    b["round_to"],
                    f"{1 / r['target_flops']:.0f}x" if r["target_flops"] else "",
                    f"{b['flops_ratio']:.2f}x",
                    f"{b['params_ratio']:.2f}x",
                    f"{b['dense']['median_ms']:.1f}",
                    f"{b['pruned']['median_ms']:.1f}",
                    f"**{b['speedup']:.2f}x**",
                    f"{b['speedup_over_flops']:.2f}",
                    f"{b['dense']['repeats']}x{b['dense']['iters']}",
                ]
            )
    if rows:
        out.append(_md_table(FLOPS_COLUMNS, rows))
    for key, r in res.items():
        if not key.startswith("sweep/"):
            continue
        for run in r["runs"]:
            pts = run["points"]
            out.append(
                f"{r['model']}, {run['backend']}, round_to={run['round_to']}; slower than dense at: "
                f"{run['slower'] or 'none'}\n"
            )
            out.append(
                _md_table(
                    ["ratio"] + [f"{p['ratio']:g}" for p in pts],
                    [
                        ["FLOPs x"] + [f"{p['flops_ratio']:.2f}" for p in pts],
                        ["speed-up"] + [f"{p['speedup']:.2f}" for p in pts],
                    ],
                )
            )
    rows = []
    for key, r in res.items():
        if not key.startswith("budget/"):
            continue
        for b in r["budgets"]:
            rows.append(
                [
                    r["model"],
                    r["backend"],
                    r["round_to"],
                    f"{b['budget']:g}x",
                    f"{b['planner_measured_ratio']:.3f}",
                    f"{b['within']:.1%}",
                    "budget planner",
                    f"{b['final_budget_ratio']:.3f}",
                    f"**{b['budget_kept_importance']:.3f}**",
                    f"{b['budget_flops_kept']:.3f}",
                ]
            )
            for side in ("slower", "faster"):
                u = b["uniform"][side]
                label = f"uniform {u['ratio_param']:.4f} (next {side} step)"
                rows.append(
                    [
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        label,
                        f"{u['measured_ratio']:.3f}",
                        f"{u['kept_importance']:.3f}",
                        f"{u['flops_kept']:.3f}",
                    ]
                )
    if rows:
        out.append(_md_table(BUDGET_COLUMNS, rows))
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="flops,sweep,budget")
    p.add_argument("--models", default="resnet50,yolov8n", help=f"from {', '.join(MODELS)}")
    p.add_argument("--backends", default="ort,openvino")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--round-to", type=int, help="flops part: alignment (default: the backend's)")
    p.add_argument("--global-ranking", action="store_true", help="flops part: rank channels across groups")
    p.add_argument("--precision", default="fp32", help="flops part: fp32, fp16 (GPU backends), bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=8.0, help="seconds of timing per measurement")
    p.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)))
    p.add_argument("--budgets", default="0.5,0.3")
    p.add_argument("--sweep-unaligned", action="store_true", help="also sweep with round_to=1")
    p.add_argument("--out", default="bench/RESULTS_latency.json")
    p.add_argument("--markdown", action="store_true", help="print the tables of the --out JSON and stop")
    args = p.parse_args()
    if args.markdown:
        print(render_markdown(json.loads(Path(args.out).read_text())))
        return 0
    args.backends = args.backends.split(",")
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.budgets = [float(b) for b in args.budgets.split(",")]
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
        "threads": args.threads,
        "results": {},
    }
    out = Path(args.out)
    if out.exists():
        record["results"] = json.loads(out.read_text()).get("results", {})
    for part in args.parts.split(","):
        for name in args.models.split(","):
            log(f"{part} {name}")
            result = PARTS[part](name, args)
            result["command"] = record["command"]
            result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            suffix = f"/round_to={args.round_to}" if args.round_to and part == "flops" else ""
            if args.global_ranking and part == "flops":
                suffix += "/global"
            if part != "flops" and args.backends[0] != "ort":
                suffix += f"/{args.backends[0]}"
            record["results"][f"{part}/{name}{suffix}"] = result
            out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
