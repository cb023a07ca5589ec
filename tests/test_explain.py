"""Grad-CAM (resnet explain): the map's shape, scale, class dependence and location."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("captum", reason='captum is not installed (pip install -e ".[app]")')

from resnet.cli import main  # noqa: E402
from resnet.tools.evaluation import load_model_from_checkpoint  # noqa: E402
from resnet.tools.explain import explain_image, grad_cam  # noqa: E402
from resnet.models.resnet import get_model  # noqa: E402
from resnet.tools.options import PredictOptions  # noqa: E402
from resnet.tools.prediction import predict_files  # noqa: E402

SIDE = 128  # layer4 is a 4x4 grid at this size


def patch_image() -> torch.Tensor:
    """A flat grey image with a bright textured square in its top-left quarter (normalized-ish)."""
    rng = np.random.default_rng(0)
    image = np.full((3, SIDE, SIDE), -0.5, np.float32)
    image[:, 8:40, 8:40] = rng.normal(2.0, 1.0, (3, 32, 32))
    return torch.from_numpy(image)


def model_built_for(image: torch.Tensor) -> torch.nn.Module:
    """A resnet18 whose class 0 logit is the alignment of layer4's features with those of the
    square's cell minus those of the background: class 0's evidence is the square, class 1's
    (the negated weights) everything else."""
    torch.manual_seed(0)
    model = get_model("resnet18", num_classes=2).eval()
    with torch.no_grad():
        features = model.forward_features(image[None])[0]  # layer4's output, (512, 4, 4)
        square = features[:, 0, 0]
        background = features[:, 2:, 2:].mean((1, 2))
        direction = (square - background) / (square - background).norm()
        model.fc.weight.copy_(torch.stack([direction, -direction]))
        model.fc.bias.zero_()
    return model


def test_grad_cam_has_the_image_shape_is_normalized_and_peaks_on_the_evidence():
    image = patch_image()
    model = model_built_for(image)
    cam = grad_cam(model, image, target=0)
    assert cam.shape == (SIDE, SIDE)
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    peak_y, peak_x = divmod(int(cam.argmax()), SIDE)
    assert peak_y < SIDE // 4 and peak_x < SIDE // 4, (peak_y, peak_x)  # the square's cell
    # Most of the map's mass lies in the square's quarter.
    assert cam[: SIDE // 2, : SIDE // 2].sum() > 0.5 * cam.sum()


def test_grad_cam_changes_with_the_target_class():
    image = patch_image()
    model = model_built_for(image)
    for_square, for_rest = grad_cam(model, image, 0), grad_cam(model, image, 1)
    assert not torch.allclose(for_square, for_rest, atol=0.1)
    assert for_rest[:16, :16].mean() < for_square[:16, :16].mean()  # class 1 does not see the square


def test_grad_cam_rejects_an_unknown_layer():
    from resnet.errors import ResnetError

    with pytest.raises(ResnetError, match="no layer 'layer9'"):
        grad_cam(get_model("resnet18", num_classes=2), patch_image(), 0, layer="layer9")


def test_explain_image_probabilities_are_predicts(tiny_run):
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    path = tiny_run["data"] / "dog" / "0.png"
    explanation = explain_image(model, checkpoint, path)
    expected = next(predict_files(model, checkpoint, [path], PredictOptions(top_k=5), device="cpu"))
    assert [name for name, _ in explanation.top] == [name for name, _ in expected.top]
    assert [p for _, p in explanation.top] == pytest.approx([p for _, p in expected.top], abs=1e-6)
    assert explanation.target == expected.top[0][0]
    assert explanation.overlay.shape == (32, 32, 3) and explanation.overlay.dtype == np.uint8
    other = explain_image(model, checkpoint, path, class_name="fox")
    assert other.target == "fox" and other.probability == pytest.approx(dict(expected.top)["fox"], abs=1e-6)


def test_explain_cli_writes_one_overlay_per_image(tiny_run, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    images = [str(tiny_run["data"] / "cat" / "0.png"), str(tiny_run["data"] / "fox" / "1.png"), str(junk),
              str(tiny_run["data"] / "dog" / "0.png")]
    assert main(["explain", str(tiny_run["dir"]), *images, "--out", str(tmp_path / "cams"), "--class", "dog"]) == 1
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["0-2.cam.png", "0.cam.png", "1.cam.png"]
    with Image.open(tmp_path / "cams" / "0.cam.png") as written:
        assert written.size[0] > 100
    err = capsys.readouterr().err
    assert "junk.png" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [(["--class", "wolf"], "unknown class 'wolf'"),
                                            (["--layer", "layer9"], "no layer 'layer9'")])
def test_explain_cli_bad_options_are_one_line_errors(tiny_run, tmp_path, capsys, extra, message):
    image = str(tiny_run["data"] / "cat" / "0.png")
    assert main(["explain", str(tiny_run["ckpt"]), image, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnet explain: error: ") and message in err
