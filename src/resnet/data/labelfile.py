"""Label files: a CSV or TSV table naming each image's class and, optionally, its split.

A header line, then one row per image::

    path,label,split          id,label        (Kaggle's style: the extension left out)
    train/a.jpg,cat,train     abc123,dog
    test/b.jpg,dog,test       abc124,cat

The path column may be called path, file, filename, image or id; the label column label,
class or category; the split column split (train, val or test; valid and validation mean
val). Names are matched stripped and case-insensitively. Paths are relative to the data
folder, or absolute. Without a split column each class is split in a seeded order, as an
image folder without train/ and val/ is.

Nothing is read but the label file and the listings of the folders it points into: the
decode reads the images, and finds the unreadable ones, as for an image folder. Every
problem of the rows is collected first and reported as one error, with line numbers.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from resnet.data.sources import (
    IMAGE_EXTENSIONS,
    DataSplits,
    Samples,
    check_held_out,
    files,
    printable,
    stratified_split,
    warn_of_classes_without,
)
from resnet.errors import ResnetError
from resnet.words import plural

# The accepted column names, the preferred first: a table with both an "image" and an "id"
# column has its paths in "image" (Kaggle's "id" is sometimes a number beside the file name).
PATH_COLUMNS = ("path", "file", "filename", "image", "id")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_COLUMN = "split"
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TSV_EXTENSIONS = (".tsv", ".tab")
INTEGER = re.compile(r"[+-]?\d+")
SHOWN = 3  # the problems of each kind named in the error; the rest are counted

# Each kind of problem a row can have: how one and several are called, and a hint.
KINDS = {
    "fields": ("row with more fields than the header", "rows with more fields than the header",
               "a comma in a path needs quotes"),
    "path": ("empty path", "empty paths", ""),
    "missing": ("missing file", "missing files", ""),
    "ambiguous": ("path without an extension matching several files",
                  "paths without an extension matching several files", ""),
    "label": ("empty label", "empty labels", ""),
    "split": ("empty split", "empty splits", ""),
    "unknown split": ("unknown split", "unknown splits", "allowed: " + ", ".join(SPLITS)),
    "conflict": ("file listed again with another label or split", "files listed again with another label or split",
                 ""),
    "class": ("label that no train row has", "labels that no train row has", ""),
}


@dataclass(frozen=True)
class Row:
    """One image of the table, its path resolved; ``split`` is None without a split column."""

    line: int
    path: str
    label: str
    split: str | None


@dataclass(frozen=True)
class Columns:
    """Where the path, label and split are in each row, and how many fields the header has."""

    path: int
    label: int
    split: int | None
    width: int


def label_file_splits(labels: Path, data_dir: Path, val_fraction: float, seed: int) -> DataSplits:
    """The train / eval (/ test) sources a label file lists, paths relative to ``data_dir``.

    Classes are the train rows' labels, sorted; when every label is an integer ("0", "1",
    "10") they are sorted as numbers, so that class index i is the i-th smallest (the
    integers 0..n-1 keep their own value as index). With a split column, eval is the val
    rows, and the test rows are scored once at the end; with test rows and no val rows,
    eval is the test rows; with train rows only, ``val_fraction`` of each class is held out.
    """
    header, records = read_table(labels)
    columns = find_columns(labels, header)
    if not records:
        raise ResnetError(f"{labels}: a header and no rows")
    if not data_dir.is_dir():
        raise ResnetError(f"{data_dir} is not a directory (the label file's paths are relative to it: --data-dir)")
    problems = Problems(labels)
    rows = without_repeats(labels, read_rows(records, columns, data_dir, problems), problems)
    if columns.split is None:
        problems.raise_any()
        return split_by_fraction(labels, rows, val_fraction, seed)
    return split_by_column(labels, rows, val_fraction, seed, problems)


# --- reading the table ----------------------------------------------------------------


def read_table(labels: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, stripped fields) of each row that is not blank. Lines
    are the file's, from 1 (the header); a row quoted over several lines has its first."""
    try:
        # utf-8-sig: spreadsheets save "UTF-8" with a byte-order mark, which would otherwise
        # become part of the first column's name.
        text = labels.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ResnetError(f"{labels}: not UTF-8 text (byte {error.start}); save the label file as UTF-8") from None
    except OSError as error:
        raise ResnetError(f"cannot read the label file {labels}: {error.strerror or error}") from None
    if "\0" in text:  # valid UTF-8, but no text file holds a NUL: a binary file, or UTF-16 without its mark
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ResnetError(f"{labels}, line {line}: a NUL byte; not a CSV or TSV text file")
    header_line = text.lstrip("\r\n").split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter_of(labels, header_line))
    rows, start = [], 1
    try:
        for record in reader:
            if any(value.strip() for value in record):
                rows.append((start, [value.strip() for value in record]))
            start = reader.line_num + 1
    except csv.Error as error:  # e.g. a field beyond the csv module's size limit
        raise ResnetError(f"{labels}, line {start}: not a CSV or TSV row ({error})") from None
    if not rows:
        raise ResnetError(f"{labels} is empty; expected a header such as path,label")
    return rows[0][1], rows[1:]


def delimiter_of(labels: Path, header_line: str) -> str:
    """A tab for .tsv and .tab files and for a header holding a tab; else a comma, or a
    semicolon for a header with semicolons and no comma (spreadsheets in the locales whose
    decimal mark is a comma write those)."""
    if labels.suffix.lower() in TSV_EXTENSIONS or "\t" in header_line:
        return "\t"
    if ";" in header_line and "," not in header_line:
        return ";"
    return ","


def find_columns(labels: Path, header: list[str]) -> Columns:
    """The path, label and split columns, by the first of the accepted names the header has."""
    names = [name.lower() for name in header]

    def first(accepted: tuple[str, ...]) -> int | None:
        return next((names.index(name) for name in accepted if name in names), None)

    for accepted, role in ((PATH_COLUMNS, "path"), (LABEL_COLUMNS, "label")):
        if first(accepted) is None:
            found = ", ".join(repr(printable(name)) for name in header)
            raise ResnetError(f"{labels}: no {role} column in the header ({found}); the first line names the "
                              f"columns, the {role} column one of: {', '.join(accepted)}")
    return Columns(first(PATH_COLUMNS), first(LABEL_COLUMNS), first((SPLIT_COLUMN,)), len(header))


# --- the rows -------------------------------------------------------------------------------


class Problems:
    """The problems of a label file's rows by kind, each with its line and what is there,
    raised as one error once all the rows have been read."""

    def __init__(self, labels: Path) -> None:
        self.labels = labels
        self.found: dict[str, list[tuple[int, str]]] = {kind: [] for kind in KINDS}

    def add(self, kind: str, line: int, detail: str = "") -> None:
        self.found[kind].append((line, detail))

    def raise_any(self) -> None:
        described = [describe(kind, found) for kind, found in self.found.items() if found]
        if described:
            raise ResnetError(f"{self.labels}: {'; '.join(described)}")


def describe(kind: str, found: list[tuple[int, str]]) -> str:
    """E.g. "4 missing files (line 3: a.jpg, line 5: b.jpg, line 9: c.jpg, and 1 more)"."""
    one, several, hint = KINDS[kind]
    shown = [f"line {line}: {detail}" if detail else f"line {line}" for line, detail in sorted(found)[:SHOWN]]
    if len(found) > SHOWN:
        shown.append(f"and {len(found) - SHOWN} more")
    return f"{len(found)} {one if len(found) == 1 else several} ({', '.join(shown)}{'; ' + hint if hint else ''})"


class Folders:
    """The entries of each folder the rows point into, each folder listed once: with 100,000
    rows, a look-up in memory per row instead of a stat per row and per extension tried."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, list[str]]] = {}

    def names_in(self, folder: str) -> dict[str, list[str]]:
        """The names a row may give in ``folder``, each with the entries it may mean: an entry's
        own name means it; the name of an image file without its extension (Kaggle's ids: abc
        for abc.jpg, abc.PNG, ...) means each such file, unless an entry has that very name."""
        if folder not in self.files:
            try:
                with os.scandir(folder or ".") as entries:
                    names = sorted(entry.name for entry in entries)
            except OSError:  # missing, not a folder or not listable: its rows name missing files
                names = []
            found: dict[str, list[str]] = {}
            for name in names:
                stem, extension = os.path.splitext(name)
                if extension.lower() in IMAGE_EXTENSIONS and os.path.splitext(stem)[1].lower() not in IMAGE_EXTENSIONS:
                    found.setdefault(stem, []).append(name)
            found.update((name, [name]) for name in names)
            self.files[folder] = found
        return self.files[folder]

    def resolve(self, path: str) -> list[str]:
        """The files ``path`` may name (``names_in``); failing those, itself if it exists after
        all (a case-insensitive file system, where the listing's case need not be the row's)."""
        folder, name = os.path.split(os.path.normpath(path))
        found = self.names_in(folder).get(name) if name else None
        if found is not None:
            return [os.path.join(folder, entry) for entry in found]
        return [os.path.join(folder, name)] if name and os.path.exists(path) else []


def first_files(labels: Path, data_dir: Path, count: int) -> list[Path]:
    """The files of the first ``count`` rows that name one, resolved as a run resolves them
    (``Folders``), with no check of the rest: a sample of the images, for their size."""
    header, records = read_table(labels)
    column, folders, found = find_columns(labels, header).path, Folders(), []
    for _, values in records[:count]:
        if column < len(values) and values[column]:
            found += [Path(path) for path in folders.resolve(os.path.join(data_dir, values[column]))[:1]]
    return found


def read_rows(records: list[tuple[int, list[str]]], columns: Columns, data_dir: Path,
              problems: Problems) -> list[Row]:
    """The rows without problems; the problems of the others go to ``problems``."""
    folders, rows, base = Folders(), [], os.fspath(data_dir)
    for line, values in records:
        if any(values[columns.width:]):  # extra fields that are empty are a trailing delimiter
            problems.add("fields", line, f"{len(values)} fields, the header {columns.width}")
            continue
        values = values + [""] * (columns.width - len(values))  # a short row's last fields are empty
        row = read_row(line, values, columns, base, folders, problems)
        if row is not None:
            rows.append(row)
    return rows


def read_row(line: int, values: list[str], columns: Columns, data_dir: str, folders: Folders,
             problems: Problems) -> Row | None:
    """One row, its path resolved against ``data_dir``; None, with its problems noted, when it has any."""
    written, label = values[columns.path], values[columns.label]
    split = None if columns.split is None else values[columns.split]
    found = folders.resolve(os.path.join(data_dir, written)) if written else []
    noted = []
    if not written:
        noted.append(("path", ""))
    elif not found:
        noted.append(("missing", printable(written)))
    elif len(found) > 1:
        noted.append(("ambiguous", f"{printable(written)} ({', '.join(map(os.path.basename, found))})"))
    if not label:
        noted.append(("label", ""))
    if split == "":
        noted.append(("split", ""))
    elif split is not None and split.lower() not in SPLITS:
        noted.append(("unknown split", repr(printable(split))))
    for kind, detail in noted:
        problems.add(kind, line, detail)
    if noted:
        return None
    return Row(line, found[0], label, None if split is None else SPLITS[split.lower()])


def without_repeats(labels: Path, rows: list[Row], problems: Problems) -> list[Row]:
    """Each file once. A repeat with the same label and split is left out, with a warning; one
    with another label or split is a problem: which would the model learn, or is the image
    trained on and validated on?"""
    first: dict[str, Row] = {}
    repeats = []
    for row in rows:
        seen = first.setdefault(row.path, row)
        if seen is row:
            continue
        if (seen.label, seen.split) == (row.label, row.split):
            repeats.append(f"line {row.line} (as line {seen.line})")
        else:
            problems.add("conflict", row.line, f"{printable(os.path.basename(row.path))} as on line {seen.line}")
    if repeats:
        shown = ", ".join(repeats[:SHOWN]) + (f" and {len(repeats) - SHOWN} more" if len(repeats) > SHOWN else "")
        lists = "lists" if len(repeats) == 1 else "list"
        warnings.warn(f"{labels}: {plural(len(repeats), 'row')} {lists} a file again with the same label, used once: "
                      f"{shown}", stacklevel=3)
    return list(first.values())


# --- the splits -------------------------------------------------------------------------


def class_names(labels: Iterable[str]) -> list[str]:
    """The distinct labels, sorted; as numbers when all are integers ("2" before "10")."""
    names = set(labels)
    if all(INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def labelled(rows: list[Row], classes: list[str]) -> Samples:
    index = {name: label for label, name in enumerate(classes)}
    return [(Path(row.path), index[row.label]) for row in rows]


def split_by_fraction(labels: Path, rows: list[Row], val_fraction: float, seed: int) -> DataSplits:
    """Each class split in a seeded order, ``val_fraction`` of it held out for validation."""
    if not 0 < val_fraction < 1:
        raise ResnetError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    classes = class_names(row.label for row in rows)
    samples = labelled(rows, classes)
    train, val = stratified_split(samples, val_fraction, seed)
    check_held_out(classes, samples, val, val_fraction,
                   f"list validation images in {printable(labels.name)} with split val (a split column)")
    warn_of_classes_without(classes, [label for _, label in val],
                            "too few images to hold one out, so no validation image")
    return DataSplits(files(train), files(val), classes, eval_name="val")


def split_by_column(labels: Path, rows: list[Row], val_fraction: float, seed: int,
                    problems: Problems) -> DataSplits:
    """The splits the split column names. An evaluated row's label must be a train row's
    (the model has no output for another), as an evaluation folder's classes must be."""
    by_split: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for row in rows:
        by_split[row.split].append(row)
    classes = class_names(row.label for row in by_split["train"])
    known = set(classes)
    for row in sorted(by_split["val"] + by_split["test"], key=lambda row: row.line):
        if row.label not in known:
            problems.add("class", row.line, repr(printable(row.label)))
    problems.raise_any()
    if not by_split["train"]:
        raise ResnetError(f"{labels}: no row has split train; the model needs training images")
    if not by_split["val"] and not by_split["test"]:
        warnings.warn(f"{labels}: every row has split train, so {val_fraction:g} of each class is held out for "
                      "validation (--val-fraction)", stacklevel=3)
        return split_by_fraction(labels, by_split["train"], val_fraction, seed)
    evaluated = "val" if by_split["val"] else "test"
    test = files(labelled(by_split["test"], classes)) if evaluated == "val" and by_split["test"] else None
    return DataSplits(files(labelled(by_split["train"], classes)), files(labelled(by_split[evaluated], classes)),
                      classes, test, eval_name=evaluated, eval_is_test=evaluated == "test")
