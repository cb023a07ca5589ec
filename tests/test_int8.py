"""resnet export --int8: the quantized graph, its accuracy and agreement against a recount, the
--min-agreement failure, and the combinations that are one-line errors."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from resnet.cli import main
from resnet.data.datasets import load_splits
from resnet.data.sources import open_rgb
from resnet.errors import ResnetError
from resnet.tools.quantize import export_int8, spread_across_classes

onnxruntime = pytest.importorskip("onnxruntime")

CLASSES = ["cat", "dog", "fox"]
SIZE = 32
FEW_REPEATS = {1: 2, 32: 1}  # latency is printed, never asserted: keep its timing short


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch resnet10 run (32 px, with the default recipe's flip TTA) on 10 images a
    class, 2 of them held out, exported once with --int8 on 12 calibration images."""
    root = tmp_path_factory.mktemp("int8")
    data = make_image_folder(root / "data", CLASSES, per_class=10)
    out = root / "export" / "model.onnx"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        mp.setattr("resnet.tools.quantize.LATENCY_REPEATS", FEW_REPEATS)
        assert main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1",
                     "--image-size", str(SIZE), "--eval-image-size", str(SIZE), "--batch-size", "4",
                     "--out", str(root / "run"), "--quiet", "--workers", "0", "--precision", "fp32",
                     "--arch", "resnet10"]) == 0
        with contextlib.redirect_stdout(printed):
            code = main(["export", str(root / "run"), "--int8", "--out", str(out), "--calibration-images", "12",
                         "--min-agreement", "0"])
    return {"root": root, "data": data, "dir": root / "run", "code": code, "printed": printed.getvalue(),
            "float": out, "int8": root / "export" / "model.int8.onnx"}


def preprocess(path: Path) -> np.ndarray:
    """The evaluation preprocessing, written out independently of the package."""
    pixels = np.asarray(open_rgb(path).resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=None), np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("resnet export: error: ")
    return err


def test_int8_graph_is_quantized_runs_and_keeps_the_metadata(run):
    import onnx

    from resnet.tools.export import read_onnx_metadata

    assert run["code"] == 0, run["printed"]
    ops = Counter(node.op_type for node in onnx.load(str(run["int8"])).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    # The weights are stored once as int8, though flip TTA runs the network twice.
    assert run["int8"].stat().st_size < 0.3 * run["float"].stat().st_size

    float_metadata, metadata = read_onnx_metadata(run["float"]), read_onnx_metadata(run["int8"])
    assert "quantization" not in float_metadata
    assert {key: metadata[key] for key in float_metadata} == float_metadata
    assert metadata["quantization"].startswith("int8 static QDQ")
    assert "per-channel" in metadata["quantization"] and "12 calibration images" in metadata["quantization"]

    session = onnxruntime.InferenceSession(str(run["int8"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE), np.float32)})[0]
    assert logits.shape == (5, len(CLASSES)) and np.isfinite(logits).all()


def test_reported_accuracies_and_agreement_match_a_recount(run):
    val = load_splits("imagefolder", str(run["data"]), val_fraction=0.2, seed=0).eval
    images = np.stack([preprocess(p) for p in val.paths])
    labels = np.array(val.labels)
    top1 = {}
    for name in ("float", "int8"):
        session = onnxruntime.InferenceSession(str(run[name]), providers=["CPUExecutionProvider"])
        top1[name] = session.run(None, {"input": images})[0].argmax(1)

    printed = run["printed"]
    assert f"imagefolder val: {len(labels)} images" in printed
    line = re.search(r"top-1  float32 ([\d.]+)%  int8 ([\d.]+)%  agreement ([\d.]+)% "
                     r"\(the same top-1 class on (\d+) of (\d+) images\)", printed)
    assert line, printed
    float_top1, int8_top1, agreement = (float(line.group(i)) for i in (1, 2, 3))
    assert float_top1 == pytest.approx(100 * (top1["float"] == labels).mean(), abs=0.005)
    assert int8_top1 == pytest.approx(100 * (top1["int8"] == labels).mean(), abs=0.005)
    agreeing = int((top1["float"] == top1["int8"]).sum())
    assert agreement == pytest.approx(100 * agreeing / len(labels), abs=0.005)
    assert (int(line.group(4)), int(line.group(5))) == (agreeing, len(labels))
    assert re.search(r"batch  1: float32 [\d.]+ ms  int8 [\d.]+ ms", printed)
    assert re.search(r"batch 32: float32 [\d.]+ ms  int8 [\d.]+ ms", printed)
    assert re.search(r"\d+ threads? on ", printed)


def test_agreement_below_the_minimum_is_exit_1_and_keeps_the_file(run, tmp_path, monkeypatch, capsys):
    """The float export is what test_use checks; here it is the fixture's file, copied, so that
    the threshold is tested without exporting again."""
    import resnet.tools.export

    exported = {}

    def copy_of_the_float_export(path, fmt, out, tolerance):
        shutil.copy(run["float"], out)
        exported.update(out=str(out), format=fmt, checkpoint=str(path), arch="resnet10", weights="model",
                        max_abs_diff=0.0, check_batch=3, image_size=SIZE, classes=len(CLASSES),
                        bytes=Path(out).stat().st_size)
        return exported

    import resnet.tools.quantize

    counted = resnet.tools.quantize.agreement_counts

    def one_image_less_in_agreement(*args):  # whatever the two models did, short of --min-agreement 1
        counts = counted(*args)
        return {**counts, "agreeing": counts["agreeing"] - 1}

    monkeypatch.setattr(resnet.tools.quantize, "export_checkpoint", copy_of_the_float_export)
    monkeypatch.setattr(resnet.tools.quantize, "agreement_counts", one_image_less_in_agreement)
    monkeypatch.setattr("resnet.tools.quantize.LATENCY_REPEATS", FEW_REPEATS)
    out = tmp_path / "m.onnx"
    assert main(["export", str(run["dir"]), "--int8", "--out", str(out), "--min-agreement", "1",
                 "--max-eval-images", "3"]) == 1
    captured = capsys.readouterr()
    assert "imagefolder val: 3 images" in captured.out
    assert "24 calibration images" in captured.out  # fewer training images than the default 256: all of them
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnet export: error: ")
    assert "below --min-agreement 100.00%" in err and str(tmp_path / "m.int8.onnx") in err
    assert (tmp_path / "m.int8.onnx").stat().st_size > 0 and exported["out"] == str(out)


@pytest.mark.parametrize("args, message", [
    (["--int8", "--format", "torchscript"], "cannot be combined with --format torchscript"),
    (["--calibration-images", "8"], "--calibration-images only applies with --int8"),
    (["--min-agreement", "0.9", "--max-eval-images", "5"], "--max-eval-images, --min-agreement only apply with --int8"),
    (["--int8", "--calibration-images", "0"], "--calibration-images must be at least 1"),
    (["--int8", "--max-eval-images", "-2"], "--max-eval-images must be at least 1"),
    (["--int8", "--min-agreement", "2"], "--min-agreement must be a fraction in [0, 1], got 2"),
    (["--int8", "--min-agreement", "-1"], "--min-agreement must be a fraction in [0, 1], got -1"),
    (["--int8", "--min-agreement", "nan"], "--min-agreement must be a fraction in [0, 1], got nan"),
])
def test_bad_combinations_are_one_line_errors(run, tmp_path, capsys, args, message):
    assert main(["export", str(run["dir"]), "--out", str(tmp_path / "m.onnx"), *args]) == 2
    assert message in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("min_agreement", [1.5, -0.1, float("inf"), "0.9", True])
def test_export_int8_refuses_a_min_agreement_outside_zero_to_one_before_any_work(run, tmp_path, min_agreement):
    with pytest.raises(ResnetError, match=r"^--min-agreement must be a fraction in \[0, 1\], got "):
        export_int8(run["dir"], tmp_path / "m.onnx", calibration_images=12, min_agreement=min_agreement)
    assert not list(tmp_path.iterdir())


def test_a_run_whose_data_folder_is_gone_is_one_line_before_writing(run, tmp_path, capsys):
    checkpoint = torch.load(run["dir"] / "best.pt", weights_only=True)
    checkpoint["config"]["data_dir"] = str(tmp_path / "moved-away")
    torch.save(checkpoint, tmp_path / "best.pt")
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", str(tmp_path / "best.pt"), "--int8", "--out", str(out)]) == 2
    assert f"the run's data_dir {tmp_path / 'moved-away'} does not exist; pass --data-dir DIR" in one_line_error(capsys)
    assert not out.parent.exists()


def test_without_onnxruntime_int8_says_what_to_install(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert main(["export", str(run["dir"]), "--int8", "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "resnet-lab[export]"' in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_calibration_images_are_spread_across_classes_and_seeded():
    labels = [0] * 50 + [1] * 30 + [2] * 4 + [3] * 16
    chosen = spread_across_classes(labels, 20, seed=3)
    assert len(chosen) == len(set(chosen)) == 20 and chosen == sorted(chosen)
    # Five of each class would be 20; class 2 has 4 images, so the fifth turn goes to others.
    counts = Counter(labels[i] for i in chosen)
    assert counts[2] == 4 and all(counts[c] in (5, 6) for c in (0, 1, 3))
    assert spread_across_classes(labels, 20, seed=3) == chosen
    assert spread_across_classes(labels, 20, seed=4) != chosen
    assert spread_across_classes(labels, 500, seed=0) == list(range(len(labels)))
