"""Progress bars only where someone watches them: on a terminal.

``resnet train > log 2>&1`` should read as the start lines and one line per epoch: a bar
written to a file is a run of carriage returns that a pager shows as one long line.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def bars_shown(wanted: bool = True) -> bool:
    """Whether to draw a progress bar: when it is ``wanted`` (no --quiet) and stderr is a terminal."""
    try:
        return wanted and sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or a closed one
        return False


def progress_bar(total: int, desc: str, wanted: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr, cleared when done, drawn only where ``bars_shown`` says."""
    return tqdm(total=total, desc=desc, disable=not bars_shown(wanted), file=sys.stderr, dynamic_ncols=True,
                leave=False, **options)
