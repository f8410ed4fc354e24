"""The ``fxprune`` command line (demo, analyze, prune, bench, export, methods), one module per command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from fxprune.deploy.backends.base import BackendUnavailable

from .. import __version__
from ..capture import CaptureError
from ..prune import VerificationError
from . import analyze, bench, demo, export, methods, prune, yolo

__all__ = ["build_parser", "main"]

_ERRORS = (CaptureError, ValueError, VerificationError, FileNotFoundError, ImportError, BackendUnavailable)

_MAIN_EPILOG = """\
examples:
  fxprune demo                                       prune a CIFAR ResNet-56 by half and time it
  fxprune analyze torchvision:resnet50               show the coupled channel groups of a model
  fxprune prune torchvision:resnet50 --target-flops 0.5 --out resnet50-slim.pt --report report/
  fxprune prune yolov8n.yaml --ratio 0.3 --input 1,3,640,640
  fxprune prune torchvision:resnet50 --target-latency 0.5x --backend ort,openvino
  fxprune bench torchvision:resnet50 --backend ort,openvino --target-flops 0.25 --sweep --report out/
  fxprune export yolov8n.yaml --pruned slim.pt --formats onnx,openvino-int8 --calib coco128.yaml --out exp/
  fxprune methods                                    regularize-then-prune methods and their schedules
  fxprune yolo yolov8n.pt data=coco128.yaml method=greg1 target_flops=0.5 epochs=30
                                                     prune and fine-tune inside ultralytics' training

model SPEC forms:
  cifar_resnet56 | fxprune:cifar_resnet56   a built-in model (fxprune.models.list_models())
  torchvision:resnet50                       any torchvision.models.get_model name (random init)
  yolov8n.yaml | run.pt                      an ultralytics model yaml or checkpoint
  package.module:factory                     a function called without arguments returning an nn.Module
Add --weights PATH to load a state dict into the model before analysing or pruning it.

Run 'fxprune COMMAND --help' for the options of a command."""

_COMMANDS = {
    "demo": demo,
    "analyze": analyze,
    "prune": prune,
    "bench": bench,
    "export": export,
    "methods": methods,
    "yolo": yolo,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fxprune`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fxprune",
        description="Structured pruning for PyTorch: find coupled channels with torch.fx, slim the model "
        "in place and verify the result.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"fxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub, fmt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fxprune`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        return _COMMANDS[args.command].run(args, console)
    except _ERRORS as exc:
        err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        label = {
            CaptureError: "capture failed",
            VerificationError: "verification failed",
            FileNotFoundError: "file not found",
            BackendUnavailable: "backend unavailable",
        }.get(type(exc), "error")
        err.print(Text(f"fxprune {args.command}: {label}: {exc}", style="red"))
        return 2
