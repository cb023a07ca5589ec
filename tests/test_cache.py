"""The decoded-image cache at scale: one decode streamed to disk, an index that makes a warm
start read no image, only changed files decoded again, a killed decode continued, workers
that follow the CPUs the process may use, and the background prefetcher."""

from __future__ import annotations

import builtins
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from resnet.data import cache
from resnet.data.cache import Index, Store, decode
from resnet.config import resolve_config
from resnet.data.sources import IMAGE_EXTENSIONS, ImageFiles, classic_loader
from resnet.data.datasets import load_splits
from resnet.util.distributed import Topology
from resnet.errors import ResnetError
from resnet.data.pipeline import Prefetcher, load_run_data


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=6)


@pytest.fixture
def source(folder) -> ImageFiles:
    files = sorted(folder.rglob("*.png"))
    return ImageFiles(files, [0] * len(files))


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The files the decode reads, as it reads them (in this process: workers=0)."""
    seen, real = [], cache.open_rgb
    monkeypatch.setattr(cache, "open_rgb", lambda path, *a: seen.append(str(path)) or real(path, *a))
    return seen


def every(data) -> torch.Tensor:
    return data.gather(torch.arange(len(data)))


def reference(paths: list[Path], size: int) -> torch.Tensor:
    """What each file decodes to, decoded without any cache."""
    return every(decode(ImageFiles(paths, [0] * len(paths)), size, workers=0, use_disk_cache=False))


def test_a_warm_decode_opens_no_image_file(source, decodes, monkeypatch):
    first = decode(source, 24, workers=0)
    assert len(decodes) == len(source)
    opened = []
    for module, name in ((builtins, "open"), (os, "open")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda path, *a, _real=real, **k: opened.append(str(path)) or
                            _real(path, *a, **k))
    second = decode(source, 24, workers=0)
    assert [path for path in opened if path.lower().endswith(IMAGE_EXTENSIONS)] == []
    assert torch.equal(every(first), every(second)) and len(decodes) == len(source)


def test_a_warm_run_reads_no_image_and_still_reports_the_unreadable_one(folder, monkeypatch):
    (folder / "a" / "0.png").write_bytes(b"not an image")
    config = resolve_config({"dataset": "imagefolder", "image_size": 32, "workers": 0})
    splits = load_splits("imagefolder", str(folder))
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image: .*a/0.png"):
        load_run_data(splits, config, Topology())
    monkeypatch.setattr(cache, "open_rgb", lambda *a: pytest.fail("a warm start read an image"))
    monkeypatch.setattr(cache, "open_image", lambda *a: pytest.fail("a warm start read an image"))
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image: .*a/0.png"):
        kept = load_run_data(load_splits("imagefolder", str(folder)), config, Topology()).splits
    assert len(kept.train) + len(kept.eval) == 17
    strict = resolve_config({"dataset": "imagefolder", "image_size": 32, "workers": 0, "strict": True})
    with pytest.raises(ResnetError, match=r"1 unreadable image"):
        load_run_data(load_splits("imagefolder", str(folder)), strict, Topology())


def test_a_changed_file_alone_is_decoded_again(source, decodes):
    decode(source, 24, workers=0)
    changed = source.paths[4]
    Image.new("RGB", (40, 48), (10, 200, 30)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, whatever the clock's grain
    decodes.clear()
    again = decode(source, 24, workers=0)
    assert decodes == [str(changed)]
    assert torch.equal(every(again), reference(source.paths, 24))


def test_added_and_removed_files_touch_only_themselves(source, folder, decodes):
    decode(source, 24, workers=0)
    Image.new("RGB", (30, 30), (250, 0, 0)).save(folder / "a" / "new.png")
    grown = ImageFiles([*source.paths[1:], folder / "a" / "new.png"], [0] * len(source))
    decodes.clear()
    data = decode(grown, 24, workers=0)
    assert decodes == [str(folder / "a" / "new.png")]
    assert torch.equal(every(data), reference(grown.paths, 24))


def test_a_killed_decode_is_continued_and_never_taken_for_whole(source, decodes, monkeypatch):
    monkeypatch.setattr(cache, "INDEX_EVERY_SECONDS", 0.0)  # the index after every batch
    monkeypatch.setattr(cache, "DECODE_BATCH", 4)
    real, batches = cache.decoded_batches, []

    def killed_after_two(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if len(batches) == 2:
                raise KeyboardInterrupt  # as kill -9 would, but here the test goes on
            batches.append(batch)
            yield batch

    monkeypatch.setattr(cache, "decoded_batches", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        decode(source, 24, workers=0)
    store = Store.for_files(source.paths, 24, False)
    saved = Index.load(store.index_path)
    assert 4 <= saved.used <= 8 and int((saved.sizes >= 0).sum()) == saved.used  # what was decoded, no more
    with open(store.folder / "images.u8", "ab") as f:
        f.write(b"\xff" * store.row_bytes * 3)  # rows a killed decode wrote after its last index

    monkeypatch.setattr(cache, "decoded_batches", real)
    decodes.clear()
    data = decode(source, 24, workers=0)
    assert sorted(decodes) == sorted(str(p) for p in source.paths[saved.used:])  # continued, not started over
    assert torch.equal(every(data), reference(source.paths, 24))
    assert (store.folder / "images.u8").stat().st_size == len(source) * store.row_bytes


def test_a_damaged_index_means_decoding_again(source, decodes):
    first = decode(source, 24, workers=0)
    store = Store.for_files(source.paths, 24, False)
    store.index_path.write_bytes(b"half an index")
    decodes.clear()
    assert torch.equal(every(decode(source, 24, workers=0)), every(first)) and len(decodes) == len(source)


def test_a_disk_without_room_is_refused_before_any_decode(source, decodes, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(ResnetError, match=r"^the decoded cache needs 0.0 MB more in .*, which has 0.0 MB free: "
                                          "set RESNET_CACHE to a folder with room, or train with --pipeline classic"
                                          ) as error:
        decode(source, 24, workers=0)
    assert "--pipeline classic" in str(error.value) and "RESNET_CACHE" in str(error.value)
    assert decodes == []


@pytest.mark.parametrize("cpus, workers", [({0}, 0), ({0, 1, 2}, 3)])
def test_decode_workers_follow_the_cpus_the_process_may_use(source, monkeypatch, cpus, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    made = []
    real = cache.DataLoader
    monkeypatch.setattr(cache, "DataLoader", lambda *a, **k: made.append(k["num_workers"]) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "too many workers" warning from torch
        decode(source, 24)
    assert made == [workers]
    assert classic_loader(source, [torch.arange(2)], None, None, 0).num_workers == len(cpus)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_decoded_images_are_the_file_mapped_not_a_copy_in_memory(source, monkeypatch):
    import tracemalloc

    monkeypatch.setattr(cache, "DECODE_BATCH", 2)
    decode(source, 32, workers=0)  # the imports a first decode makes are not what is measured
    tracemalloc.start()
    data = decode(source, 96, workers=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < len(source) * 3 * 96 * 96 / 2  # streamed: never an array of the whole split
    address, file = data.images.data_ptr(), Store.for_files(source.paths, 96, False).folder / "images.u8"
    mapped = [line.split()[0] for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(file))]
    assert any(int(lo, 16) <= address < int(hi, 16) for lo, hi in (span.split("-") for span in mapped))


# --- the prefetcher ----------------------------------------------------------------------------


def test_the_prefetcher_keeps_order_runs_ahead_and_raises_where_the_item_was():
    loaded = []

    def load(item: int) -> int:
        loaded.append(item)
        if item == 5:
            raise ValueError("item 5")
        return item * 10

    iterator = iter(Prefetcher(range(8), load, depth=2))
    assert next(iterator) == 0
    time.sleep(0.2)
    assert len(loaded) >= 3  # the next ones were loaded while the consumer was busy
    assert [next(iterator) for _ in range(4)] == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="item 5"):
        next(iterator)


def test_a_consumer_that_stops_early_stops_the_prefetcher():
    import threading

    for _ in Prefetcher(range(1000), lambda item: item, depth=2):
        break
    time.sleep(0.1)
    assert not any(t.name == "resnet-prefetch" and t.is_alive() for t in threading.enumerate())


def test_eval_decodes_only_the_images_it_scores(tiny_run, decodes, monkeypatch, tmp_path):
    from resnet.tools.evaluation import evaluate_checkpoint
    from resnet.tools.options import EvalOptions

    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cold"))
    options = EvalOptions(out=tmp_path / "eval", workers=0, device="cpu", mistakes=0)
    result = evaluate_checkpoint(tiny_run["dir"], options)
    evaluated = load_splits("imagefolder", str(tiny_run["data"])).eval.paths
    assert sorted(decodes) == sorted(str(p) for p in evaluated) and result["images"] == len(evaluated)
