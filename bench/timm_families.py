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
import time
from typing import Any

import torch
from torch import nn


def build(name: str, size: int = 224) -> tuple[nn.Module, torch.Tensor]:
    """The model (random weights, eval mode) and an example input."""
    if name.startswith("tv:"):
        import torchvision

        model = torchvision.models.get_model(name[3:], weights=None)
    elif name.startswith("yolo:"):
        from ultralytics import YOLO

        model, size = YOLO(name[5:]).model, 640
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size", (3, size, size))[-1] if "fixed_input_size" in cfg else size
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


def _prune_one(name: str, ratio: float, conn) -> None:
    import fxprune

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"model": name}
    try:
        model, x = build(name)
        start = time.perf_counter()
        rep = fxprune.prune(model, x, ratio=ratio)
        rec["seconds"] = round(time.perf_counter() - start, 2)
        if rep.flops_before and rep.flops_after:
            rec["flops_kept"] = round(rep.flops_after / rep.flops_before, 3)
        rec["params_kept"] = round(rep.params_after / rep.params_before, 3)
        rec["warnings"] = rep.warnings[:2]
    except Exception as e:  # one line per failure: the sweep goes on
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    conn.send(rec)


def _classifier(model: nn.Module) -> list[nn.Module]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module):
        return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _torch_pruning_one(name: str, ratio: float, conn) -> None:
    """Torch-Pruning's MetaPruner (L2 magnitude, classifier ignored) at the same channel ratio."""
    import torch_pruning as tp

    torch.set_num_threads(1)
    rec: dict[str, Any] = {"model": name}
    try:
        model, x = build(name)
        before, _ = tp.utils.count_ops_and_params(model, x)
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=_classifier(model),
        )
        pruner.step()
        rec["seconds"] = round(time.perf_counter() - start, 2)
        with torch.no_grad():
            model(x)
        after, _ = tp.utils.count_ops_and_params(model, x)
        rec["flops_kept"] = round(after / before, 3)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    conn.send(rec)


def run(name: str, ratio: float, timeout: float, tool: str = "fx") -> dict:
    """Prune ``name`` with ``tool`` (``fx`` or ``tp``) in a child process (bounded by ``timeout`` s)."""
    parent, child = mp.Pipe(duplex=False)
    target = _prune_one if tool == "fx" else _torch_pruning_one
    p = mp.get_context("fork").Process(target=target, args=(name, ratio, child))
    p.start()
    rec = parent.recv() if parent.poll(timeout) else {"model": name, "error": f"timeout {timeout:.0f} s"}
    p.join(5)
    if p.is_alive():
        p.kill()
    return rec


def sweep(
    names: list[str], ratio: float = 0.5, timeout: float = 300.0, out: str | None = None, tools=("fx",)
) -> list[dict]:
    """Prune each model with each tool, print one line per model and tool, write JSON to ``out``."""
    results = []
    for name in names:
        for tool in tools:
            rec = {"tool": tool, **run(name, ratio, timeout, tool)}
            results.append(rec)
            kept = rec.get("flops_kept")
            print(f"{name:32s} {tool:3s} flops_kept={kept if kept is not None else '-':<6} "
                  f"{rec.get('seconds', '-')} s {rec.get('error', '')}", flush=True)
        if out:
            with open(out, "w") as f:
                json.dump({"ratio": ratio, "results": results}, f, indent=1)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated names (timm, tv:NAME, yolo:CFG)")
    p.add_argument("--families", action="store_true", help="one model per timm family")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    p.add_argument("--tools", default="fx", help="comma-separated subset of fx,tp (tp: Torch-Pruning)")
    p.add_argument("--out", help="write the records as JSON")
    a = p.parse_args(argv)
    names = family_models() if a.families else []
    names += [n for n in (a.models or "").split(",") if n]
    sweep(names, a.ratio, a.timeout, a.out, [t for t in a.tools.split(",") if t in ("fx", "tp")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
