"""The zoo's architectures. Each is an ``nn.Sequential`` starting with Normalize."""

from __future__ import annotations

from torch import nn

from model_zoo.layers import BasicBlock, Normalize, conv_block
from model_zoo.registry import register_model


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@register_model("cnn_7layer", "CNN-7L of seed 001 Table 1: 5 ConvBlocks (Conv+BN+ReLU), FC(2048|1152,100), FC(100,10).")
def cnn_7layer(in_channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    # (in, out, kernel, stride) as in Table 1; padding 1 everywhere, so 32x32 -> 4x4
    # (2048 features) and 28x28 -> 3x3 (1152 features).
    spec = [(in_channels, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2), (128, 128, 4, 2)]
    layers: list[nn.Module] = [Normalize(mean, std)]
    size = input_size
    for cin, cout, k, s in spec:
        layers += conv_block(cin, cout, k, s, padding=1)
        size = _conv_out(size, k, s, 1)
    layers += [nn.Flatten(), nn.Linear(128 * size * size, 100), nn.ReLU(), nn.Linear(100, num_classes)]
    return nn.Sequential(*layers)


@register_model("cnn_small", "Small CNN for fast runs and tests: 2 ConvBlocks, FC(.,100), FC(100,10).")
def cnn_small(in_channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    size = _conv_out(_conv_out(input_size, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(
        Normalize(mean, std),
        *conv_block(in_channels, 16, 4, 2, padding=1),
        *conv_block(16, 32, 4, 2, padding=1),
        nn.Flatten(), nn.Linear(32 * size * size, 100), nn.ReLU(), nn.Linear(100, num_classes),
    )


@register_model("resnet_small", "Small residual network: stem ConvBlock, 2 BasicBlocks, average pooling, FC.")
def resnet_small(in_channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    return nn.Sequential(
        Normalize(mean, std),
        *conv_block(in_channels, 16, 3, 1, padding=1),
        BasicBlock(16, 16, stride=2),
        BasicBlock(16, 32, stride=2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (input_size // 8) ** 2, 100), nn.ReLU(), nn.Linear(100, num_classes),
    )


@register_model("resnet18_nr", "ResNet-18-NR of seed 001 App. B.3: alpha-beta-CROWN's narrow ResNet18 (in_planes=2) "
                "at double width (in_planes=4): stem conv, 4 stages of 2 BasicBlocks (4, 8, 16, 32 channels), "
                "AvgPool2d(4), FC(32,10).")
def resnet18_nr(in_channels: int, input_size: int, num_classes: int, mean, std) -> nn.Module:
    # Stages double the width and halve the size (stride 2) from the second on:
    # 32 -> 32, 16, 8, 4 and 28 -> 28, 14, 7, 4; AvgPool2d(4) leaves 1x1, so FC(8 * planes).
    planes = 4
    layers: list[nn.Module] = [Normalize(mean, std), nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(planes), nn.ReLU()]
    cin = planes
    for stage in range(4):
        cout = planes * 2 ** stage
        for i in range(2):
            layers.append(BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
            cin = cout
    size = input_size
    for _ in range(3):
        size = _conv_out(size, 3, 2, 1)
    layers += [nn.AvgPool2d(4), nn.Flatten(), nn.Linear(cin * (size // 4) ** 2, num_classes)]
    return nn.Sequential(*layers)
