#!/usr/bin/env python
"""CCM widths and over-parameterized fine-tuning on CIFAR-10 ResNet-56, next to the papers' figures.

Parts (all start from the shared pretrained ResNet-56, 93.39 %):

* ``flops``: CCM channel selection only (no training): calibration on a few training batches, one global
  threshold, a width per group; prints the FLOPs reduction at each threshold (paper, after CCM training:
  0.9 / 0.8 / 0.7 / 0.6 -> -38.3 / -56.4 / -69.9 / -79.2 %).
* ``ccm``: per threshold, ``--reg-iters`` iterations of CCM training (``lam``), widths from the last
  iterations' maps, prune, ``--ft-iters`` iterations of fine-tuning, test accuracy.
* ``overparam``: L1 pruning at per-layer ratio r (block-internal convs, as the TPP table), then the same
  number of fine-tuning iterations plain, and over-parameterized (``fxprune.overparam``, factor 2) with
  SP-KD from the dense model, merged back before testing.

Budgets here are far shorter than the papers' (400 + 600 epochs for CCM, full fine-tuning schedules for
the over-parameterization paper): results are labelled as shortened and are not a reproduction.

    python bench/ccm_overparam.py flops --thresholds 0.9,0.8,0.7,0.6
    python bench/ccm_overparam.py ccm --thresholds 0.9,0.8,0.7,0.6 --reg-iters 100 --ft-iters 300
    python bench/ccm_overparam.py overparam --ratio 0.9 --ft-iters 300
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(ROOT.parent / "shared" / "data"))

import fxprune  # noqa: E402
from fxprune.data import evaluate_accuracy, shared_data_dir  # noqa: E402
from fxprune.measure import count_flops  # noqa: E402
from fxprune.models import create_model, load_cifar_checkpoint  # noqa: E402
from fxprune.overparam import OverparamFinetune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_resnet56 import Loader, load_split  # noqa: E402

PAPER_CCM = {0.9: (38.3, 94.00), 0.8: (56.4, 93.78), 0.7: (69.9, 92.74), 0.6: (79.2, 91.87)}
EXAMPLE = torch.randn(1, 3, 32, 32)


def dense_model(weights: str) -> torch.nn.Module:
    return load_cifar_checkpoint(create_model("cifar_resnet56"), weights)


def sgd(params, lr: float, wd: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)


def finetune(model, loader, iters: int, lr: float, extra=None, log_every: int = 50) -> float:
    """``iters`` SGD steps (lr 10x lower from the middle); ``extra(x)`` adds a loss term. Returns seconds."""
    opt = sgd(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [iters // 2, (3 * iters) // 4], 0.1)
    model.train()
    start = time.time()
    for it, (x, y) in enumerate(loader.forever()):
        if it >= iters:
            break
        loss = F.cross_entropy(model(x), y)
        term = extra(x) if extra is not None else None
        total = loss + term if term is not None else loss
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        if (it + 1) % log_every == 0:
            t = f" extra {term.item():.4f}" if term is not None else ""
            print(f"    ft {it + 1:5d} loss {loss.item():.3f}{t} ({time.time() - start:.0f}s)", flush=True)
    return time.time() - start


def calibration_batches(x, n_batches: int, batch: int):
    return [x[i * batch : (i + 1) * batch] for i in range(n_batches)]


def part_flops(args, data) -> None:
    (x_train, _), _ = data
    dense_flops = count_flops(dense_model(args.weights), EXAMPLE)
    for criterion in args.criteria.split(","):
        for thr in args.thresholds:
            model = dense_model(args.weights)
            pruner = fxprune.Pruner(
                model, EXAMPLE, "ccm", scope=args.scope, threshold=thr, criterion=criterion
            )
            t0 = time.time()
            report = pruner.prune(calibration=calibration_batches(x_train, args.calib_batches, 64))
            red = 100 * (1 - report.flops_after / dense_flops)
            paper = PAPER_CCM.get(thr, (None, None))[0]
            print(
                f"  {criterion:8s} threshold {thr:.2f}: FLOPs -{red:.1f} % (paper -{paper} %), params "
                f"{report.params_after / 1e3:.0f} K, verify error {report.exact_error:.1e}, "
                f"{time.time() - t0:.0f} s",
                flush=True,
            )
            args.emit(
                dict(
                    part="flops",
                    criterion=criterion,
                    threshold=thr,
                    scope=args.scope,
                    flops_reduction=red,
                    params=report.params_after,
                    paper_flops_reduction=paper,
                    calib_images=64 * args.calib_batches,
                )
            )


def part_ccm(args, data) -> None:
    (x_train, y_train), (x_test, y_test) = data
    dense_flops = count_flops(dense_model(args.weights), EXAMPLE)
    for thr in args.thresholds:
        model = dense_model(args.weights)
        pruner = fxprune.Pruner(
            model,
            EXAMPLE,
            "ccm",
            scope=args.scope,
            threshold=thr,
            lam=args.lam,
            steps=args.reg_iters,
            calibration_steps=args.calib_batches,
            criterion=args.criteria.split(",")[0],
        )
        loader = Loader(x_train, y_train, args.batch, args.seed)
        opt = sgd(model.parameters(), args.reg_lr)
        model.train()
        t0 = time.time()
        for it, (x, y) in enumerate(loader.forever()):
            if pruner.done:
                break
            ce = F.cross_entropy(model(x), y)
            loss = ce + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            pruner.after_backward()
            opt.step()
            pruner.step()
            if (it + 1) % 25 == 0:
                print(f"    reg {it + 1:5d} ce {ce.item():.3f} loss {loss.item():.3f}", flush=True)
        reg_s = time.time() - t0
        report = pruner.prune()
        acc_pruned = evaluate_accuracy(model, x_test[: args.eval_limit], y_test[: args.eval_limit])
        ft_s = finetune(model, loader, args.ft_iters, args.ft_lr)
        acc = evaluate_accuracy(model, x_test, y_test)
        red = 100 * (1 - report.flops_after / dense_flops)
        paper_red, paper_acc = PAPER_CCM.get(thr, (None, None))
        print(
            f"  ccm threshold {thr}: FLOPs -{red:.1f} % (paper -{paper_red} %), after prune "
            f"{acc_pruned * 100:.2f} %, after FT {acc * 100:.2f} % (paper {paper_acc})",
            flush=True,
        )
        args.emit(
            dict(
                part="ccm",
                threshold=thr,
                scope=args.scope,
                lam=args.lam,
                reg_iters=args.reg_iters,
                ft_iters=args.ft_iters,
                batch=args.batch,
                flops_reduction=red,
                params=report.params_after,
                acc_after_prune=acc_pruned,
                acc_eval_limit=args.eval_limit,
                acc_final=acc,
                paper_flops_reduction=paper_red,
                paper_acc=paper_acc,
                reg_seconds=reg_s,
                ft_seconds=ft_s,
            )
        )


def part_overparam(args, data) -> None:
    (x_train, y_train), (x_test, y_test) = data
    base = dense_model(args.weights)
    pruner = fxprune.Pruner(base, EXAMPLE, "l1", args.ratio, scope="restricted")
    report = pruner.prune()
    acc_pruned = evaluate_accuracy(base, x_test[: args.eval_limit], y_test[: args.eval_limit])
    print(f"  l1 r={args.ratio}: FLOPs {report.flops_ratio:.2f}x, after prune {acc_pruned * 100:.2f} %")
    for mode in args.modes.split(","):
        model = copy.deepcopy(base)
        loader = Loader(x_train, y_train, args.batch, args.seed)
        torch.manual_seed(args.seed)
        extra, ft = None, None
        if mode == "overparam":
            teacher = dense_model(args.weights)
            layers = args.sp_layers.split(",") if args.sp_layers else None
            ft = OverparamFinetune(model, teacher, factor=args.factor, weight=args.sp_gamma, layers=layers)
            extra = ft.penalty if args.sp_gamma > 0 else None
        secs = finetune(model, loader, args.ft_iters, args.ft_lr, extra)
        if ft is not None:
            expanded = copy.deepcopy(model)
            ft.merge()
            x = x_test[:256]
            expanded.eval()
            model.eval()
            with torch.no_grad():
                a, b = expanded(x), model(x)
            merge_err = ((a - b).abs().max() / a.abs().max()).item()
        else:
            merge_err = None
        acc = evaluate_accuracy(model, x_test, y_test)
        print(f"  {mode}: after {args.ft_iters} FT iterations {acc * 100:.2f} % ({secs:.0f} s)", flush=True)
        args.emit(
            dict(
                part="overparam",
                mode=mode,
                ratio=args.ratio,
                ft_iters=args.ft_iters,
                batch=args.batch,
                factor=args.factor if mode == "overparam" else None,
                sp_gamma=args.sp_gamma,
                sp_layers=args.sp_layers,
                flops_speedup=report.flops_ratio,
                params=report.params_after,
                acc_after_prune=acc_pruned,
                acc_final=acc,
                merge_rel_error=merge_err,
                ft_seconds=secs,
            )
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["flops", "ccm", "overparam"])
    p.add_argument("--thresholds", default="0.9,0.8,0.7,0.6")
    p.add_argument("--criteria", default="nuclear", help="ccm criteria, comma-separated: nuclear, variance")
    p.add_argument("--scope", choices=["restricted", "group"], default="restricted")
    p.add_argument("--calib-batches", type=int, default=4, help="calibration batches (64 images each)")
    p.add_argument("--lam", type=float, default=0.05)
    p.add_argument("--reg-iters", type=int, default=100)
    p.add_argument("--reg-lr", type=float, default=0.01)
    p.add_argument("--ft-iters", type=int, default=300)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--modes", default="plain,overparam")
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--sp-gamma", type=float, default=3000.0, help="SP-KD weight (Tung and Mori: 3000)")
    p.add_argument(
        "--sp-layers",
        default="layer1,layer2,layer3",
        help="modules whose outputs SP-KD matches (default: the three stages; empty: every expanded layer)",
    )
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None)
    p.add_argument("--out", default=None, help="JSON file to append the rows to")
    args = p.parse_args(argv)
    args.thresholds = [float(t) for t in args.thresholds.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    logging.basicConfig(format="    %(message)s")
    if args.weights is None:
        found = sorted((shared_data_dir() / "weights").glob("resnet56-*.th")) if shared_data_dir() else []
        if not found:
            p.error("ResNet-56 checkpoint not found; pass --weights or set FXPRUNE_SHARED_DATA")
        args.weights = str(found[0])
    data = (load_split("train", None, args.train_limit), load_split("test", None, args.test_limit))
    print(f"{args.part}: {' '.join(sys.argv)}", flush=True)
    args.emit = lambda row: emit(row, args.out)
    {"flops": part_flops, "ccm": part_ccm, "overparam": part_overparam}[args.part](args, data)
    return 0


def emit(row: dict, out: str | None) -> None:
    """Append one row (with the command line) to the JSON file as soon as it is measured."""
    row["command"] = " ".join(sys.argv)
    if out:
        path = Path(out)
        previous = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(previous + [row], indent=1))


if __name__ == "__main__":
    sys.exit(main())
