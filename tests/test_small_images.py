"""Small images: a run with the small-image stem, used by every command that reads its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder
from resnet.cli import main
from resnet.errors import ResnetError
from resnet.tools.evaluation import load_model_from_checkpoint

CLASSES = ["ant", "bee"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-stem")
    data = make_image_folder(root / "data" / "train", CLASSES, per_class=4, size=(32, 32)).parent
    make_image_folder(data / "test", CLASSES, per_class=2, size=(32, 32), seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--stem", "small", "--epochs", "1",
                     "--arch", "resnet10",  # the stem under test at half resnet18's cost (its export's too)
                     "--image-size", "32", "--eval-image-size", "32", "--batch-size", "4", "--out",
                     str(root / "run"), "--quiet", "--workers", "0", "--precision", "fp32"])
    assert code == 0
    return {"root": root, "data": data, "run": root / "run"}


def test_the_stem_is_saved_and_rebuilt_from_the_checkpoint(small_run):
    assert json.loads((small_run["run"] / "config.json").read_text())["stem"] == "small"
    model, checkpoint = load_model_from_checkpoint(small_run["run"])
    assert checkpoint["model"]["conv1.weight"].shape == (64, 3, 3, 3)
    network = getattr(model, "model", model)  # inside FlipTTA when the run evaluated with it
    assert network.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_eval_predict_and_export_read_a_small_stem_checkpoint(small_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run = str(small_run["run"])
    assert main(["eval", run, "--json", "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4
    image = next((small_run["data"] / "test" / "bee").iterdir())
    assert main(["predict", run, str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 0
    assert main(["export", run, "--out", str(tmp_path / "model.onnx")]) == 0
    difference = float(capsys.readouterr().out.split("max |onnx - pytorch| = ")[1].split()[0])
    assert difference < 1e-3


def test_an_old_checkpoint_without_a_stem_loads_as_imagenet(small_run, tmp_path):
    checkpoint = torch.load(small_run["run"] / "best.pt", weights_only=False)
    del checkpoint["config"]["stem"]
    checkpoint["model"]["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    torch.save(checkpoint, tmp_path / "old.pt")
    model, _ = load_model_from_checkpoint(tmp_path / "old.pt")
    assert getattr(model, "model", model).conv1.kernel_size == (7, 7)


def test_weights_of_the_other_stem_are_named_as_such(small_run, tmp_path):
    checkpoint = torch.load(small_run["run"] / "best.pt", weights_only=False)
    checkpoint["config"]["stem"] = "imagenet"
    torch.save(checkpoint, tmp_path / "mixed.pt")
    with pytest.raises(ResnetError, match="other --stem"):
        load_model_from_checkpoint(tmp_path / "mixed.pt")


# --- defaults that fit the images --------------------------------------------------------------


def resolved(data, *options):
    from resnet.engine.assembly import images_side
    from resnet.config import resolve_config

    overrides = {"dataset": "imagefolder", "data_dir": str(data), **dict(options)}
    return resolve_config(overrides, images_side(overrides))


def test_small_images_get_the_small_image_defaults_and_say_so(small_run, tmp_path, capsys):
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(small_run["data"]), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--quiet", "--workers", "0", "--precision", "fp32",
                 "--device", "cpu"])
    assert code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("images of about"))
    assert line == ("images of about 32 px on the shorter side: on a CPU, resnet10 with the small-pool stem at "
                    "32 px, pad-and-crop 4 px, 1 epoch (with a GPU: resnet18, the small stem, 30 epochs) "
                    "(--image-size or --stem chooses otherwise)")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    chosen = ("arch", "stem", "image_size", "eval_image_size", "min_image_size", "crop_padding", "warmup_epochs")
    assert [config[name] for name in chosen] == ["resnet10", "small-pool", 32, 32, None, 4, 0.3]
    assert config["epochs"] == 1  # an option given still wins over the small-image recipe


def test_the_small_image_recipe_follows_the_device(small_run):
    from resnet.engine.assembly import images_side
    from resnet.config import resolve_config

    overrides = {"dataset": "imagefolder", "data_dir": str(small_run["data"])}
    side = images_side(overrides)
    on_cpu, on_gpu = resolve_config(overrides, side, "cpu"), resolve_config(overrides, side, "cuda")
    assert (on_cpu.arch, on_cpu.stem, on_cpu.epochs, on_cpu.lr) == ("resnet10", "small-pool", 4, 0.2)
    assert (on_gpu.arch, on_gpu.stem, on_gpu.epochs, on_gpu.warmup_epochs) == ("resnet18", "small", 30, 2.0)
    assert on_cpu.crop_padding == on_gpu.crop_padding == 4 and on_gpu.image_size == 32
    given = resolve_config({**overrides, "arch": "resnet18"}, side, "cpu")
    assert (given.arch, given.stem) == ("resnet18", "small-pool")  # an explicit --arch wins


def test_large_images_keep_the_imagenet_defaults(tmp_path):
    data = make_image_folder(tmp_path / "large", CLASSES, per_class=2, size=(200, 240))
    config = resolved(data)
    assert (config.stem, config.image_size) == ("imagenet", 224)


def test_an_explicit_size_or_stem_wins(small_run):
    config = resolved(small_run["data"], ("image_size", 64))
    assert (config.stem, config.image_size) == ("imagenet", 64)
    config = resolved(small_run["data"], ("stem", "imagenet"))
    assert (config.stem, config.image_size) == ("imagenet", 224)
    config = resolved(small_run["data"], ("stem", "small"))
    assert (config.stem, config.image_size) == ("small", 224)


def test_a_label_files_images_are_sampled_too(small_run, tmp_path):
    from resnet.data.datasets import sample_image_files, typical_shorter_side

    rows = [f"{path.relative_to(small_run['data']).with_suffix('')},{path.parent.name}"
            for path in sorted((small_run["data"] / "train").rglob("*.png"))]
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "\n".join(rows) + "\n")
    sample = sample_image_files(small_run["data"], labels)
    assert len(sample) == len(rows) and typical_shorter_side(sample) == 32


def test_a_label_file_alone_gets_the_small_image_defaults_as_with_its_folder(small_run, tmp_path, capsys):
    from resnet.engine.assembly import train_config

    rows = [f"{path.relative_to(small_run['data'])},{path.parent.name}"
            for path in sorted((small_run["data"] / "train").rglob("*.png"))]
    labels = small_run["data"] / "labels.csv"
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    alone = train_config({"labels": str(labels), "device": "cpu"})
    with_folder = train_config({"labels": str(labels), "data_dir": str(small_run["data"]), "device": "cpu"})
    assert capsys.readouterr().out.count("images of about 32 px") == 2
    assert alone == with_folder
    assert (alone.arch, alone.stem, alone.image_size, alone.dataset) == ("resnet10", "small-pool", 32, "imagefolder")


# --- the data named is the data trained ----------------------------------------------------------


def test_a_data_folder_alone_means_an_image_folder(small_run):
    from resnet.engine.assembly import train_config
    from resnet.config import resolve_config

    assert resolve_config({"data_dir": str(small_run["data"])}).dataset == "imagefolder"
    config = train_config({"data_dir": str(small_run["data"]), "device": "cpu"})
    assert (config.dataset, config.data_dir, config.image_size) == ("imagefolder", str(small_run["data"]), 32)
    assert resolve_config({}).dataset == "petals"


def test_a_missing_data_folder_is_an_error_not_the_built_in_set(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "photos"), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "photos is not a directory" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_built_in_set_refuses_a_data_folder(tmp_path):
    from resnet.config import resolve_config

    with pytest.raises(ResnetError, match="petals is built in"):
        resolve_config({"dataset": "petals", "data_dir": str(tmp_path)})


def test_the_python_api_trains_the_folder_it_is_given(tmp_path):
    import resnet

    with pytest.raises(ResnetError, match="is not a directory"):
        resnet.train(data_dir=tmp_path / "photos", epochs=1, out=str(tmp_path / "run"))


def test_calibrate_refuses_a_run_that_evaluates_on_its_test_split(small_run, tmp_path, capsys):
    import shutil

    from resnet.engine.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(small_run["run"], run)  # trained on DIR/train, evaluated on DIR/test
    assert main(["calibrate", str(run), "--workers", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evaluates on the test split" in err and "Traceback" not in err
    assert all("temperature" not in load_checkpoint(run / name) for name in ("best.pt", "last.pt"))
    assert "temperature" not in json.loads((run / "config.json").read_text())
