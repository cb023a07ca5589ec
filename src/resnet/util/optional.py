"""The optional packages behind the extras (``pip install "resnet-lab[EXTRA]"``): imported when
a command needs them, so that the core installs without them, or one line saying what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnet.errors import ResnetError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or a ResnetError: ``purpose`` needs the missing package, which the
    extra ``extra`` installs."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = error.name or module
        raise ResnetError(f'{purpose} needs {missing}: pip install "resnet-lab[{extra}]"') from None
