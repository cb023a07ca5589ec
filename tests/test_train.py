"""Training: datasets and splits, the tutorial's recipe, the batched warp, resume, faults."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import make_image_folder, read_metrics
from resnet.data import augment
from resnet.engine import optim, sampling, training as train_module
from resnet.engine.checkpoint import load_checkpoint
from resnet.util.files import save_atomic
from resnet.cli import main
from resnet.config import TrainConfig, resolve_config
from resnet.data.cache import Store, decode
from resnet.data.sources import PETALS_SIZES, open_rgb
from resnet.data.datasets import load_splits
from resnet.util.distributed import Topology
from resnet.data.pipeline import FastTrainBatches, augment_spec, load_run_data
from resnet.errors import ResnetError
from resnet.data.petals import CLASSES, make_petals
from resnet.models.resnet import get_model
from resnet.engine.step import build_model

# resnet10: half resnet18's steps and checkpoint bytes; the tests that load resnet18 weights say --arch resnet18.
TINY = ["--epochs", "2", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--precision", "fp32",
        "--quiet", "--arch", "resnet10"]


# --- the tutorial's recipe ------------------------------------------------------------


def test_tutorial_recipe_is_the_tutorials():
    config = resolve_config({"recipe": "tutorial", "dataset": "flowers102"})
    assert (config.arch, config.lr, config.momentum, config.weight_decay) == ("resnet34", 0.02, 0.9, 0.0)
    assert (config.batch_size, config.epochs, config.seed, config.image_size) == (256, 500, 0, 224)
    assert (config.schedule, config.label_smoothing, config.nesterov, config.warmup_epochs) == ("constant", 0, False, 0)
    assert (config.ema_decay, config.tta, config.resolved_eval_every()) == (0, False, 1)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tutorial_train = T.Compose([
        T.RandomRotation(30), T.RandomResizedCrop((224, 224)), T.RandomHorizontalFlip(p=0.5),
        T.RandomVerticalFlip(p=0.5), T.ToTensor(), T.Normalize(mean=mean, std=std)])
    tutorial_test = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(mean=mean, std=std)])
    ours_train = augment.classic_train_transform(augment_spec(config), config.image_size)
    ours_test = augment.classic_eval_transform(config.resolved_eval_image_size())
    assert repr(ours_train) == repr(tutorial_train)
    assert repr(ours_test) == repr(tutorial_test)


def test_petals_evaluate_at_their_size_unless_the_image_size_is_given():
    assert resolve_config({"dataset": "petals"}).resolved_eval_image_size() == 64
    assert resolve_config({"dataset": "petals", "image_size": 112}).resolved_eval_image_size() == 126  # scale 0.6
    given = resolve_config({"dataset": "petals", "image_size": 112, "eval_image_size": 96})
    assert given.resolved_eval_image_size() == 96


def test_command_line_overrides_the_recipe():
    config = resolve_config({"recipe": "tutorial", "lr": 0.5, "epochs": 3, "dataset": "petals"})
    assert (config.lr, config.epochs, config.batch_size) == (0.5, 3, 256)


def test_every_config_field_is_a_documented_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata["help"] and "--" + field.name.replace("_", "-") in text
    assert "--min-scale SCALE smallest area fraction of the random-resized crop" in text
    assert "--recipe {default,fast,tutorial}" in text and "--split {tutorial,official}" in text


# --- the batched warp ------------------------------------------------------------------


def images(n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def theta(rows: list[list[float]], n: int = 2) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).expand(n, 2, 3)


def test_identity_warp_returns_the_input():
    x = images()
    torch.testing.assert_close(augment.warp(x, theta([[1, 0, 0], [0, 1, 0]]), 8), x)


def test_flip_warps_mirror_the_image():
    x = images()
    torch.testing.assert_close(augment.warp(x, theta([[-1, 0, 0], [0, 1, 0]]), 8), x.flip(-1))
    torch.testing.assert_close(augment.warp(x, theta([[1, 0, 0], [0, -1, 0]]), 8), x.flip(-2))


def test_quarter_turn_moves_known_pixels():
    x = torch.zeros(1, 3, 8, 8)
    x[0, :, 0, 7] = 1.0  # top-right corner
    out = augment.warp(x, theta([[0, -1, 0], [1, 0, 0]], n=1), 8)
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-6, rtol=0)
    assert out[0, 0, 0, 0] == pytest.approx(1.0)  # it is now the top-left corner


def test_degenerate_spec_samples_the_identity():
    spec = augment.AugmentSpec(rotation=0, scale=(1, 1), ratio=(1, 1), hflip=0, vflip=0)
    matrices = augment.sample_affine(16, spec, torch.Generator().manual_seed(0), 32)
    torch.testing.assert_close(matrices, theta([[1, 0, 0], [0, 1, 0]], n=16))


def test_sampled_warps_follow_torchvisions_distributions():
    spec = augment.AugmentSpec(rotation=30, scale=(0.08, 1.0), hflip=0.5, vflip=0.5)
    n = 4000
    m = augment.sample_affine(n, spec, torch.Generator().manual_seed(0), 32)
    linear = m[:, :, :2]
    area = linear.det().abs()  # |det| = crop area fraction (rotation and flips keep it)
    assert area.min() >= 0.08 - 1e-5 and area.max() <= 1 + 1e-5
    flips = (linear.det() < 0).float().mean().item()  # one flip of the two flips the orientation
    assert flips == pytest.approx(0.5, abs=0.05)
    # The crop stays inside the rotated image: centre +- half-size within [-1, 1].
    boxes = augment.sample_crop_boxes(n, spec, torch.Generator().manual_seed(1))
    assert (boxes[:, 0] - boxes[:, 2] / 2 >= -1e-6).all() and (boxes[:, 0] + boxes[:, 2] / 2 <= 1 + 1e-6).all()
    ratio = boxes[:, 2] / boxes[:, 3]
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4


def test_pad_and_crop_shifts_by_whole_pixels():
    # Each output is its input moved by (dx, dy), |dx|, |dy| <= padding, the uncovered border
    # black: copied exactly, no blur; over many images every one of the 25 shifts occurs.
    x = torch.rand(400, 3, 8, 8)
    spec = augment.AugmentSpec(rotation=0, hflip=0, vflip=0, padding=2)
    out = augment.augment_batch((x * 255).round().to(torch.uint8), spec, 8, torch.Generator().manual_seed(0))
    source = (x * 255).round() / 255
    padded = torch.nn.functional.pad(source, (2, 2, 2, 2))
    seen = set()
    for image, original in zip(out, padded):
        shifts = [(dx, dy) for dx in range(5) for dy in range(5)
                  if torch.allclose(image, original[:, dy:dy + 8, dx:dx + 8], atol=1e-6)]
        assert len(shifts) >= 1
        seen.add(shifts[0])
    assert len(seen) == 25


def test_pad_and_crop_in_both_pipelines_and_its_bounds():
    config = resolve_config({"dataset": "flowers102", "image_size": 32, "crop_padding": 4})
    assert augment_spec(config).padding == 4
    assert config.resolved_eval_image_size() == 32  # shifted, not zoomed: no FixRes enlargement
    steps = augment.classic_train_transform(augment_spec(config), 32).transforms
    crop = next(step for step in steps if isinstance(step, T.RandomCrop))
    assert crop.padding == 4 and not any(isinstance(step, T.RandomResizedCrop) for step in steps)
    with pytest.raises(ResnetError, match=r"--crop-padding must be below half the smallest training crop \(32 px\)"):
        resolve_config({"dataset": "flowers102", "image_size": 32, "crop_padding": 16})
    # --min-image-size 40 ramps from 32 px (multiples of --progressive-step 16): 16 is too much there.
    with pytest.raises(ResnetError, match=r"smallest training crop \(32 px\), got 16"):
        resolve_config({"dataset": "flowers102", "image_size": 64, "min_image_size": 40, "crop_padding": 16})
    with pytest.raises(ResnetError, match="--crop-padding must be at least 0"):
        resolve_config({"dataset": "flowers102", "crop_padding": -1})


def test_augment_batch_shapes_and_range():
    x = (images(4, 16) * 255).to(torch.uint8)
    out = augment.augment_batch(x, augment.AugmentSpec(color_jitter=0.3), 12, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 12, 12) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


# --- datasets -----------------------------------------------------------------------------


def test_petals_are_deterministic_balanced_and_sized():
    a, labels = make_petals(40, size=64, seed=3)
    b, _ = make_petals(40, size=64, seed=3)
    assert a.shape == (40, 3, 64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.bincount(labels).tolist() == [4] * len(CLASSES) and len(CLASSES) >= 10
    splits = load_splits("petals")
    assert (len(splits.train), len(splits.eval)) == (PETALS_SIZES["train"], PETALS_SIZES["eval"])


def test_imagefolder_split_by_fraction_is_stratified_and_seeded(folder):
    splits = load_splits("imagefolder", str(folder), val_fraction=1 / 3, seed=0)
    assert splits.classes == ["a", "b", "c"]
    assert np.bincount(splits.eval.labels).tolist() == [2, 2, 2]
    assert np.bincount(splits.train.labels).tolist() == [4, 4, 4]
    assert not set(splits.train.paths) & set(splits.eval.paths)
    again = load_splits("imagefolder", str(folder), val_fraction=1 / 3, seed=0)
    assert again.eval.paths == splits.eval.paths
    assert load_splits("imagefolder", str(folder), val_fraction=1 / 3, seed=1).eval.paths != splits.eval.paths


def test_imagefolder_train_val_layout(tmp_path):
    make_image_folder(tmp_path / "d" / "train", ["x", "y"], per_class=3)
    make_image_folder(tmp_path / "d" / "val", ["x", "y"], per_class=1, seed=1)
    splits = load_splits("imagefolder", str(tmp_path / "d"))
    assert (len(splits.train), len(splits.eval), splits.classes) == (6, 2, ["x", "y"])


def test_unreadable_files_are_listed_once_and_skipped(folder):
    (folder / "a" / "broken.png").write_bytes(b"not an image")
    good = folder / "b" / "0.png"
    jpeg = folder / "b" / "truncated.jpg"
    Image.open(good).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    splits = load_splits("imagefolder", str(folder), val_fraction=0.25)
    assert len(splits.train) + len(splits.eval) == 20  # listed, not read
    config = resolve_config({"dataset": "imagefolder", "image_size": 32, "workers": 0})
    with pytest.warns(UserWarning, match=r"skipping 2 unreadable images: .*broken.png.*truncated.jpg"):
        kept = load_run_data(splits, config, Topology()).splits
    assert len(kept.train) + len(kept.eval) == 18 and len(kept.skipped) == 2
    for pipeline in ("fast", "classic"):  # found by the decode, or by the classic pipeline's one check
        strict = resolve_config({"dataset": "imagefolder", "image_size": 32, "workers": 0, "strict": True,
                                 "pipeline": pipeline})
        with pytest.raises(ResnetError, match=r"2 unreadable images"):
            load_run_data(splits, strict, Topology())


def test_odd_image_modes_become_upright_rgb(tmp_path):
    Image.new("L", (10, 6), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (10, 6), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("CMYK", (10, 6), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    rotated = Image.new("RGB", (10, 6), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    for name in ("gray.png", "clear.png", "cmyk.jpg"):
        image = open_rgb(tmp_path / name)
        assert (image.mode, image.size) == ("RGB", (10, 6)), name
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert open_rgb(tmp_path / "exif.jpg").size == (6, 10)


def make_fake_flowers(root: Path, monkeypatch, per_class: int = 4, classes: int = 3) -> Path:
    """Flowers-102's official layout: jpg/image_%05d.jpg, imagelabels.mat, setid.mat."""
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = per_class * classes
    labels = np.repeat(np.arange(1, classes + 1), per_class)
    rng = np.random.default_rng(0)
    for image_id in range(1, n + 1):
        pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "jpg" / f"image_{image_id:05d}.jpg")
    ids = np.arange(1, n + 1).reshape(classes, per_class)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(base / "setid.mat", {"trnid": ids[:, 0], "valid": ids[:, 1], "tstid": ids[:, 2:].ravel()})
    # The real files' checksums are checked by torchvision; the stand-ins only need to exist.
    monkeypatch.setattr("torchvision.datasets.flowers102.check_integrity", lambda path, md5=None: Path(path).exists())
    return root


def test_flowers102_splits(tmp_path, monkeypatch):
    root = make_fake_flowers(tmp_path / "data", monkeypatch)
    tutorial = load_splits("flowers102", str(root), split="tutorial")
    # The tutorial's split trains on "test" and evaluates on "train".
    assert (len(tutorial.train), len(tutorial.eval), tutorial.test) == (6, 3, None)
    assert tutorial.classes[:2] == ["pink primrose", "hard-leaved pocket orchid"] and len(tutorial.classes) == 102
    # setid.mat's ids: per class of 4, the 1st is "train", the 2nd "val", the 3rd and 4th "test".
    assert sorted(p.name for p in tutorial.train.paths) == [f"image_{i:05d}.jpg" for i in (3, 4, 7, 8, 11, 12)]
    assert sorted(p.name for p in tutorial.eval.paths) == [f"image_{i:05d}.jpg" for i in (1, 5, 9)]
    official = load_splits("flowers102", str(root), split="official")
    assert (len(official.train), len(official.eval), len(official.test)) == (3, 3, 6)
    assert sorted(official.train.labels) == [0, 1, 2]


def test_a_run_from_before_the_rename_still_evaluates_and_resumes(tmp_path, monkeypatch, capsys):
    """The tutorial's recipe and split were once both called "seed"; such runs still load."""
    root = make_fake_flowers(tmp_path / "data", monkeypatch)
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "flowers102", "--data-dir", str(root), "--out", str(run_dir), *TINY,
                 "--epochs", "1"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["recipe"], config["split"]) == ("default", "tutorial")
    config.update(recipe="seed", split="seed")
    (run_dir / "config.json").write_text(json.dumps(config))
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint(run_dir / name)
        checkpoint["config"].update(recipe="seed", split="seed")
        save_atomic(checkpoint, run_dir / name)
    capsys.readouterr()

    assert main(["eval", str(run_dir), "--json", "--workers", "0", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["split"], result["subset"], result["images"]) == ("tutorial", "train", 3)
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["epochs"], summary["split"]) == (2, "tutorial")
    assert resolve_config({"recipe": "seed"}).recipe == "tutorial"  # old scripts' configs, given to the API


def test_official_split_scores_the_best_checkpoint_on_test_once(tmp_path, monkeypatch):
    root = make_fake_flowers(tmp_path / "data", monkeypatch)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "flowers102", "--data-dir", str(root), "--split", "official", "--out", str(out),
                 *TINY, "--epochs", "1", "--batch-size", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["split"], summary["eval_split"], summary["test_images"]) == ("official", "val", 6)
    assert summary["test_top1"] * 6 == pytest.approx(round(summary["test_top1"] * 6))


def test_flowers102_offline_without_a_copy_is_one_line(tmp_path, monkeypatch, capsys):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.Flowers102.download", offline)
    code = main(["train", "--dataset", "flowers102", "--data-dir", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "Flowers-102 is not in" in err and "--data-dir" in err


def test_decoded_cache_is_reused_from_disk(folder, monkeypatch):
    source = load_splits("imagefolder", str(folder)).train
    first = decode(source, 16, workers=0)
    monkeypatch.setattr("resnet.data.cache.DataLoader", None)  # a second decode would fail
    second = decode(source, 16, workers=0)
    every = torch.arange(len(source))
    torch.testing.assert_close(first.gather(every), second.gather(every))
    assert first.gather(every).shape == (len(source), 3, 16, 16) and first.images.dtype == torch.uint8


def test_draft_decoded_training_cache_is_close_to_the_full_decode(tmp_path):
    from resnet.data.sources import ImageFiles

    # A smooth 400x300 photo-like image: libjpeg's 1/4-scale decode (100x75) then the resize to 64.
    y, x = np.mgrid[0:300, 0:400] / 60.0
    pixels = np.stack([128 + 100 * np.sin(x), 128 + 100 * np.cos(y), 128 + 60 * np.sin(x + y)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    source = ImageFiles([tmp_path / "photo.jpg"], [0])
    full, drafted = decode(source, 64, workers=0), decode(source, 64, workers=0, draft=True)
    assert drafted.images.shape == full.images.shape == (1, 3, 64, 64)
    difference = (drafted.images.float() - full.images.float()).abs().mean().item()
    assert 0 < difference < 3  # really decoded another way, and close
    assert Store.for_files(source.paths, 64, True).folder != Store.for_files(source.paths, 64, False).folder


# --- a run and its outputs -------------------------------------------------------------------


def test_a_run_writes_its_outputs(folder, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(run_dir), *TINY]) == 0
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.csv", "curves.png", "last.pt", "best.pt",
                                                   "summary.json"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_images"] + summary["eval_images"] == 18 and summary["num_classes"] == 3
    rows = read_metrics(run_dir)
    assert list(rows[0]) == ["epoch", "train_loss", "eval_loss", "top1", "top5", "macro_f1", "balanced_accuracy",
                             "lr", "images_per_s", "seconds", "train_size"]
    assert [int(r["train_size"]) for r in rows] == [32, 32]
    assert [int(r["epoch"]) for r in rows] == [1, 2] == list(range(1, summary["epochs"] + 1))
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["top1"]))
    assert summary["best_top1"] == pytest.approx(max(float(r["top1"]) for r in rows))
    assert json.loads((run_dir / "config.json").read_text())["image_size"] == 32
    checkpoint = load_checkpoint(run_dir / "last.pt")  # weights_only: plain data
    assert checkpoint["classes"] == ["a", "b", "c"] and checkpoint["state"]["epoch"] == 2


def test_classic_pipeline_trains_too(folder, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(run_dir),
                 "--pipeline", "classic", *TINY]) == 0
    assert len(read_metrics(run_dir)) == 2


@pytest.mark.parametrize("pipeline", ["fast", "classic"])
def test_progressive_resizing_trains_and_records_each_epochs_size(folder, tmp_path, pipeline):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(run_dir),
                 "--pipeline", pipeline, *TINY, "--epochs", "3", *PROGRESSIVE]) == 0
    assert [int(r["train_size"]) for r in read_metrics(run_dir)] == [32, 48, 64]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3


def test_eval_every_evaluates_every_nth_epoch_and_always_the_last(folder, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(run_dir), *TINY,
                 "--epochs", "5", "--eval-every", "2"]) == 0
    rows = read_metrics(run_dir)
    assert [r["top1"] != "" for r in rows] == [False, True, False, True, True]
    assert all((r["eval_loss"] != "") == (r["top1"] != "") == (r["top5"] != "") for r in rows)
    assert all(r["train_loss"] and r["lr"] for r in rows)  # the training columns every epoch
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["top1"]))
    evaluated = {int(r["epoch"]): float(r["top1"]) for r in rows if r["top1"]}
    assert summary["best_epoch"] in evaluated and summary["best_top1"] == pytest.approx(max(evaluated.values()))
    assert load_checkpoint(run_dir / "best.pt")["state"]["epoch"] == summary["best_epoch"]
    config = resolve_config({"epochs": 7, "eval_every": 3})
    assert [e + 1 for e in range(7) if config.evaluates_after(e)] == [3, 6, 7]
    config = resolve_config({"epochs": 7, "eval_every": 0})
    assert [e + 1 for e in range(7) if config.evaluates_after(e)] == [7]  # 0: the last only
    # Unless given: about ten evaluations a run, and every epoch of a short one.
    assert [resolve_config({"epochs": n}).resolved_eval_every() for n in (2, 9, 36, 40, 75)] == [1, 1, 4, 4, 8]


def test_image_size_schedule_grows_to_the_full_size_by_the_fraction():
    config = resolve_config({"image_size": 112, "min_image_size": 64, "epochs": 24, "progressive_until": 0.75})
    sizes = [config.image_size_at(epoch) for epoch in range(24)]
    assert sizes[0] == 64 and sizes == sorted(sizes)
    assert sizes.index(112) == 17 and set(sizes[17:]) == {112}  # full from epoch 18 of 24 on
    assert all(s % 16 == 0 and 32 <= s <= 112 for s in sizes) and len(set(sizes)) > 2
    assert resolve_config({"image_size": 56, "min_image_size": 40, "epochs": 4}).image_size_at(0) == 32  # rounded down
    assert resolve_config({"image_size": 56, "min_image_size": 40, "epochs": 4}).image_size_at(3) == 56
    assert {resolve_config({"image_size": 112, "epochs": 5, "min_image_size": 112}).image_size_at(e)
            for e in range(5)} == {112}  # off
    assert {resolve_config({"image_size": 100, "min_image_size": 100, "epochs": 5}).image_size_at(e)
            for e in range(5)} == {100}  # one size, though not a multiple of 16
    assert resolve_config({"image_size": 112, "min_image_size": 64, "epochs": 1}).image_size_at(0) == 112


def test_the_ramp_can_start_late():
    config = resolve_config({"image_size": 112, "min_image_size": 64, "epochs": 42, "progressive_from": 0.6,
                             "progressive_until": 0.88})
    sizes = [config.image_size_at(epoch) for epoch in range(42)]
    assert sizes == [64] * 29 + [80] * 4 + [96] * 3 + [112] * 6
    with pytest.raises(ResnetError, match="--progressive-from must be at least 0 and below"):
        resolve_config({"progressive_from": 0.9, "progressive_until": 0.8})


def test_the_ramp_steps_through_multiples_of_the_step_in_equal_shares():
    config = resolve_config({"image_size": 224, "min_image_size": 128, "epochs": 10, "progressive_until": 0.7,
                             "progressive_step": 32})
    assert config.ramp_sizes() == [128, 160, 192]
    assert [config.image_size_at(e) for e in range(10)] == [128, 128, 160, 160, 192, 192, 224, 224, 224, 224]
    odd = resolve_config({"image_size": 112, "min_image_size": 72, "epochs": 8, "progressive_step": 32})
    assert odd.ramp_sizes() == [64, 96]  # the minimum rounded down to the step
    with pytest.raises(ResnetError, match="--progressive-step must be at least 1"):
        resolve_config({"progressive_step": 0})


def test_our_recipes_start_at_four_sevenths_of_the_size_unless_told():
    assert resolve_config({"dataset": "flowers102", "image_size": 112}).min_image_size == 64
    assert resolve_config({"dataset": "imagefolder"}).min_image_size == 128  # 224 px
    assert resolve_config({"dataset": "flowers102", "recipe": "fast", "image_size": 64}).min_image_size == 32
    assert resolve_config({"dataset": "flowers102", "min_image_size": 96}).min_image_size == 96
    assert resolve_config({"dataset": "petals"}).min_image_size is None  # 56 px: one size
    assert resolve_config({"dataset": "flowers102", "recipe": "tutorial"}).min_image_size is None


def test_fast_recipe_is_the_default_recipe_shorter_at_twice_the_lr():
    fast = resolve_config({"recipe": "fast", "dataset": "flowers102"})
    default = resolve_config({"dataset": "flowers102"})
    assert (fast.epochs, fast.resolved_eval_every(), fast.image_size, fast.min_image_size) == (36, 0, 112, 64)
    assert fast.epochs < default.epochs and fast.lr == 2 * default.lr
    assert [e + 1 for e in range(fast.epochs) if fast.evaluates_after(e)] == [36]  # the last only
    # Crops in multiples of the network's stride: 80 px would cost what 96 does.
    assert [fast.image_size_at(e) for e in range(36)] == [64] * 16 + [96] * 15 + [112] * 5
    same = ("batch_size", "min_image_size", "progressive_from", "weight_decay", "rotation")
    assert {name: getattr(fast, name) for name in same} == {name: getattr(default, name) for name in same}
    petals = resolve_config({"recipe": "fast", "dataset": "petals"})
    assert (petals.epochs, petals.image_size, petals.min_image_size) == (36, 56, None)  # the preset keeps one size
    given = resolve_config({"recipe": "fast", "dataset": "flowers102", "epochs": 5, "min_image_size": 96,
                            "progressive_until": 0.5, "progressive_from": 0.0})
    assert (given.epochs, given.min_image_size, given.progressive_until) == (5, 96, 0.5)


class Kill(Exception):
    pass


def interrupt_at(monkeypatch, global_step: int, exception: type[BaseException] | None = None) -> None:
    """Make the loop see Ctrl-C (or die, with ``exception``) right after its ``global_step``-th step."""
    calls = iter(range(10**6))

    def fake(stop, topology, step):
        if next(calls) == global_step:
            if exception is not None:
                raise exception()
            return signal.SIGINT
        return None

    monkeypatch.setattr(train_module, "stop_requested", fake)


PROGRESSIVE = ["--image-size", "64", "--min-image-size", "32", "--progressive-until", "1"]  # 32, 48, 64 px


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The runs test_resume_is_bit_exact compares with, on one image folder, each trained once
    (ctrl-c and kill share theirs): ``uninterrupted(extra)`` gives (its options, its directory)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    folder = make_image_folder(root / "images", ["a", "b", "c"], per_class=6)
    runs: dict[tuple[str, ...], Path] = {}

    def run(extra: list[str]) -> tuple[list[str], Path]:
        args = ["--dataset", "imagefolder", "--data-dir", str(folder), "--lr", "0.05", *TINY,
                "--epochs", "3", "--ema-decay", "0.9", *extra]
        if tuple(extra) not in runs:
            runs[tuple(extra)] = root / f"whole-{len(runs)}"
            assert main(["train", *args, "--out", str(runs[tuple(extra)])]) == 0
        return args, runs[tuple(extra)]

    return run


@pytest.mark.parametrize("how, extra", [("ctrl-c", []), ("kill", []), ("ctrl-c", PROGRESSIVE)],
                         ids=["ctrl-c", "kill", "progressive"])
def test_resume_is_bit_exact(uninterrupted, tmp_path, monkeypatch, how, extra):
    args, whole_dir = uninterrupted(extra)

    with monkeypatch.context() as patch:
        # 15 training images in batches of 4: 4 steps an epoch; stop after epoch 2's second step.
        interrupt_at(patch, 4 + 1, exception=None if how == "ctrl-c" else Kill)
        if how == "ctrl-c":
            assert main(["train", *args, "--out", str(tmp_path / "cut")]) == 130
        else:
            with pytest.raises(Kill):
                main(["train", *args, "--out", str(tmp_path / "cut")])
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")["state"]
    assert (saved["epoch"], saved["step"]) == ((1, 2) if how == "ctrl-c" else (1, 0))
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0

    whole, cut = load_checkpoint(whole_dir / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for part in ("model", "ema"):
        for key, value in whole[part].items():
            assert torch.equal(value, cut[part][key]), (part, key)
    columns = ("epoch", "train_loss", "eval_loss", "top1", "top5", "lr", "train_size")
    assert [{c: r[c] for c in columns} for r in read_metrics(whole_dir)] == \
           [{c: r[c] for c in columns} for r in read_metrics(tmp_path / "cut")]


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"version": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_atomic({"version": 2}, path)
    assert load_checkpoint(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_runs_files_are_made_as_open_makes_them_under_the_umask(folder, tmp_path, umask_022):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), *TINY, "--epochs", "1",
                 "--out", str(out)]) == 0
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in out.iterdir()}
    assert {"last.pt", "best.pt", "config.json", "metrics.csv", "summary.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, "0o644")


def test_a_rewritten_file_keeps_its_mode(tmp_path, umask_022):
    """As open() keeps the mode of a file it truncates: one a user shared with a group, or made
    private, stays so."""
    path = tmp_path / "best.pt"
    save_atomic({"version": 1}, path)
    for mode in (0o640, 0o600):
        path.chmod(mode)
        save_atomic({"version": mode}, path)
        assert stat.S_IMODE(path.stat().st_mode) == mode and load_checkpoint(path) == {"version": mode}


# --- faults -----------------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_existing_out_dir_is_never_overwritten(folder, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out), *TINY]) == 2
    assert "already exists and is not empty" in one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "keep me"


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out), *TINY]
    assert main([*args[:-len(TINY)], *TINY, "--epochs", "1"]) == 0
    good = load_checkpoint(out / "last.pt")
    capsys.readouterr()
    # Resuming with more epochs at an absurd learning rate diverges in the second epoch.
    config = json.loads((out / "config.json").read_text())
    config.update(lr=1e30, warmup_epochs=0)
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 2
    err = one_line_error(capsys)
    assert "the training loss became nan" in err or "the training loss became inf" in err
    assert "Last good checkpoint" in err
    kept = load_checkpoint(out / "last.pt")
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())


@pytest.mark.parametrize(
    "make,args,message",
    [
        (lambda root: None, ["--dataset", "imagefolder"], "needs --data-dir"),
        (lambda root: root.mkdir(), ["--dataset", "imagefolder", "--data-dir", "{root}"], "has no class sub-folders"),
        (lambda root: (root / "a").mkdir(parents=True), ["--dataset", "imagefolder", "--data-dir", "{root}"],
         "has no images"),
        (lambda root: None, ["--dataset", "imagefolder", "--data-dir", "{root}"], "is not a directory"),
        (lambda root: None, ["--resume", "{root}"], "is not a run directory"),
        (lambda root: (root.mkdir(), (root / "config.json").write_text('{"epochs": '), (root / "last.pt").touch()),
         ["--resume", "{root}"], "config.json is not a readable config (JSONDecodeError: Expecting value"),
        (lambda root: None, ["--image-size", "16"], "--image-size must be at least 32"),
        (lambda root: None, ["--lr", "-1"], "--lr must be positive"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, make, args, message):
    root = tmp_path / "data"
    make(root)
    code = main(["train", *[a.format(root=root) for a in args], "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--label-smoothing", "inf"], "--label-smoothing must be a finite number, got inf"),
        (["--image-size", "100000"], "--image-size must be at most 2048, got 100000"),
        (["--min-image-size", "128"], "--min-image-size must be in [32, --image-size 32], got 128"),
        (["--min-image-size", "16"], "--min-image-size must be in [32, --image-size 32], got 16"),
        (["--progressive-until", "0"], "--progressive-until must be in (0, 1], got 0.0"),
        (["--eval-every", "-1"], "--eval-every must be at least 0, got -1"),
        (["--eval-image-size", "4000"], "--eval-image-size must be at most 2048, got 4000"),
        (["--cache-size", "4000"], "--cache-size must be at most 2048, got 4000"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(folder, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out), *TINY, *args])
    assert code == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_evaluation_size_follows_the_crop_scale():
    # image size / E[sqrt(s)], s ~ U(min_scale, 1): FixRes's mean apparent object size.
    sizes = {scale: resolve_config({"dataset": "flowers102", "min_scale": scale}).resolved_eval_image_size()
             for scale in (0.08, 0.25, 1.0)}
    assert sizes == {0.08: 158, 0.25: 144, 1.0: 112}
    assert resolve_config({"dataset": "flowers102", "eval_image_size": 160}).resolved_eval_image_size() == 160
    for bad in (-0.5, 0.0):  # caught before the evaluation size is derived from it
        with pytest.raises(ResnetError, match=r"--min-scale must be in \(0, 1\], got"):
            resolve_config({"dataset": "flowers102", "min_scale": bad})


def test_sizes_derived_from_the_image_size_are_bounded_too():
    with pytest.raises(ResnetError,
                       match=r"--eval-image-size must be at most 2048, got 2571 \(from --image-size and --min-scale"):
        resolve_config({"dataset": "flowers102", "image_size": 2000})


def test_config_json_is_strict_json():
    with pytest.raises(ValueError):
        TrainConfig(lr=float("nan")).to_json()


def test_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--out", str(tmp_path / "file" / "run"), *TINY]) == 2
    assert "is a file, not a directory" in one_line_error(capsys)


def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "missing"), "--out", str(out),
                 *TINY]) == 2
    assert "is not a directory" in one_line_error(capsys)
    assert not out.exists()


def test_divergence_before_any_checkpoint_names_none_and_leaves_no_run(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out), *TINY,
                 "--lr", "1e30", "--warmup-epochs", "0"])
    assert code == 2
    err = one_line_error(capsys)
    assert "the training loss became" in err and "No checkpoint was saved" in err and "last.pt" not in err
    assert not out.exists()  # neither resumable nor reusable: removed, so --out works again


def fake_run(run_dir: Path, config_text: str | None = None) -> Path:
    """A run directory as resume_config sees it: config.json and a (here unreadable) last.pt."""
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config_text if config_text is not None else TrainConfig(epochs=2).to_json())
    (run_dir / "last.pt").write_bytes(b"not read before the options are checked")
    return run_dir


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "0.5"], "--lr cannot change on resume (the run has 0.05)"),
        (["--arch", "resnet34"], "--arch cannot change on resume"),
        (["--epochs", "-5"], "--epochs must be at least 1, got -5"),
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
    ],
)
def test_resume_refuses_what_it_cannot_honour(tmp_path, capsys, args, message):
    run_dir = fake_run(tmp_path / "run")
    assert main(["train", "--resume", str(run_dir), *args]) == 2
    assert message in one_line_error(capsys)


def test_resume_with_an_invalid_config_names_the_file(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", config_text="{not json")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert f"{run_dir / 'config.json'} is not a readable config" in one_line_error(capsys)
    (run_dir / "config.json").write_text(json.dumps({**json.loads(TrainConfig().to_json()), "epochs": "ten"}))
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "--epochs must be an int, got 'ten'" in one_line_error(capsys)


def test_a_run_on_three_classes_and_its_extension(folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(run_dir), *TINY,
                 "--epochs", "1"]) == 0
    epoch_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch"))
    assert "top-3" in epoch_line and "top-5" not in epoch_line  # three classes: top-5 would be top-3
    assert json.loads((run_dir / "summary.json").read_text())["split"] is None  # a flowers102 scheme only
    # On resume the epochs extend the run (and the worker count may change); config.json records both.
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--workers", "1"]) == 0
    assert len(read_metrics(run_dir)) == 2
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["epochs"], saved["workers"]) == (2, 1)


def test_checkpoint_format_is_checked_and_older_checkpoints_load(tmp_path):
    from resnet.tools.evaluation import load_model_from_checkpoint

    plain = {"arch": "resnet18", "classes": ["a", "b"], "model": get_model("resnet18", num_classes=2)
             .state_dict()}
    torch.save(plain, tmp_path / "old.pt")  # written before checkpoints had a format field
    model, _ = load_model_from_checkpoint(tmp_path / "old.pt", tta=False)
    assert model.fc.out_features == 2
    torch.save({**plain, "format": 99}, tmp_path / "new.pt")
    with pytest.raises(ResnetError, match=r"new.pt is a checkpoint of format 99, newer than this version"):
        load_model_from_checkpoint(tmp_path / "new.pt")


def test_truncated_checkpoint_message_is_a_whole_sentence(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ResnetError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path} is not a readable checkpoint: it is truncated, corrupt or not a "
                                       "PyTorch file (")
    assert str(error.value).endswith(")")


def test_learning_rate_warms_up_then_follows_a_cosine():
    config = resolve_config({"lr": 0.1, "warmup_epochs": 1, "epochs": 11})
    lrs = [optim.learning_rate(config, step, 10) for step in range(110)]
    assert lrs[9] == pytest.approx(0.1) and lrs[0] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.05, rel=0.02)
    assert lrs[-1] < 0.001 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.parametrize("name,kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice_keeps_the_decay_groups(name, kind):
    config = resolve_config({"optimizer": name, "lr": 0.003, "weight_decay": 0.05})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = optim.build_optimizer(config, model)
    assert type(optimizer) is kind
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.05]
    assert all(g["lr"] == 0.003 for g in optimizer.param_groups)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_updates_as_the_per_tensor_loop_does(name, monkeypatch):
    config = resolve_config({"optimizer": name, "lr": 0.1, "weight_decay": 0.01})
    torch.manual_seed(0)
    # No conv bias before the norm: its gradient is ~0, and Adam would turn rounding into steps.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    loop_model = copy.deepcopy(model)
    fused = optim.build_optimizer(config, model)
    monkeypatch.setattr(optim, "has_fused_optimizer", lambda device: False)
    loop = optim.build_optimizer(config, loop_model)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x = torch.randn(5, 3, 8, 8)
    for _ in range(3):
        for m, opt in ((model, fused), (loop_model, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_skips_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = optim.parameter_groups(model, 5e-4)
    assert {p.ndim for p in decay["params"]} == {4, 2} and no_decay["weight_decay"] == 0
    assert len(no_decay["params"]) == 4  # BN weight and bias, the two biases
    assert not decay["head"] and not no_decay["head"]


def test_epoch_batches_shard_the_permutation_disjointly():
    from resnet.util.distributed import Topology, shard

    whole = sampling.epoch_batches(50, 8, seed=0, epoch=3)
    assert [len(b) for b in whole] == [8] * 6 + [2]
    # The final 2 images cannot give two ranks a pair each (BatchNorm needs two), so two ranks drop them.
    two = sampling.epoch_batches(50, 8, seed=0, epoch=3, world_size=2)
    assert [torch.equal(a, b) for a, b in zip(whole, two)] == [True] * 6 and len(two) == 6
    for batch in two:
        halves = [shard(batch, Topology(r, 2)) for r in (0, 1)]
        assert [len(h) for h in halves] == [4, 4]
        assert sorted(torch.cat(halves).tolist()) == sorted(batch.tolist())
    assert not torch.equal(torch.cat(whole), torch.cat(sampling.epoch_batches(50, 8, seed=0, epoch=4)))


def test_a_shared_batch_is_augmented_as_a_whole_one():
    from resnet.data.cache import DecodedImages

    data = DecodedImages((torch.rand(6, 3, 16, 16) * 255).to(torch.uint8), torch.arange(6))
    config = resolve_config({"image_size": 32, "color_jitter": 0.3, "rotation": 30})
    batches = FastTrainBatches(data, config, torch.device("cpu"))
    batch = torch.tensor([5, 0, 3, 1])
    whole, labels = batches(batch, sampling.generator_for(0, 0, 0), 32)
    for rank in (0, 1):
        part, part_labels = batches(batch, sampling.generator_for(0, 0, 0), 32, Topology(rank, 2))
        torch.testing.assert_close(part, whole[rank::2])
        assert torch.equal(part_labels, labels[rank::2])


# --- pretrained weights and fine-tuning ---------------------------------------------------------


@pytest.fixture
def torchvision_pth(tmp_path) -> Path:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(reference.state_dict(), path)
    return path


def test_torchvision_weights_load_and_give_identical_outputs(torchvision_pth):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(torchvision_pth, weights_only=True))
    ours = build_model(resolve_config({"weights": str(torchvision_pth)}), num_classes=1000)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))
    with pytest.warns(UserWarning, match="1000 classes and this model 3: the head .fc. is re-initialized"):
        three = build_model(resolve_config({"weights": str(torchvision_pth)}), num_classes=3)
    with torch.no_grad():
        torch.testing.assert_close(three.eval().forward_features(x), reference.eval().layer4(
            reference.layer3(reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(
                reference.conv1(x)))))))))


def test_freeze_backbone_leaves_every_backbone_tensor_unchanged(folder, tmp_path, torchvision_pth):
    out = tmp_path / "probe"
    with pytest.warns(UserWarning, match="re-initialized"):
        assert main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--out", str(out),
                     "--weights", str(torchvision_pth), "--freeze-backbone", *TINY, "--arch", "resnet18"]) == 0
    before = torch.load(torchvision_pth, weights_only=True)
    after = load_checkpoint(out / "last.pt")["model"]
    for key, value in after.items():
        if not key.startswith("fc."):
            assert torch.equal(value, before[key]), key
    assert after["fc.weight"].shape == (3, 512)


def test_fine_tune_trains_the_head_first(torchvision_pth):
    config = resolve_config({"weights": str(torchvision_pth), "lr": 0.1})
    assert optim.group_learning_rate(config, 0.1, head=False, epoch=0) == 0.0
    assert optim.group_learning_rate(config, 0.1, head=True, epoch=0) == 0.1
    assert optim.group_learning_rate(config, 0.1, head=False, epoch=1) == pytest.approx(0.01)
    assert optim.group_learning_rate(resolve_config({}), 0.1, head=False, epoch=0) == 0.1


def test_weights_of_another_architecture_name_the_tensor(tmp_path, capsys, folder):
    path = tmp_path / "resnet34.pth"
    state = get_model("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, path)
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--weights", str(path),
                 "--out", str(tmp_path / "run"), *TINY, "--arch", "resnet18"])
    assert code == 2
    assert "tensor 'layer1.0.conv1.weight' has shape (64, 64, 1, 1)" in one_line_error(capsys)


def test_imagenet_weights_offline_is_one_line(tmp_path, capsys, monkeypatch, folder):
    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(folder), "--weights", "imagenet",
                 "--out", str(tmp_path / "run"), *TINY, "--arch", "resnet18"])
    assert code == 2
    assert "could not download torchvision's ImageNet weights for resnet18" in one_line_error(capsys)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize("steps_per_epoch", [1, 2, 3, 7])
@pytest.mark.parametrize("warmup_epochs", [0.0, 0.1, 0.3, 0.5, 1.0, 1.7, 2.0, 5.0])
@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 10])
def test_learning_rate_never_passes_its_peak_and_a_cosine_ends_at_zero(schedule, steps_per_epoch, warmup_epochs,
                                                                         epochs):
    config = resolve_config({"lr": 0.2, "warmup_epochs": warmup_epochs, "epochs": epochs, "schedule": schedule})
    total = epochs * steps_per_epoch
    lrs = [optim.learning_rate(config, step, steps_per_epoch) for step in range(total + 1)]
    assert all(0 <= lr <= 0.2 * (1 + 1e-12) for lr in lrs), max(lrs)
    if schedule == "cosine":
        assert lrs[total] == pytest.approx(0.0, abs=1e-12)  # the schedule's end, after the last step
        peak = max(range(total), key=lrs.__getitem__)
        assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # only falls after its peak
        assert lrs[total - 1] <= 0.1 + 1e-12 or total < 4  # the warm-up's cap: the second half decays
    else:
        assert lrs[-1] == 0.2 or warmup_epochs * steps_per_epoch > total


def test_a_warm_up_of_a_fraction_of_a_step_starts_at_the_peak():
    config = resolve_config({"lr": 0.2, "warmup_epochs": 0.3, "epochs": 4})
    assert optim.learning_rate(config, 0, 1) == pytest.approx(0.2)
