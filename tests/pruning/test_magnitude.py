import pytest
import torch

import model_zoo
from abcrown_plugins.pruning import Mask, prunable_parameters, prune_global_magnitude


def model():
    return model_zoo.build_model("cnn_7layer", in_channels=3, input_size=32)


def test_prunable_scope_conv_only():
    m = model()
    names = list(prunable_parameters(m, "conv"))
    assert len(names) == 5 and all(isinstance(dict(m.named_modules())[n[:-7]], torch.nn.Conv2d) for n in names)
    both = list(prunable_parameters(m, "conv+linear"))
    assert len(both) == 6  # the final classifier is not pruned


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.11])
def test_achieved_sparsity_and_shrinking(rate):
    m = model()
    mask = Mask.ones_like(m)
    density = 1.0
    for _ in range(4):
        new = prune_global_magnitude(m, mask, rate)
        assert new.is_subset_of(mask)
        density *= 1 - rate
        assert abs(new.density() - density) < 1e-4
        mask = new
        mask.apply_(m)


def test_removes_smallest_magnitudes_globally():
    m = model()
    mask = prune_global_magnitude(m, Mask.ones_like(m), 0.3)
    params = dict(m.named_parameters())
    kept = torch.cat([params[k][v].abs().flatten() for k, v in mask.items()])
    removed = torch.cat([params[k][~v].abs().flatten() for k, v in mask.items()])
    assert removed.max() <= kept.min()


def test_mask_validation():
    m = model()
    Mask.ones_like(m).validate(m)
    with pytest.raises(ValueError, match="not a parameter"):
        Mask({"nope.weight": torch.ones(3)}).validate(m)
    with pytest.raises(ValueError, match="shape"):
        Mask({"1.weight": torch.ones(3)}).validate(m)


def test_rewinding_restores_exact_initial_weights():
    m = model()
    init = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))  # "training"
    mask = prune_global_magnitude(m, Mask.ones_like(m), 0.2)
    from abcrown_plugins.pruning import rewind_

    rewind_(m, init, mask)
    params = dict(m.named_parameters())
    for k, v in m.state_dict().items():
        expected = init[k] * mask[k] if k in list(mask) else init[k]
        assert torch.equal(v, expected), k
    assert all((params[k][~mv] == 0).all() for k, mv in mask.items())
