"""resnet: train and use ResNet image classifiers with PyTorch.

``resnet.train``, ``resnet.evaluate`` and ``resnet.predict`` are the ``resnet`` commands as
functions (resnet.api); the modules they run are resnet.engine.training, resnet.tools.evaluation and
resnet.tools.prediction, named so that importing them leaves these names to the functions.
"""

from resnet.api import EvalResult, PredictResult, TrainResult, evaluate, predict, train
from resnet.errors import ResnetError
from resnet.models.resnet import (
    BasicBlock,
    Bottleneck,
    FlipTTA,
    ResNet,
    get_model,
    list_models,
    resnet10,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)

from resnet.version import __version__ as __version__  # resnet.__version__

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "EvalResult",
    "FlipTTA",
    "PredictResult",
    "ResNet",
    "ResnetError",
    "TrainResult",
    "get_model",
    "list_models",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "evaluate",
    "predict",
    "train",
]
