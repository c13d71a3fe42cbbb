"""Pruning methods: registry, exact sparsity, masks only shrink, purity, channel structure, HYDRA."""

import pytest
import torch

import model_zoo
from abcrown_plugins.errors import UserError
from abcrown_plugins.pruning import (
    METHODS,
    Mask,
    PruneContext,
    channel_mask_of,
    get_method,
    initial_mask,
    prune,
    prune_unstructured,
)
from abcrown_plugins.config.schema import SECTION_BY_NAME
from abcrown_plugins.training import ibp_loss

WEIGHT_METHODS = [n for n, m in METHODS.items() if m.structure == "weights"]
CHANNEL_METHODS = [n for n, m in METHODS.items() if m.structure == "channels"]


def small():
    torch.manual_seed(0)
    m = model_zoo.build_model("cnn_small", in_channels=3, input_size=32)
    with torch.no_grad():  # distinct BN gammas, so slim has no ties
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.num_features) + 0.1)
    return m


def objective(model, x, y):
    return ibp_loss(model, x, y, 2 / 255, 10)[0]


def ctx(train_set, **kw):
    base = dict(rate=0.2, channel_rate=0.11, round=1, seed=0, train_set=train_set, batch_size=32,
                objective=objective, saliency_batches=1, score_epochs=1, score_lr=0.1)
    base.update(kw)
    return PruneContext(**base)


def test_registry_names_match_config_choices():
    choices = set(next(o for o in SECTION_BY_NAME["pruning"].options if o.key == "method").kind.choices)
    assert choices == set(METHODS) | {"magnitude"}
    assert get_method("magnitude") is METHODS["imp"]
    with pytest.raises(UserError) as e:
        get_method("hydr")
    assert "did you mean 'hydra'" in str(e.value) and "struct_lth" in str(e.value)


@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_unstructured_exact_sparsity_shrinking_and_pure(name, tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = initial_mask(name, model)
    density = 1.0
    for r in range(1, 3):
        new = prune(name, model, mask, ctx(train_set, round=r, init_state=before))
        assert new.is_subset_of(mask)
        density *= 0.8
        assert abs(new.density() - density) < 1e-4 * 5 + 1 / mask.total
        assert new.kept == mask.kept - round(0.2 * mask.kept)  # exact count
        mask = new
        mask.apply_(model)
    model2 = small()
    pure = initial_mask(name, model2)
    prune(name, model2, pure, ctx(train_set, init_state=before))
    for k, v in model2.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} changed {k}"


def test_layerwise_strategy_prunes_each_layer_exactly():
    model = small()
    mask = Mask.ones_like(model)
    params = dict(model.named_parameters())
    new = prune_unstructured({k: params[k].abs() for k in mask}, mask, 0.3, "layerwise")
    for k in mask:
        assert int(new[k].sum()) == mask[k].numel() - round(0.3 * mask[k].numel())
        kept, removed = params[k][new[k]].abs(), params[k][~new[k]].abs()
        assert removed.max() <= kept.min()
    with pytest.raises(UserError, match="valid: global, layerwise"):
        prune_unstructured({k: params[k] for k in mask}, mask, 0.3, "local")


def test_random_is_reproducible_and_depends_on_round(tiny_synthetic):
    model = small()
    mask = initial_mask("random", model)
    a = prune("random", model, mask, PruneContext(round=1))
    b = prune("random", model, mask, PruneContext(round=1))
    c = prune("random", model, mask, PruneContext(round=2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_snip_scores_the_rewind_point(tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = small()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    mask = initial_mask("snip", model)
    a = prune("snip", model, mask, ctx(train_set, init_state=init))
    other = {k: (v * 3 if k.endswith("0.weight") or "1.weight" in k else v) for k, v in init.items()}
    other["1.weight"] = torch.randn_like(init["1.weight"])
    b = prune("snip", model, mask, ctx(train_set, init_state=other))
    assert not torch.equal(a["1.weight"], b["1.weight"])


def test_hydra_with_zero_epochs_is_magnitude_and_learning_moves_scores(tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = small()
    mask = initial_mask("hydra", model)
    zero = prune("hydra", model, mask, ctx(train_set, score_epochs=0))
    imp = prune("imp", model, mask, ctx(train_set))
    assert all(torch.equal(zero[k], imp[k]) for k in zero)
    learned = prune("hydra", model, mask, ctx(train_set, score_epochs=1, score_lr=1.0))
    assert learned.kept == imp.kept and learned.is_subset_of(mask)
    assert any(not torch.equal(learned[k], imp[k]) for k in learned)


@pytest.mark.parametrize("name", CHANNEL_METHODS)
def test_channel_methods_exact_count_shrink_and_refill(name, tiny_synthetic):
    train_set, _ = tiny_synthetic
    model = small()
    mask = initial_mask(name, model)
    mask.validate(model)
    cm = channel_mask_of(model, mask)
    for r in range(1, 4):
        new = prune(name, model, mask, ctx(train_set, round=r))
        assert new.is_subset_of(mask)
        new_cm = channel_mask_of(model, new)
        kept = sum(int(v.sum()) for v in cm.values())
        assert sum(int(v.sum()) for v in new_cm.values()) == kept - round(0.11 * kept)
        params = dict(model.named_parameters())
        for conv, keep in new_cm.items():
            w = new[f"{conv}.weight"]
            assert bool(w[keep].all()) and not bool(w[~keep].any())  # whole filters: refilled or removed
            assert bool(keep.any())
        mask, cm = new, new_cm
        mask.apply_(model)
        for conv, keep in cm.items():
            assert (params[f"{conv}.weight"][~keep] == 0).all()


def test_slim_prunes_smallest_gamma():
    model = small()
    mask = initial_mask("slim", model)
    new_cm = channel_mask_of(model, prune("slim", model, mask, PruneContext(channel_rate=0.25)))
    from abcrown_plugins.pruning.channels import bn_of

    gammas = torch.cat([bn.weight.detach().abs() for bn in bn_of(model).values()])
    keep = torch.cat([new_cm[c] for c in bn_of(model)])
    assert gammas[~keep].max() <= gammas[keep].min()


def test_slim_layerwise_strategy_prunes_each_conv_alike():
    model = small()
    mask = initial_mask("slim", model)
    new_cm = channel_mask_of(model, prune("slim", model, mask, PruneContext(channel_rate=0.25, strategy="layerwise")))
    from abcrown_plugins.pruning.channels import bn_of

    for conv, bn in bn_of(model).items():
        keep, gamma = new_cm[conv], bn.weight.detach().abs()
        assert int((~keep).sum()) == round(0.25 * keep.numel())
        assert gamma[~keep].max() <= gamma[keep].min()


def fgsm_objective(model, x, y):
    """FGSM+GradAlign at 2/255: a random start and random noise drawn from torch's global generator."""
    from abcrown_plugins.attacks.fgsm import fgsm_gradalign_loss

    return fgsm_gradalign_loss(model, x, y, 2 / 255, 2.5 / 255, "random", 0.2)[0]


@pytest.mark.parametrize("name", ["hydra", "snip", "taylor", "random"])
def test_scores_depend_on_seed_and_round_only_not_on_the_global_generator(name, tiny_synthetic):
    """A resumed run prunes a round again from another global RNG state; it must get the same scores."""
    from abcrown_plugins.pruning.methods import method_scores

    train_set, _ = tiny_synthetic
    model = small()
    mask = initial_mask(name, model)
    c = ctx(train_set, objective=fgsm_objective, score_lr=1.0)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        scores = method_scores(name, model, mask, c)
        runs.append((scores, torch.rand(4)))
    (a, after_a), (b, after_b) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(after_a, after_b)  # the global generator is left where the caller had it
    other_round = method_scores(name, model, mask, ctx(train_set, objective=fgsm_objective, score_lr=1.0, round=2))
    assert not all(torch.equal(a[k], other_round[k]) for k in a)
