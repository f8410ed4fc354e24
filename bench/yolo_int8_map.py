"""mAP50-95 of YOLO checkpoints in PyTorch fp32, OpenVINO fp32 and OpenVINO INT8, by ultralytics' own val.

The INT8 model is made by ``fxprune.deploy.quantize`` (NNCF on the OpenVINO model, the head's decode kept
in float) from the checkpoint's model in ultralytics' export form (fused, ``Detect`` in export mode), and
dropped into a copy of ultralytics' own OpenVINO export folder so that ``YOLO(folder).val()`` scores it
with ultralytics' metadata and post-processing::

    python bench/yolo_int8_map.py --weights dense=runs/dense/weights/best.pt pruned=runs/l1/weights/best.pt \\
        --data coco128.yaml --imgsz 128 --out /tmp/yolo-int8 --json bench/RESULTS_yolo_int8.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")


def int8_folder(weights: Path, fp32_folder: Path, data: str, imgsz: int, out: Path, calib_images: int):
    """A copy of ultralytics' OpenVINO folder whose model files are fxprune's INT8 IR of the checkpoint."""
    from fxprune.deploy import load_calibration, quantize
    from ultralytics import YOLO
    from ultralytics.nn.modules import Detect

    model = copy.deepcopy(YOLO(str(weights)).model).float().eval().fuse()
    for module in model.modules():
        if isinstance(module, Detect):
            module.export, module.format, module.dynamic = True, "openvino", False
    shape = (1, 3, imgsz, imgsz)
    result = quantize(
        model, torch.zeros(shape), load_calibration(data, shape), "openvino", out / "int8" / "model.xml",
        subset_size=calib_images,
    )
    folder = out / fp32_folder.name.replace("_openvino_model", "_int8_openvino_model")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(fp32_folder, folder)
    xml = next(folder.glob("*.xml"))
    shutil.copy(result.path, xml)
    shutil.copy(Path(result.path).with_suffix(".bin"), xml.with_suffix(".bin"))
    return folder, result.quantized_ops


def score(weights: Path, data: str, imgsz: int, out: Path, calib_images: int) -> dict:
    """mAP50-95 of one checkpoint in the three forms."""
    from ultralytics import YOLO

    out.mkdir(parents=True, exist_ok=True)
    local = out / "best.pt"
    shutil.copy(weights, local)
    yolo = YOLO(str(local))
    val = dict(data=data, imgsz=imgsz, verbose=False, plots=False)
    row = {"params": sum(p.numel() for p in yolo.model.parameters())}
    row["torch_fp32"] = float(yolo.val(batch=16, **val).box.map)
    fp32_folder = Path(yolo.export(format="openvino", imgsz=imgsz))
    row["openvino_fp32"] = float(YOLO(str(fp32_folder), task="detect").val(batch=1, **val).box.map)
    folder, row["quantized_ops"] = int8_folder(local, fp32_folder, data, imgsz, out, calib_images)
    row["openvino_int8"] = float(YOLO(str(folder), task="detect").val(batch=1, **val).box.map)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", nargs="+", required=True, metavar="NAME=PT", help="checkpoints to score")
    p.add_argument("--data", required=True, help="ultralytics dataset yaml (val split scored, calibration)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--out", default="yolo-int8")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for item in args.weights:
        name, _, path = item.partition("=")
        rows[name] = score(Path(path), args.data, args.imgsz, Path(args.out) / name, args.calib_images)
        print(name, rows[name], flush=True)
    print("| model | params | torch fp32 | OpenVINO fp32 | OpenVINO INT8 |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params']:,} | {r['torch_fp32']:.4f} | {r['openvino_fp32']:.4f} | "
              f"{r['openvino_int8']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
