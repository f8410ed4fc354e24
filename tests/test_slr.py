"""SLR and ADMM: the acceptance rule, step sizes, projections, dual update, resume, AMP, the hard prune."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import fxprune
from tests.small_task import SmallResNet, resume_copy, train

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.randn(1, 3, 16, 16)


def _set_weights(method, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, v in values.items():
            method.model.get_parameter(name).copy_(v)


def _random_multipliers(method, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    method.multipliers = {
        n: 0.05 * torch.randn(t.shape, generator=gen) for n, t in method.multipliers.items()
    }
    return {n: t.clone() for n, t in method.multipliers.items()}


def _alpha(k: int) -> float:  # the paper's contraction with M = 300, r = 0.1
    return 1 - 1 / (300 * k ** (1 - 1 / k**0.1))


def test_options_and_bad_input() -> None:
    assert fxprune.Pruner.options_of("slr") == {
        "rho": 0.1,
        "update_every": 391,
        "rounds": 100,
        "unstructured": False,
        "s0": 0.01,
        "M": 300.0,
        "r": 0.1,
    }
    assert set(fxprune.Pruner.options_of("admm")) == {"rho", "update_every", "rounds", "unstructured"}
    with pytest.raises(ValueError, match="rho must be > 0"):
        fxprune.Pruner(SmallResNet(), X, "slr", rho=0.0)
    with pytest.raises(ValueError, match="target_flops sets channel widths"):
        fxprune.Pruner(SmallResNet(), X, "admm", target_flops=0.5, unstructured=True)


def test_acceptance_rule_and_copies() -> None:
    pruner = fxprune.Pruner(SmallResNet(), X, "slr", 0.5, scope="restricted", update_every=1000)
    m = pruner.method
    w0, z = m.weights(), {n: t.clone() for n, t in m.z.items()}
    w0 = {n: t.clone() for n, t in w0.items()}
    # moving W away from Z raises the Lagrangian: rejected, nothing changes
    _set_weights(m, {n: z[n] + 1.5 * (w0[n] - z[n]) for n in w0})
    assert not m.multiplier_step("test", None)
    assert all(bool((t == 0).all()) for t in m.multipliers.values()) and m.s == 0.01 and m.k == 1
    assert all(torch.equal(m.w_prev[n], w0[n]) for n in w0)
    # moving it halfway towards Z lowers it: accepted, Lambda += s (W - Z), copies of W and Z kept
    half = {n: z[n] + 0.5 * (w0[n] - z[n]) for n in w0}
    _set_weights(m, half)
    assert m.multiplier_step("test", 2.0)
    assert m.k == 2 and m.s == pytest.approx(_alpha(1) * 0.01 * 2.0)  # ||W_prev - Z|| / ||W - Z|| = 2
    for n in w0:
        torch.testing.assert_close(m.multipliers[n], m.s * (half[n] - z[n]))
    _set_weights(m, w0)  # the kept point is a copy, not the live weights
    assert all(torch.equal(m.w_prev[n], half[n]) for n in w0) and m.f_prev == 2.0
    # closer still, but the task loss rose by more than the constraint terms fell: rejected
    lam = {n: t.clone() for n, t in m.multipliers.items()}
    _set_weights(m, {n: z[n] + 0.25 * (w0[n] - z[n]) for n in w0})
    assert not m.multiplier_step("test", 50.0)
    assert all(torch.equal(m.multipliers[n], lam[n]) for n in lam)
    assert m.multiplier_step("test", 2.0)  # the same point with the loss unchanged is accepted
    assert [h["accepted"] for h in m.history] == [False, True, False, True]


def test_step_size_sequence_follows_the_formula() -> None:
    pruner = fxprune.Pruner(SmallResNet(), X, "slr", 0.5, update_every=1000)
    m = pruner.method
    w0 = {n: t.clone() for n, t in m.weights().items()}
    z = {n: t.clone() for n, t in m.z.items()}
    norm = lambda c: sum(float((c * (w0[n] - z[n])).double().norm()) for n in w0)  # noqa: E731
    s, expected_lam = 0.01, {n: torch.zeros_like(t) for n, t in w0.items()}
    last = 1.0
    for k, c in enumerate([0.6, 0.3, 0.2, 0.1, 0.08], start=1):
        prev_norm = norm(last)
        _set_weights(m, {n: z[n] + c * (w0[n] - z[n]) for n in w0})
        assert m.multiplier_step("test", None)
        s = _alpha(k) * s * prev_norm / norm(c)
        assert m.s == pytest.approx(s, rel=1e-6) and m.k == k + 1
        for n in w0:
            expected_lam[n] += s * c * (w0[n] - z[n])
        last = c
    for n in w0:
        torch.testing.assert_close(m.multipliers[n], expected_lam[n], rtol=1e-5, atol=1e-7)
    assert _alpha(1) == pytest.approx(1 - 1 / 300) and _alpha(2) == pytest.approx(0.996818, abs=1e-6)


def test_admm_z_is_the_projection_and_dual_update() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(model, X, "admm", 0.5, scope="restricted", update_every=1, rho=0.5)
    m = pruner.method
    lam_before = _random_multipliers(m)
    w = {n: t.clone() for n, t in m.weights().items()}
    pruner.step()  # one Z-step and one dual step (no training: W unchanged)
    for ch in pruner.channels:
        conv = ch.group.modules[0]
        bn = conv.replace("conv1", "bn1")
        v = {p: w[p] + lam_before[p] / 0.5 for p in (f"{conv}.weight", f"{bn}.weight", f"{bn}.bias")}
        score = v[f"{conv}.weight"].flatten(1).pow(2).sum(1) + v[f"{bn}.weight"] ** 2 + v[f"{bn}.bias"] ** 2
        drop = torch.argsort(score)[: ch.width // 2]
        assert set(torch.nonzero(ch.pruned).flatten().tolist()) == set(drop.tolist())
        for p, t in v.items():
            expected = t.clone()
            expected[drop] = 0
            torch.testing.assert_close(m.z[p], expected, rtol=0, atol=0)
            # scaled dual U = Lambda / rho: U <- U + W - Z
            torch.testing.assert_close(m.multipliers[p] / 0.5, lam_before[p] / 0.5 + w[p] - m.z[p])
    assert m.history[-1]["t"] == 1


def test_unstructured_projection_and_hard_prune(trained) -> None:
    base, task = trained
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(  # ADMM: its Z-step projects W + Lambda/rho with Lambda as set here
        model, X, "admm", 0.75, ratios={"layer2.*": 0.9}, unstructured=True, update_every=1, rounds=3
    )
    m = pruner.method
    assert pruner.pruned_channels() == {}  # no channel choice in this mode
    assert m.layer_ratio["layer2.1.conv2.weight"] == 0.9 and m.layer_ratio["stem.0.weight"] == 0.75
    lam_before = _random_multipliers(m)
    w = {n: t.clone() for n, t in m.weights().items()}
    pruner.step()
    for n, ratio in m.layer_ratio.items():
        v = w[n] + lam_before[n] / 0.1
        cut = v.abs().flatten().sort().values[int(ratio * v.numel())]
        torch.testing.assert_close(m.z[n], torch.where(v.abs() >= cut, v, torch.zeros_like(v)))
    opt = train(model, task, 2, start=100, lr=0.01, pruner=pruner)
    assert pruner.done
    shapes = {n: p.shape for n, p in model.named_parameters()}
    report = pruner.prune()
    assert {n: p.shape for n, p in model.named_parameters()} == shapes  # no shape changes
    assert report.layers["layer2.1.conv2.weight"] == pytest.approx(0.9, abs=1e-3)
    assert 0.75 < report.sparsity < 0.9
    zeros = {n: model.get_parameter(n) == 0 for n in report.masks}
    # masked retraining: apply() after each step keeps exactly the same weights at zero
    train(model, task, 3, start=200, optimizer=opt, hook=lambda i: report.apply(model))
    for n, z in zeros.items():
        assert torch.equal(model.get_parameter(n) == 0, z)


def test_group_projection_keeps_coupled_indices() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(model, X, "slr", 0.5, update_every=1, rho=0.5)
    _random_multipliers(pruner.method, seed=1)
    pruner.step(loss=1.0)
    stream = next(ch for ch in pruner.channels if "stem.0" in ch.group.modules)
    pruned = set(torch.nonzero(stream.pruned).flatten().tolist())
    z = pruner.method.z
    writers = ["stem.0.weight", "stem.1.weight", "stem.1.bias", "layer1.0.conv2.weight"]
    writers += ["layer1.0.bn2.weight", "layer1.1.conv2.weight", "layer1.1.bn2.bias"]
    for name in writers:
        zero = z[name].flatten(1).abs().sum(1) == 0 if z[name].dim() > 1 else z[name] == 0
        assert set(torch.nonzero(zero).flatten().tolist()) == pruned, name
    for name in ("layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.shortcut.0.weight"):
        zero = z[name].transpose(0, 1).flatten(1).abs().sum(1) == 0  # consumers' input slices
        assert pruned <= set(torch.nonzero(zero).flatten().tolist()), name
    report = pruner.prune()
    assert model.stem[0].out_channels == 8 and model.layer1[1].conv2.out_channels == 8
    assert report.exact_error < 1e-4


def test_penalty_or_gradients_amp_and_accumulation(trained) -> None:
    base, task = trained
    x, y = task.batch(0)

    def grads(in_loss: bool, scaled: bool, micro: int):
        m = copy.deepcopy(base)
        p = fxprune.Pruner(m, X, "slr", 0.5, update_every=1, rho=0.5)
        m.eval()  # BN on running statistics, so micro-batches add up to the full batch
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
        opt.zero_grad()
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            loss = F.cross_entropy(m(xs), ys) + (p.penalty() if in_loss else 0)
            scaler.scale(loss / micro).backward()
        p.after_backward(scaler)
        scaler.unscale_(opt)
        return [t.grad.clone() for t in m.parameters()]

    ref = grads(False, False, 1)
    assert any(bool(g.abs().sum() > 0) for g in ref)
    for in_loss, scaled, micro in [(True, False, 1), (False, True, 1), (False, False, 2), (True, True, 2)]:
        for a, b in zip(ref, grads(in_loss, scaled, micro)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _run(model, pruner, task, steps, start, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for i in range(start, start + steps):
        xb, yb = task.batch(i)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        pruner.after_backward()
        opt.step()
        pruner.step(loss=loss.item())
    return opt


@pytest.mark.parametrize("method, extra", [("slr", {}), ("admm", {"unstructured": True})])
def test_resume_is_bit_exact(trained, method, extra) -> None:
    base, task = trained
    opts = dict(update_every=4, rounds=5, rho=0.5, **extra)
    full = copy.deepcopy(base)
    p_full = fxprune.Pruner(full, X, method, 0.5, **opts)
    _run(full, p_full, task, 18, 3000)

    part = copy.deepcopy(base)
    p_part = fxprune.Pruner(part, X, method, 0.5, **opts)
    opt = _run(part, p_part, task, 6, 3000)  # mid-interval: the losses since the last update are state
    resumed, p_res, opt2 = resume_copy(base, part, opt, p_part, X, method, 0.5, **opts)
    _run(resumed, p_res, task, 12, 3006, opt2)
    assert len(p_full.method.history) == len(p_res.method.history) >= 4
    assert p_res.method.history == p_full.method.history
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{method}: {name} differs after resume"
    for n, t in p_full.method.multipliers.items():
        assert torch.equal(t, p_res.method.multipliers[n])


def test_hard_prune_after_slr_keeps_accuracy(trained) -> None:
    base, task = trained
    dense_acc = task.accuracy(base)
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(model, X, "slr", 0.5, update_every=10, rounds=15, rho=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    _run(model, pruner, task, 150, 1000, opt)
    assert pruner.done
    accepted = [h["accepted"] for h in pruner.method.history]
    assert len(accepted) == 28 and any(accepted) and not all(accepted)
    before = task.accuracy(model)
    report = pruner.prune()
    after = task.accuracy(model)
    assert report.flops_ratio > 3.0 and report.exact_error < 1e-4
    assert before > 0.9 and abs(after - before) <= 0.02, (before, after)
    one_shot = copy.deepcopy(base)
    fxprune.Pruner(one_shot, X, "l1", 0.5).prune()
    assert task.accuracy(one_shot) < min(after, dense_acc) - 0.3
    assert math.isfinite(pruner.method.s)
