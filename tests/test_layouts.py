"""Image-folder layouts: DIR/train beside val, valid, validation or test, in any case."""

from __future__ import annotations

import pytest

from conftest import make_image_folder
from resnet.data.sources import imagefolder_splits
from resnet.errors import ResnetError

CLASSES = ["ant", "bee"]


@pytest.mark.parametrize("name", ["val", "valid", "validation", "test", "Val", "VALIDATION", "Test"])
def test_train_beside_any_evaluation_folder(tmp_path, name):
    make_image_folder(tmp_path / "train", CLASSES, per_class=3)
    make_image_folder(tmp_path / name, CLASSES, per_class=2, seed=1)
    splits = imagefolder_splits(tmp_path, 0.2, 0)
    assert splits.classes == CLASSES
    assert len(splits.train) == 6 and len(splits.eval) == 4 and splits.test is None
    assert splits.eval_name == name  # the run names the folder it evaluates on
    assert all(path.parent.parent.name == name for path in splits.eval.paths)
    assert splits.eval.labels == [0, 0, 1, 1]


def test_validation_and_test_folders_validate_on_one_and_test_on_the_other(tmp_path):
    make_image_folder(tmp_path / "Train", CLASSES, per_class=3)
    make_image_folder(tmp_path / "valid", CLASSES, per_class=2, seed=1)
    make_image_folder(tmp_path / "TEST", CLASSES, per_class=1, seed=2)
    splits = imagefolder_splits(tmp_path, 0.2, 0)
    assert splits.eval_name == "valid" and len(splits.eval) == 4
    assert splits.test is not None and len(splits.test) == 2
    assert {path.parent.parent.name for path in splits.test.paths} == {"TEST"}


def test_an_evaluation_folder_may_lack_a_class_and_keeps_the_training_labels(tmp_path):
    make_image_folder(tmp_path / "train", ["ant", "bee", "cow"], per_class=2)
    make_image_folder(tmp_path / "val", ["cow"], per_class=2)
    splits = imagefolder_splits(tmp_path, 0.2, 0)
    assert splits.eval.labels == [2, 2]


def test_a_class_the_training_folder_lacks_is_an_error(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES, per_class=2)
    make_image_folder(tmp_path / "val", ["ant", "yak"], per_class=1)
    with pytest.raises(ResnetError, match="yak"):
        imagefolder_splits(tmp_path, 0.2, 0)


def test_two_folders_for_one_role_or_none_are_errors(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES, per_class=2)
    with pytest.raises(ResnetError, match="no evaluation folder.*val, valid, validation, test"):
        imagefolder_splits(tmp_path, 0.2, 0)
    make_image_folder(tmp_path / "val", CLASSES, per_class=1)
    make_image_folder(tmp_path / "validation", CLASSES, per_class=1)
    with pytest.raises(ResnetError, match="both val/ and validation/"):
        imagefolder_splits(tmp_path, 0.2, 0)


def test_cifar_as_usually_shared_trains_and_reports_its_test_folder(tmp_path, capsys):
    from resnet.cli import main

    make_image_folder(tmp_path / "data" / "train", CLASSES, per_class=4, size=(32, 32))
    make_image_folder(tmp_path / "data" / "test", CLASSES, per_class=2, size=(32, 32), seed=1)
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                 "--image-size", "32", "--batch-size", "4", "--out", str(tmp_path / "run"), "--quiet",
                 "--workers", "0", "--precision", "fp32"])
    assert code == 0
    assert "'test'" in capsys.readouterr().out
