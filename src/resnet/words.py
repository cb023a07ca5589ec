"""Counts in what the commands print, in words that read right for one: "1 epoch", "2 epochs"."""

from __future__ import annotations


def plural(count: int, noun: str, spec: str = "") -> str:
    """``count`` and ``noun``, plural unless ``count`` is 1 ("class": "classes"); ``spec``
    formats the number (``","``: thousands separated)."""
    return f"{count:{spec}} {noun if count == 1 else plural_of(noun)}"


def plural_of(noun: str) -> str:
    """The plural of the nouns these messages count ("class", "process", "epoch"): -es after
    s or x, else -s (not after every ch: "epochs"); a phrase's last word is the noun."""
    return noun + ("es" if noun.endswith(("s", "x")) else "s")
