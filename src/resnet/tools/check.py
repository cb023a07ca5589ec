"""``resnet check``: a dataset's health report, from one parallel pass over its files.

It reports the class counts of each split; the files that do not decode (decoded to the
end, so a truncated file counts); exact duplicates (the same bytes); near duplicates (the
same photo resized, re-compressed or slightly cropped); *leaks*, a duplicate of either kind
in two splits (an evaluation image the model has trained on) or under two classes (a label
conflict); images smaller than the training size; odd modes (grayscale, CMYK, 16-bit,
alpha, palette) and extreme aspect ratios.

Near duplicates are found with two perceptual hashes of ``imagehash``: pHash (the signs of
the lowest 8x8 DCT frequencies of the 32x32 grayscale image) and dHash (the signs of the
horizontal gradients of a 9x8 one). A pair is near when both Hamming distances are small
(``PHASH_MAX``, ``BOTH_MAX``): resizing and re-compression change neither by more than a
few bits, while two different photos that agree on one hash rarely agree on the other.
pHash finds the candidates (every pair is compared, in blocks, in parallel) and dHash
confirms them. Both hashes see only the grayscale image's shapes, with its brightness and
contrast normalised away, so a pair in which either image has little detail must also
agree in colour (``colour_agrees``). Why hashes and not the model's embeddings: they need no
trained model and no GPU, are cheap to compute, and mean the same for every dataset; an
embedding would also match two different photos of one flower, which is what a classifier
should do and not a duplicate. The rule is ``NEAR_RULE``; the measurements behind its limits
are in docs/recipes.md, "Measurements behind the defaults".

What each file yields is kept in the cache folder (``read_facts``), so that checking a folder
again reads only the files that are new or changed.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import signal
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from resnet.data.sources import (
    DEEP_GRAY_MODES,
    ImageArrays,
    ImageFiles,
    check_regular_file,
    files,
    list_class_folders,
    open_rgb,
    printable,
    split_folders,
    stratified_split,
)
from resnet.data.datasets import load_splits
from resnet.engine.assembly import images_side
from resnet.errors import ResnetError
from resnet.util.optional import require
from resnet.util.hardware import available_cpus
from resnet.words import plural
from resnet.config import TrainConfig, resolve_config
from resnet.data.cache import cache_dir, file_identity
from resnet.util.files import write_atomic
from resnet.util.progress import progress_bar

# Hamming limits of a near pair (64-bit hashes): pHash within PHASH_MAX bits, or both hashes
# within BOTH_MAX. Chosen on planted copies of CIFAR-10 and Flowers-102 images, as the limits
# that find resized, re-compressed and slightly cropped copies without matching different
# photos (docs/recipes.md, "Measurements behind the defaults").
PHASH_MAX = 6
BOTH_MAX = 10
NEAR_RULE = (
    "pHash within 6 bits (of 64) catches resizing and re-compression; within 10 bits, with dHash "
    "within 10 too, it also catches most slight crops, where pHash alone within 10 would match many "
    "different photos. Mirror images and heavy crops are not matched. A pair in which either image has "
    "little detail (the standard deviation of its 32x32 grayscale under 20 of 255 levels) must also agree "
    "in colour (4x4 colour thumbnails within 16 levels on average), since the hashes of plain images match "
    "across different photos. How well the limits do: docs/recipes.md (Measurements behind the defaults) "
    "and benchmarks/results/check-near-duplicates.md")
# A flat or nearly flat image's hashes are set by the few pixels that differ (a plain image's
# are all-equal bits, whatever its colour), so many different images share them: below this
# detail a hash match must be confirmed by colour. Above it a match stands even when the
# colours differ, because re-coloured copies of one photo are common and colour-blind hashes
# of two different detailed photos rarely match.
DETAIL_MIN = 20.0  # standard deviation of the 32x32 grayscale image the pHash starts from, of 255
COLOUR_MAX = 16.0  # mean absolute difference of the 4x4 RGB thumbnails, of 255
ASPECT_LIMIT = 3.0  # longer side over shorter: beyond 3:1 a square crop keeps a third of the image
DRAFT_SIDE = 64  # JPEGs decode at a reduced scale, at least this size: the hashes see 32 px
HASH_SIDE = 128  # larger images are shrunk once before the two hashes' own resizes
BLOCK_CELLS = 1 << 20  # pairs compared at once, 8 MiB of XORs: larger blocks ran slower
PARALLEL_PAIRS_FROM = 4000  # hashes; below this the pairs are quick in one process, not worth starting workers
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
GRAY_MODES = ("1", "L", "LA", "La", *DEEP_GRAY_MODES)
ODD_MODES = ("grayscale", "cmyk", "16-bit", "alpha", "palette", "other")
SHOWN = 5  # groups and files per list in the human summary


@dataclass
class CheckOptions:
    dataset: str = "imagefolder"
    data_dir: str = "."
    labels: str | None = None
    val_fraction: float | None = None  # None: the training default, so the split is the run's
    seed: int | None = None
    image_size: int | None = None  # None: the dataset's training size
    phash_max: int = PHASH_MAX
    both_max: int = BOTH_MAX
    workers: int | None = None
    progress: bool = True
    out: str | None = None


class Facts(NamedTuple):
    """What one read of a file tells (``error`` set: it did not decode, the rest is empty)."""

    error: str | None
    digest: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    odd: tuple[str, ...] = ()
    phash: int = 0
    dhash: int = 0
    detail: float = 0.0  # the grayscale's standard deviation (DETAIL_MIN)
    colour: str = ""  # the 4x4 RGB thumbnail's 48 bytes, in hex


@dataclass
class Listing:
    """Every file of the dataset with its split and label."""

    paths: list[str]
    splits: list[str]
    labels: list[int]
    classes: list[str]
    split_names: list[str]


# --- listing ------------------------------------------------------------------------------------


def list_dataset(options: CheckOptions) -> Listing:
    """The files of every split. Flowers-102 is listed by its official split, whose train, val and
    test are together every image of both split schemes."""

    if options.dataset == "petals":
        raise ResnetError("--dataset petals: the built-in petals are generated in memory, not files; "
                          "there is nothing to check")
    fraction = TrainConfig.val_fraction if options.val_fraction is None else options.val_fraction
    seed = TrainConfig.seed if options.seed is None else options.seed
    split = "official" if options.dataset == "flowers102" else "tutorial"
    try:
        if options.labels is None:
            splits = load_splits(options.dataset, options.data_dir, split, fraction, seed)
        elif "labels" not in inspect.signature(load_splits).parameters:
            raise ResnetError("--labels: this version of resnet reads no label file yet")
        else:
            splits = load_splits(options.dataset, options.data_dir, split, fraction, seed, labels=options.labels)
        named = [("train", splits.train), (splits.eval_name, splits.eval), ("test", splits.test)]
        classes = splits.classes
    except ResnetError:
        whole = whole_folder(options, fraction, seed)
        if whole is None:
            raise
        classes, named = whole[0], [("all", whole[1])]
    listing = Listing([], [], [], list(classes), [])
    for name, source in named:
        if source is None:
            continue
        if isinstance(source, ImageArrays):
            raise ResnetError(f"--dataset {options.dataset} holds images in memory, not files: nothing to check")
        listing.split_names.append(name)
        listing.paths += [os.fspath(p) for p in source.paths]
        listing.splits += [name] * len(source)
        listing.labels += [int(label) for label in source.labels]
    return listing


def whole_folder(options: CheckOptions, fraction: float, seed: int) -> tuple[list[str], ImageFiles] | None:
    """The classes and files of DIR/<class>/... as one set, named "all", when a run's split of it
    would hold no image out (too few a class): a run refuses such a folder, but its duplicates and
    label conflicts need no validation split. None for any other layout or error."""
    root = Path(options.data_dir)
    if options.dataset != "imagefolder" or options.labels is not None or not 0 < fraction < 1:
        return None
    if not root.is_dir() or "train" in split_folders(root):
        return None
    classes, samples = list_class_folders(root)
    if stratified_split(samples, fraction, seed)[1]:
        return None  # the split holds images out: the run's error was another
    warnings.warn(f"--val-fraction {fraction:g} holds out no image of any class, so a run would refuse this "
                  'folder; it is checked as one set, "all"', stacklevel=2)
    return classes, files(samples)


def training_size(options: CheckOptions) -> int:
    """The crop a run on this data would train at with no size option: the dataset's preset,
    or, for an image folder of small images, their own size (``resolve_config``'s choice)."""
    overrides = {"dataset": options.dataset, "data_dir": options.data_dir, "labels": options.labels}
    return resolve_config(overrides, images_side(overrides)).image_size


# --- one file -------------------------------------------------------------------------------------


def inspect_file(path: str) -> Facts:
    """The facts of one file, never an exception for a bad one. Its bytes are read once for
    their hash and header; ``open_rgb`` then decodes them as training does (the second read
    comes from the page cache), to the end, so that a truncated file is unreadable."""
    try:
        check_regular_file(path)
        with open(path, "rb") as file:
            data = file.read()
    except (OSError, ResnetError) as error:
        return Facts(strerror_or_text(error))
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    buffer = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # open_rgb says it, naming the file
            with Image.open(buffer) as image:
                (width, height), mode, odd = image.size, image.mode, odd_modes(image, data)
        rgb = hash_view(open_rgb(path, DRAFT_SIDE))
        phash, dhash = perceptual_hashes(rgb)
    except Exception as error:  # not an image, corrupt, truncated, a decompression bomb
        # Pillow names what it was given to read, here the buffer: the reader needs the file.
        return Facts(strerror_or_text(error).replace(repr(buffer), repr(path)))
    return Facts(None, digest, width, height, mode, odd, phash, dhash, *tone(rgb))


def strerror_or_text(error: BaseException) -> str:
    """Why a file could not be read or written: the system's reason alone for an OSError (its
    text also names the file, which the caller names), else the error's text, else its type."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def odd_modes(image: Image.Image, data: bytes) -> tuple[str, ...]:
    """Which of ``ODD_MODES`` the image is (from its header: nothing decoded)."""
    mode, odd = image.mode, []
    if mode in GRAY_MODES:
        odd.append("grayscale")
    if mode == "CMYK":
        odd.append("cmyk")
    # Pillow reads a 16-bit RGB PNG as 8-bit RGB: its header (IHDR's bit depth) tells.
    if mode in DEEP_GRAY_MODES or (data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16):
        odd.append("16-bit")
    if mode in ALPHA_MODES or "transparency" in image.info:
        odd.append("alpha")
    if mode in ("P", "PA"):
        odd.append("palette")
    if mode not in (*GRAY_MODES, *ALPHA_MODES, "RGB", "CMYK", "P"):
        odd.append("other")  # YCbCr, LAB, HSV: converted like the others, but worth knowing
    return tuple(odd)


def hash_view(image: Image.Image) -> Image.Image:
    """The image the hashes and ``tone`` are computed from: at most ``HASH_SIDE`` a side."""
    if max(image.size) > HASH_SIDE:
        image = image.copy()
        image.thumbnail((HASH_SIDE, HASH_SIDE), Image.LANCZOS)
    return image


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """pHash and dHash as 64-bit integers."""
    import imagehash

    return tuple(int.from_bytes(np.packbits(h.hash.flatten()).tobytes(), "big")
                 for h in (imagehash.phash(image), imagehash.dhash(image)))


def tone(image: Image.Image) -> tuple[float, str]:
    """What the hashes leave out: how much detail the grayscale image pHash starts from has (its
    standard deviation), and the colours (a 4x4 thumbnail, each cell its area's mean)."""
    gray = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), np.float64)
    return round(float(gray.std()), 2), image.resize((4, 4), Image.BOX).tobytes().hex()


def require_imagehash() -> None:
    """imagehash, imported before the workers fork (as is the DCT it imports on first use), or a one-line error."""
    for module in ("imagehash", "scipy.fftpack"):
        require(module, "check", "resnet check's near duplicates")


def ignore_interrupt() -> None:
    """A worker's start: Ctrl-C reaches the whole process group and is the main process's to
    act on; the workers finish the files they hold and leave."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def in_processes(function: Callable, items: Iterable, workers: int, chunksize: int = 1,
                 initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """``map(function, items)`` in ``workers`` processes, in order. A worker that dies (the OOM
    killer, a crash inside a decoder) ends the check in one line: a ``multiprocessing.Pool``
    would wait forever for the task it lost."""
    executor = ProcessPoolExecutor(workers, initializer=initializer, initargs=initargs)
    try:
        yield from executor.map(function, items, chunksize=chunksize)
    except BrokenProcessPool:
        raise ResnetError("a worker process of the check died (killed for lack of memory?); "
                          "try again with fewer --workers") from None
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def inspect_all(paths: Sequence[str], workers: int, progress: bool) -> list[Facts]:
    """``inspect_file`` of every path, in order, by ``workers`` processes."""

    bar = progress_bar(len(paths), "resnet check: reading", wanted=progress, unit="img", mininterval=0.5)
    facts: list[Facts] = []
    try:
        if workers <= 1 or len(paths) < 2:
            for path in paths:
                facts.append(inspect_file(path))
                bar.update()
            return facts
        chunk = max(1, min(64, len(paths) // (workers * 16)))
        for fact in in_processes(inspect_file, paths, workers, chunk, initializer=ignore_interrupt):
            facts.append(fact)
            bar.update()
        return facts
    finally:
        bar.close()


# --- what earlier checks read -----------------------------------------------------------------------
# Each file's facts are kept in RESNET_CACHE/check/, by path, size and modification time as the
# decode cache keeps its images: a check of a folder checked before reads only the files that
# are new or changed (and the unreadable ones again: a permission fixed changes no mtime).

FACTS_FORMAT = 2  # part of the key: facts of another format, draft or hash side are never read


def facts_file(paths: Sequence[str]) -> Path:
    parents = {os.path.dirname(os.path.abspath(p)) for p in paths}
    root = os.path.commonpath(sorted(parents)) if parents else ""
    key = hashlib.sha256(os.fsencode(f"check v{FACTS_FORMAT} {DRAFT_SIDE} {HASH_SIDE} ") + os.fsencode(root))
    return cache_dir() / "check" / f"{key.hexdigest()[:24]}.json"


def load_facts(path: Path) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):  # none yet, or damaged: read the files again
        return {}


def read_facts(paths: Sequence[str], workers: int, progress: bool) -> tuple[list[Facts], int]:
    """Each file's facts, and how many came from an earlier check."""

    store = facts_file(paths)
    known, keys = load_facts(store), [os.path.abspath(p) for p in paths]
    identities = [file_identity(Path(p)) for p in paths]
    facts: list[Facts | None] = [None] * len(paths)
    for i, (key, identity) in enumerate(zip(keys, identities)):
        entry = known.get(key)
        if identity is not None and entry is not None and tuple(entry[:2]) == identity:
            facts[i] = Facts(None, *entry[2:6], tuple(entry[6]), *entry[7:])
    missing = [i for i, fact in enumerate(facts) if fact is None]
    for i, fact in zip(missing, inspect_all([paths[i] for i in missing], workers, progress)):
        facts[i] = fact
        if fact.error is None and identities[i] is not None:
            known[keys[i]] = [*identities[i], *fact[1:]]
    if missing:
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(store, lambda file: file.write(json.dumps(known).encode()))
        except Exception as error:  # the report does not need it; the next check reads the files again
            warnings.warn(f"could not keep what was read in {store}: {strerror_or_text(error)}", stacklevel=2)
    return facts, len(paths) - len(missing)


# --- near pairs -----------------------------------------------------------------------------------

if hasattr(np, "bitwise_count"):  # numpy >= 2
    popcount = np.bitwise_count
else:
    _BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)

    def popcount(x: np.ndarray) -> np.ndarray:
        return _BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


_shared: tuple[np.ndarray, np.ndarray, int, int] | None = None  # a pair-search worker's hashes and limits


def share_hashes(phashes: np.ndarray | None, dhashes: np.ndarray | None, phash_max: int, both_max: int) -> None:
    global _shared
    _shared = None if phashes is None else (phashes, dhashes, phash_max, both_max)


def start_pair_worker(*shared) -> None:
    ignore_interrupt()
    share_hashes(*shared)


def pairs_in_rows(rows: tuple[int, int]) -> np.ndarray:
    """(i, j, pHash distance) of the near pairs i < j with i in ``rows``: pHash within
    ``phash_max``, or both hashes within ``both_max``."""
    phashes, dhashes, phash_max, both_max = _shared
    start, stop = rows
    # The rows against themselves (each pair once), then against every later row: no file is
    # compared with itself, so a block without a near pair is told by one any().
    found = [close_pairs(phashes, start, stop, start, stop, max(phash_max, both_max)),
             close_pairs(phashes, start, stop, stop, len(phashes), max(phash_max, both_max))]
    i, j, distance = (np.concatenate(parts) for parts in zip(*found))
    keep = (distance <= phash_max) | ((distance <= both_max) & (popcount(dhashes[i] ^ dhashes[j]) <= both_max))
    return np.stack([i[keep], j[keep], distance[keep].astype(np.int64)], axis=1)


def close_pairs(hashes: np.ndarray, start: int, stop: int, first: int, last: int,
                limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of the rows start..stop and first..last within ``limit`` bits (i < j
    where the two ranges are one)."""
    distance = popcount(hashes[start:stop, None] ^ hashes[None, first:last])
    close = distance <= limit
    if first == start:
        close &= np.triu(np.ones(close.shape, bool), 1)
    if not close.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    i, j = np.nonzero(close)
    return i + start, j + first, distance[i, j]


def near_pairs(phashes: np.ndarray, dhashes: np.ndarray, phash_max: int, both_max: int,
               workers: int) -> np.ndarray:
    """Every near pair (i, j, pHash distance), i < j. All pairs are compared, a block of rows
    against the rest at a time, the blocks spread over ``workers`` processes (how long that takes:
    docs/recipes.md, "Measurements behind the defaults")."""
    n = len(phashes)
    step = max(1, BLOCK_CELLS // max(n, 1))
    blocks = [(start, min(n, start + step)) for start in range(0, n, step)]
    limits = (phash_max, both_max)
    if workers <= 1 or n < PARALLEL_PAIRS_FROM:
        share_hashes(phashes, dhashes, *limits)
        try:
            found = [pairs_in_rows(block) for block in blocks]
        finally:
            share_hashes(None, None, 0, 0)
    else:
        found = list(in_processes(pairs_in_rows, blocks, workers, initializer=start_pair_worker,
                                  initargs=(phashes, dhashes, *limits)))
    return np.concatenate([np.zeros((0, 3), np.int64), *found])


# --- groups and leaks -----------------------------------------------------------------------------


def by_content(facts: Sequence[Facts]) -> list[list[int]]:
    """The readable files grouped by their bytes' hash, in the order first seen."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, fact in enumerate(facts):
        if fact.error is None:
            groups[fact.digest].append(i)
    return list(groups.values())


def near_groups(facts: Sequence[Facts], contents: list[list[int]], options: CheckOptions,
                workers: int) -> list[tuple[list[int], int]]:
    """(files, loosest pHash distance) of each set of near files: the connected components of
    the near pairs, one representative per content (equal bytes have equal hashes)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    heads = [members[0] for members in contents]
    phashes = np.array([facts[i].phash for i in heads], np.uint64)
    dhashes = np.array([facts[i].dhash for i in heads], np.uint64)
    pairs = near_pairs(phashes, dhashes, options.phash_max, options.both_max, workers)
    pairs = pairs[colour_agrees(pairs, [facts[i] for i in heads])]
    if not len(pairs):
        return []
    n = len(heads)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    files: dict[int, list[int]] = defaultdict(list)
    loosest: dict[int, int] = defaultdict(int)
    for head in sorted(set(pairs[:, 0].tolist()) | set(pairs[:, 1].tolist())):
        files[int(component[head])] += contents[head]
    for a, _, distance in pairs.tolist():
        loosest[int(component[a])] = max(loosest[int(component[a])], distance)
    return [(sorted(members), loosest[c]) for c, members in files.items()]


def colour_agrees(pairs: np.ndarray, facts: Sequence[Facts]) -> np.ndarray:
    """Which of the hashes' pairs (rows i, j, distance of ``near_pairs``) stand: those of two
    detailed images, and those whose colour thumbnails are close (``DETAIL_MIN``)."""
    if not len(pairs):
        return np.zeros(0, bool)
    i, j = pairs[:, 0], pairs[:, 1]
    detail = np.array([fact.detail for fact in facts])
    detailed = (detail[i] >= DETAIL_MIN) & (detail[j] >= DETAIL_MIN)

    def thumbnails(rows: np.ndarray) -> np.ndarray:
        return np.array([np.frombuffer(bytes.fromhex(facts[k].colour), np.uint8) for k in rows.tolist()], np.int16)

    close = np.zeros(len(pairs), bool)
    if not detailed.all():  # most datasets: only the few plain images' pairs are compared
        plain = ~detailed
        close[plain] = np.abs(thumbnails(i[plain]) - thumbnails(j[plain])).mean(axis=1) <= COLOUR_MAX
    return detailed | close


def member(listing: Listing, i: int) -> dict[str, str]:
    label = listing.labels[i]
    name = listing.classes[label] if 0 <= label < len(listing.classes) else str(label)
    return {"path": listing.paths[i], "split": listing.splits[i], "class": name}


def group_entries(listing: Listing, groups: Iterable[tuple[list[int], int | None]], match: str) -> list[dict]:
    """JSON entries of duplicate groups, largest first, with ids (e1, e2... or n1...)."""
    ordered = sorted(groups, key=lambda g: (-len(g[0]), listing.paths[g[0][0]]))
    entries = []
    for number, (indices, distance) in enumerate(ordered, 1):
        entry: dict[str, Any] = {"id": f"{match[0]}{number}", "match": match}
        if distance is not None:
            entry["phash_distance"] = distance  # the loosest link of the group
        entry["files"] = [member(listing, i) for i in indices]
        entries.append(entry)
    return entries


def leaks_of(groups: Iterable[dict]) -> list[dict]:
    """A group in two splits (an evaluation image also trained on, or in both val and test) or
    under two classes (a label conflict) is a leak; a group that is both gives two."""
    leaks = []
    for group in groups:
        splits = list(dict.fromkeys(f["split"] for f in group["files"]))
        classes = list(dict.fromkeys(f["class"] for f in group["files"]))
        for kind, spread in (("across splits", splits), ("two classes", classes)):
            if len(spread) > 1:
                leaks.append({"kind": kind, "match": group["match"], "group": group["id"], "splits": splits,
                              "classes": classes, "files": group["files"]})
    return leaks


# --- the report -----------------------------------------------------------------------------------


def check_dataset(options: CheckOptions) -> dict[str, Any]:
    """The whole report as one JSON-able dict (and, with ``options.out``, the page of groups)."""
    require_imagehash()
    started = time.perf_counter()
    listing = list_dataset(options)
    workers = options.workers or available_cpus()
    facts, reused = read_facts(listing.paths, workers, options.progress)
    contents = by_content(facts)
    exact = group_entries(listing, ((g, None) for g in contents if len(g) > 1), "exact")
    near = group_entries(listing, near_groups(facts, contents, options, workers), "near")
    report = {
        "dataset": options.dataset, "data_dir": options.data_dir, "images": len(listing.paths),
        "splits": dict(Counter(listing.splits)), "classes": listing.classes, "counts": class_counts(listing),
        "unreadable": [{**member(listing, i), "error": f.error} for i, f in enumerate(facts) if f.error],
        "duplicates": exact, "near_duplicates": near, "leaks": leaks_of(exact + near),
        **file_properties(listing, facts, options.image_size or training_size(options)),
        "hash": {"exact": "blake2b (128 bits) of the file's bytes", "near": near_rule(options), "why": NEAR_RULE},
        "workers": workers, "reused": reused, "seconds": round(time.perf_counter() - started, 2),
    }
    if options.out:
        report["page"] = os.fspath(write_page(report, Path(options.out)))
    return report


def near_rule(options: CheckOptions) -> str:
    return (f"imagehash pHash distance <= {options.phash_max}, or pHash and dHash distances both "
            f"<= {options.both_max}; colours close too where an image has little detail")


def class_counts(listing: Listing) -> dict[str, dict[str, int]]:
    counts = {name: dict.fromkeys(listing.classes, 0) for name in listing.split_names}
    for i, split in enumerate(listing.splits):
        name = member(listing, i)["class"]
        counts[split][name] = counts[split].get(name, 0) + 1
    return counts


def file_properties(listing: Listing, facts: Sequence[Facts], image_size: int) -> dict[str, Any]:
    """The ``small``, ``modes`` and ``aspect`` parts of the report."""
    small, extreme = [], []
    odd: dict[str, list[str]] = {name: [] for name in ODD_MODES}
    for path, fact in zip(listing.paths, facts):
        if fact.error:
            continue
        size = {"path": path, "width": fact.width, "height": fact.height}
        if min(fact.width, fact.height) < image_size:
            small.append(size)
        if max(fact.width, fact.height) > ASPECT_LIMIT * min(fact.width, fact.height):
            extreme.append(size)
        for name in fact.odd:
            odd[name].append(path)
    by_mode = Counter(fact.mode for fact in facts if not fact.error)
    return {
        "small": {"image_size": image_size, "count": len(small), "files": small},
        "modes": {"by_mode": dict(by_mode.most_common()),
                  "odd": {name: {"count": len(paths), "files": paths} for name, paths in odd.items()}},
        "aspect": {"limit": ASPECT_LIMIT, "count": len(extreme), "files": extreme},
    }


def exit_status(report: dict[str, Any]) -> int:
    """1 when the data has a leak or an unreadable file, else 0."""
    return 1 if report["leaks"] or report["unreadable"] else 0


# --- the human summary ----------------------------------------------------------------------------


def shown(path: str, root: str) -> str:
    """``path`` relative to the data folder when it is under it: what the reader needs, and short."""
    relative = os.path.relpath(path, root) if os.path.isabs(path) == os.path.isabs(root) else path
    return printable(path if relative.startswith("..") else relative)


def format_report(report: dict[str, Any]) -> str:
    root = report["data_dir"]
    lines = [f"resnet check: {printable(root)} ({report['dataset']}): {plural(report['images'], 'image', ',')}, "
             f"{plural(len(report['classes']), 'class')}, {report['seconds']:.1f} s, "
             f"{plural(report['workers'], 'worker process')}"
             + (f", {plural(report['reused'], 'file', ',')} as an earlier check read them" if report["reused"] else "")]
    lines += format_counts(report)
    lines.append(f"unreadable: {len(report['unreadable'])}")
    lines += [f"  {shown(f['path'], root)}: {f['error']}" for f in report["unreadable"][:SHOWN]]
    lines += more(report["unreadable"])
    lines += format_groups(report)
    lines += format_properties(report)
    problems = [plural(len(report["leaks"]), "leak")] * bool(report["leaks"])
    problems += [plural(len(report["unreadable"]), "unreadable file")] * bool(report["unreadable"])
    lines.append(f"result: {', '.join(problems)}: exit status 1" if problems
                 else "result: no leak and no unreadable file: exit status 0")
    if "page" in report:
        lines.append(f"page of the groups: {printable(report['page'])}")
    return "\n".join(lines)


def format_groups(report: dict[str, Any]) -> list[str]:
    root, lines = report["data_dir"], []
    for key, title in (("duplicates", "exact duplicates (same bytes)"),
                       ("near_duplicates", f"near duplicates ({report['hash']['near']})")):
        groups = report[key]
        lines.append(f"{title}: {plural(len(groups), 'group')}, {plural(sum(len(g['files']) for g in groups), 'file')}")
        lines += [f"  [{g['id']}] " + format_files(g["files"], root) for g in groups[:SHOWN]]
        lines += more(groups)
    leaks = report["leaks"]
    kinds = Counter(f"{leak['kind']} ({leak['match']})" for leak in leaks)
    lines.append(f"leaks: {len(leaks)}" + "".join(f", {n} {kind}" for kind, n in kinds.items()))
    lines += [f"  {leak['kind']} [{leak['group']}] " + format_files(leak["files"], root) for leak in leaks[:SHOWN]]
    return lines + more(leaks)


def format_counts(report: dict[str, Any]) -> list[str]:
    """One line per split; the classes' counts in full when there are few of them."""
    lines = []
    for split, counts in report["counts"].items():
        values = sorted(counts.values())
        line = f"  {split}: {plural(report['splits'].get(split, 0), 'image', ',')}"
        if len(counts) <= 12:
            line += ": " + ", ".join(f"{printable(name)} {n}" for name, n in counts.items())
        elif values and values[0] == values[-1]:
            line += f", {values[0]} per class"
        elif values:
            line += f", per class {values[0]}-{values[-1]} (median {values[len(values) // 2]})"
        empty = [name for name, n in counts.items() if n == 0]
        if empty and len(counts) > 12:
            line += f"; {plural(len(empty), 'class')} with none"
        lines.append(line)
    return lines


def format_files(files: list[dict[str, str]], root: str) -> str:
    text = ", ".join(f"{shown(f['path'], root)} ({f['split']}/{printable(f['class'])})" for f in files[:SHOWN])
    return text + (f" and {len(files) - SHOWN} more" if len(files) > SHOWN else "")


def more(items: list) -> list[str]:
    return [f"  ... and {len(items) - SHOWN} more (--json or --out for all)"] if len(items) > SHOWN else []


def format_properties(report: dict[str, Any]) -> list[str]:
    root, small, aspect = report["data_dir"], report["small"], report["aspect"]
    lines = [f"smaller than {small['image_size']} px (shorter side): {small['count']}"
             + examples([f["path"] for f in small["files"]], root)]
    odd = report["modes"]["odd"]
    lines.append("modes: " + ", ".join(f"{n} {report['modes']['by_mode'][n]}" for n in report["modes"]["by_mode"])
                 + "; odd: " + ", ".join(f"{name} {odd[name]['count']}" for name in ODD_MODES))
    lines.append(f"aspect ratio beyond {aspect['limit']:g}:1: {aspect['count']}"
                 + examples([f["path"] for f in aspect["files"]], root))
    return lines


def examples(paths: list[str], root: str) -> str:
    if not paths:
        return ""
    return " (e.g. " + ", ".join(shown(p, root) for p in paths[:3]) + (", ..." if len(paths) > 3 else "") + ")"


# --- the page of groups ---------------------------------------------------------------------------

PAGE_GROUPS = 300  # rows on the page (the JSON has all)
PAGE_FILES = 12  # thumbnails per row
THUMB_SIDE = 128


def write_page(report: dict[str, Any], out: Path) -> Path:
    """OUT/report.json, and OUT/index.html: one row of thumbnails (OUT/thumbs/) per leak, then
    per duplicate group that is no leak, each captioned with its split, class and path."""
    import html

    try:
        (out / "thumbs").mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
    except OSError as error:
        raise ResnetError(f"--out {out}: {strerror_or_text(error)}") from None
    leaking = defaultdict(list)
    for leak in report["leaks"]:
        leaking[leak["group"]].append(leak["kind"])
    groups = report["duplicates"] + report["near_duplicates"]
    groups.sort(key=lambda g: g["id"] not in leaking)  # leaks first; otherwise in the report's order
    thumbs: dict[str, str] = {}
    rows = [page_row(group, leaking.get(group["id"], []), thumbs, out, report["data_dir"])
            for group in groups[:PAGE_GROUPS]]
    more_groups = len(groups) - PAGE_GROUPS
    left = f"<p>{plural(more_groups, 'more group')}: see report.json.</p>" if more_groups > 0 else ""
    title = html.escape(f"resnet check: {printable(report['data_dir'])}")
    body = "\n".join(rows) or "<p>No duplicate and no leak.</p>"
    (out / "index.html").write_text(
        f"<!doctype html>\n<meta charset='utf-8'><title>{title}</title>\n<style>{PAGE_STYLE}</style>\n"
        f"<h1>{title}</h1>\n<p>{plural(len(report['leaks']), 'leak')}, "
        f"{plural(len(report['duplicates']), 'exact duplicate group')} and "
        f"{plural(len(report['near_duplicates']), 'near duplicate group')}; "
        f"{html.escape(report['hash']['near'])}.</p>\n"
        f"{body}\n{left}\n", encoding="utf-8")
    return out / "index.html"


PAGE_STYLE = ("body{font-family:sans-serif;margin:1em} section{border-top:1px solid #ccc;padding:.5em 0} "
              "figure{display:inline-block;width:140px;margin:4px;vertical-align:top;font-size:11px;"
              "word-break:break-all} img{max-width:128px;max-height:128px} .leak{color:#b00}")


def page_row(group: dict, kinds: list[str], thumbs: dict[str, str], out: Path, root: str) -> str:
    import html

    heading = f"[{group['id']}] {group['match']} duplicate, {len(group['files'])} files"
    if "phash_distance" in group:
        heading += f", pHash distance up to {group['phash_distance']}"
    if kinds:
        heading += f" <span class='leak'>leak: {html.escape(', '.join(kinds))}</span>"
    figures = []
    for f in group["files"][:PAGE_FILES]:
        source = thumbnail(f["path"], thumbs, out)
        picture = f"<img src='{source}' alt=''>" if source else "<i>(could not be shown)</i>"
        caption = html.escape(f"{f['split']} / {printable(f['class'])} / {shown(f['path'], root)}")
        figures.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    extra = f"<p>and {len(group['files']) - PAGE_FILES} more</p>" if len(group["files"]) > PAGE_FILES else ""
    return f"<section><h3>{heading}</h3>{''.join(figures)}{extra}</section>"


def thumbnail(path: str, thumbs: dict[str, str], out: Path) -> str | None:
    """The page's relative address of ``path``'s thumbnail, made once per file."""
    if path not in thumbs:
        name = f"thumbs/{len(thumbs)}.jpg"
        try:
            image = open_rgb(path, THUMB_SIDE)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            image.save(out / name, quality=85)
        except Exception:  # changed or gone since it was read: the caption still says which file
            name = ""
        thumbs[path] = name
    return thumbs[path] or None
