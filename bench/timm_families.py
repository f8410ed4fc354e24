"""FLOPs kept at one ratio for a list of models, or for one model of every timm family.

``python -m bench.timm_families --models mixnet_s,ghostnet_100`` prunes each model with
``fxprune.prune(model, x, ratio)`` (default settings) in its own process and prints the FLOPs kept and
what froze; ``--families`` takes the first model of each timm module (``timm.list_models`` grouped by
the module that defines it). ``bench/zoo.py --timm-families`` runs the same sweep. Names may also be
``tv:NAME`` (torchvision) or ``yolo:CFG`` (an ultralytics model built from a yaml: ``yolo:yolo11n.yaml``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any

import torch
from torch import nn


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:
        return False


def _timm_model(name: str, size: int | None) -> tuple[nn.Module, int]:
    """A timm model and its input size: ``size`` where the model runs at it (built for it with
    ``img_size=size`` when it has a fixed input size), else the size of its pretrained config."""
    import timm

    model = timm.create_model(name, pretrained=False)
    default = (getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (3, 224, 224))[-1]
    if size is None or size >= default:
        return model, default
    x = torch.randn(1, 3, size, size)
    if _runs(model.eval(), x):
        return model, size
    try:
        small = timm.create_model(name, pretrained=False, img_size=size)
    except Exception:  # the model does not take img_size
        return model, default
    return (small, size) if _runs(small.eval(), x) else (model, default)


def build(name: str, size: int | None = None) -> tuple[nn.Module, torch.Tensor]:
    """The model (random weights, eval mode) and an example input.

    ``size`` None: the model's own input size (224 for torchvision, 640 for yolo); an int: that size where
    the model runs at it (timm models only; others keep their own size).
    """
    if name.startswith("tv:"):
        import torchvision

        model = torchvision.models.get_model(name[3:], weights=None)
        size = 299 if name[3:] == "inception_v3" else 224
    elif name.startswith("yolo:"):
        from ultralytics import YOLO

        model, size = YOLO(name[5:]).model, 640
    else:
        torch.manual_seed(0)
        model, size = _timm_model(name, size)
    torch.manual_seed(0)
    return model.eval(), torch.randn(1, 3, size, size)


_SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "_s", "mobile", "18", "26", "b0")


def _smallness(name: str) -> tuple:
    """Sort key putting the names that sound smallest first (no model is built to decide)."""
    rank = next((i for i, word in enumerate(_SMALL) if word in name), len(_SMALL))
    return rank, len(name), name


def family_models() -> list[str]:
    """One model per timm family (module defining it): the one whose name sounds smallest."""
    import timm

    families = [timm.list_models(module=module) for module in timm.list_modules()]
    return sorted(min(names, key=_smallness) for names in families if names)


def _error(e: BaseException) -> str:
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first[:300]}"


def _limit_memory(gib: float) -> None:
    if gib > 0:
        import resource

        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _prune_one(name: str, ratio: float, size: int | None, conn, round_to: int | None = None) -> None:
    import fxprune

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"model": name}
    try:
        model, x = build(name, size)
        rec["size"] = x.shape[-1]
        start = time.perf_counter()
        rep = fxprune.prune(model, x, ratio=ratio, round_to=round_to)
        rec["round_to"] = rep.round_to
        rec["seconds"] = round(time.perf_counter() - start, 2)
        if rep.flops_before and rep.flops_after:
            rec["flops_kept"] = round(rep.flops_after / rep.flops_before, 3)
        rec["params_kept"] = round(rep.params_after / rep.params_before, 3)
        rec["verified"] = rep.verified
        rec["exact_error"] = rep.exact_error
        rec["groups_pruned"] = sum(after < before for _, _, before, after in rep.widths)
        rec["groups"] = len(rep.widths)
        rec["warnings"] = rep.warnings[:2]
    except BaseException as e:  # one line per failure (MemoryError included): the sweep goes on
        rec["error"] = _error(e)
    conn.send(rec)


def frozen_report(analysis, top: int = 4) -> list[str]:
    """What froze in an :class:`fxprune.Analysis`: the groups with the most frozen channels (weighted by
    the layers they span; the model's output and input channels last), each with its modules and freeze
    reasons, then the unsupported ops."""
    from collections import Counter

    frozen = [g for g in analysis.groups if g.frozen]
    total = sum(g.width for g in analysis.groups)
    lines = [f"groups {len(analysis.groups)}, with frozen channels {len(frozen)}, "
             f"frozen channels {sum(len(g.frozen) for g in frozen)} of {total}"]

    def boring(g) -> bool:  # the classifier's outputs and the image channels freeze in every model
        return all(r == "model output" or "input channels come from" in r for r in g.frozen.values())

    for g in sorted(frozen, key=lambda g: (boring(g), -len(g.frozen) * max(1, len(g.modules))))[:top]:
        reasons = "; ".join(f"{r} (x{n})" for r, n in Counter(g.frozen.values()).most_common(2))
        mods = ", ".join(g.modules[:3]) + (f" +{len(g.modules) - 3}" if len(g.modules) > 3 else "")
        lines.append(f"  group {g.id}: {len(g.frozen)}/{g.width} frozen, {len(g.modules)} layers [{mods}]: "
                     f"{reasons[:300]}")
    for u in analysis.unsupported[:top]:
        lines.append(f"  unsupported {u.op} in {u.module or '-'}: {u.reason[:200]}")
    return lines


def why(name: str, size: int | None = None) -> list[str]:
    """The frozen-channel report of ``name`` (built as the sweep builds it)."""
    import fxprune

    model, x = build(name, size)
    analysis = fxprune.analyze(model, x)
    captured = analysis.captured
    how = f"captured by {captured.method}" + (f" ({'; '.join(captured.notes)})" if captured.notes else "")
    return [how[:400], *frozen_report(analysis)]


def _classifier(model: nn.Module) -> list[nn.Module]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module):
        return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _torch_pruning_one(name: str, ratio: float, size: int | None, conn, round_to: int | None = None) -> None:
    """Torch-Pruning's MetaPruner (L2 magnitude, classifier ignored) at the same channel ratio."""
    import torch_pruning as tp

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"model": name}
    try:
        model, x = build(name, size)
        rec["size"] = x.shape[-1]
        before, _ = tp.utils.count_ops_and_params(model, x)
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=_classifier(model), round_to=round_to,
        )
        pruner.step()
        rec["seconds"] = round(time.perf_counter() - start, 2)
        with torch.no_grad():
            model(x)
        after, _ = tp.utils.count_ops_and_params(model, x)
        rec["flops_kept"] = round(after / before, 3)
    except BaseException as e:
        rec["error"] = _error(e)
    conn.send(rec)


def run(
    name: str, ratio: float, timeout: float, tool: str = "fx", size: int | None = None, memory_gb: float = 0,
    round_to: int | None = None,
) -> dict:
    """Prune ``name`` with ``tool`` (``fx`` or ``tp``) in a child process (bounded by ``timeout`` s and
    ``memory_gb`` GiB of address space, 0 for no limit)."""
    parent, child = mp.Pipe(duplex=False)
    target = _prune_one if tool == "fx" else _torch_pruning_one

    def child_main() -> None:
        _limit_memory(memory_gb)
        target(name, ratio, size, child, round_to)

    p = mp.get_context("fork").Process(target=child_main)
    p.start()
    rec = parent.recv() if parent.poll(timeout) else {"model": name, "error": f"timeout {timeout:.0f} s"}
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()
    if "error" not in rec and "seconds" not in rec:
        rec["error"] = f"child exited with code {p.exitcode}"
    return rec


def load(out: str | None) -> list[dict]:
    """The records of an earlier run written to ``out`` (none when the file does not exist)."""
    if not out or not os.path.exists(out):
        return []
    with open(out) as f:
        return json.load(f)["results"]


def sweep(
    names: list[str], ratio: float = 0.5, timeout: float = 300.0, out: str | None = None, tools=("fx",),
    size: int | None = None, resume: bool = False, retry_errors: bool = False, memory_gb: float = 0,
    round_to: int | None = None,
) -> list[dict]:
    """Prune each model with each tool, print one line per model and tool, write JSON to ``out``.

    Records already in ``out`` are kept (a new record for the same model and tool replaces the old one);
    ``resume`` skips the pairs it holds (``retry_errors``: except those that failed).
    """
    results = {(r["model"], r["tool"]): r for r in load(out)}
    for name in names:
        for tool in tools:
            done = results.get((name, tool))
            if resume and done is not None and not (retry_errors and "error" in done):
                continue
            rec = {"tool": tool, **run(name, ratio, timeout, tool, size, memory_gb, round_to)}
            results[(name, tool)] = rec
            kept = rec.get("flops_kept")
            print(f"{name:32s} {tool:3s} size={rec.get('size', '-')!s:4s} "
                  f"flops_kept={kept if kept is not None else '-':<6} "
                  f"{rec.get('seconds', '-')} s {rec.get('error', '')}", flush=True)
            if out:
                tmp = out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"ratio": ratio, "size": size, "round_to": round_to,
                               "results": list(results.values())}, f, indent=1)
                os.replace(tmp, out)
    return list(results.values())


def _cell(rec: dict | None) -> str:
    if rec is None:
        return "not run"
    if "error" in rec:
        return "fails: " + rec["error"][:90].replace("|", "/")
    kept = rec.get("flops_kept")
    return f"{kept:.3f}" if kept is not None else "runs; FLOPs not counted"


def report(paths: list[str]) -> str:
    """A Markdown table (one row per model: fxprune and Torch-Pruning side by side) of result files."""
    recs: dict[tuple[str, str], dict] = {}
    for path in paths:
        recs.update({(r["model"], r["tool"]): r for r in load(path)})
    models = sorted({m for m, _ in recs}, key=lambda m: (m.startswith("tv:"), m))
    lines = ["| model | size | fxprune FLOPs kept | verified | s | Torch-Pruning FLOPs kept | s |",
             "|---|---|---|---|---|---|---|"]
    for m in models:
        fx, tp = recs.get((m, "fx")), recs.get((m, "tp"))
        size = (fx or {}).get("size") or (tp or {}).get("size") or "-"
        verified = "yes" if fx and fx.get("verified") else "no"
        lines.append(f"| {m} | {size} | {_cell(fx)} | {verified} | {(fx or {}).get('seconds', '-')} | "
                     f"{_cell(tp)} | {(tp or {}).get('seconds', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated names (timm, tv:NAME, yolo:CFG)")
    p.add_argument("--families", action="store_true", help="one model per timm family")
    p.add_argument("--torchvision", action="store_true", help="every torchvision classification model")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per model and tool")
    p.add_argument("--size", type=int, default=None,
                   help="input size for timm models where they run at it (built with img_size=SIZE if their "
                        "size is fixed); default: each model's own size")
    p.add_argument("--round-to", type=int, default=None,
                   help="kept widths a multiple of this (default: fxprune's default, 8; Torch-Pruning's, 1)")
    p.add_argument("--tools", default="fx", help="comma-separated subset of fx,tp (tp: Torch-Pruning)")
    p.add_argument("--out", help="JSON file of the records, updated after every run (earlier records kept)")
    p.add_argument("--resume", action="store_true", help="skip the models and tools already in --out")
    p.add_argument("--retry-errors", action="store_true", help="with --resume: run the failed ones again")
    p.add_argument("--memory-gb", type=float, default=10.0,
                   help="address-space limit of each run in GiB, 0 for none (default 10)")
    p.add_argument("--report", help="comma-separated result files: print their Markdown table and exit")
    p.add_argument("--why", action="store_true",
                   help="print what freezes in each --models entry (largest frozen groups, reasons) and exit")
    a = p.parse_args(argv)
    if a.report:
        print(report(a.report.split(",")))
        return 0
    if a.why:
        torch.set_num_threads(1)
        for name in [n for n in (a.models or "").split(",") if n]:
            print(name, *why(name, a.size), sep="\n", flush=True)
        return 0
    names = family_models() if a.families else []
    if a.torchvision:
        import torchvision

        names += ["tv:" + n for n in sorted(torchvision.models.list_models(module=torchvision.models))]
    names += [n for n in (a.models or "").split(",") if n]
    tools = [t for t in a.tools.split(",") if t in ("fx", "tp")]
    sweep(names, a.ratio, a.timeout, a.out, tools, a.size, a.resume, a.retry_errors, a.memory_gb, a.round_to)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
