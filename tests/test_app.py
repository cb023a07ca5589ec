"""The web app's functions (resnet serve), without a browser: classify is resnet predict."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("captum", reason='captum is not installed (pip install -e ".[app]")')

from resnet.tools.app import (
    classify,
    classify_outputs,
    curves_png,
    eval_views,
    example_images,
    find_runs,
    run_brief,
    served_copy,
)
from resnet.cli import main  # noqa: E402
from resnet.errors import ResnetError  # noqa: E402
from resnet.tools.evaluation import load_model_from_checkpoint  # noqa: E402
from resnet.tools.options import PredictOptions  # noqa: E402
from resnet.tools.prediction import predict_files  # noqa: E402


def test_classify_gives_predict_files_probabilities(tiny_run):
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    paths = [str(tiny_run["data"] / name / f"{i}.png") for name in tiny_run["classes"] for i in (0, 3)]
    expected = list(predict_files(model, checkpoint, paths, PredictOptions(top_k=5), device="cpu"))
    for with_cam in (True, False):
        results = classify(model, checkpoint, paths, with_cam=with_cam)
        for got, want in zip(results, expected, strict=True):
            assert got.error is None
            assert [name for name, _ in got.top] == [name for name, _ in want.top]
            np.testing.assert_allclose([p for _, p in got.top], [p for _, p in want.top], atol=1e-5)
            assert (got.overlay is not None) == with_cam


def test_classify_cam_class_control(tiny_run):
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    path = str(tiny_run["data"] / "cat" / "1.png")
    top, fox = classify(model, checkpoint, [path]), classify(model, checkpoint, [path], cam_class="fox")
    assert top[0].target == top[0].top[0][0] and fox[0].target == "fox"
    assert fox[0].probability == pytest.approx(dict(top[0].top)["fox"], abs=1e-6)


def test_bad_and_huge_uploads_get_messages_not_exceptions(tiny_run, tmp_path):
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    (tmp_path / "notes.txt").write_text("hello")
    good = tiny_run["data"] / "dog" / "2.png"
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])  # truncated
    Image.new("RGB", (8000, 8000), (30, 200, 40)).save(tmp_path / "huge.jpg", quality=50)
    paths = [str(tmp_path / "notes.txt"), str(tmp_path / "cut.png"), str(tmp_path / "huge.jpg"), str(good)]
    results = classify(model, checkpoint, paths)
    assert [r.error is None for r in results] == [False, False, True, True]
    assert str(tmp_path) not in results[0].error  # the name the user knows, not the server's temp path
    assert str(tmp_path) not in classify(model, checkpoint, paths[:1], with_cam=False)[0].error
    label, gallery, table, messages = classify_outputs(results)
    assert messages.count("could not be classified") == 2 and "notes.txt" in messages and "cut.png" in messages
    assert len(gallery) == 2 and len(table) == 2 * 3 and label == dict(results[2].top)


def test_runs_are_found_and_described(tiny_run, tmp_path):
    runs_dir = tmp_path / "runs"
    shutil.copytree(tiny_run["dir"], runs_dir / "one", ignore=shutil.ignore_patterns("*.pt"))
    runs = find_runs([str(tiny_run["dir"])], runs_dir)
    assert runs == [tiny_run["dir"], runs_dir / "one"]
    with pytest.raises(ResnetError, match="not a run directory"):
        find_runs([str(tmp_path)], runs_dir)
    brief = run_brief(runs_dir / "one")
    assert "resnet10" in brief and "final top-1" in brief
    assert curves_png(runs_dir / "one", tmp_path) is not None


def test_a_live_run_shows_its_progress_and_its_curves_grow(tiny_run, tmp_path):
    run = tmp_path / "live"
    run.mkdir()
    shutil.copy(tiny_run["dir"] / "config.json", run)
    assert "no epoch finished yet" in run_brief(run) and curves_png(run, tmp_path) is None
    header, row = (tiny_run["dir"] / "metrics.csv").read_text().splitlines()[:2]
    (run / "metrics.csv").write_text(f"{header}\n{row}\n")
    assert "training: epoch 1 of" in run_brief(run)
    first = curves_png(run, tmp_path)
    second_row = row.replace(row.split(",")[0], "2", 1)
    (run / "metrics.csv").write_text(f"{header}\n{row}\n{second_row}\n")
    second = curves_png(run, tmp_path)
    assert first != second and Image.open(second).size[0] > 300  # redrawn as the epoch landed


def test_a_live_run_between_evaluations_shows_the_last_one(tiny_run, tmp_path):
    run = tmp_path / "live"
    run.mkdir()
    shutil.copy(tiny_run["dir"] / "config.json", run)
    header, row = (tiny_run["dir"] / "metrics.csv").read_text().splitlines()[:2]
    columns = header.split(",")
    unevaluated = ",".join("" if name in ("eval_loss", "top1", "top5") else value
                           for name, value in zip(columns, row.split(",")))
    (run / "metrics.csv").write_text(f"{header}\n{unevaluated}\n")  # --eval-every: no score yet
    assert "training: epoch 1 of" in run_brief(run) and "not evaluated yet" in run_brief(run)
    assert curves_png(run, tmp_path) is not None
    second = unevaluated.replace(unevaluated.split(",")[0], "2", 1)
    (run / "metrics.csv").write_text(f"{header}\n{row}\n{second}\n")
    top1 = 100 * float(row.split(",")[columns.index("top1")])
    assert "training: epoch 2 of" in run_brief(run) and f"top-1 {top1:.2f}% after epoch 1" in run_brief(run)


def test_a_served_copy_is_the_same_bytes_under_a_name_of_its_own_made_once(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    original = tmp_path / "secret-run" / "best.pt"
    original.parent.mkdir()
    original.write_bytes(b"weights")
    copy = served_copy(original, served, "example")
    assert Path(copy).parent == served and Path(copy).name.startswith("example-") and copy.endswith(".pt")
    assert "best" not in Path(copy).name and Path(copy).read_bytes() == b"weights"
    assert served_copy(original, served, "example") == copy and len(list(served.iterdir())) == 1  # unchanged
    original.write_bytes(b"new weights")
    os.utime(original, ns=(0, original.stat().st_mtime_ns + 1))  # rewritten, as a new resnet eval does
    again = served_copy(original, served, "example")
    assert again != copy and Path(again).read_bytes() == b"new weights"


def test_eval_views_after_resnet_eval(tiny_run, tmp_path):
    out, served = tmp_path / "evaluated", tmp_path / "served"
    served.mkdir()
    assert eval_views(out, served)["confusion"] is None
    assert main(["eval", str(tiny_run["ckpt"]), "--out", str(out), "--workers", "0", "--device", "cpu"]) == 0
    views = eval_views(out, served)
    for name, original in (("confusion", "confusion_matrix.png"), ("mistakes", "mistakes.png")):
        copy = Path(views[name])
        assert copy.parent == served and copy.suffix == ".png" and copy.read_bytes() == (out / original).read_bytes()
    assert [row[0] for row in views["per_class"]] == tiny_run["classes"]
    assert isinstance(views["most_confused"], list)


def test_example_images_are_copies_of_evaluation_images(tiny_run, tmp_path):
    model, checkpoint = load_model_from_checkpoint(tiny_run["ckpt"])
    examples = [Path(p) for p in example_images(checkpoint, tmp_path)]
    assert examples and all(p.parent == tmp_path and p.suffix == ".png" for p in examples)
    dataset = {p.read_bytes(): p for p in tiny_run["data"].rglob("*.png")}
    originals = [dataset.get(p.read_bytes()) for p in examples]  # byte for byte: predict gives the same
    assert None not in originals and len({p.parent.name for p in originals}) == len(examples)  # one a class
    copies = classify(model, checkpoint, examples, with_cam=False)
    assert [c.top for c in copies] == [o.top for o in classify(model, checkpoint, originals, with_cam=False)]
    checkpoint["config"]["data_dir"] = str(tmp_path / "gone")
    assert example_images(checkpoint, tmp_path) == []  # data not on disk: no examples, no error


def test_a_missing_optional_library_is_a_one_line_install_hint():
    from resnet.util.optional import require

    expected = r'^resnet serve needs resnet_no_such_module: pip install "resnet-lab\[app\]"$'
    with pytest.raises(ResnetError, match=expected):
        require("resnet_no_such_module", "app", "resnet serve")


def test_serve_names_a_bad_run_in_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    assert main(["serve", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnet serve: error: ") and "not a run directory" in err


def test_serve_warns_off_loopback_and_binds_where_told(tiny_run, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import resnet.tools.app

    launched = {}

    class FakeApp:
        def queue(self, **options):
            return self

        def launch(self, **options):
            launched.update(options)

    monkeypatch.setattr(resnet.tools.app, "build_app", lambda runs: (FakeApp(), []))
    assert main(["serve", str(tiny_run["dir"]), "--port", "7999"]) == 0
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert "no authentication" not in capsys.readouterr().err
    assert main(["serve", str(tiny_run["dir"]), "--host", "0.0.0.0"]) == 0
    assert launched["server_name"] == "0.0.0.0" and "no authentication" in capsys.readouterr().err
