"""resnet check: planted duplicates, near copies and label conflicts are found, with their paths;
distinct images of one class are not; the exit status, the JSON and the page."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from resnet.tools import check
from resnet.cli import main

pytest.importorskip("imagehash", reason='resnet check needs imagehash: pip install -e ".[check]"')

SIDE = 128


def photo(rng: np.random.Generator, side: int = SIDE) -> Image.Image:
    """A photo-like image: a smooth random colour field with a few soft ellipses over it (pure
    noise would make every perceptual hash a coin toss)."""
    y, x = np.mgrid[0:side, 0:side] / side
    pixels = np.zeros((side, side, 3))
    for channel in range(3):
        a, b, fx, fy, phase = rng.uniform(-1, 1, 2).tolist() + rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6)]
        pixels[..., channel] = 128 + 60 * (a * x + b * y) + 50 * np.cos(2 * np.pi * (fx * x + fy * y) + phase)
    for _ in range(4):
        cx, cy, rx, ry = rng.uniform(0.1, 0.9, 2).tolist() + rng.uniform(0.08, 0.3, 2).tolist()
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        pixels[inside] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def photo_folder(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/<class>/<i>.png of distinct photo-like images, classes cat and dog."""
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                photo(rng).save(root / split / name / f"{i}.png")
    return root


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture
def planted(tmp_path):
    """A folder with one of each problem planted (see the comments) and what it should yield."""
    root = photo_folder(tmp_path / "data", {"train": 6, "val": 3})
    train, val = root / "train", root / "val"
    # An exact copy inside the training split, under the same class: a duplicate, no leak.
    shutil.copy(train / "cat" / "0.png", train / "cat" / "copy <0> & more.png")
    # The same image under two classes: a label conflict.
    shutil.copy(train / "cat" / "2.png", train / "dog" / "also-cat-2.png")
    # A resized, re-compressed copy of a training image in the validation split: a near leak.
    original = Image.open(train / "dog" / "1.png").convert("RGB")
    (val / "dog" / "smaller.jpg").write_bytes(jpeg_bytes(original.resize((96, 96), Image.LANCZOS), 70))
    # A slightly cropped copy (3 px, 2%, off each side), also in val.
    cropped = original.crop((3, 3, SIDE - 3, SIDE - 3)).resize((SIDE, SIDE), Image.LANCZOS)
    (val / "dog" / "cropped.jpg").write_bytes(jpeg_bytes(cropped, 85))
    # A JPEG cut short: unreadable.
    (train / "cat" / "truncated.jpg").write_bytes(jpeg_bytes(photo(np.random.default_rng(9)), 90)[:-600])
    return root


def run_check(capsys, *args: str) -> tuple[int, str]:
    code = main(["check", *args, "--quiet"])
    return code, capsys.readouterr().out


def group_paths(groups: list[dict], root: Path) -> list[set[str]]:
    return [{str(Path(f["path"]).relative_to(root)) for f in group["files"]} for group in groups]


def test_finds_each_planted_problem_with_its_paths(planted, capsys):
    code, out = run_check(capsys, str(planted), "--json", "--workers", "2")
    report = json.loads(out)
    assert code == 1
    assert {"classes", "counts", "unreadable", "duplicates", "near_duplicates", "leaks", "small", "modes",
            "aspect", "hash", "seconds"} <= set(report)
    assert report["counts"]["train"] == {"cat": 8, "dog": 7} and report["counts"]["val"] == {"cat": 3, "dog": 5}
    assert [Path(f["path"]).name for f in report["unreadable"]] == ["truncated.jpg"]

    exact = group_paths(report["duplicates"], planted)
    assert sorted(exact, key=sorted) == [{"train/cat/0.png", "train/cat/copy <0> & more.png"},
                                         {"train/cat/2.png", "train/dog/also-cat-2.png"}]
    near = group_paths(report["near_duplicates"], planted)
    assert near == [{"train/dog/1.png", "val/dog/smaller.jpg", "val/dog/cropped.jpg"}]

    leaks = {(leak["kind"], leak["match"], frozenset(group_paths([leak], planted)[0])) for leak in report["leaks"]}
    assert leaks == {("across splits", "near", frozenset(near[0])),
                     ("two classes", "exact", frozenset({"train/cat/2.png", "train/dog/also-cat-2.png"}))}
    conflict = next(leak for leak in report["leaks"] if leak["kind"] == "two classes")
    assert conflict["classes"] == ["cat", "dog"] and conflict["splits"] == ["train"]


def test_a_clean_folder_exits_0_and_distinct_images_of_a_class_are_not_flagged(tmp_path, capsys):
    root = photo_folder(tmp_path / "data", {"train": 12, "val": 4}, seed=1)
    code, out = run_check(capsys, str(root), "--workers", "1")
    assert code == 0, out
    assert "exact duplicates (same bytes): 0 groups, 0 files" in out and "leaks: 0" in out
    assert "near duplicates" in out and "exit status 0" in out
    code, out = run_check(capsys, str(root), "--json", "--workers", "1")
    report = json.loads(out)
    assert report["duplicates"] == report["near_duplicates"] == report["leaks"] == report["unreadable"] == []
    assert report["small"]["count"] == 32 and report["small"]["image_size"] == 224


def test_noise_images_of_the_test_folders_are_clean_too(tmp_path, capsys):
    root = make_image_folder(tmp_path / "noise", ["a", "b", "c"], per_class=10)
    code, out = run_check(capsys, str(root), "--json", "--image-size", "40")
    report = json.loads(out)
    assert code == 0 and report["near_duplicates"] == [] and report["small"]["count"] == 0
    assert set(report["counts"]) == {"train", "val"}  # DIR/<class>/..., split as train splits it


def test_modes_sizes_and_aspect_ratios_are_counted(tmp_path, capsys):
    root = photo_folder(tmp_path / "data", {"train": 2, "val": 1})
    picture = photo(np.random.default_rng(5))
    picture.convert("L").save(root / "train" / "cat" / "gray.png")
    picture.convert("RGBA").save(root / "train" / "cat" / "alpha.png")
    Image.fromarray((np.asarray(picture.convert("L"), np.uint16) * 257)).save(root / "train" / "cat" / "deep.png")
    picture.convert("CMYK").save(root / "train" / "cat" / "cmyk.jpg")
    picture.convert("P").save(root / "train" / "cat" / "palette.png")
    photo(np.random.default_rng(6), 64).save(root / "val" / "cat" / "small.png")
    photo(np.random.default_rng(7)).resize((200, 50)).save(root / "val" / "dog" / "wide.png")
    code, out = run_check(capsys, str(root), "--json", "--image-size", "100")
    report = json.loads(out)
    odd = {name: [Path(p).name for p in entry["files"]] for name, entry in report["modes"]["odd"].items()}
    assert odd["grayscale"] == ["deep.png", "gray.png"] and odd["16-bit"] == ["deep.png"]
    assert odd["alpha"] == ["alpha.png"] and odd["cmyk"] == ["cmyk.jpg"] and odd["palette"] == ["palette.png"]
    assert [Path(f["path"]).name for f in report["small"]["files"]] == ["small.png", "wide.png"]
    aspect = [(Path(f["path"]).name, f["width"], f["height"]) for f in report["aspect"]["files"]]
    assert aspect == [("wide.png", 200, 50)]
    assert code == 0  # the five are one picture, but in one class and one split: no leak


def test_out_writes_a_page_of_thumbnails_with_escaped_paths(planted, tmp_path, capsys):
    page = tmp_path / "page"
    code, out = run_check(capsys, str(planted), "--out", str(page))
    assert code == 1 and f"page of the groups: {page / 'index.html'}" in out
    html = (page / "index.html").read_text()
    assert "copy &lt;0&gt; &amp; more.png" in html and "copy <0>" not in html
    assert "leak: across splits" in html and "leak: two classes" in html
    thumbs = sorted((page / "thumbs").iterdir())
    assert len(thumbs) == 7  # the files of the two exact groups and of the near one
    assert all(Image.open(t).size[0] <= 128 for t in thumbs)
    assert json.loads((page / "report.json").read_text())["leaks"]


def test_the_human_summary_names_the_problems(planted, capsys):
    code, out = run_check(capsys, str(planted))
    assert code == 1
    assert "unreadable: 1\n  train/cat/truncated.jpg: " in out
    assert "leaks: 2, " in out and "1 across splits (near)" in out and "1 two classes (exact)" in out
    assert "train/dog/1.png (train/dog)" in out and "val/dog/smaller.jpg (val/dog)" in out
    assert "exit status 1" in out


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["check", str(tmp_path), "--dataset", "petals", "--quiet"]) == 2
    assert "generated in memory" in capsys.readouterr().err


def test_the_parallel_pair_search_finds_what_one_process_does(monkeypatch):
    rng = np.random.default_rng(0)
    phashes = rng.integers(0, 2**63, 3000, dtype=np.int64).view(np.uint64)
    phashes[1000:1100] = phashes[:100] ^ np.uint64(0b1011)  # 3 bits away
    dhashes = rng.integers(0, 2**63, 3000, dtype=np.int64).view(np.uint64)
    monkeypatch.setattr(check, "BLOCK_CELLS", 100_000)  # many blocks
    alone = check.near_pairs(phashes, dhashes, 6, 10, workers=1)
    monkeypatch.setattr(check, "PARALLEL_PAIRS_FROM", 0)
    together = check.near_pairs(phashes, dhashes, 6, 10, workers=2)
    assert sorted(map(tuple, alone.tolist())) == sorted(map(tuple, together.tolist()))
    assert {(i, i + 1000, 3) for i in range(100)} <= set(map(tuple, alone.tolist()))


def test_missing_imagehash_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(__import__("sys").modules, "imagehash", None)
    root = photo_folder(tmp_path / "data", {"train": 1, "val": 1})
    assert main(["check", str(root), "--quiet"]) == 2
    assert 'pip install "resnet-lab[check]"' in capsys.readouterr().err


def test_a_second_check_reads_only_new_changed_and_unreadable_files(planted, monkeypatch, capsys):
    first = json.loads(run_check(capsys, str(planted), "--json", "--workers", "1")[1])
    assert first["reused"] == 0
    read = []
    original = check.inspect_all
    monkeypatch.setattr(check, "inspect_all", lambda paths, *args: read.extend(paths) or original(paths, *args))
    second = json.loads(run_check(capsys, str(planted), "--json", "--workers", "1")[1])
    assert [Path(p).name for p in read] == ["truncated.jpg"] and second["reused"] == 22
    assert {k: v for k, v in second.items() if k not in ("seconds", "reused")} == \
        {k: v for k, v in first.items() if k not in ("seconds", "reused")}
    read.clear()
    shutil.copy(planted / "train" / "cat" / "0.png", planted / "val" / "cat" / "1.png")  # changed: now a leak
    third = json.loads(run_check(capsys, str(planted), "--json", "--workers", "1")[1])
    assert sorted(Path(p).name for p in read) == ["1.png", "truncated.jpg"]
    assert {"train/cat/0.png", "val/cat/1.png"} <= group_paths(third["duplicates"], planted)[0]


def die(path: str) -> None:
    os._exit(9)  # as the OOM killer would end a worker


def test_a_worker_that_dies_ends_the_check_in_one_line(tmp_path, monkeypatch, capsys):
    root = photo_folder(tmp_path / "data", {"train": 2, "val": 1})
    monkeypatch.setattr(check, "inspect_file", die)
    assert main(["check", str(root), "--workers", "2", "--quiet"]) == 2
    assert "a worker process of the check died" in capsys.readouterr().err


def test_small_images_are_measured_against_the_size_a_run_would_train_at(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data" / "train", ["ant", "bee"], per_class=3, size=(32, 32)).parent
    make_image_folder(root / "val", ["ant", "bee"], per_class=1, size=(32, 32), seed=1)
    main(["check", str(root), "--json", "--quiet", "--workers", "1"])
    small = json.loads(capsys.readouterr().out)["small"]
    assert (small["image_size"], small["count"]) == (32, 0)  # the small-image defaults, not 224 px


def flat(colour: tuple[int, int, int], side: int = SIDE) -> Image.Image:
    return Image.new("RGB", (side, side), colour)


def blob_on(background: tuple[int, int, int], side: int = SIDE) -> Image.Image:
    """A small dark shape on a plain background: a plane against the sky, as CIFAR-10 has hundreds."""
    image = np.full((side, side, 3), background, np.uint8)
    image[side * 15 // 32:side * 17 // 32, side * 7 // 16:side * 9 // 16] = (20, 30, 40)
    return Image.fromarray(image)


def test_plain_images_of_different_colours_are_not_near_duplicates(tmp_path, capsys):
    root = photo_folder(tmp_path / "data", {"train": 2, "val": 1})
    flat((0, 0, 0)).save(root / "train" / "cat" / "black.png")
    flat((255, 255, 255)).save(root / "train" / "dog" / "white.png")
    flat((200, 40, 40)).save(root / "val" / "cat" / "red.png")
    flat((40, 110, 40)).save(root / "val" / "dog" / "green.png")  # about the red's grey level
    blob_on((90, 140, 220)).save(root / "train" / "cat" / "blue-sky.png")
    blob_on((200, 200, 200)).save(root / "val" / "dog" / "grey-sky.png")
    # The same plain white, re-encoded, is one image twice: still a near duplicate; and so is a
    # detailed photo re-coloured, whose colours differ as much as the red and the green's.
    (root / "train" / "dog" / "white.jpg").write_bytes(jpeg_bytes(flat((255, 255, 255)), 80))
    picture = np.asarray(Image.open(root / "train" / "cat" / "0.png"), np.float64)
    Image.fromarray((picture * [1.0, 0.7, 0.4]).astype(np.uint8)).save(root / "train" / "cat" / "tinted.png")
    code, out = run_check(capsys, str(root), "--json", "--workers", "1")
    report = json.loads(out)
    assert sorted(group_paths(report["near_duplicates"], root), key=sorted) == [
        {"train/cat/0.png", "train/cat/tinted.png"}, {"train/dog/white.png", "train/dog/white.jpg"}]
    assert report["leaks"] == [] and code == 0


def test_a_folder_too_small_to_split_is_checked_as_one_set(tmp_path, capsys):
    # One image a class: a run could hold none out, but a label conflict needs no validation split.
    root = tmp_path / "data"
    for name in ("cat", "dog", "owl"):
        (root / name).mkdir(parents=True)
    picture = photo(np.random.default_rng(3))
    picture.save(root / "cat" / "0.png")
    picture.save(root / "dog" / "0.png")
    photo(np.random.default_rng(4)).save(root / "owl" / "0.png")
    with pytest.warns(UserWarning, match='a run would refuse this folder; it is checked as one set, "all"'):
        code, out = run_check(capsys, str(root), "--json", "--workers", "1")
    report = json.loads(out)
    assert code == 1 and report["counts"] == {"all": {"cat": 1, "dog": 1, "owl": 1}}
    assert [(leak["kind"], leak["classes"]) for leak in report["leaks"]] == [("two classes", ["cat", "dog"])]
    with pytest.warns(UserWarning):
        code, out = run_check(capsys, str(root), "--workers", "1")
    assert "  all: 3 images: cat 1, dog 1, owl 1" in out and "two classes [e1] cat/0.png (all/cat)" in out


def test_a_file_that_is_no_image_is_named_in_its_line(tmp_path, capsys):
    root = photo_folder(tmp_path / "data", {"train": 2, "val": 1})
    (root / "val" / "dog" / "notes.png").write_bytes(b"not an image at all")
    code, out = run_check(capsys, str(root), "--workers", "1")
    line = next(line for line in out.splitlines() if line.startswith("  val/dog/notes.png: "))
    assert code == 1 and "BytesIO" not in out and "notes.png" in line.split(": ", 1)[1]
