"""Argument types and the model arguments shared by the commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = [
    "add_model_args",
    "backend_list",
    "fraction",
    "positive_int",
    "ratio_for",
    "ratio_list",
    "shape_arg",
]


def fraction(low_open: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
        if not ok:
            interval = "(0, 1)" if low_open else "[0, 1)"
            raise argparse.ArgumentTypeError(f"must be a fraction in {interval}, got {text}")
        return value

    return parse


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 1,3,224,224, got {text!r}")
    return shape


def ratio_for(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=RATIO like 'layer4.*=0.3', got {text!r}")
    return pattern, fraction(False)(value)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        metavar="SPEC",
        help="model: cifar_resnet56, torchvision:resnet50, yolov8n.yaml, package.module:factory",
    )
    p.add_argument("--weights", metavar="PATH", help="state dict to load into the model first")
    p.add_argument(
        "--input",
        metavar="SHAPE",
        type=shape_arg,
        help="example input shape, e.g. 1,3,224,224 (default: the model's usual input)",
    )
    p.add_argument(
        "--ignore",
        metavar="PATTERN",
        action="append",
        default=[],
        help="module name (glob) or class name whose channels must not change; repeatable",
    )
    p.add_argument(
        "--leaf",
        metavar="PATTERN",
        action="append",
        default=[],
        help="module name (glob) or class name not to trace into (channels freeze); repeatable",
    )


def backend_list(text: str) -> list[str]:
    """``ort,openvino`` -> ``["ort", "openvino"]``, each a registered latency backend."""
    from fxprune.deploy.backends import list_backends

    names = [t.strip() for t in text.split(",") if t.strip()]
    known = list_backends()
    for n in names:
        if n not in known:
            raise argparse.ArgumentTypeError(f"unknown backend {n!r}; known backends: {', '.join(known)}")
    if not names:
        raise argparse.ArgumentTypeError("expected backend names like ort,openvino")
    return names


def ratio_list(text: str) -> list[float]:
    """``0.1,0.3,0.5`` -> fractions in (0, 1)."""
    parse = fraction(True)
    return [parse(t) for t in text.split(",") if t.strip()]


def latency_target(text: str) -> str:
    """A latency budget: ``0.5x`` (fraction of dense) or ``12ms``."""
    from fxprune.deploy.budget import parse_latency_target

    try:
        parse_latency_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
