"""CCM: channel-correlation loss, then per-group widths from the information the channels carry.

While training, for every feature map ``F`` (B x C x H x W) carrying a regularized group's channels::

    F_bar  = mean over the batch of F, as C x HW, each channel centred over positions
    R_ij   = <F_bar_i, F_bar_j> / (||F_bar_i|| ||F_bar_j|| + eps)     (Pearson; eps: dead channels)
    ccm    = mean_ij |R_ij|
    L      = task_loss - lam * sum_maps ccm          (the minus rewards correlated, redundant channels)

The map of a group is the tensor its channels carry into the next layer: the input of each conv consuming
them (after the activation), or the output of the layer writing them when no conv consumes them. At
``prune()``, from a few calibration images (``prune(calibration=batches)``, or the last
``calibration_steps`` training iterations), every group keeps as many channels as carry ``threshold`` of
its information (:mod:`fxprune.regularize.information`): one global threshold, a width per group. A group
tied by residual adds is one group: its maps' scores are averaged and it gets one width. ``round_to`` and
``min_width`` apply; the Pruner's ``ratio`` is not used. Under torch.distributed the calibration images of
all ranks are pooled before choosing, so every rank keeps the same channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .channels import ChannelSlice, GroupChannels
from .distributed import gather_across_ranks, is_distributed
from .information import CRITERIA, ChannelStats, Selection, select_channels
from .method import ALL_ROLES, Method, log, register_method

__all__ = ["CCM", "ccm_term"]


def ccm_term(fmap: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean_ij |R_ij|`` of the batch-averaged map (B x C x ...), channels centred over positions."""
    f = fmap.mean(0).flatten(1)
    f = f - f.mean(1, keepdim=True)
    norm = f.norm(dim=1)
    corr = (f @ f.t()) / (norm[:, None] * norm[None, :] + eps)
    return corr.abs().mean()


def _atom_positions(s: ChannelSlice, width: int) -> torch.Tensor | None:
    """Positions of ``s``'s dimension in atom order, when each atom has exactly one position."""
    valid = np.nonzero(s.atom >= 0)[0]
    atoms = s.atom[valid]
    if len(atoms) != width or len(np.unique(atoms)) != width:
        return None
    return torch.as_tensor(valid[np.argsort(atoms)], dtype=torch.long)


def _pooled_across_ranks(maps: list[ChannelStats]) -> list[ChannelStats]:
    """Under torch.distributed, every rank's calibration images pooled (so all ranks choose alike)."""
    if not is_distributed():
        return maps
    pooled = []
    for m in maps:
        grams, centred = gather_across_ranks(list(m.grams)), gather_across_ranks(list(m.centred))
        merged = ChannelStats(max(len(grams), 1))
        merged.grams.extend(grams)
        merged.centred.extend(centred)
        pooled.append(merged)
    return pooled


def _is_plain_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed


@register_method("ccm")
class CCM(Method):
    """Channel-correlation loss while training; widths chosen from the channels' information at prune()."""

    picks_at_start = False
    roles = {"group": ALL_ROLES, "restricted": frozenset({"out"})}

    @dataclasses.dataclass
    class Options:
        lam: float = 0.05  # weight of the correlation reward (ResNet-56 reference value)
        threshold: float = 0.9  # fraction of each group's information to keep, in (0, 1]
        criterion: str = "nuclear"  # "nuclear" (nuclear-norm drop) or "variance" (PCA-style)
        steps: int = 0  # training iterations with the loss before ``done`` (0: done at once)
        calibration_steps: int = 4  # the last iterations whose maps are kept for the choice
        calibration_images: int = 64  # images kept per map (the most recent)
        eps: float = 1e-8

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        if options.criterion not in CRITERIA:
            raise ValueError(f"ccm criterion must be one of {CRITERIA}, got {options.criterion!r}")
        if not 0.0 < options.threshold <= 1.0:
            raise ValueError(f"ccm threshold must be in (0, 1], got {options.threshold}")
        self.stats: dict[int, list[ChannelStats]] = {}
        self.selections: dict[int, Selection] = {}
        self._terms: list[torch.Tensor] = []
        self._seen: dict[int, list[torch.Tensor]] = {}
        self._calibrating = False
        self._handles = [model.register_forward_pre_hook(self._new_forward)]
        for ch in channels:
            self._hook_group(ch)

    # -- hooks -----------------------------------------------------------------------------------------
    def _hook_group(self, ch: GroupChannels) -> None:
        """Watch the maps carrying ``ch``'s channels: every plain conv reading them, else their writers."""
        readers = [s for s in ch.all_slices if s.role == "in" and s.dim == 1]
        writers = [s for s in ch.all_slices if s.is_filter]
        found = 0
        for slices, is_input in ((readers, True), (writers, False)):
            for s in slices:
                module = self.model.get_submodule(s.module)
                pos = _atom_positions(s, ch.width)
                if pos is None or not _is_plain_conv(module):
                    continue
                self.stats.setdefault(ch.id, [])
                stats = ChannelStats(self.options.calibration_images)
                self.stats[ch.id].append(stats)
                hook = self._observer(ch.id, pos, stats)
                if is_input:
                    h = module.register_forward_pre_hook(lambda m, args, hook=hook: hook(args[0]))
                else:
                    h = module.register_forward_hook(lambda m, args, out, hook=hook: hook(out))
                self._handles.append(h)
                found += 1
            if found:
                break
        if not found:
            log.warning(
                "ccm: no conv feature map carries group %d (%s); it keeps its width", ch.id, ch.group.modules
            )

    def _observer(self, gid: int, positions: torch.Tensor, stats: ChannelStats):
        def observe(x: torch.Tensor) -> None:
            term = self.options.lam > 0 and torch.is_grad_enabled() and self.model.training
            collect = self._collecting
            seen = self._seen.setdefault(gid, [])
            if not (term or collect) or any(x is t for t in seen):  # a tensor read twice counts once
                return
            seen.append(x)
            fmap = x.index_select(1, positions.to(x.device))
            if collect:
                stats.add(fmap)
            if term:
                self._terms.append(ccm_term(fmap, self.options.eps))

        return observe

    def _new_forward(self, module: nn.Module, args: Any) -> None:
        self._seen.clear()
        self._terms.clear()

    @property
    def _collecting(self) -> bool:
        steps, last = self.options.steps, self.options.calibration_steps
        return self._calibrating or (steps > 0 and steps - last <= self.t < steps)

    def close(self) -> None:
        """Remove the hooks (the Pruner does it before slimming)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._seen.clear()
        self._terms.clear()

    # -- training loop ---------------------------------------------------------------------------------
    def correlation(self) -> torch.Tensor:
        """``sum_maps ccm`` of the last forward pass (zero when none was watched)."""
        return torch.stack(self._terms).sum() if self._terms else torch.zeros(())

    def penalty(self) -> torch.Tensor:
        term = -self.options.lam * self.correlation()
        self._terms.clear()
        return term

    def step(self) -> None:
        super().step()
        self._terms.clear()
        self._seen.clear()

    @property
    def done(self) -> bool:
        return self.t >= self.options.steps

    # -- choice --------------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, batches: Iterable[Any]) -> None:
        """Replace the statistics by those of ``batches`` (inputs, or tuples starting with the input)."""
        for maps in self.stats.values():
            for m in maps:
                m.grams.clear()
                m.centred.clear()
        self.selections = {}
        was = self.model.training
        self.model.eval()
        self._calibrating = True
        try:
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                self.model(x)
        finally:
            self._calibrating = False
            self.model.train(was)
            self._seen.clear()

    def _select(self) -> dict[int, Selection]:
        if not self.selections:
            empty = [gid for gid, maps in self.stats.items() if not any(len(m) for m in maps)]
            if empty:
                raise ValueError(
                    "ccm chooses widths from feature maps: pass prune(calibration=batches), or train the "
                    f"pruner with steps > 0 (steps={self.options.steps}; no statistics for group {empty[0]})"
                )
            opts = self.options
            self.selections = {
                gid: select_channels(_pooled_across_ranks(maps), opts.threshold, opts.criterion)
                for gid, maps in self.stats.items()
            }
        return self.selections

    def selection_scores(self) -> dict[int, np.ndarray]:
        selections = self._select()
        return {
            c.id: selections[c.id].scores if c.id in selections else np.ones(c.width) for c in self.channels
        }

    def removal_counts(self) -> dict[int, int]:
        selections = self._select()
        return {gid: int(len(s.scores) - s.keep) for gid, s in selections.items()}

    def chosen(self) -> None:
        super().chosen()
        self.selections = {}
