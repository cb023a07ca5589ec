"""Bad and unusual input: every image mode, links, hidden files, FIFOs and devices, names that are
not UTF-8, tiny classes and classes that unreadable files leave empty, any script, a cache folder
that cannot be written, a run's data folder that is not there."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from resnet.data.datasets import load_splits
from resnet.data.sources import open_rgb
from resnet.errors import ResnetError

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
RGB = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
ALPHA = np.array([0, 64, 128, 255] * 6, np.uint8).reshape(4, 6)
DEEP = np.array([0, 1, 128, 255, 256, 1000, 30000, 32768, 40000, 65000, 65534, 65535] * 2, np.uint16).reshape(4, 6)
PALETTE = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [90, 90, 90]], np.uint8)
INDICES = (np.arange(24) % 4).astype(np.uint8).reshape(4, 6)


def gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return np.rint(rgb * a + 255 * (1 - a))


def deep_to_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    return gray3(np.clip(np.rint(values.astype(np.float64) * 255 / full_scale), 0, 255))


def lab_gray_to_srgb(lightness_byte: np.ndarray) -> np.ndarray:
    """CIE L* (a* = b* = 0) to sRGB, from the standards' formulas."""
    lightness = lightness_byte.astype(np.float64) * 100 / 255
    y = np.where(lightness > 8, ((lightness + 16) / 116) ** 3, lightness / 903.3)
    srgb = np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)
    return gray3(np.rint(srgb * 255))


def ycbcr_to_rgb(y: float, cb: float, cr: float) -> np.ndarray:
    """JFIF's YCbCr to RGB."""
    return np.array([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)])


def palette_image(transparent: int | None) -> Image.Image:
    image = Image.frombytes("P", (6, 4), INDICES.tobytes())
    image.putpalette(PALETTE.ravel().tolist())
    if transparent is not None:
        image.info["transparency"] = transparent
    return image


def palette_expected(transparent: int | None) -> np.ndarray:
    expected = PALETTE[INDICES].astype(np.float64)
    if transparent is not None:
        expected[INDICES == transparent] = 255
    return expected


CMY = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
YCC = (120, 90, 170)
LAB_L = RNG.integers(0, 256, (4, 6), dtype=np.uint8)

# mode: (file name, the image, the expected RGB computed here, tolerance)
CASES = {
    "1": ("bits.png", lambda: Image.fromarray(GRAY > 127), lambda: gray3(np.where(GRAY > 127, 255, 0)), 0),
    "L": ("gray.png", lambda: Image.fromarray(GRAY), lambda: gray3(GRAY), 0),
    "LA": ("gray-alpha.png", lambda: Image.fromarray(np.dstack([GRAY, ALPHA])),
           lambda: on_white(gray3(GRAY), ALPHA), 1),
    "P": ("palette.png", lambda: palette_image(None), lambda: palette_expected(None), 0),
    "P-transparency": ("palette-clear.png", lambda: palette_image(2), lambda: palette_expected(2), 0),
    "RGB": ("rgb.png", lambda: Image.fromarray(RGB), lambda: RGB, 0),
    "RGBA": ("rgba.png", lambda: Image.fromarray(np.dstack([RGB, ALPHA])), lambda: on_white(RGB, ALPHA), 1),
    "CMYK": ("cmyk.tif", lambda: Image.fromarray(np.dstack([CMY, np.zeros((4, 6), np.uint8)]), "CMYK"),
             lambda: 255 - CMY.astype(np.int64), 0),
    "YCbCr": ("ycbcr.jpg", lambda: Image.new("YCbCr", (6, 4), YCC),  # JPEG stores YCbCr
              lambda: np.broadcast_to(ycbcr_to_rgb(*YCC), (4, 6, 3)), 2),
    "I;16": ("deep.png", lambda: Image.fromarray(DEEP), lambda: deep_to_8bit(DEEP, 65535), 0),
    "I;16B": ("deep-big-endian.tif", lambda: Image.frombytes("I;16B", (6, 4), DEEP.astype(">u2").tobytes()),
              lambda: deep_to_8bit(DEEP, 65535), 0),
    "I": ("int32.tif", lambda: Image.fromarray(DEEP.astype(np.int32)), lambda: deep_to_8bit(DEEP, 65535), 0),
    "F": ("float.tif", lambda: Image.fromarray(DEEP.astype(np.float32) / 65535),
          lambda: deep_to_8bit(DEEP.astype(np.float64) / 65535, 1.0), 0),
    "LAB": ("lab.tif", lambda: Image.merge("LAB", [Image.fromarray(LAB_L)] + [Image.new("L", (6, 4), 128)] * 2),
            lambda: lab_gray_to_srgb(LAB_L), 1),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_every_image_mode_reads_as_the_right_8bit_rgb(tmp_path, mode):
    name, make, expected, tolerance = CASES[mode]
    image = make()
    assert image.mode == mode.split("-")[0]
    image.save(tmp_path / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    got = open_rgb(tmp_path / name)
    assert (got.mode, got.size) == ("RGB", (6, 4))
    difference = np.abs(np.asarray(got, np.int64) - np.asarray(expected(), np.float64))
    assert difference.max() <= tolerance, (mode, np.asarray(got)[..., 0], np.asarray(expected())[..., 0])


def test_a_16bit_photo_is_not_white(tmp_path):
    Image.fromarray(np.full((4, 6), 32896, np.uint16)).save(tmp_path / "mid-gray.png")  # 128 * 257
    assert set(np.asarray(open_rgb(tmp_path / "mid-gray.png")).ravel()) == {128}


# --- what an image folder holds ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=6)


def readable_splits(root: Path, strict: bool = False, **options):
    """The splits of an image folder as a run uses them: the files its decode could not read left out."""
    from resnet.config import resolve_config
    from resnet.util.distributed import Topology
    from resnet.data.pipeline import load_run_data

    config = resolve_config({"dataset": "imagefolder", "image_size": 32, "workers": 0, "strict": strict})
    return load_run_data(load_splits("imagefolder", str(root), **options), config, Topology()).splits


def test_a_broken_link_is_reported_like_an_unreadable_file(folder):
    os.symlink(folder / "a" / "moved-away.png", folder / "a" / "link.png")
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable image: .*link.png"):
        splits = readable_splits(folder, val_fraction=0.25)
    assert splits.skipped == [str(folder / "a" / "link.png")]
    assert len(splits.train) + len(splits.eval) == 18
    with pytest.raises(ResnetError, match=r"1 unreadable image: .*link.png"):
        readable_splits(folder, strict=True)


def test_hidden_files_and_folders_are_not_images_of_the_set(folder):
    (folder / "a" / ".ipynb_checkpoints").mkdir()
    Image.open(folder / "a" / "0.png").save(folder / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")
    (folder / "b" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the AppleDouble file is not even looked at
        splits = load_splits("imagefolder", str(folder), val_fraction=0.25)
    paths = splits.train.paths + splits.eval.paths
    assert len(paths) == 18 and not any(part.startswith(".") for p in paths for part in p.relative_to(folder).parts)


def test_single_image_classes_say_there_is_nothing_to_hold_out(tmp_path):
    root = make_image_folder(tmp_path / "images", ["a", "b"], per_class=1)
    with pytest.raises(ResnetError, match="every class has a single image: nothing to hold out for validation; "
                                          "add images or use DIR/train"):
        load_splits("imagefolder", str(root))


def test_a_class_without_a_validation_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "images", ["big", "other", "tiny"], per_class=5)
    for extra in ("1.png", "2.png", "3.png", "4.png"):
        (root / "tiny" / extra).unlink()
    with pytest.warns(UserWarning, match=r"1 class has too few images to hold one out.*: tiny$"):
        splits = load_splits("imagefolder", str(root), val_fraction=0.2)
    assert sorted(set(splits.eval.labels)) == [0, 1] and 2 in splits.train.labels


# --- class names in any script ----------------------------------------------------------------


def test_plots_of_cjk_and_emoji_class_names_warn_of_nothing(tmp_path):
    from resnet.util.plots import plot_confusion, plot_curves

    classes = ["猫", "犬", "狐狸 🦊"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusion(torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 3]]), classes, tmp_path / "c.png", "猫 / 犬")
        plot_curves([{"epoch": 1, "train_loss": 1.0, "eval_loss": 1.1, "top1": 0.5, "top5": 1.0}],
                    tmp_path / "curves.png", "resnet18 on 花")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000


def test_installed_fallback_fonts_are_tried_after_the_default(monkeypatch):
    import matplotlib.pyplot as plt

    from resnet.util import plots

    monkeypatch.setattr(plots, "FALLBACK_FONTS", ("No Such Font", "DejaVu Serif"))
    before = list(plt.rcParams["font.family"])
    with plots.labels_in_any_script():
        assert plt.rcParams["font.family"] == [*before, "DejaVu Serif"]
    assert plt.rcParams["font.family"] == before


# --- files that are not regular files ------------------------------------------------------


@contextmanager
def fails_within(seconds: float):
    """Fail the test, instead of hanging it, when the block blocks (on opening a FIFO)."""
    def give_up(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_special(path: Path, kind: str) -> None:
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a character device":
        path.symlink_to("/dev/null")
    elif kind == "a socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))  # the file stays after the socket is closed
        server.close()


@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a socket"])
def test_opening_what_is_not_a_regular_file_says_what_it_is(tmp_path, kind):
    make_special(tmp_path / "x.png", kind)
    with fails_within(10), pytest.raises(ResnetError) as raised:
        open_rgb(tmp_path / "x.png")
    assert str(raised.value) == f"{tmp_path / 'x.png'}: {kind}, not a regular file"


def test_predict_reports_a_fifo_and_classifies_the_other_files(tiny_run, tmp_path):
    fifo, link = tmp_path / "x.jpg", tmp_path / "link.png"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    good = tiny_run["data"] / "dog" / "0.png"
    result = subprocess.run([sys.executable, "-m", "resnet", "predict", str(tiny_run["ckpt"]), str(fifo), str(link),
                             str(good), "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: ") and len(result.stdout.splitlines()) == 1
    assert result.stderr.splitlines() == [f"resnet predict: {fifo}: a FIFO, not a regular file",
                                          f"resnet predict: {link}: a FIFO, not a regular file"]


def test_an_image_over_the_decompression_bomb_limit_is_a_warning_naming_it(tiny_run, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 40), "red").save(big)  # 1600 pixels: over a limit of 1000, under twice it (an error)
    script = ("import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = 1000; from resnet.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "predict", str(tiny_run["ckpt"]), str(big), "--device",
                             "cpu"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"{big}: ")
    assert result.stderr.splitlines() == [f"resnet predict: warning: {big}: 40x40 is 1,600 pixels, over PIL's "
                                          "decompression-bomb limit of 1,000; reading it anyway"]


def test_a_fifo_in_a_class_folder_is_reported_as_unreadable(folder):
    os.mkfifo(folder / "a" / "fifo.png")
    (folder / "b" / "link.png").symlink_to(folder / "a" / "fifo.png")
    with fails_within(20), pytest.warns(UserWarning, match=r"skipping 2 unreadable images: .*fifo.png, .*link.png"):
        splits = readable_splits(folder, val_fraction=0.25)
    assert splits.skipped == [str(folder / "a" / "fifo.png"), str(folder / "b" / "link.png")]
    assert len(splits.train) + len(splits.eval) == 18


# --- names that are not UTF-8 --------------------------------------------------------------------


def test_a_run_on_names_that_are_not_utf8_trains_and_evaluates(tmp_path, capsys):
    from resnet.cli import main

    odd = os.fsdecode(b"b\xff\xfe")  # undecodable bytes, kept by Python as lone surrogates
    data = make_image_folder(tmp_path / "data", ["a", odd, "c"], per_class=4)
    (data / "a" / "0.png").rename(data / "a" / os.fsdecode(b"bad\xff\xfename.png"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet", "--arch", "resnet10",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["class"] for row in result["per_class"]] == ["a", odd, "c"]
    assert (out / "per_class.csv").read_text(encoding="utf-8").splitlines()[2].startswith("b\ufffd\ufffd,")
    assert (out / "confusion_matrix.png").stat().st_size > 1000 and (out / "mistakes.png").exists()
    (out / "most_confused.csv").read_text(encoding="utf-8")


def test_an_overlay_titled_with_a_name_that_is_not_utf8_is_saved(tmp_path):
    from resnet.tools.explain import Explanation, save_overlay

    explanation = Explanation("x.png", [], os.fsdecode(b"b\xff"), 0.5, torch.zeros(8, 8), np.zeros((8, 8, 3), np.uint8))
    save_overlay(explanation, tmp_path / "x.cam.png")
    assert (tmp_path / "x.cam.png").stat().st_size > 0


# --- the decoded-image cache folder ------------------------------------------------------------


@pytest.fixture
def counted_decodes(folder, monkeypatch) -> list:
    """Every ``open_rgb`` call of the decode, recorded."""
    from resnet.data import cache

    calls = []
    original = cache.open_rgb
    monkeypatch.setattr(cache, "open_rgb", lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    return calls


def decode_folder(folder: Path) -> None:
    from resnet.data.cache import decode

    decode(load_splits("imagefolder", str(folder), val_fraction=0.25).train, 32, workers=0)


def test_a_cache_folder_that_is_a_file_is_an_error_before_any_decode(folder, tmp_path, monkeypatch, counted_decodes):
    (tmp_path / "file").write_text("not a folder")
    for cache, problem in [(tmp_path / "file", f"{tmp_path / 'file'} is a file, not a folder"),
                           (tmp_path / "file" / "cache", f"{tmp_path / 'file'} is a file, not a folder")]:
        monkeypatch.setenv("RESNET_CACHE", str(cache))
        with pytest.raises(ResnetError, match=f"^RESNET_CACHE={re.escape(str(cache))}: {re.escape(problem)}; "
                                              "set RESNET_CACHE to a folder that can be written"):
            decode_folder(folder)
    assert counted_decodes == []
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "fine"))
    decode_folder(folder)
    assert len(counted_decodes) == 12  # 18 images, 2 of each class held out


def test_the_default_cache_folder_is_named_when_resnet_cache_is_unset(folder, tmp_path, monkeypatch, counted_decodes):
    monkeypatch.delenv("RESNET_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".cache").write_text("")
    default = tmp_path / "home" / ".cache" / "resnet" / "decoded"
    with pytest.raises(ResnetError, match=f"^the decoded-image cache {re.escape(str(default))} "
                                          r"\(RESNET_CACHE is not set\): .*\.cache is a file, not a folder; "
                                          "set RESNET_CACHE to a folder that can be written"):
        decode_folder(folder)
    assert counted_decodes == []


def test_a_cache_folder_on_a_read_only_filesystem_is_an_error_before_any_decode(folder, tmp_path, monkeypatch,
                                                                                 counted_decodes):
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        for cache in (mount_point, mount_point / "cache"):
            monkeypatch.setenv("RESNET_CACHE", str(cache))
            problem = r"cannot create (the folder|a file in it) \(Read-only file system\); "
            with pytest.raises(ResnetError, match=f"^RESNET_CACHE={re.escape(str(cache))}: {problem}"):
                decode_folder(folder)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert counted_decodes == []


# --- the data folder of an old run ---------------------------------------------------------------


def test_a_missing_relative_data_dir_of_a_run_says_to_pass_data_dir(tmp_path, monkeypatch):
    from resnet.tools.evaluation import eval_source

    monkeypatch.chdir(tmp_path)
    checkpoint = {"config": {"dataset": "imagefolder", "data_dir": "d9"}, "classes": ["a", "b"]}
    with pytest.raises(ResnetError, match=r"^the run's data_dir d9 \(a relative path, read from .*\) does not "
                                          r"exist; pass --data-dir DIR to point at the data$"):
        eval_source(checkpoint)


# --- classes that unreadable files leave without images ----------------------------------------------


def test_a_class_whose_held_out_image_is_unreadable_is_named(tmp_path):
    from resnet.data.sources import list_class_folders, stratified_split

    root = make_image_folder(tmp_path / "images", ["big", "other", "small"], per_class=5)
    for extra in ("3.png", "4.png"):
        (root / "small" / extra).unlink()
    _, samples = list_class_folders(root)
    _, held_out = stratified_split(samples, 0.2, seed=0)
    (would_be_held,) = [path for path, label in held_out if label == 2]
    would_be_held.write_bytes(b"not an image")
    with pytest.warns(UserWarning) as caught:
        splits = readable_splits(root, val_fraction=0.2)
    messages = [str(w.message) for w in caught]
    assert "1 class has no readable validation image: small" in messages
    assert 2 not in splits.eval.labels and splits.train.labels.count(2) == 2


def test_classes_left_without_readable_training_or_validation_images_are_named(tmp_path):
    root = tmp_path / "images"
    make_image_folder(root / "train", ["a", "b", "c"], per_class=2)
    make_image_folder(root / "val", ["a", "b", "c"], per_class=1)
    for path in (root / "train" / "b").iterdir():
        path.write_bytes(b"not an image")
    (root / "val" / "c" / "0.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning) as caught:
        readable_splits(root)
    messages = [str(w.message) for w in caught]
    assert "1 class has no readable training image: b" in messages
    assert "1 class has no readable validation image: c" in messages
