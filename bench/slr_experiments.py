"""SLR and ADMM rows of ``bench/cifar_resnet56.py`` (Gurevin et al., IJCAI 2021, and its ADMM baseline).

* Structured (``slr-*``, ``admm-*``): at GReg's setting (a uniform ratio bisected to 2.55x fewer FLOPs)
  and at the TPP table's per-layer ratio r = 0.5 / 0.9; accuracy right after the hard prune (the paper's
  headline: no retraining) and after the same fine-tuning as the other rows.
* Unstructured (``slr-u50`` ... and ``magnitude-u50`` ...): a fraction of the weights of every pruned
  conv and linear layer set to zero (each layer at the same sparsity), then masked fine-tuning.
  ``magnitude`` is the same per-layer projection without SLR training (``rounds=0``). No shape changes,
  so these rows bring no dense speed-up.

cpu budget (shortened): ``--slr-rounds`` x ``--slr-every`` iterations of SLR/ADMM (Z and multiplier
steps every ``--slr-every`` iterations instead of every epoch) with ``--slr-rho`` (the paper: 0.1 over
100 epochs, far too weak for a few hundred iterations).
"""

from __future__ import annotations

import argparse
import time

import torch

from fxprune.data import evaluate_accuracy

GREG_FLOPS = 1 / 2.55
# every conv and linear layer of the discovered groups except the stem conv and the classifier
UNSTRUCTURED = (("unstructured", True), ("scope", "group"), ("ratios", {"conv1": 0.0, "linear": 0.0}))


def add_experiments(experiments: dict, experiment: type) -> None:
    """Register the SLR/ADMM rows in ``experiments`` (``experiment``: the bench's Experiment class)."""
    for method in ("slr", "admm"):
        experiments[f"{method}-2.55x"] = experiment(
            method, 0.0, GREG_FLOPS, None, None, "2.55x", "GReg setting"
        )
        for r, speedup in ((0.5, "1.99x"), (0.9, "11.41x")):
            experiments[f"{method}-r{r}"] = experiment(method, r, None, None, None, speedup, "TPP setting")
    for pct in (50, 75, 90):
        for name, options in (("slr", ()), ("magnitude", (("rounds", 0),))):
            options = UNSTRUCTURED + options
            source = "SLR paper, unstructured" if name == "slr" else "baseline (no SLR training)"
            experiments[f"{name}-u{pct}"] = experiment(
                "slr",
                pct / 100,
                None,
                None,
                None,
                "1x (same shapes)",
                source,
                (("unstructured", True),) + options,
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slr-every", type=int, default=25, help="cpu budget: SLR/ADMM update_every")
    parser.add_argument("--slr-rounds", type=int, default=6, help="cpu budget: SLR/ADMM rounds")
    parser.add_argument("--slr-rho", type=float, default=1.0, help="cpu budget: SLR/ADMM rho")


def cpu_schedules(args: argparse.Namespace) -> dict:
    common = dict(update_every=args.slr_every, rounds=args.slr_rounds, rho=args.slr_rho)
    return {"slr": dict(common), "admm": dict(common)}


def is_unstructured(exp) -> bool:
    return bool(dict(exp.options).get("unstructured"))


def run_unstructured(name, exp, budget, data, args, tools: dict) -> dict:
    """One unstructured row: SLR (or none), hard prune to weight sparsity, masked fine-tuning."""
    import fxprune
    from fxprune.models import create_model, load_cifar_checkpoint

    device = torch.device(args.device)
    (x_train, y_train), (x_test, y_test) = data
    model = load_cifar_checkpoint(create_model("cifar_resnet56"), args.weights).to(device)
    opts = {**budget.schedules.get(exp.method, {}), **dict(exp.options)}
    scope = opts.pop("scope", args.scope)
    pruner = fxprune.Pruner(
        model, torch.randn(1, 3, 32, 32, device=device), exp.method, exp.ratio, scope=scope, **opts
    )
    loader = tools["Loader"](x_train, y_train, budget.batch, args.seed)
    quick = (x_test[: args.eval_limit], y_test[: args.eval_limit])
    t0, iters = time.time(), 0
    if not pruner.done:
        iters = tools["regularize"](model, pruner, loader, budget, device, args.log_every, args.max_reg_iters)
    reg_s = time.time() - t0
    acc_reg = evaluate_accuracy(model, *quick) if iters else None
    report = pruner.prune()
    acc_pruned = evaluate_accuracy(model, *quick)
    handles = report.mask_gradients(model)  # fresh SGD: zero gradients keep pruned weights at zero
    t1 = time.time()
    tools["finetune"](model, loader, budget, device, args.log_every)
    ft_s = time.time() - t1
    for h in handles:
        h.remove()
    still_zero = all(
        bool((model.get_parameter(n)[~m.to(device)] == 0).all()) for n, m in report.masks.items()
    )
    acc_final = evaluate_accuracy(model, x_test, y_test)
    params = sum(m.numel() for m in report.masks.values())
    return {
        "experiment": name,
        "method": "magnitude" if opts.get("rounds") == 0 else exp.method,
        "ratio": exp.ratio,
        "target_flops": None,
        "budget": budget.name,
        "scope": scope,
        "shortened": budget.shortened,
        "schedule": {**opts, "reg_lr": budget.reg_lr, "ft_epochs": budget.ft_epochs, "ft_lr": budget.ft_lr},
        "reg_iterations": iters,
        "reg_seconds": round(reg_s, 1),
        "ft_seconds": round(ft_s, 1),
        "acc_after_regularization": acc_reg,
        "acc_after_prune": acc_pruned,
        "acc_eval_limit": args.eval_limit,
        "acc_final": acc_final,
        "sparsity": report.sparsity,
        "sparse_params": params,
        "mask_kept_during_finetuning": still_zero,
        "params": sum(p.numel() for p in model.parameters())
        - sum(int((~m).sum()) for m in report.masks.values()),
        "params_dense": sum(p.numel() for p in model.parameters()),
        "flops_speedup": 1.0,
        "cpu_latency_speedup": 1.0,
        "verify_error": None,
        "paper_acc": exp.paper,
        "paper_base": exp.paper_base,
        "paper_speedup": exp.paper_speedup,
        "paper_source": exp.source,
    }
