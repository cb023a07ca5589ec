"""resnet: train and use ResNet image classifiers with PyTorch."""

from resnet.model import (
    BasicBlock,
    Bottleneck,
    FlipTTA,
    ResNet,
    get_model,
    list_models,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)

__version__ = "0.1.0"

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "FlipTTA",
    "ResNet",
    "get_model",
    "list_models",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]
