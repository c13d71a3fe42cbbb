import pytest
import torch
from torch import nn

import model_zoo
from abcrown_plugins.errors import UserError
from abcrown_plugins.models import build as build_model


def test_cnn_7layer_matches_seed_table_1():
    m = model_zoo.build_model("cnn_7layer", in_channels=3, input_size=32)
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2), (128, 128, 4, 2)]
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 100), (100, 10)]
    # every conv is followed by BatchNorm then ReLU (ConvBlock)
    layers = list(m)
    for i, l in enumerate(layers):
        if isinstance(l, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.ReLU)
    # the real parameter count (the paper's "6.7M" is 10x off its own table)
    assert model_zoo.count_parameters(m) == 670_870


def test_cnn_7layer_gray_variant():
    m = model_zoo.build_model("cnn_7layer", in_channels=1, input_size=28)
    assert [l for l in m if isinstance(l, nn.Linear)][0].in_features == 1152
    assert m.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_every_model_normalises_first(name, channels, size):
    mean, std = (0.3,) * channels, (0.2,) * channels
    m = model_zoo.build_model(name, in_channels=channels, input_size=size, mean=mean, std=std).eval()
    assert isinstance(m[0], model_zoo.Normalize)
    x = torch.rand(3, channels, size, size)
    assert torch.allclose(m[0](x), (x - 0.3) / 0.2, atol=1e-6)
    assert m(x).shape == (3, 10)
    # normalisation buffers travel with the state dict (strict loaders need them)
    assert "0.mean" in m.state_dict() and "0.std" in m.state_dict()


def test_registry_errors():
    with pytest.raises(UserError, match="did you mean 'cnn_7layer'.*valid:"):
        build_model("cnn_7layr", 3, 32, 10, (0.5,), (0.5,))
    with pytest.raises(UserError, match="input sizes"):
        build_model("cnn_7layer", 3, 64, 10, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="registered twice"):
        model_zoo.register_model("cnn_small", "dup")(lambda **kw: None)


@pytest.mark.parametrize("name", sorted(model_zoo.MODELS))
def test_model_card_states_real_parameter_counts(name):
    from pathlib import Path

    card = (Path(model_zoo.__file__).parent / "cards" / f"{name}.md").read_text()
    for channels, size in [(3, 32), (1, 28)]:
        n = model_zoo.count_parameters(model_zoo.build_model(name, in_channels=channels, input_size=size))
        assert f"{n:,}" in card, f"{name} card lacks the parameter count {n:,} for {channels}x{size}x{size}"


def test_normalize_is_the_per_channel_affine_map_and_follows_loaded_statistics():
    layer = model_zoo.Normalize((0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    x = torch.rand(4, 3, 8, 8)
    mean, std = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    assert torch.allclose(layer(x), (x - mean) / std, atol=1e-6)
    assert set(layer.state_dict()) == {"mean", "std"}  # the convolution form is derived, not saved
    other = model_zoo.Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    other.load_state_dict(layer.state_dict())
    assert torch.allclose(other(x), layer(x))
    assert torch.allclose(other.double()(x.double()), (x.double() - mean.double()) / std.double(), atol=1e-12)
