"""Regularize-then-prune: schedules, penalties, channel choice, lossless removal, resume, AMP, compile."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

import fxprune
from fxprune.models import create_model
from fxprune.regularize import method_names
from fxprune.regularize.tpp import masked_gram_loss
from tests.small_task import SmallResNet, Task, resume_copy, train

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.randn(1, 3, 16, 16)


def _pruned_kept_norms(pruner: fxprune.Pruner) -> list[tuple[float, float]]:
    out = []
    for ch in pruner.channels:
        if ch.pruned.any():
            s = torch.as_tensor(ch.norm_scores(pruner.model))
            out.append((s[ch.pruned].mean().item(), s[~ch.pruned].mean().item()))
    return out


def test_methods_registered_and_run_with_the_options_they_report() -> None:
    assert set(method_names()) >= {"l1", "l2", "bn_scale", "taylor", "greg1", "greg2", "tpp"}
    greg1 = fxprune.Pruner.options_of("greg1")
    assert set(greg1) == {"update_every", "delta", "ceiling", "mag_ratio_limit", "stabilize"}
    # without options, lambda starts at delta and grows by delta every update_every iterations
    pruner = fxprune.Pruner(SmallResNet(), X, "greg1", 0.5)
    lam = []
    for _ in range(greg1["update_every"] + 1):
        lam.append(max(pruner.method.lambdas().values()))
        pruner.step()
    assert lam[0] == lam[-2] == pytest.approx(greg1["delta"]) and lam[-1] == pytest.approx(2 * greg1["delta"])
    # GReg-2 first picks with a uniform pick_delta on every channel
    greg2 = fxprune.Pruner.options_of("greg2")
    pruner = fxprune.Pruner(SmallResNet(), X, "greg2", 0.5)
    coef = pruner.method.coefficients(1)
    assert pruner.phase == "picking" and torch.allclose(coef, torch.full_like(coef, greg2["pick_delta"]))


def test_scopes_choose_groups() -> None:
    model = SmallResNet()
    group = fxprune.Pruner(model, X, "greg1", 0.5)
    restricted = fxprune.Pruner(model, X, "greg1", 0.5, scope="restricted")
    internal = {f"layer{s}.{b}.conv1" for s in (1, 2) for b in (0, 1)}
    assert {ch.group.modules[0] for ch in restricted.channels} == internal
    assert all(
        {s.param for s in ch.slices} == {ch.group.modules[0] + ".weight"} for ch in restricted.channels
    )
    # group scope also regularizes the residual streams (stem + every conv2 + shortcut), all slices
    assert len(group.channels) == len(restricted.channels) + 2
    stream = [ch for ch in group.channels if "stem.0" in ch.group.modules][0]
    assert {s.role for s in stream.slices} == {"out", "norm", "in"}
    # ResNet-56 (option A): the first conv of each of its 27 blocks
    r56 = fxprune.Pruner(
        create_model("cifar_resnet56"), torch.randn(1, 3, 32, 32), "tpp", 0.5, scope="restricted"
    )
    assert len(r56.channels) == 27
    assert {s.role for ch in r56.channels for s in ch.slices} == {"out", "norm"}


def test_greg_schedule_growth_ceiling_and_stabilization(caplog) -> None:
    model = SmallResNet()
    with caplog.at_level(logging.DEBUG, logger="fxprune.regularize"):
        pruner = fxprune.Pruner(model, X, "greg1", 0.5, update_every=3, delta=0.1, stabilize=5)
        method = pruner.method
        seen = []
        while not pruner.done:
            seen.append((pruner.iteration, max(method.lambdas().values()), pruner.phase))
            pruner.step()
            assert pruner.iteration < 100
    lam = dict((t, v) for t, v, _ in seen)
    assert lam[0] == pytest.approx(0.1)  # first update at iteration 0
    assert lam[2] == pytest.approx(0.1) and lam[3] == pytest.approx(0.2) and lam[29] == pytest.approx(1.0)
    finish = next(t for t, _, phase in seen if phase == "stabilizing")
    assert lam[finish] > 1.0 and lam[finish] == pytest.approx(1.1)  # growth stops once past the ceiling
    assert all(v == lam[finish] for t, v, _ in seen if t >= finish)
    assert pruner.iteration == finish + 5  # held for K_s iterations
    kept = [method.coefficients(i)[~ch.pruned] for i, ch in enumerate(pruner.channels)]
    assert all(bool((k == 0).all()) for k in kept)
    assert "channels to prune" in caplog.text and "passed the ceiling" in caplog.text


def test_greg_magnitude_ratio_early_stop() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(
        model, X, "greg1", 0.5, update_every=2, delta=0.1, stabilize=4, mag_ratio_limit=1e3
    )
    with torch.no_grad():  # make every pruned channel tiny: the ratio passes 1000 everywhere
        for ch in pruner.channels:
            ch.zero_pruned(model)
            for s in ch.slices:
                t = s.tensor(model)
                t.add_(1e-7 * s.broadcast(s.per_position(ch.pruned.double()), t))
    for _ in range(2):
        pruner.step()
    assert (
        pruner.phase == "stabilizing"
    )  # stopped at the first update after the change, far below the ceiling
    assert max(pruner.method.lambdas().values()) == pytest.approx(0.2)
    for _ in range(4):
        pruner.step()
    assert pruner.done


def test_greg1_drives_pruned_channels_to_zero(trained) -> None:
    base, task = trained
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(model, X, "greg1", 0.5, update_every=1, delta=0.05, stabilize=40)
    before = _pruned_kept_norms(pruner)
    assert len(before) == len(pruner.channels) > 0
    train(model, task, 200, start=1000, lr=0.02, pruner=pruner, until_done=True)
    finish = pruner.method.all_finished_at
    assert pruner.done and finish in (19, 20) and pruner.iteration == finish + 40  # lambda 0.05 -> 1.0+
    after = _pruned_kept_norms(pruner)
    assert len(after) == len(before)
    for (p0, k0), (p1, k1) in zip(before, after):
        assert p1 < 0.1 * p0  # pruned norms collapse (BN makes the task push back as they shrink)
        assert k1 > 0.4 * k0 and k1 > 10 * p1  # kept ones stay
    acc = task.accuracy(model)
    report = pruner.prune()
    assert report.flops_ratio > 2.0 and report.exact_error < 1e-4
    assert abs(task.accuracy(model) - acc) <= 0.01  # removal is (nearly) lossless after regularization
    # whereas removing the same number of channels by L1 from the trained net costs accuracy
    l1_model = copy.deepcopy(base)
    fxprune.Pruner(l1_model, X, "l1", 0.5).prune()
    assert task.accuracy(l1_model) < task.accuracy(base) - 0.05


def test_greg2_picks_by_magnitude_after_picking() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(
        model, X, "greg2", 0.5, update_every=1, pick_delta=0.01, pick_ceiling=0.035, delta=0.1, stabilize=3
    )
    method = pruner.method
    target = pruner.channels[1]
    provisional = target.pruned.clone()
    assert method.phase == "picking"
    coef = method.coefficients(1)
    assert bool((coef == coef[0]).all()) and coef[0] == pytest.approx(0.01)  # uniform on every channel
    # shrink channels the L1 choice keeps: picking must choose by the magnitudes at its end
    with torch.no_grad():
        for s in target.slices:
            t = s.tensor(model)
            flip = (~provisional).double()
            t.mul_(s.broadcast(1 - 0.99 * s.per_position(flip), t))
    for _ in range(3):
        pruner.step()
    assert method.phase == "growing"
    scores = torch.as_tensor(target.norm_scores(model))
    lowest = set(torch.argsort(scores)[: int(provisional.sum())].tolist())
    assert set(torch.nonzero(target.pruned).flatten().tolist()) == lowest
    assert not torch.equal(target.pruned, provisional)
    coef = method.coefficients(1)
    assert coef[~target.pruned].unique().tolist() == [pytest.approx(-1e-4)]  # kept get a slight push up
    assert coef[target.pruned][0] == pytest.approx(0.04)  # continues from the picking level


def test_tpp_gram_loss_hand_computed() -> None:
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    kept = torch.tensor([True, True, False])
    gram = (w @ w.t()).requires_grad_(True)
    loss = masked_gram_loss(gram, kept)
    # entries touching row/col 2: (0,2)=1 (1,2)=1 (2,0)=1 (2,1)=1 (2,2)=2 -> (1+1+1+1+4)/9
    assert loss.item() == pytest.approx(8 / 9)
    loss.backward()
    assert bool((gram.grad[:2, :2] == 0).all())  # kept-kept entries untouched
    assert bool((gram.grad[2] != 0).all()) and bool((gram.grad[:, 2] != 0).all())
    # through W: with the pruned filter at zero, kept filters get no gradient at all
    w2 = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]], requires_grad=True)
    masked_gram_loss(w2 @ w2.t(), kept).backward()
    assert bool((w2.grad == 0).all())


def test_tpp_penalty_equals_formula_and_loop_conventions() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(model, X, "tpp", 0.5, scope="restricted", update_every=1, delta=0.25)
    for _ in range(2):
        pruner.step()
    assert pruner.method.lam == pytest.approx(0.5)
    expected = 0.0
    for ch in pruner.channels:
        w = model.get_parameter(ch.group.modules[0] + ".weight").flatten(1)
        keep = ~ch.pruned
        g = w @ w.t()
        mask = 1.0 - keep[:, None].double() * keep[None, :].double()
        expected = expected + ((g.double() * mask) ** 2).mean()
    gram_weight = fxprune.Pruner.options_of("tpp")["gram_weight"]  # the default the penalty uses
    assert pruner.penalty().item() == pytest.approx(gram_weight * 0.5 * expected.item(), rel=1e-5)
    # penalty() in the loss or not: after_backward gives the same gradients
    grads = []
    for in_loss in (True, False):
        m = copy.deepcopy(model)
        p = fxprune.Pruner(m, X, "tpp", 0.5, scope="restricted", update_every=1, delta=0.25)
        p.method.lam = 0.5
        x, y = Task().batch(0)
        loss = F.cross_entropy(m(x), y) + (p.penalty() if in_loss else 0)
        loss.backward()
        p.after_backward()
        grads.append([t.grad.clone() for t in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tpp_zeroes_layer_by_layer_and_prunes_losslessly(trained) -> None:
    base, task = trained
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(model, X, "tpp", 0.5, update_every=1, delta=0.1, stabilize=20, zero_every=3)
    zeroed_counts = []
    train(
        model,
        task,
        100,
        start=2000,
        lr=0.01,
        pruner=pruner,
        until_done=True,
        hook=lambda i: zeroed_counts.append(pruner.method.zeroed),
    )
    assert pruner.done and pruner.iteration == 30
    n = len(pruner.method.active)
    assert zeroed_counts[10] == 1 and zeroed_counts[13] == 2 and zeroed_counts[-1] == n  # one group every 3
    for ch in pruner.channels:
        for s in ch.slices:
            t = s.tensor(model).detach()
            mask = s.broadcast(s.per_position(ch.pruned.double()), t)
            assert float((t * mask).abs().max()) == 0.0  # exactly zero after the hard zeroing
    model.eval()
    with torch.no_grad():
        x, _ = task.test_set()
        before = model(x)
        pruner.prune()
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_resume_is_bit_exact(trained) -> None:
    base, task = trained
    for method, split, opts in [  # GReg-2 resumes before its picking ends (t=6), TPP while lambda grows
        ("greg2", 5, dict(update_every=2, pick_delta=0.01, pick_ceiling=0.03, delta=0.05, stabilize=10)),
        ("tpp", 13, dict(update_every=2, delta=0.1, stabilize=10, zero_every=2)),
    ]:
        full = copy.deepcopy(base)
        p_full = fxprune.Pruner(full, X, method, 0.5, **opts)
        train(full, task, 24, start=3000, lr=0.01, pruner=p_full)

        part = copy.deepcopy(base)
        p_part = fxprune.Pruner(part, X, method, 0.5, **opts)
        opt = train(part, task, split, start=3000, lr=0.01, pruner=p_part)
        resumed, p_res, opt2 = resume_copy(base, part, opt, p_part, X, method, 0.5, **opts)
        train(resumed, task, 24 - split, start=3000 + split, optimizer=opt2, pruner=p_res)
        assert p_res.iteration == p_full.iteration == 24 and p_res.phase == p_full.phase
        assert p_res.pruned_channels() == p_full.pruned_channels()
        for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), f"{method}: {name} differs after resume"


def test_amp_grad_scaler_and_accumulation(trained) -> None:
    base, task = trained
    x, y = task.batch(0)

    def grads(scaled: bool, micro: int):
        m = copy.deepcopy(base)
        p = fxprune.Pruner(m, X, "greg1", 0.5, update_every=1, delta=0.5)
        m.eval()  # BN on running statistics, so micro-batches add up to the full batch
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
        opt.zero_grad()
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            scaler.scale(F.cross_entropy(m(xs), ys) / micro).backward()
        p.after_backward(scaler)
        scaler.unscale_(opt)
        return [t.grad.clone() for t in m.parameters()]

    ref = grads(False, 1)
    for scaled, micro in [(True, 1), (False, 2)]:
        for a, b in zip(ref, grads(scaled, micro)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_torch_compiled_model(trained) -> None:
    base, task = trained
    runs = []
    for compiled in (False, True):
        m = copy.deepcopy(base)
        p = fxprune.Pruner(m, X, "greg1", 0.5, update_every=1, delta=0.1, stabilize=2)
        step_model = torch.compile(m, backend="eager") if compiled else m
        train(step_model, task, 6, start=4000, lr=0.01, pruner=p)
        runs.append(_pruned_kept_norms(p))
        report = p.prune()
        assert report.exact_error < 1e-4
    assert len(runs[0]) == len(runs[1]) > 0
    for a, b in zip(*runs):
        assert a == pytest.approx(b, rel=1e-4)


def test_per_module_ratios_and_target_flops() -> None:
    model = SmallResNet()
    pruner = fxprune.Pruner(model, X, "greg1", 0.25, scope="restricted", ratios={"layer2.*": 0.75})
    counts = {ch.group.modules[0]: int(ch.pruned.sum()) for ch in pruner.channels}
    assert counts == {"layer1.0.conv1": 4, "layer1.1.conv1": 4, "layer2.0.conv1": 24, "layer2.1.conv1": 24}
    target = fxprune.Pruner(SmallResNet(), X, "l1", scope="restricted", target_flops=0.6)
    report = target.prune()
    assert 0.55 < 1 / report.flops_ratio <= 0.6


def test_baselines_rank_by_their_scores(trained) -> None:
    base, task = trained
    # BN scale: channels with the smallest |gamma| go; the L1 penalty on gamma is applied
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(model, X, "bn_scale", 0.25, scope="restricted", iterations=2, sparsity=1e-2)
    ch = pruner.channels[0]
    assert ch.group.modules[0] == "layer1.0.conv1"
    gamma = model.layer1[0].bn1.weight
    with torch.no_grad():
        gamma[:4] = 1e-3
    pruner.after_backward()  # on empty gradients: exactly s * sign(gamma), on BN gammas only
    torch.testing.assert_close(gamma.grad, 1e-2 * gamma.detach().sign(), rtol=0, atol=0)
    assert model.layer1[0].conv1.weight.grad is None
    train(model, task, 2, start=5000, lr=0.0, pruner=pruner)
    assert pruner.done
    pruner.prune()
    gamma = model.layer1[0].bn1.weight
    assert gamma.shape[0] == 12 and bool((gamma.abs() > 1e-2).all())
    # Taylor: a channel whose filters are zero contributes no weight*grad and goes first
    model = copy.deepcopy(base)
    pruner = fxprune.Pruner(model, X, "taylor", 0.25, scope="restricted", iterations=3)
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv.weight[[1, 5, 9, 13]] = 0.0
    train(model, task, 3, start=6000, lr=0.0, pruner=pruner)
    assert pruner.done
    pruner.prune()
    assert pruner.pruned_channels()[pruner.channels[0].id] == [1, 5, 9, 13]


def test_bad_input_is_refused() -> None:
    model = SmallResNet()
    with pytest.raises(ValueError, match="unknown pruning method 'greg3'.*greg1"):
        fxprune.Pruner(model, X, "greg3")
    with pytest.raises(TypeError, match="no option 'lambda_max'.*ceiling"):
        fxprune.Pruner(model, X, "greg1", lambda_max=1.0)
    with pytest.raises(ValueError, match="scope"):
        fxprune.Pruner(model, X, "greg1", scope="layer")
    with pytest.raises(ValueError, match="ratio"):
        fxprune.Pruner(model, X, "greg1", 1.0)
    with pytest.raises(ValueError, match="must not be negative"):
        fxprune.Pruner(model, X, "tpp", delta=-1.0)
    with pytest.raises(ValueError, match="matches no module"):
        fxprune.Pruner(model, X, "greg1", ratios={"nothing.*": 0.5})
    pruner = fxprune.Pruner(model, X, "greg1", 0.5)
    with pytest.raises(ValueError, match="method is 'tpp' in the state"):
        pruner.load_state_dict(fxprune.Pruner(SmallResNet(), X, "tpp", 0.5).state_dict())
    pruner.prune()
    with pytest.raises(RuntimeError, match="already pruned"):
        pruner.step()


@pytest.mark.shared_data
def test_pretrained_resnet20_greg_then_prune_is_lossless() -> None:
    """On the real CIFAR-10 ResNet-20: after a (shortened) GReg-1 run, removing the channels costs nothing."""
    from fxprune.data import evaluate_accuracy, load_cifar10, shared_data_dir
    from fxprune.models import load_cifar_checkpoint

    data = shared_data_dir()
    weights = sorted((data / "weights").glob("resnet20-*.th")) if data else []
    if not weights or not (data / "cifar10.npz").is_file():
        pytest.skip("shared CIFAR-10 data or ResNet-20 checkpoint not found")
    x_train, y_train = load_cifar10("train", 64 * 60)
    x_test, y_test = load_cifar10("test", 1000)
    dense = load_cifar_checkpoint(create_model("cifar_resnet20"), weights[0])
    base = evaluate_accuracy(dense, x_test, y_test)
    model = copy.deepcopy(dense)
    x = torch.randn(1, 3, 32, 32)
    pruner = fxprune.Pruner(model, x, "greg1", 0.5, update_every=1, delta=0.05, stabilize=40)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    for i in range(100):
        xb, yb = x_train[64 * i : 64 * (i + 1)], y_train[64 * i : 64 * (i + 1)]
        loss = F.cross_entropy(model(xb), yb) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.after_backward()
        opt.step()
        pruner.step()
        if pruner.done:
            break
    assert pruner.done
    regularized = evaluate_accuracy(model, x_test, y_test)
    report = pruner.prune()
    pruned = evaluate_accuracy(model, x_test, y_test)
    assert report.flops_ratio > 2.5
    assert abs(pruned - regularized) <= 0.005, (regularized, pruned)
    assert regularized > 0.5, (base, regularized)  # the short, strong schedule costs accuracy, not all of it
    one_shot = copy.deepcopy(dense)
    fxprune.Pruner(one_shot, x, "l1", 0.5).prune()
    l1 = evaluate_accuracy(one_shot, x_test, y_test)
    assert l1 < pruned - 0.1, f"one-shot L1 should lose far more: {l1} vs {pruned} (dense {base})"


def _tensors(out):
    if torch.is_tensor(out):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


@pytest.mark.parametrize(
    "spec, method, size",
    [
        ("torchvision:mobilenet_v3_small", "tpp", 32),
        ("yolov8n.yaml", "greg2", 64),
        ("torchvision:resnet18", "taylor", 32),
    ],
)
def test_methods_on_real_architectures(spec: str, method: str, size: int) -> None:
    """Depthwise + SE (MobileNetV3), C2f split/concat (YOLOv8), residual stages (ResNet)."""
    if spec.endswith(".yaml"):
        pytest.importorskip("ultralytics")
    from fxprune.models import load_model

    model, _ = load_model(spec)
    x = torch.randn(1, 3, size, size)
    short = {
        "tpp": dict(update_every=1, delta=0.5, stabilize=2, zero_every=1),
        "greg2": dict(update_every=1, pick_delta=0.01, pick_ceiling=0.015, delta=0.5, stabilize=2),
        "taylor": dict(iterations=2),
    }[method]
    pruner = fxprune.Pruner(model, x, method, 0.5, **short)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    model.train()
    while not pruner.done:
        loss = sum(o.float().pow(2).mean() for o in _tensors(model(torch.cat([x, x])))) + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        pruner.after_backward()
        opt.step()
        pruner.step()
        assert pruner.iteration < 10
    assert any(len(ch.group.modules) > 2 for ch in pruner.channels)  # coupled groups are regularized too
    report = pruner.prune()
    assert report.flops_ratio > 2.0 and report.exact_error < 1e-4
