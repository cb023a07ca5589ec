"""Using a trained model: resnet eval, predict and export, on a tiny run trained once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet.cli import main
from resnet.data.datasets import load_splits
from resnet.data.sources import open_rgb
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.models.resnet import FlipTTA, get_model

CLASSES = ["cat", "dog", "fox"]
SIZE = 32


def draw(rng: np.random.Generator, label: int) -> np.ndarray:
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image[..., label] = 220
    return image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch resnet10 run on 12 generated images in 3 class folders (resnet10: half resnet18's
    cost, in training and in each export)."""
    root = tmp_path_factory.mktemp("use")
    data = root / "data"
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(draw(rng, label)).save(data / name / f"{i}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                     "--image-size", str(SIZE), "--eval-image-size", str(SIZE), "--batch-size", "4",
                     "--out", str(root / "run"), "--quiet", "--workers", "0", "--precision", "fp32",
                     "--arch", "resnet10"])
        assert code == 0
        yield {"root": root, "data": data, "dir": root / "run", "ckpt": root / "run" / "best.pt"}


def preprocess(path: Path, size: int = SIZE) -> torch.Tensor:
    """The evaluation preprocessing, written out independently of the package."""
    pixels = np.asarray(open_rgb(path).resize((size, size), Image.BILINEAR, reducing_gap=None), np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"resnet {command}: error: ")
    return err


# --- eval -------------------------------------------------------------------------


def test_eval_matches_a_direct_computation(run, capsys):
    assert main(["eval", str(run["dir"]), "--json", "--workers", "0", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)

    model, checkpoint = load_model_from_checkpoint(run["ckpt"])
    assert checkpoint["classes"] == CLASSES
    assert checkpoint["normalization"]["image_size"] == SIZE
    val = load_splits("imagefolder", str(run["data"]), val_fraction=0.2, seed=0).eval
    images = torch.stack([preprocess(p) for p in val.paths])
    labels = torch.tensor(val.labels)
    # The run evaluated with flip TTA (the default recipe's): the mean of image and mirror logits.
    assert isinstance(model, FlipTTA)
    with torch.no_grad():
        logits = (model.model(images) + model.model(images.flip(3))) / 2
    predicted = logits.argmax(1)
    assert result["images"] == len(val.paths) == 3
    assert result["top1"] == pytest.approx((predicted == labels).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-4)
    per_class = [float((predicted[labels == c] == c).float().mean()) for c in range(3)]
    assert result["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert result["balanced_accuracy"] == pytest.approx(np.mean(per_class))  # the mean per-class recall
    f1 = []
    for c in range(3):
        hits = int(((predicted == c) & (labels == c)).sum())
        misses = int(((predicted != c) & (labels == c)).sum())
        false_alarms = int(((predicted == c) & (labels != c)).sum())
        f1.append(2 * hits / (2 * hits + misses + false_alarms))
    assert result["macro_f1"] == pytest.approx(np.mean(f1))
    # The run's own evaluation of the same weights agrees.
    summary = json.loads((run["dir"] / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["final_top1"])

    assert Path(result["confusion_matrix_png"]) == run["dir"] / "confusion_matrix.png"
    assert (run["dir"] / "confusion_matrix.png").stat().st_size > 1000
    rows = (run["dir"] / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,images,correct,accuracy,precision,recall,f1"
    assert [row.split(",")[0] for row in rows[1:]] == CLASSES
    assert sum(int(row.split(",")[2]) for row in rows[1:]) == int((predicted == labels).sum())


def test_top5_misses_a_class_ranked_sixth():
    """Six classes and a model whose logits are fixed per image (read off its pixel value)."""
    from resnet.data.sources import ImageArrays
    from resnet.tools.evaluation import evaluate

    table = torch.tensor([[6.0, 5, 4, 3, 2, 1]] * 4)  # class 0 ranks first, class 5 sixth
    labels = np.array([0, 4, 5, 5])  # ranked 1st, 5th, 6th, 6th: top-1 1/4, top-5 2/4

    class Lookup(torch.nn.Module):
        def forward(self, x):
            return table[(x[:, 0, 0, 0] * 255 / 40).round().long()]

    images = np.stack([np.full((3, 8, 8), 40 * i, np.uint8) for i in range(4)])
    checkpoint = {"classes": [str(c) for c in range(6)],
                  "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3, "image_size": 8}}
    result = evaluate(Lookup(), checkpoint, ImageArrays(images, labels), batch_size=3, workers=0)
    assert (result["top1"], result["top5"], result["images"]) == (0.25, 0.5, 4)
    assert result["loss"] == pytest.approx(F.cross_entropy(table, torch.from_numpy(labels)).item(), abs=1e-5)


def test_eval_overrides_size_and_tta(run, tmp_path, capsys):
    assert main(["eval", str(run["dir"]), "--json", "--workers", "0", "--device", "cpu", "--no-tta",
                 "--image-size", "40", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["image_size"], result["tta"]) == (40, False)
    model, _ = load_model_from_checkpoint(run["ckpt"], tta=False)
    assert not isinstance(model, FlipTTA)
    val = load_splits("imagefolder", str(run["data"]), val_fraction=0.2, seed=0).eval
    images, labels = torch.stack([preprocess(p, 40) for p in val.paths]), torch.tensor(val.labels)
    with torch.no_grad():
        logits = model(images)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-4)


@pytest.mark.parametrize("size", ["100000", "16"])
def test_eval_refuses_an_image_size_out_of_range(run, capsys, size):
    assert main(["eval", str(run["dir"]), "--workers", "0", "--device", "cpu", "--image-size", size]) == 2
    assert f"--image-size must be between 32 and 2048, got {size}" in one_line_error(capsys, "eval")


def test_eval_text_output_other_subset_and_out_dir(run, tmp_path, capsys):
    assert main(["eval", str(run["ckpt"]), "--subset", "all", "--out", str(tmp_path), "--workers", "0",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "12 images, 3 classes" in out and "top-1" in out and "mean per-class" in out
    assert (tmp_path / "confusion_matrix.png").exists()
    assert (tmp_path / "per_class.csv").read_text().count(",4,") == 3  # 4 images per class


def test_ema_weights_are_used_when_present(run, tmp_path):
    checkpoint = torch.load(run["ckpt"], weights_only=True)
    ema = {k: v.clone() for k, v in checkpoint["model"].items()}
    ema["fc.bias"] = torch.tensor([5.0, -5.0, 0.0])
    checkpoint["ema"] = ema
    torch.save(checkpoint, tmp_path / "ema.pt")
    model, loaded = load_model_from_checkpoint(tmp_path / "ema.pt")
    assert loaded["weights_used"] == "ema"
    assert torch.equal(model.model.fc.bias.detach(), ema["fc.bias"])


# --- predict ----------------------------------------------------------------------


def test_predict_names_and_probabilities(run, capsys):
    assert main(["predict", str(run["ckpt"]), str(run["data"] / "fox"), str(run["data"] / "cat" / "0.png"),
                 "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    predictions = result["predictions"]
    assert len(predictions) == 5 and result["failed"] == 0
    for prediction in predictions:
        assert [p["class"] for p in prediction["top"]] != [] and all(p["class"] in CLASSES for p in prediction["top"])
        assert sum(p["probability"] for p in prediction["top"]) == pytest.approx(1, abs=1e-5)  # top-5 of 3 classes
        probabilities = [p["probability"] for p in prediction["top"]]
        assert probabilities == sorted(probabilities, reverse=True)

    model, _ = load_model_from_checkpoint(run["ckpt"])
    path = run["data"] / "cat" / "0.png"
    with torch.no_grad():
        expected = model(preprocess(path)[None]).softmax(1)[0]
    got = next(p for p in predictions if p["path"] == str(path))["top"]
    for entry in got:
        assert entry["probability"] == pytest.approx(expected[CLASSES.index(entry["class"])].item(), abs=1e-5)


def test_predict_top_k_text_and_csv(run, capsys):
    image = str(run["data"] / "dog" / "1.png")
    assert main(["predict", str(run["ckpt"]), image, "--top-k", "2", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count("%") == 2
    assert main(["predict", str(run["ckpt"]), image, "--csv", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,rank,class,probability" and len(lines) == 4


def test_predict_image_modes(run, tmp_path, capsys):
    rgb = Image.fromarray(draw(np.random.default_rng(1), 2))
    rgb.save(tmp_path / "upright.png")
    rgb.convert("L").save(tmp_path / "gray.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    # Stored turned 90 degrees; EXIF orientation 6 says "rotate clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.png", exif=exif)
    assert main(["predict", str(run["ckpt"]), str(tmp_path), "--json", "--device", "cpu"]) == 0
    predictions = {Path(p["path"]).name: p["top"] for p in json.loads(capsys.readouterr().out)["predictions"]}
    assert set(predictions) == {"upright.png", "gray.png", "rgba.png", "cmyk.jpg", "exif.png"}
    assert predictions["exif.png"] == predictions["upright.png"]
    assert predictions["rgba.png"] == predictions["upright.png"]  # opaque alpha changes nothing


def test_predict_reports_an_unreadable_file_and_predicts_the_others(run, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = str(run["data"] / "dog" / "0.png")
    code = main(["predict", str(run["ckpt"]), str(tmp_path / "broken.png"), good, str(tmp_path / "nope.jpg"),
                 "--device", "cpu"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ") and len(captured.out.strip().splitlines()) == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert "broken.png" in errors[0] and "nope.jpg" in errors[1] and "no such file" in errors[1]

    assert main(["predict", str(run["ckpt"]), str(tmp_path / "broken.png"), good, "--json", "--device", "cpu"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in result["predictions"]] == [good] and result["failed"] == 1
    assert [e["path"] for e in result["errors"]] == [str(tmp_path / "broken.png")]
    assert "UnidentifiedImageError" in result["errors"][0]["error"]


def test_predict_leaves_out_hidden_files_and_reports_broken_links(run, tmp_path, capsys):
    Image.fromarray(draw(np.random.default_rng(2), 0)).save(tmp_path / "cat.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.fromarray(draw(np.random.default_rng(2), 0)).save(tmp_path / ".ipynb_checkpoints" / "cat.png")
    (tmp_path / "._cat.png").write_bytes(b"AppleDouble")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    assert main(["predict", str(run["ckpt"]), str(tmp_path), "--json", "--device", "cpu"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in result["predictions"]] == [str(tmp_path / "cat.png")]
    assert [e["path"] for e in result["errors"]] == [str(tmp_path / "link.png")]


def test_warnings_reach_the_user_as_one_line(run, tmp_path):
    """A real command in its own process, where no test framework captures the warnings."""
    import os
    import subprocess

    data = tmp_path / "data"
    for label, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(1 if name == "fox" else 4):
            Image.fromarray(draw(np.random.default_rng(i), label)).save(data / name / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RESNET_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "resnet", "eval", str(run["dir"]), "--data-dir", str(data),
                             "--out", str(tmp_path), "--workers", "0", "--device", "cpu"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("resnet eval: warning: 1 class has too few images to hold one out, so no "
                             "validation image: fox\n")


# --- export -----------------------------------------------------------------------


def test_export_onnx_parity_and_metadata(run, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    from resnet.tools.export import read_onnx_metadata

    out = tmp_path / "model.onnx"
    assert main(["export", str(run["ckpt"]), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |onnx - pytorch| = " in printed
    assert float(printed.split("max |onnx - pytorch| = ")[1].split()[0]) < 1e-3
    metadata = read_onnx_metadata(out)
    assert metadata["classes"] == CLASSES
    assert metadata["image_size"] == SIZE and metadata["mean"] == [0.485, 0.456, 0.406]
    assert metadata["std"] == [0.229, 0.224, 0.225] and metadata["arch"] == "resnet10"
    # The batch axis is dynamic: a batch of 5 runs and matches PyTorch.
    model, _ = load_model_from_checkpoint(run["ckpt"])
    images = torch.randn(5, 3, SIZE, SIZE)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(images).numpy()).max() < 1e-3

    # Following the stated preprocessing by hand gives resnet predict's probabilities, on an
    # image that needs every step: EXIF-rotated, partly transparent, not square.
    steps = " ".join(metadata["preprocessing"]).lower()
    assert all(word in steps for word in ("exif", "white", "rgb", "bilinear", "255", "mean", "std", "nchw"))
    pixels = draw(np.random.default_rng(5), 1)
    pixels[:20, :, 0] = 0
    alpha = np.full((40, 48, 1), 255, np.uint8)
    alpha[:20] = 90
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "rotated-rgba.png"
    Image.fromarray(np.concatenate([pixels, alpha], 2)).transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif)
    assert main(["predict", str(run["ckpt"]), str(photo), "--json", "--device", "cpu"]) == 0
    expected = {p["class"]: p["probability"] for p in json.loads(capsys.readouterr().out)["predictions"][0]["top"]}

    from PIL import ImageOps

    image = ImageOps.exif_transpose(Image.open(photo))
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    size = metadata["image_size"]
    x = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255
    x = ((x - np.array(metadata["mean"], np.float32)) / np.array(metadata["std"], np.float32)).transpose(2, 0, 1)
    logits = session.run(None, {session.get_inputs()[0].name: x[None].astype(np.float32)})[0][0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert {c: float(p) for c, p in zip(metadata["classes"], probabilities)} == pytest.approx(expected, abs=1e-4)
    assert (Image.open(photo).size, image.size) == ((40, 48), (48, 40))  # stored turned; EXIF makes it upright


def test_export_torchscript_parity_and_metadata(run, tmp_path, capsys):
    from resnet.tools.export import load_torchscript

    out = tmp_path / "model.pt"
    assert main(["export", str(run["dir"]), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max |torchscript - pytorch| = " in capsys.readouterr().out
    module, metadata = load_torchscript(out)
    assert metadata["classes"] == CLASSES and metadata["image_size"] == SIZE
    assert any("EXIF" in step for step in metadata["preprocessing"])
    model, _ = load_model_from_checkpoint(run["ckpt"])
    images = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (module(images) - model(images)).abs().max().item() < 1e-4


def test_export_without_onnxruntime_says_what_to_install(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert main(["export", str(run["ckpt"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "resnet-lab[export]"' in one_line_error(capsys, "export")
    assert not (tmp_path / "m.onnx").exists()


# --- bad checkpoints -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(run, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "corrupt.pt").write_bytes(b"\x00garbage, not a checkpoint" * 10)
    (root / "truncated.pt").write_bytes(run["ckpt"].read_bytes()[:100_000])
    checkpoint = torch.load(run["ckpt"], weights_only=True)
    checkpoint["model"] = get_model("resnet34", num_classes=3).state_dict()
    torch.save(checkpoint, root / "resnet34-weights.pt")
    return root


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize("name, message", [
    ("corrupt.pt", "is not a readable checkpoint"),
    ("truncated.pt", "is not a readable checkpoint"),
    ("missing.pt", "no checkpoint at"),
    ("resnet34-weights.pt", "do not fit resnet10"),
])
def test_bad_checkpoint_is_a_one_line_error(run, bad_checkpoints, capsys, command, name, message):
    args = [command, str(bad_checkpoints / name)]
    if command == "predict":
        args.append(str(run["data"] / "cat" / "0.png"))
    if command == "export":
        args += ["--format", "torchscript", "--out", str(bad_checkpoints / "out.pt")]
    assert main(args) == 2
    assert message in one_line_error(capsys, command)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_an_out_path_that_cannot_be_made_is_one_line(run, tmp_path, capsys, command):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / ("sub" if command == "eval" else "m.pt")
    args = ["--out", str(out)] + (["--workers", "0", "--device", "cpu"] if command == "eval" else
                                  ["--format", "torchscript"])
    assert main([command, str(run["ckpt"]), *args]) == 2
    assert "cannot write" in one_line_error(capsys, command)
