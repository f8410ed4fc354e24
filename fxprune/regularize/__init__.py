"""Regularize-then-prune methods (GReg-1/2, TPP and the baselines) driven from any training loop."""

from . import admm, baselines, ccm, greg, slr, tpp  # noqa: F401  (register the methods)
from .channels import GroupChannels
from .method import Method, get_method, method_names, register_method
from .pruner import SCOPES, Pruner

__all__ = ["SCOPES", "GroupChannels", "Method", "Pruner", "get_method", "method_names", "register_method"]
