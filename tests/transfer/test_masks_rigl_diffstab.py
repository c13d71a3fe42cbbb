"""Sparse-delta masks keep the ratio k, RigL keeps it after every update, DiffStab is 0 only for equal bounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import model_zoo
from abcrown_plugins.bounds import input_box, interval_propagate
from abcrown_plugins.errors import UserError
from abcrown_plugins.transfer import (
    PATTERNS,
    build_mask,
    classifier_names,
    diffstab_loss,
    mask_count,
    rigl_update,
    select_units,
    unit_layout,
    verification_aware_prefix,
)
from abcrown_plugins.transfer.masks import layer_order, prefix_mac_fraction
from abcrown_plugins.transfer.diffstab import DiffStabTerm
from abcrown_plugins.transfer.finetune import FitSettings, SparseDelta, fit
from tests.conftest import randomize_batchnorm

RATIOS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


def _model(arch: str, classes: int = 2):
    return model_zoo.build_model(arch, in_channels=3, input_size=32, num_classes=classes)


def _scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}


def _tolerance(layout) -> int:
    return int(layout.size.max()) if layout.pattern != "unstructured" else 0


@pytest.mark.parametrize("arch", ["cnn_small", "resnet_small"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_verification_aware_prefix_is_the_longest_that_holds_the_budget(arch, pattern):
    model = _model(arch)
    layers = int(unit_layout(model, pattern).layer.max()) + 1
    seen = set()
    for k in (*RATIOS, 0.9, 1.0):
        f = verification_aware_prefix(model, pattern, k)
        seen.add(f)
        layout = unit_layout(model, pattern, f)
        budget = round(k * layout.total)
        assert int(layout.size.sum()) >= budget  # the unfrozen layers hold k ...
        if f + 1 < layers:  # ... and freezing one more layer would not
            assert int(unit_layout(model, pattern, f + 1).size.sum()) < budget
        mask = build_mask(model, layout, _scores(model), k)  # so the mask is built, and nothing in the prefix
        frozen = [n for n, _ in layer_order(model)][:f]
        assert not any(bool(mask[f"{n}.{p}"].any()) for n in frozen for p in ("weight", "bias") if f"{n}.{p}" in mask)
        assert f == 0 or prefix_mac_fraction(model, mask, (3, 32, 32)) > 0
    assert len(seen) >= 2 and 0 in seen  # k = 1 needs every layer; small k leaves a prefix


@pytest.mark.parametrize("arch", ["cnn_small", "resnet_small"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_ratio_is_k_within_one_unit(arch, pattern):
    model = _model(arch)
    layout = unit_layout(model, pattern)
    classifier = classifier_names(model)
    assert layout.total == sum(p.numel() for n, p in model.named_parameters() if n not in classifier)
    assert int(layout.size.sum()) == layout.total  # every non-classifier entry is in exactly one unit
    for k in RATIOS:
        mask = build_mask(model, layout, _scores(model), k)
        target = round(k * layout.total)
        count = mask_count(mask, classifier)
        assert count <= target and target - count <= _tolerance(layout)
        assert all(bool(mask[n].all()) for n in classifier)  # classifier dense
        assert set(mask) == {n for n, _ in model.named_parameters()}
        # masks are unions of whole units
        units = layout.units_from_mask(mask)
        assert int(layout.size[units].sum()) == count


def test_structured_units_are_output_channels_with_their_batchnorm():
    model = _model("cnn_small")
    layout = unit_layout(model, "structured")
    mask = build_mask(model, layout, _scores(model, 1), 0.08)
    conv_w, conv_b, bn_w, bn_b = mask["4.weight"], mask["4.bias"], mask["5.weight"], mask["5.bias"]
    channels = conv_w.flatten(1).any(1)
    assert torch.equal(conv_w.flatten(1).all(1), channels)  # whole filters
    assert torch.equal(conv_b, channels) and torch.equal(bn_w, channels) and torch.equal(bn_b, channels)


def test_groupwise_units_are_dense_blocks():
    model = _model("cnn_small")
    layout = unit_layout(model, "groupwise", group_shape=(4, 4))
    mask = build_mask(model, layout, _scores(model, 2), 0.04)
    w = mask["4.weight"]  # 32 x 16 x 4 x 4 -> 8 x 4 blocks of 4 x 4 x kernel
    blocks = w.view(8, 4, 4, 4, 4, 4).permute(0, 2, 1, 3, 4, 5).reshape(8, 4, -1)
    assert torch.equal(blocks.any(-1), blocks.all(-1))


def test_select_units_greedy_budget():
    sizes = torch.tensor([5, 3, 3, 1])
    sel = select_units(torch.tensor([4.0, 3.0, 2.0, 1.0]), sizes, 7)
    assert sel.tolist() == [True, False, False, True]  # 5 fits, 3 does not, 1 fits: 6 <= 7
    assert select_units(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), 0).sum() == 0


def test_frozen_prefix_gets_no_update_and_too_large_k_is_a_user_error():
    model = _model("cnn_small")
    layout = unit_layout(model, "unstructured", frozen_prefix=2)
    mask = build_mask(model, layout, _scores(model), 0.04)
    for name in ("1.weight", "1.bias", "2.weight", "2.bias", "4.weight", "4.bias", "5.weight", "5.bias"):
        assert not mask[name].any()
    assert mask_count(mask, classifier_names(model)) == round(0.04 * layout.total)
    with pytest.raises(UserError, match="frozen"):
        build_mask(model, unit_layout(model, "unstructured", frozen_prefix=3), _scores(model), 0.64)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_rigl_keeps_the_ratio_after_every_update(pattern):
    model = _model("resnet_small")
    layout = unit_layout(model, pattern)
    classifier = classifier_names(model)
    mask = build_mask(model, layout, _scores(model, 3), 0.04)
    count0 = mask_count(mask, classifier)
    g = torch.Generator().manual_seed(5)
    changed_any = False
    for step in range(5):
        delta = {n: torch.randn(p.shape, generator=g) * mask[n] for n, p in model.named_parameters()}
        grads = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
        new = rigl_update(layout, mask, delta, grads, 0.3, classifier)
        assert mask_count(new, classifier) == count0  # exact: swaps inside pools of equal-size units
        assert int(layout.size[layout.units_from_mask(new)].sum()) == count0
        changed_any |= any(bool((new[n] ^ mask[n]).any()) for n in mask)
        mask = new
    assert changed_any


def test_rigl_drops_smallest_delta_and_grows_largest_gradient():
    model = _model("cnn_small")
    layout = unit_layout(model, "unstructured")
    classifier = classifier_names(model)
    mask = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    for n in classifier:
        mask[n][:] = True
    mask["1.weight"].view(-1)[:4] = True
    delta = {n: torch.zeros(p.shape) for n, p in model.named_parameters()}
    delta["1.weight"].view(-1)[:4] = torch.tensor([1.0, 0.1, 2.0, 3.0])
    grads = {n: torch.zeros(p.shape) for n, p in model.named_parameters()}
    grads["1.weight"].view(-1)[10] = 5.0
    new = rigl_update(layout, mask, delta, grads, 0.25, classifier)  # one of four swapped
    flat = new["1.weight"].view(-1)
    assert not flat[1] and flat[10] and flat[0] and flat[2] and flat[3]


def test_diffstab_is_zero_for_identical_networks_and_positive_otherwise():
    torch.manual_seed(0)
    a = _model("resnet_small", classes=5).eval()
    randomize_batchnorm(a)
    b = _model("resnet_small", classes=2).eval()
    state = {k: v for k, v in a.state_dict().items() if not k.startswith("10.")}
    b.load_state_dict(state, strict=False)  # same body, different classifier
    x = torch.rand(4, 3, 32, 32)
    assert diffstab_loss(b, a, x, 2 / 255).item() == 0.0
    with torch.no_grad():
        b[1].weight[0, 0, 0, 0] += 0.1
    loss = diffstab_loss(b, a, x, 2 / 255)
    assert loss.item() > 0
    # equals eq. 1 computed by hand from the recorded bounds
    lo, hi = input_box(x, 2 / 255)
    ra = interval_propagate(a, lo, hi).relus
    rb = interval_propagate(b, lo, hi).relus
    num = sum(((p.lower - q.lower) ** 2 + (p.upper - q.upper) ** 2).sum() for p, q in zip(rb, ra))
    neurons = sum(r.lower[0].numel() for r in ra)
    assert loss.item() == pytest.approx((num / (neurons * 4)).item(), rel=1e-6)
    loss.backward()
    assert b[1].weight.grad is not None and b[1].weight.grad.abs().sum() > 0


def test_sparse_finetune_changes_only_masked_entries_bit_for_bit(tiny_synthetic):
    train, _ = tiny_synthetic
    model = _model("cnn_small", classes=10)
    randomize_batchnorm(model)
    reference = _model("cnn_small", classes=10)
    reference.load_state_dict(model.state_dict())
    classifier = classifier_names(model)
    layout = unit_layout(model, "structured")
    mask = build_mask(model, layout, _scores(model, 4), 0.08)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if n not in classifier}
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    sparse = SparseDelta(layout, mask, base, classifier, rigl=True, rigl_interval=1, rigl_drop_fraction=0.5,
                         rigl_end=1.0)
    count0 = mask_count(mask, classifier)
    fit(model, train, train.labels, F.cross_entropy, FitSettings(1, 1e-2, 64, 0, noise_sigma=0.1), "cpu",
        sparse=sparse, reference=reference, diffstab_weight=1.0, diffstab_eps=2 / 255, freeze_bn=True)
    assert sparse.rigl_updates >= 2
    assert mask_count(sparse.mask, classifier) == count0
    params = dict(model.named_parameters())
    changed = 0
    for n, b in base.items():
        outside = ~sparse.mask[n]
        assert torch.equal(params[n].detach()[outside], b[outside])
        changed += int((params[n].detach() != b).sum())
    assert 0 < changed <= count0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())  # BN statistics frozen


def test_diffstab_term_is_the_weighted_loss_and_keeps_the_unweighted_value():
    torch.manual_seed(0)
    a = _model("cnn_small", classes=3).eval()
    b = _model("cnn_small", classes=3).eval()
    x = torch.rand(4, 3, 32, 32)
    term = DiffStabTerm(a, 0.5)
    value = term.term(b, x, 2 / 255, None)
    want = diffstab_loss(b, a, x, 2 / 255)
    assert torch.equal(value, 0.5 * want) and value.requires_grad
    assert torch.equal(term.last, want.detach()) and not term.last.requires_grad


class _Killed(Exception):
    pass


def test_sparse_finetune_killed_mid_epoch_resumes_bit_for_bit(tiny_synthetic, tmp_path):
    """RigL, DiffStab and noise on: a run killed in epoch 2 and started again ends where an uninterrupted one does."""
    train, _ = tiny_synthetic

    def setup():
        torch.manual_seed(4)
        model = _model("cnn_small", classes=10)
        randomize_batchnorm(model, torch.Generator().manual_seed(1))
        reference = _model("cnn_small", classes=10)
        reference.load_state_dict(model.state_dict())
        classifier = classifier_names(model)
        layout = unit_layout(model, "structured")
        base = {n: p.detach().clone() for n, p in model.named_parameters() if n not in classifier}
        sparse = SparseDelta(layout, build_mask(model, layout, _scores(model, 4), 0.08), base, classifier,
                             rigl=True, rigl_interval=3, rigl_drop_fraction=0.5, rigl_end=1.0)
        return model, reference, sparse

    def run(loss_fn, state=None):
        model, reference, sparse = setup()
        history = fit(model, train, train.labels, loss_fn, FitSettings(2, 1e-2, 64, 0, noise_sigma=0.1), "cpu",
                      state, run_key="k", sparse=sparse, reference=reference, diffstab_weight=1.0,
                      diffstab_eps=2 / 255, freeze_bn=True)
        return model, sparse, history

    straight, s_sparse, s_hist = run(F.cross_entropy)
    calls = []

    def dies_in_epoch_two(logits, t):
        calls.append(1)
        if len(calls) == 6:  # 4 batches per epoch
            raise _Killed
        return F.cross_entropy(logits, t)

    state = tmp_path / "state.pt"
    with pytest.raises(_Killed):
        run(dies_in_epoch_two, state)
    resumed, r_sparse, r_hist = run(F.cross_entropy, state)
    assert s_sparse.rigl_updates >= 2 and r_sparse.rigl_updates == s_sparse.rigl_updates
    assert all(torch.equal(s_sparse.mask[n], r_sparse.mask[n]) for n in s_sparse.mask)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [list(r) for r in r_hist] == [["epoch", "loss", "diffstab", "time_s"]] * 2
    assert [r["loss"] for r in r_hist] == [r["loss"] for r in s_hist]
    assert [r["diffstab"] for r in r_hist] == [r["diffstab"] for r in s_hist] and r_hist[-1]["diffstab"] > 0
