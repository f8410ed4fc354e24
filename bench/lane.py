#!/usr/bin/env python
"""UFLD lane detector end to end: train, prune (L1 one-shot vs SLR), fine-tune, TuSimple metric, latency.

The TuSimple clip images are not available here: training and test images are **rendered from the real
TuSimple label geometry** (``../shared/data/tusimple_sample/labels``, 768 frames) on synthetic road
textures by :class:`fxprune.models.LaneRenderer`. Every figure this bench prints is on rendered images,
not on the real clips. Test frames (every 6th label line, 128 frames) are never trained on; training
frames are also used mirrored. The 6 real LaneNet example frames (lane masks, no label line) check the
reader: a TuSimple label derived from each mask goes through the same file reader and target code, and
the targets decoded back must fall on the mask's lane pixels.

Stages: train the dense model with the auxiliary segmentation head (Adam, cosine); drop the aux head
(training-only in UFLD) and prune the inference graph, once with L1 one-shot and once with SLR (or
``--reg-method``) through ``fxprune.Pruner`` at the same ``--target-flops``; TuSimple accuracy/FP/FN
right after the hard prune and after the same ``--ft-iters`` of fine-tuning (cls + similarity loss);
onnxruntime and OpenVINO CPU latency, dense and pruned timed interleaved in one run.

    python bench/lane.py --threads 1 --out bench/RESULTS_lane.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(ROOT.parent / "shared" / "data"))

import fxprune  # noqa: E402
from fxprune.data import shared_data_dir  # noqa: E402
from fxprune.measure import count_flops, count_params  # noqa: E402
from fxprune.models import (  # noqa: E402
    LaneRenderer,
    TusimpleLaneDataset,
    decode_ufld,
    flip_frame,
    frame_from_instance_mask,
    lane_resnet18_narrow,
    overlay_lanes,
    read_tusimple_labels,
    tusimple_scores,
    ufld_loss,
    ufld_targets,
)

NOTE = "images rendered from real TuSimple label geometry (synthetic road textures), not the real clips"
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# -- data ----------------------------------------------------------------------------------------------
def split_frames(frames):
    test = frames[::6]
    train = [f for i, f in enumerate(frames) if i % 6]
    return train + [flip_frame(f) for f in train], test


def render_set(frames, args, seed: int):
    ds = TusimpleLaneDataset(frames, input_size=args.size, image_loader=LaneRenderer(args.size, seed, 0))
    xs, cls, seg = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(cls), torch.stack(seg)


class TrainStream:
    """Batches of freshly rendered training images (new textures every pass over the frames)."""

    def __init__(self, frames, args, seed: int) -> None:
        self.renderer = LaneRenderer(args.size, seed)
        self.ds = TusimpleLaneDataset(frames, input_size=args.size, image_loader=self.renderer)
        self.batch, self.rng, self.order, self.pos = args.batch, np.random.default_rng(seed), [], 0

    def next(self):
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.ds)), 0
            self.renderer.epoch += 1
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        xs, cls, seg = zip(*(self.ds[int(i)] for i in idx))
        return torch.stack(xs), torch.stack(cls), torch.stack(seg)


# -- training and evaluation ---------------------------------------------------------------------------
def train(
    model, stream, iters: int, lr: float, pruner=None, tag: str = "train", until_done=False, probe=None
):
    """Adam with cosine decay; with ``pruner`` its hooks run every step (and ``until_done`` stops there).

    ``probe`` (iterations, callable) evaluates the model every that many iterations, for the log.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    t, seen = time.time(), 0
    for it in range(iters):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / iters))
        x, cls, seg = stream.next()
        out = model(x)
        cls_out, seg_out = out if isinstance(out, tuple) else (out, None)
        loss, parts = ufld_loss(cls_out, cls, seg_out, seg if seg_out is not None else None)
        task_loss = float(loss.detach())
        if pruner is not None:
            loss = loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        if pruner is not None:
            pruner.after_backward()
        opt.step()
        if pruner is not None:
            pruner.step(loss=task_loss)  # SLR's optimality check compares task losses
        seen += len(x)
        if it % 50 == 0 or it == iters - 1:
            extra = f" phase {pruner.phase}" if pruner is not None else ""
            rate = seen / (time.time() - t)
            log(f"{tag} it {it}/{iters} loss {float(loss.detach()):.4f} {parts}{extra} ({rate:.1f} img/s)")
        if probe is not None and (it + 1) % probe[0] == 0 and it + 1 < iters:
            log(f"{tag} it {it + 1}: {probe[1](model)}")
            model.train()
        if until_done and pruner is not None and pruner.done:
            log(f"{tag}: pruner done at iteration {it + 1}")
            break
    model.eval()


@torch.no_grad()
def evaluate(model, test, frames, args) -> dict:
    model.eval()
    preds = []
    for i in range(0, len(test[0]), 32):
        out = model(test[0][i : i + 32])
        out = out[0] if isinstance(out, tuple) else out
        preds += [decode_ufld(o, args.griding) for o in out]
    gts = [[lane.tolist() for lane in f.lanes] for f in frames]
    return tusimple_scores(preds, gts, [f.h_samples.tolist() for f in frames]).as_dict()


def baselines(train_frames, test_frames, args) -> dict:
    """Trivial predictors: no lane at all, and the mean training target of every slot."""
    gts = [[lane.tolist() for lane in f.lanes] for f in test_frames]
    ys = [f.h_samples.tolist() for f in test_frames]
    none = tusimple_scores([[] for _ in test_frames], gts, ys).as_dict()
    targets = np.stack([ufld_targets(f, args.griding, seg_size=None)[0] for f in train_frames])
    logits = np.full((args.griding + 1, *targets.shape[1:]), -10.0, np.float32)
    for r in range(targets.shape[1]):
        for lane in range(targets.shape[2]):
            values = np.bincount(targets[:, r, lane], minlength=args.griding + 1)
            logits[np.argmax(values), r, lane] = 10.0
    mean_pred = decode_ufld(torch.from_numpy(logits), args.griding)
    mode = tusimple_scores([mean_pred] * len(test_frames), gts, ys).as_dict()
    return {"no_lanes": none, "most_frequent_cell": mode}


def real_example_frames(data: Path) -> list:
    """The LaneNet example frames' labels (from their instance masks), written and read as TuSimple files."""
    from PIL import Image

    folder = data / "tusimple_sample" / "lanenet_example"
    with tempfile.TemporaryDirectory() as tmp:
        label = Path(tmp) / "label_data_masks.json"
        with open(label, "w") as fh:
            for p in sorted((folder / "gt_instance_image").glob("*.png")):
                f = frame_from_instance_mask(np.array(Image.open(p)), raw_file=f"image/{p.name}")
                lanes = [x.tolist() for x in f.lanes]
                fh.write(
                    json.dumps({"lanes": lanes, "h_samples": f.h_samples.tolist(), "raw_file": f.raw_file})
                )
                fh.write("\n")
        return read_tusimple_labels(label)


def check_real_frames(data: Path, args) -> dict:
    """Reader check on the real LaneNet example frames: decoded targets land on the mask's lane pixels."""
    from PIL import Image

    folder = data / "tusimple_sample" / "lanenet_example"
    if not folder.is_dir():
        return {"skipped": f"{folder} absent"}
    frames = real_example_frames(data)
    cell, hits, total = 1279 / (args.griding - 1), 0, 0
    for f in frames:
        mask = np.array(Image.open(folder / "gt_binary_image" / Path(f.raw_file).name)) > 0
        if args.vis:  # the labels as read back, drawn on the real frame
            Path(args.vis).mkdir(parents=True, exist_ok=True)
            image = np.array(Image.open(folder / f.raw_file).convert("RGB"))
            Image.fromarray(overlay_lanes(image, f)).save(
                Path(args.vis) / f"real_{Path(f.raw_file).stem}.png"
            )
        cls, _ = ufld_targets(f, args.griding, row_anchors=f.h_samples, seg_size=None)
        for r, y in enumerate(f.h_samples):
            for c in cls[r][cls[r] < args.griding]:
                cols = np.flatnonzero(mask[y])
                total += 1
                hits += bool(len(cols)) and float(np.abs(cols - (c + 0.5) * cell).min()) <= cell / 2 + 1
    return {"frames": len(frames), "target_points": total, "on_lane_pixels": hits / max(total, 1)}


def real_frames_scores(model, data: Path, args) -> dict:
    """TuSimple scores on the 6 real LaneNet frames (labels from their masks): the gap to real images."""
    folder = data / "tusimple_sample" / "lanenet_example"
    if not folder.is_dir():
        return {"skipped": f"{folder} absent"}
    frames = real_example_frames(data)
    ds = TusimpleLaneDataset(frames, root=folder, input_size=args.size, griding_num=args.griding)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return evaluate(model, (x,), frames, args)


# -- pruning -------------------------------------------------------------------------------------------
def inference_copy(model):
    """A copy without the auxiliary segmentation head (training-only in UFLD)."""
    m = copy.deepcopy(model).eval()
    if m.use_aux:
        m.use_aux = False
        for name in ("aux_header2", "aux_header3", "aux_header4", "aux_combine"):
            delattr(m, name)
    return m


def prune_run(name: str, dense, stream, test, test_frames, args, x1) -> dict:
    model = inference_copy(dense)  # the deployed graph is pruned; regularization and fine-tuning without aux
    method = "l1" if name == "l1" else args.reg_method
    opts = dict(args.reg_options) if method != "l1" else {}
    pruner = fxprune.Pruner(
        model, x1, method=method, target_flops=args.target_flops, round_to=args.round_to, **opts
    )
    rec = {"method": method, "options": opts}
    if method != "l1":
        train(model, stream, args.reg_iters, args.reg_lr, pruner, tag=method, until_done=True)
        rec["reg_iterations"] = pruner.iteration
        rec["before_prune"] = evaluate(model, test, test_frames, args)
        log(f"{name} before the hard prune: {rec['before_prune']}")
    model.eval()
    report = pruner.prune()
    rec.update(flops_ratio=report.flops_ratio, params_ratio=report.params_ratio)
    rec["flops_inference"] = count_flops(model.eval(), x1)
    rec["params"] = count_params(model)
    rec["after_prune"] = evaluate(model, test, test_frames, args)
    log(f"{name} right after the hard prune ({report.flops_ratio:.2f}x FLOPs): {rec['after_prune']}")
    train(model, stream, args.ft_iters, args.ft_lr, tag=f"{name} ft")
    rec["after_ft"] = evaluate(model, test, test_frames, args)
    log(f"{name} after {args.ft_iters} fine-tuning iterations: {rec['after_ft']}")
    return rec, model


def latency(models: dict, x1, args) -> dict:
    from fxprune.deploy import measure_latency, speedup

    out = {}
    for backend in args.backends:
        try:
            res = measure_latency(
                models, x1, backend, threads=args.threads, repeats=args.repeats, budget_s=args.budget_s
            )
        except Exception as err:  # a missing runtime is reported, not fatal
            out[backend] = {"error": f"{type(err).__name__}: {err}"}
            log(f"latency {backend}: {out[backend]['error']}")
            continue
        out[backend] = {
            k: {"median_ms": m.median_ms, "speedup": speedup(res["dense"], m)} for k, m in res.items()
        }
        out[backend]["conditions"] = res["dense"].conditions()
        log(f"latency {backend}: {out[backend]}")
    return out


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="shared data folder (default: $FXPRUNE_SHARED_DATA)")
    p.add_argument("--size", default="128x320", help="input HxW, multiples of 32 (UFLD: 288x800)")
    p.add_argument("--width", type=int, default=16, help="first-stage channels of the ResNet-18 trunk (64)")
    p.add_argument("--hidden", type=int, default=256, help="hidden units of the classification head (2048)")
    p.add_argument("--griding", type=int, default=100, help="gridding cells (UFLD TuSimple: 100)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=1500, help="dense training iterations")
    p.add_argument("--lr", type=float, default=1e-3, help="dense training Adam lr (cosine decay)")
    p.add_argument("--eval-every", type=int, default=250, help="log test scores every N dense iterations")
    p.add_argument("--dense-ckpt", default="", help="load the dense weights from here if present, else save")
    p.add_argument("--stop-after-dense", action="store_true", help="train (and save) the dense model only")
    p.add_argument("--target-flops", type=float, default=0.5, help="pruned FLOPs as a fraction of dense")
    p.add_argument("--round-to", type=int, default=1, help="channel multiple of the pruned widths")
    p.add_argument("--reg-method", default="slr", help="regularize-then-prune method next to L1 one-shot")
    p.add_argument("--reg-iters", type=int, default=400, help="at most this many regularization iterations")
    p.add_argument(
        "--reg-options",
        default='{"update_every": 50, "rounds": 8, "rho": 1.0}',
        help="JSON options of the method; the default is a shortened SLR/ADMM schedule (the paper: one "
        "update per epoch, 100 rounds, rho 0.1; rho 1.0 here because 400 iterations cannot bring the "
        "removed weights near zero at 0.1)",
    )
    p.add_argument("--reg-lr", type=float, default=1e-3, help="Adam lr while regularizing (cosine decay)")
    p.add_argument("--ft-iters", type=int, default=200, help="fine-tuning iterations after each prune")
    p.add_argument("--ft-lr", type=float, default=3e-4)
    p.add_argument("--backends", default="ort,openvino")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/RESULTS_lane.json")
    p.add_argument("--vis", default="", help="folder for label overlays on the real frames (PNG)")
    args = p.parse_args(argv)
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    args.backends = [b for b in args.backends.split(",") if b]
    args.reg_options = json.loads(args.reg_options)
    if args.reg_method not in fxprune.regularize.method_names():
        p.error(f"--reg-method {args.reg_method!r} unknown; available: {fxprune.regularize.method_names()}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = shared_data_dir(args.data)
    if data is None or not (data / "tusimple_sample" / "labels").is_dir():
        print("needs ../shared/data/tusimple_sample/labels (set --data or FXPRUNE_SHARED_DATA)")
        return 2
    frames = read_tusimple_labels(data / "tusimple_sample" / "labels")
    train_frames, test_frames = split_frames(frames)
    record = {
        "note": NOTE,
        "command": " ".join(sys.argv),
        "argv": vars(args) | {"size": list(args.size)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "train_frames": len(train_frames),
        "test_frames": len(test_frames),
    }
    record["real_frame_reader_check"] = check_real_frames(data, args)
    log(f"reader check on real frames: {record['real_frame_reader_check']}")
    record["baselines"] = baselines(train_frames, test_frames, args)
    log(f"trivial predictors on the test set: {record['baselines']}")
    test = render_set(test_frames, args, seed=10_000 + args.seed)
    stream = TrainStream(train_frames, args, seed=args.seed)
    dense = lane_resnet18_narrow(args.width, args.griding, input_size=args.size, hidden=args.hidden)
    x1 = torch.randn(1, 3, *args.size)
    t = time.time()
    if args.dense_ckpt and Path(args.dense_ckpt).is_file():
        dense.load_state_dict(torch.load(args.dense_ckpt, weights_only=True))
        log(f"dense weights loaded from {args.dense_ckpt} (trained by an earlier run with the same settings)")
        record["dense_loaded_from"] = args.dense_ckpt
    else:
        probe = (args.eval_every, lambda m: evaluate(m, test, test_frames, args))
        train(dense, stream, args.iters, args.lr, tag="dense", probe=probe)
        if args.dense_ckpt:
            torch.save(dense.state_dict(), args.dense_ckpt)
    record["dense"] = {
        "train_s": time.time() - t,
        "iters": args.iters,
        **evaluate(dense, test, test_frames, args),
    }
    record["dense"]["flops"] = count_flops(dense.eval(), x1)
    record["dense"]["flops_inference"] = count_flops(inference_copy(dense), x1)
    record["dense"]["params"] = count_params(dense)
    record["dense"]["params_inference"] = count_params(inference_copy(dense))
    log(f"dense: {record['dense']}")
    record["dense"]["real_frames"] = real_frames_scores(dense, data, args)
    log(f"dense on the 6 real LaneNet frames (trained on rendered images): {record['dense']['real_frames']}")
    Path(args.out).write_text(json.dumps(record, indent=2))
    if args.stop_after_dense:
        return 0
    pruned = {}
    for name in ("l1", args.reg_method):
        record[name], pruned[name] = prune_run(name, dense, stream, test, test_frames, args, x1)
        Path(args.out).write_text(json.dumps(record, indent=2))
    models = {"dense": inference_copy(dense)} | {k: inference_copy(m) for k, m in pruned.items()}
    record["latency"] = latency(models, x1, args)
    record["wall_s"] = time.time() - T0
    Path(args.out).write_text(json.dumps(record, indent=2))
    log(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
