#!/usr/bin/env python
"""Regularize-then-prune on CIFAR-10 ResNet-56, next to the papers' figures.

From the shared pretrained ResNet-56 (93.39 %) each experiment regularizes with ``fxprune.Pruner``
(restricted scope: the first conv of every residual block, as the papers' code and tables do), prunes
(slim in place, verified), fine-tunes, and reports test accuracy right after pruning and after
fine-tuning, params, FLOPs, the FLOPs speed-up and the CPU latency speed-up (batch 1, interleaved).

Experiments (the papers' settings):

* ``l1-r0.5``, ``tpp-r0.5``, ``l1-r0.9``, ``tpp-r0.9``: per-layer ratio r on the first conv of each block
  (TPP, ICLR 2023, table on ResNet-56);
* ``l1-2.55x``, ``greg1-2.55x``, ``greg2-2.55x``: a uniform ratio on the same layers bisected to a 2.55x
  FLOPs reduction (GReg, ICLR 2021);
* ``slr-*``, ``admm-*`` (structured, both settings) and ``slr-u*`` / ``magnitude-u*`` (unstructured weight
  sparsity): SLR and its ADMM baseline, defined in ``bench/slr_experiments.py``.

Budgets:

* ``full``: the papers' recipes (regularization SGD lr 1e-3, momentum 0.9, wd 5e-4, batch 128, K_u 10,
  K_s 10k, lambda +1e-4 to 1.0; fine-tuning 120 epochs, lr 0.01 -> 0.001 at 60 -> 0.0001 at 90). Days of
  CPU; meant for a GPU machine with ``cifar10.npz``.
* ``cpu``: **shortened** schedules (lambda reaches its ceiling in ``--grow`` iterations with K_u = 1 and
  regularization lr 0.01, K_s = ``--hold``, ``--ft-epochs`` epochs of fine-tuning). Results are labelled
  as shortened; they are not a reproduction of the papers' numbers.

    python bench/cifar_resnet56.py --budget cpu --experiments l1-r0.9,tpp-r0.9
    python bench/cifar_resnet56.py --budget full --device cuda --out bench/RESULTS_cifar_full.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(ROOT.parent / "shared" / "data"))

import fxprune  # noqa: E402
from fxprune.data import evaluate_accuracy, load_cifar10, normalize_images, shared_data_dir  # noqa: E402
from fxprune.measure import count_flops, count_params, measure_cpu_latency  # noqa: E402
from fxprune.models import create_model, load_cifar_checkpoint  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slr_experiments  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Experiment:
    method: str
    ratio: float = 0.0
    target_flops: float | None = None
    paper: float | None = None  # the paper's fine-tuned accuracy
    paper_base: float | None = None
    paper_speedup: str = ""
    source: str = ""
    options: tuple = ()  # extra Pruner options as (name, value) pairs


EXPERIMENTS = {
    "l1-r0.5": Experiment("l1", 0.5, None, 93.51, 93.78, "1.99x", "TPP table, L1 + FT (lr 1e-2)"),
    "tpp-r0.5": Experiment("tpp", 0.5, None, 93.46, 93.78, "1.99x", "TPP table"),
    "l1-r0.9": Experiment("l1", 0.9, None, 86.75, 93.78, "11.41x", "TPP table, L1 + FT (lr 1e-2)"),
    "tpp-r0.9": Experiment("tpp", 0.9, None, 89.63, 93.78, "11.41x", "TPP table"),
    "l1-2.55x": Experiment("l1", 0.0, 1 / 2.55, None, None, "2.55x", "baseline at GReg's setting"),
    "greg1-2.55x": Experiment("greg1", 0.0, 1 / 2.55, 93.18, 93.36, "2.55x", "GReg paper"),
    "greg2-2.55x": Experiment("greg2", 0.0, 1 / 2.55, 93.36, 93.36, "2.55x", "GReg paper"),
}
slr_experiments.add_experiments(EXPERIMENTS, Experiment)


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    reg_lr: float
    weight_decay: float
    batch: int
    ft_epochs: int
    ft_lr: float
    ft_milestones: tuple[float, ...]  # fractions of the fine-tuning epochs where lr drops 10x
    schedules: dict  # method -> Pruner options
    shortened: bool


def _budgets(args: argparse.Namespace) -> dict[str, Budget]:
    grow, hold = args.grow, args.hold
    return {
        "full": Budget("full", 1e-3, 5e-4, 128, 120, 0.01, (0.5, 0.75), {}, False),
        "cpu": Budget(
            "cpu",
            0.01,
            5e-4,
            128,
            args.ft_epochs,
            0.01,
            (0.5, 0.75),
            {
                "greg1": dict(update_every=1, delta=1.0 / grow, stabilize=hold),
                "greg2": dict(
                    update_every=1,
                    delta=1.0 / grow,
                    stabilize=hold,
                    pick_delta=1e-2 / (grow // 3),
                    pick_ceiling=1e-2,
                ),
                "tpp": dict(update_every=1, delta=1.0 / grow, stabilize=hold, zero_every=max(hold // 30, 1)),
                **slr_experiments.cpu_schedules(args),
            },
            True,
        ),
    }


def split_dataset(source: Path, out_dir: Path, parts: int) -> list[Path]:
    """Write ``cifar10.npz`` as ``parts`` smaller files (each carried to a device machine separately)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with np.load(source) as data:
        arrays = {k: data[k] for k in data.files}
    paths = []
    for i in range(parts):
        chunk = {k: np.array_split(v, parts)[i] for k, v in arrays.items()}
        path = out_dir / f"cifar10-part{i}.npz"
        np.savez(path, **chunk)
        paths.append(path)
    return paths


def load_split(split: str, data: str | None, limit: int | None):
    """A CIFAR-10 split from the shared file, another ``.npz`` or a folder of ``split_dataset`` parts."""
    if data is None or Path(data).is_file():
        return load_cifar10(split, limit, path=data)
    parts = sorted(Path(data).glob("cifar10-part*.npz"))
    if not parts:
        raise FileNotFoundError(f"no cifar10-part*.npz files in {data}")
    images, labels = [], []
    for part in parts:
        with np.load(part) as d:
            images.append(d[f"x_{split}"])
            labels.append(d[f"y_{split}"])
    x, y = np.concatenate(images)[:limit], np.concatenate(labels)[:limit]
    return normalize_images(x), torch.from_numpy(y.astype(np.int64))


class Loader:
    """Shuffled CIFAR-10 training batches with random crop (pad 4) and horizontal flip."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.batch = x, y, batch
        self.gen = torch.Generator().manual_seed(seed)

    def epoch(self):
        order = torch.randperm(len(self.x), generator=self.gen)
        for start in range(0, len(order) - self.batch + 1, self.batch):
            idx = order[start : start + self.batch]
            yield self._augment(self.x[idx]), self.y[idx]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        padded = F.pad(x, (4, 4, 4, 4))
        dx = torch.randint(0, 9, (n,), generator=self.gen)
        dy = torch.randint(0, 9, (n,), generator=self.gen)
        out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
        flip = torch.rand(n, generator=self.gen) < 0.5
        out[flip] = out[flip].flip(3)
        return out

    def forever(self):
        while True:
            yield from self.epoch()


def _sgd(model, lr, wd, momentum=0.9):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


def regularize(model, pruner, loader, budget, device, log_every, max_iters) -> int:
    opt = _sgd(model, budget.reg_lr, budget.weight_decay)
    model.train()
    start, it = time.time(), 0
    for x, y in loader.forever():
        if pruner.done or it >= max_iters:
            break
        x, y = x.to(device), y.to(device)
        task_loss = F.cross_entropy(model(x), y)
        loss = task_loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.after_backward()
        opt.step()
        pruner.step(loss=task_loss.item())
        it += 1
        if it % log_every == 0:
            lam = getattr(pruner.method, "lam", None)
            if lam is None and hasattr(pruner.method, "lambdas"):
                lam = max(pruner.method.lambdas().values())
            print(
                f"    reg {it:6d} {pruner.phase:11s} loss {loss.item():.3f} lambda {lam or 0:.3g} "
                f"({time.time() - start:.0f}s)",
                flush=True,
            )
    return it


def finetune(model, loader, budget, device, log_every) -> None:
    opt = _sgd(model, budget.ft_lr, budget.weight_decay)
    steps = sorted({m for m in (int(round(f * budget.ft_epochs)) for f in budget.ft_milestones) if m > 0})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, steps, 0.1)
    start, it = time.time(), 0
    for epoch in range(budget.ft_epochs):
        model.train()
        for x, y in loader.epoch():
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it % log_every == 0:
                print(
                    f"    ft epoch {epoch} it {it:6d} lr {sched.get_last_lr()[0]:.0e} loss {loss.item():.3f} "
                    f"({time.time() - start:.0f}s)",
                    flush=True,
                )
        sched.step()


def run(name: str, exp: Experiment, budget: Budget, data, args) -> dict:
    if slr_experiments.is_unstructured(exp):
        tools = dict(Loader=Loader, regularize=regularize, finetune=finetune)
        return slr_experiments.run_unstructured(name, exp, budget, data, args, tools)
    device = torch.device(args.device)
    (x_train, y_train), (x_test, y_test) = data
    model = load_cifar_checkpoint(create_model("cifar_resnet56"), args.weights).to(device)
    example = torch.randn(1, 3, 32, 32, device=device)
    opts = {**budget.schedules.get(exp.method, {}), **dict(exp.options)}
    pruner = fxprune.Pruner(
        model, example, exp.method, exp.ratio, target_flops=exp.target_flops, scope=args.scope, **opts
    )
    loader = Loader(x_train, y_train, budget.batch, args.seed)
    t0 = time.time()
    iters = 0
    if not pruner.done:
        iters = regularize(model, pruner, loader, budget, device, args.log_every, args.max_reg_iters)
    reg_s = time.time() - t0
    quick = (x_test[: args.eval_limit], y_test[: args.eval_limit])
    acc_reg = evaluate_accuracy(model, *quick) if iters else None
    dense = copy.deepcopy(model).cpu().eval()
    report = pruner.prune()
    acc_pruned = evaluate_accuracy(model, *quick)
    t1 = time.time()
    finetune(model, loader, budget, device, args.log_every)
    ft_s = time.time() - t1
    acc_final = evaluate_accuracy(model, x_test, y_test)
    slim = copy.deepcopy(model).cpu().eval()
    lat = measure_cpu_latency(
        {"dense": dense, "pruned": slim}, torch.randn(1, 3, 32, 32), threads=1, iters=20, repeats=5
    )
    return {
        "experiment": name,
        "method": exp.method,
        "ratio": exp.ratio,
        "target_flops": exp.target_flops,
        "budget": budget.name,
        "scope": args.scope,
        "shortened": budget.shortened,
        "schedule": {**opts, "reg_lr": budget.reg_lr, "ft_epochs": budget.ft_epochs, "ft_lr": budget.ft_lr},
        "reg_iterations": iters,
        "reg_seconds": round(reg_s, 1),
        "ft_seconds": round(ft_s, 1),
        "acc_after_regularization": acc_reg,
        "acc_after_prune": acc_pruned,
        "acc_eval_limit": args.eval_limit,
        "acc_final": acc_final,
        "params": report.params_after,
        "params_dense": report.params_before,
        "flops": report.flops_after,
        "flops_dense": report.flops_before,
        "flops_speedup": report.flops_ratio,
        "cpu_latency_speedup": lat["dense"].median_ms / lat["pruned"].median_ms,
        "verify_error": report.exact_error,
        "paper_acc": exp.paper,
        "paper_base": exp.paper_base,
        "paper_speedup": exp.paper_speedup,
        "paper_source": exp.source,
    }


def markdown(rows: list[dict], base_acc: float) -> str:
    limit = rows[0]["acc_eval_limit"] if rows else 0
    lines = [
        f"Dense ResNet-56: {base_acc * 100:.2f} % ({rows[0]['test_images'] if rows else 0} test images). "
        f"Accuracies after regularization and right after pruning are on the first {limit} test images; "
        "after fine-tuning (FT) on all of them.",
        "",
        "| experiment | budget | reg its | acc after reg | acc after prune | acc after FT | paper (base) | "
        "FLOPs speed-up | paper | CPU latency speed-up | params | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda v: "-" if v is None else f"{v * 100:.2f}"  # noqa: E731
    for r in rows:
        paper = f"{r['paper_acc']:.2f} ({r['paper_base']:.2f})" if r["paper_acc"] else "-"
        budget = r["budget"] + (" (shortened)" if r["shortened"] else "")
        minutes = (r["reg_seconds"] + r["ft_seconds"]) / 60
        lines.append(
            f"| {r['experiment']}{' (group scope)' if r.get('scope') == 'group' else ''} | {budget} | "
            f"{r['reg_iterations']} | "
            f"{pct(r['acc_after_regularization'])} | {pct(r['acc_after_prune'])} | "
            f"**{pct(r['acc_final'])}** | {paper} | {r['flops_speedup']:.2f}x | "
            f"{r['paper_speedup']} | {r['cpu_latency_speedup']:.2f}x | {r['params'] / 1e3:.0f} K | "
            f"{minutes:.0f} min |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", choices=["cpu", "full"], default="cpu")
    p.add_argument(
        "--experiments", default=",".join(EXPERIMENTS), help="comma-separated: " + ", ".join(EXPERIMENTS)
    )
    p.add_argument(
        "--scope",
        choices=["restricted", "group"],
        default="restricted",
        help="restricted: the papers' layers (default); group: every discovered group, residual streams too",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--grow", type=int, default=300, help="cpu budget: iterations for lambda to reach its ceiling"
    )
    p.add_argument("--hold", type=int, default=100, help="cpu budget: K_s, iterations held at the ceiling")
    p.add_argument("--ft-epochs", type=int, default=2, help="cpu budget: fine-tuning epochs")
    slr_experiments.add_arguments(p)
    p.add_argument(
        "--max-reg-iters", type=int, default=10**9, help="stop regularizing after this many iterations"
    )
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test images (smoke runs)"
    )
    p.add_argument("--eval-limit", type=int, default=2000, help="test images for the intermediate accuracies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--weights", default=None, help="ResNet-56 checkpoint (default: the shared one)")
    p.add_argument("--data", default=None, help="cifar10.npz or a folder of parts (default: the shared file)")
    p.add_argument(
        "--split-data", metavar="DIR", help="write the data as 4 parts under DIR (< 64 MiB each) and exit"
    )
    p.add_argument("--out", default=None, help="JSON file to write (appends to an existing list)")
    p.add_argument(
        "--markdown-from", nargs="+", metavar="JSON", help="print the table of earlier runs and exit"
    )
    args = p.parse_args(argv)
    logging.basicConfig(format="    %(message)s")
    logging.getLogger("fxprune.regularize").setLevel(logging.INFO)  # schedule events: phases, choices
    if args.markdown_from:
        rows = [r for f in args.markdown_from for r in json.loads(Path(f).read_text())]
        print(markdown(rows, rows[0]["base_acc"] if rows else math.nan))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.experiments.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiments {unknown}; known: {', '.join(EXPERIMENTS)}")
    data_dir = shared_data_dir()
    if args.weights is None:
        found = sorted((data_dir / "weights").glob("resnet56-*.th")) if data_dir else []
        if not found:
            p.error("ResNet-56 checkpoint not found; pass --weights or set FXPRUNE_SHARED_DATA")
        args.weights = str(found[0])
    torch.manual_seed(args.seed)
    budget = _budgets(args)[args.budget]
    if args.split_data:
        for path in split_dataset(
            Path(args.data or shared_data_dir() / "cifar10.npz"), Path(args.split_data), 4
        ):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    data = (load_split("train", args.data, args.train_limit), load_split("test", args.data, args.test_limit))
    dense = load_cifar_checkpoint(create_model("cifar_resnet56"), args.weights).to(args.device)
    base_acc = evaluate_accuracy(dense, *data[1])
    flops = count_flops(dense.cpu(), torch.randn(1, 3, 32, 32))
    print(
        f"dense ResNet-56: {base_acc * 100:.2f} %, {count_params(dense) / 1e3:.0f} K params, "
        f"{flops / 1e6:.1f} MFLOPs; budget {budget.name}",
        "(SHORTENED schedules)" if budget.shortened else "",
    )
    rows = []
    out = Path(args.out) if args.out else None
    for name in names:
        print(f"== {name}", flush=True)
        row = run(name, EXPERIMENTS[name], budget, data, args)
        row.update(
            test_images=len(data[1][0]),
            base_acc=base_acc,
            threads=torch.get_num_threads(),
            device=args.device,
            machine=platform.machine(),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            command=" ".join(sys.argv),
        )
        rows.append(row)
        print(
            f"   {name}: after prune {row['acc_after_prune'] * 100:.2f} %, "
            f"after FT {row['acc_final'] * 100:.2f} % "
            f"(paper {row['paper_acc']}), FLOPs {row['flops_speedup']:.2f}x",
            flush=True,
        )
        if out:
            previous = json.loads(out.read_text()) if out.exists() else []
            out.write_text(json.dumps(previous + [row], indent=1))
    print(markdown(rows, base_acc))
    return 0 if all(math.isfinite(r["acc_final"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
