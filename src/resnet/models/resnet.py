"""The ResNet family (He et al., 2015) as pure ``nn.Module``s.

Parameter names match ``torchvision.models.resnet`` exactly, so torchvision's
state_dicts (and its official weights) load with ``strict=True``.  On top of the
tutorial's ``include_top`` switch this adds Keras-style ``pooling``, timm's
``forward_features`` / ``forward_head`` split, and the v1 / v1.5 stride choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["avg", "max"] | None
POOLINGS = ("avg", "max")
Stem = Literal["imagenet", "small", "small-pool"]
STEMS = ("imagenet", "small", "small-pool")
# How much the stem shrinks the image before layer1; the network's stride is 8 times that.
STEM_STRIDES = {"imagenet": 4, "small": 1, "small-pool": 2}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by a BatchNorm, whose shift plays that role.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity shortcut: the block of ResNet-18/34."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        stride_in_1x1: bool = False,  # accepted for a uniform signature; a BasicBlock has no 1x1
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4): the block of ResNet-50/101/152."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        # The original paper (v1) strides the first 1x1 conv. torchvision and NVIDIA's
        # "v1.5" stride the 3x3 instead: a 1x1 with stride 2 throws away 3/4 of its
        # input, while a 3x3 still sees every pixel. v1.5 is a little more accurate on
        # ImageNet at slightly more compute. The parameters are the same either way.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        out_channels = channels * self.expansion
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A ResNet: a stem (7x7 for ImageNet-sized images), four stages of residual blocks, a pooled linear head.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, four positive ints (ResNet-34: ``[3, 4, 6, 3]``).
        num_classes: outputs of the classifier head.
        include_top: with ``False`` there is no head (and no ``fc`` parameters);
            ``forward`` returns the last feature map, ``(N, 512 * expansion, H/32, W/32)``,
            or pooled ``(N, C)`` features when ``pooling`` is given.
        pooling: global pooling, ``"avg"`` or ``"max"``; ``None`` means ``"avg"``
            with a head and no pooling without one (as in Keras).
        stride_in_1x1: put a Bottleneck's downsampling stride on its first 1x1 conv
            (the paper's v1) instead of its 3x3 conv (v1.5, the default).
        zero_init_residual: start the last BatchNorm of every block at zero, so each
            residual branch begins as the identity (Goyal et al., 2017).
        stem: ``"imagenet"``, the 7x7 stride-2 convolution and stride-2 max-pool that take
            224 px to 56 before ``layer1``; or ``"small"``, for images of about 32 px, a 3x3
            stride-1 convolution and no max-pool (He et al.'s CIFAR ResNets): ``layer1``
            sees the image at full size and ``layer4`` a 4x4 map at 32 px, not 1x1. Only
            ``conv1``'s weight changes shape; every name stays torchvision's. ``"small-pool"``
            keeps the small stem's convolution and adds the stride-2 max-pool: ``layer1`` at
            16x16 for a 32 px image, about a quarter of the small stem's cost (the same
            ``conv1`` weight, so the state_dicts of the two match).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        include_top: bool = True,
        pooling: Pooling = None,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        stem: Stem = "imagenet",
    ) -> None:
        super().__init__()
        _check_arguments(block, layers, num_classes, pooling)
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.include_top = include_top
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes if include_top else 0
        self.stem = stem

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            # Neither pooling has parameters: the state_dict's names are unchanged.
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "small-pool" else nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        in_channels = 64
        stages = []
        for index, (channels, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage, in_channels = _make_stage(block, in_channels, channels, depth, stride, stride_in_1x1)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        if pooling is None:
            pooling = "avg" if include_top else None
        self.global_pool: nn.Module | None = _global_pool(pooling)
        self.fc: nn.Linear | None = nn.Linear(self.num_features, num_classes) if include_top else None

        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The stem and the four stages: ``(N, 3, H, W) -> (N, C, H/32, W/32)`` (``H/8``
        with the small stem, ``H/16`` with small-pool)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pooling and the classifier; ``pre_logits`` stops before ``fc``."""
        if self.global_pool is not None:
            x = torch.flatten(self.global_pool(x), 1)
        if pre_logits or self.fc is None:
            return x
        return self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialized one of ``num_classes`` outputs."""
        _check_num_classes(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes
        self.include_top = True
        if self.global_pool is None:
            self.global_pool = _global_pool("avg")


class FlipTTA(nn.Module):
    """Test-time augmentation: the mean of the logits of each image and of its mirror image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return (self.model(x) + self.model(x.flip(-1))) / 2


def _make_stage(
    block: Block, in_channels: int, channels: int, depth: int, stride: int, stride_in_1x1: bool
) -> tuple[nn.Sequential, int]:
    out_channels = channels * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        # The projection shortcut (the tutorial's "dashed line"): a strided 1x1 conv
        # so the identity matches the residual branch in size and channels.
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, channels, stride, downsample, stride_in_1x1)]
    blocks += [block(out_channels, channels, stride_in_1x1=stride_in_1x1) for _ in range(1, depth)]
    return nn.Sequential(*blocks), out_channels


def _global_pool(pooling: Pooling) -> nn.Module | None:
    if pooling == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if pooling == "max":
        return nn.AdaptiveMaxPool2d(1)
    return None


def _check_arguments(block: Block, layers: Sequence[int], num_classes: int, pooling: object) -> None:
    if block not in (BasicBlock, Bottleneck):
        raise ValueError(f"block must be BasicBlock or Bottleneck, got {block!r}")
    if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
        raise ValueError(f"layers must be four positive ints (blocks per stage), got {list(layers)!r}")
    _check_num_classes(num_classes)
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}")


def _check_num_classes(num_classes: object) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


# --- the registry: names -> builders, as in timm -----------------------------

_MODELS: dict[str, Callable[..., ResNet]] = {}


def register_model(builder: Callable[..., ResNet]) -> Callable[..., ResNet]:
    _MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    """Names of every registered architecture, shallowest first (by depth, then name,
    so that a variant such as "resnet50d" sorts after "resnet50")."""
    return sorted(_MODELS, key=_depth_then_name)


def _depth_then_name(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else 0, name)


def get_model(name: str, **kwargs: object) -> ResNet:
    """Build a registered architecture by name, e.g. ``get_model("resnet50", num_classes=102)``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


@register_model
def resnet10(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    """One BasicBlock a stage: resnet18's widths at about half its depth and cost, for small
    images on a CPU budget (as MONAI's and timm's ResNet-10s)."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes, include_top=include_top, **kwargs)


@register_model
def resnet18(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, include_top=include_top, **kwargs)


@register_model
def resnet34(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, include_top=include_top, **kwargs)


@register_model
def resnet50(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, include_top=include_top, **kwargs)


@register_model
def resnet101(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, include_top=include_top, **kwargs)


@register_model
def resnet152(*, num_classes: int = 1000, include_top: bool = True, **kwargs: object) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, include_top=include_top, **kwargs)
