"""Label files (--labels): CSV or TSV with a path, a label and optionally a split column."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from conftest import make_image_folder
from resnet.data.datasets import load_splits
from resnet.errors import ResnetError
from resnet.data.labelfile import label_file_splits


def touch(folder: Path, *names: str) -> Path:
    """Empty files: listing a label file reads no image, so these stand in for images."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return folder


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def splits_of(path: Path, data_dir: Path | None = None, val_fraction: float = 0.5, seed: int = 0):
    return label_file_splits(path, data_dir or path.parent, val_fraction, seed)


def names(source) -> list[str]:
    return [path.name for path in source.paths]


@pytest.mark.parametrize("path_column", ["path", "file", "filename", "image", "id", " Image ", "FILE"])
@pytest.mark.parametrize("label_column", ["label", "class", "category", "Category"])
def test_each_path_and_label_column_name(tmp_path, path_column, label_column):
    touch(tmp_path, "a.png", "b.png", "c.png", "d.png")
    labels = write(tmp_path / "labels.csv", f"{path_column},{label_column},split", "a.png,cat,train",
                   "b.png,dog,train", "c.png,dog,val", "d.png,cat,val")
    splits = splits_of(labels)
    assert splits.classes == ["cat", "dog"]
    assert names(splits.train) == ["a.png", "b.png"] and splits.train.labels == [0, 1]
    assert names(splits.eval) == ["c.png", "d.png"] and splits.eval.labels == [1, 0]
    assert splits.eval_name == "val" and splits.test is None


def test_the_first_accepted_name_wins_and_other_columns_are_ignored(tmp_path):
    touch(tmp_path, "x.png", "y.png")
    labels = write(tmp_path / "labels.csv", "id,notes,image,label,split", "7,blurry,x.png,cat,train",
                   "8,,y.png,cat,val", "9,,x.png,cat,train")  # the repeat of x.png is used once
    with pytest.warns(UserWarning, match="1 row.*line 4 \\(as line 2\\)"):
        splits = splits_of(labels)
    assert names(splits.train) + names(splits.eval) == ["x.png", "y.png"]


def test_tsv_by_extension_or_by_a_tab_in_the_header_and_a_byte_order_mark(tmp_path):
    touch(tmp_path, "a b.png", "c,d.png")
    for name in ("labels.tsv", "labels.txt"):
        labels = tmp_path / name
        labels.write_text("\ufeffpath\tlabel\tsplit\na b.png\tcat\ttrain\nc,d.png\tcat\tval\n", encoding="utf-8")
        splits = splits_of(labels)
        assert names(splits.train) == ["a b.png"] and names(splits.eval) == ["c,d.png"]


def test_paths_relative_to_the_data_dir_or_absolute(tmp_path):
    images = touch(tmp_path / "images", "cat/1.jpg", "dog/2.jpg")
    elsewhere = touch(tmp_path / "elsewhere", "3.jpg")
    (tmp_path / "lists").mkdir()
    labels = write(tmp_path / "lists" / "labels.csv", "path,label,split", "cat/1.jpg,cat,train",
                   "dog/2.jpg,dog,train", f"{elsewhere / '3.jpg'},dog,test")
    splits = splits_of(labels, data_dir=images)
    assert splits.train.paths == [images / "cat" / "1.jpg", images / "dog" / "2.jpg"]
    assert splits.eval.paths == [elsewhere / "3.jpg"] and splits.eval_name == "test"  # test rows and no val rows
    # load_splits reads the label file, its folder the default data folder.
    assert load_splits("imagefolder", str(images), labels=str(labels)).train.paths == splits.train.paths
    with pytest.raises(ResnetError, match="cannot be used with --dataset petals"):
        load_splits("petals", labels=str(labels))


def test_a_missing_extension_is_found_among_the_image_extensions(tmp_path):
    # Kaggle's style: "id,label" with abc123 for abc123.png.
    touch(tmp_path / "train", "abc123.png", "abd456.JPG", "abe789.jpeg", "v.1.png")
    labels = write(tmp_path / "train.csv", "id,label", "abc123,0", "abd456,1", "abe789,0", "v.1,1")
    splits = splits_of(labels, data_dir=tmp_path / "train")
    assert sorted(names(splits.train) + names(splits.eval)) == ["abc123.png", "abd456.JPG", "abe789.jpeg",
                                                                 "v.1.png"]
    touch(tmp_path / "train", "abc123.jpg")
    with pytest.raises(ResnetError, match=r"1 path without an extension matching several files "
                                          r"\(line 2: abc123 \(abc123.jpg, abc123.png\)\)"):
        splits_of(labels, data_dir=tmp_path / "train")


def test_missing_files_empty_labels_and_unknown_splits_are_one_error_with_line_numbers(tmp_path):
    touch(tmp_path, "ok.png", "ok2.png")
    labels = write(tmp_path / "labels.csv", "path,label,split", "ok.png,cat,train", "gone.png,cat,train",
                   "ok2.png,,val", "gone2.png,dog,train", "", "ok.png,cat,tset", "gone3.png,cat,val",
                   "gone4,cat,train", "ok2.png,dog,", ",dog,train", "a,b.png,cat,train")
    with pytest.raises(ResnetError) as raised:
        splits_of(labels)
    message = str(raised.value)
    assert message.startswith(f"{labels}: ")
    assert "4 missing files (line 3: gone.png, line 5: gone2.png, line 8: gone3.png, and 1 more)" in message
    assert "1 empty label (line 4)" in message
    assert "1 unknown split (line 7: 'tset'; allowed: train, val, valid, validation, test)" in message
    assert "1 empty split (line 10)" in message and "1 empty path (line 11)" in message
    assert "1 row with more fields than the header (line 12: 4 fields, the header 3" in message
    assert "\n" not in message


def test_a_file_listed_with_two_labels_and_a_label_training_lacks_are_errors(tmp_path):
    touch(tmp_path, "a.png", "b.png", "c.png")
    conflicting = write(tmp_path / "one.csv", "path,label", "a.png,cat", "b.png,dog", "./a.png,dog")
    with pytest.raises(ResnetError, match=r"1 file listed again with another label or split \(line 4: a.png as "
                                          r"on line 2\)"):
        splits_of(conflicting)
    unknown = write(tmp_path / "two.csv", "path,label,split", "a.png,cat,train", "b.png,cat,train", "c.png,yak,val")
    with pytest.raises(ResnetError, match=r"1 label that no train row has \(line 4: 'yak'\)"):
        splits_of(unknown)


def test_train_val_and_test_rows_validate_on_val_and_test_at_the_end(tmp_path):
    touch(tmp_path, *(f"{i}.png" for i in range(6)))
    labels = write(tmp_path / "labels.csv", "path,label,split", "0.png,cat,train", "1.png,dog,TRAIN",
                   "2.png,cat,valid", "3.png,dog,Validation", "4.png,cat,test", "5.png,dog,test")
    splits = splits_of(labels)
    assert names(splits.train) == ["0.png", "1.png"] and splits.eval_name == "val"
    assert names(splits.eval) == ["2.png", "3.png"] and names(splits.test) == ["4.png", "5.png"]
    assert splits.test.labels == [0, 1]
    assert not splits.eval_is_test


def test_train_and_test_rows_alone_evaluate_on_the_test_split_and_say_so(tmp_path):
    touch(tmp_path, *(f"{i}.png" for i in range(4)))
    labels = write(tmp_path / "labels.csv", "path,label,split", "0.png,cat,train", "1.png,dog,train",
                   "2.png,cat,test", "3.png,dog,test")
    splits = splits_of(labels)
    assert names(splits.eval) == ["2.png", "3.png"] and splits.test is None and splits.eval_is_test


def test_only_train_rows_hold_out_a_share_with_a_warning(tmp_path):
    touch(tmp_path, *(f"{i}.png" for i in range(4)))
    labels = write(tmp_path / "labels.csv", "path,label,split", *(f"{i}.png,{'ab'[i % 2]},train" for i in range(4)))
    with pytest.warns(UserWarning, match="every row has split train"):
        splits = splits_of(labels)
    assert len(splits.train) == 2 and len(splits.eval) == 2 and splits.eval.labels in ([0, 1], [1, 0])


def test_without_a_split_column_each_class_is_split_by_the_seed(tmp_path):
    touch(tmp_path, *(f"{i}.png" for i in range(40)))
    labels = write(tmp_path / "labels.csv", "path,label", *(f"{i}.png,{'abcd'[i % 4]}" for i in range(40)))
    splits = splits_of(labels, val_fraction=0.2, seed=3)
    assert len(splits.train) == 32 and len(splits.eval) == 8 and splits.eval_name == "val"
    assert sorted(splits.eval.labels) == [0, 0, 1, 1, 2, 2, 3, 3]  # stratified: 2 of each class's 10
    assert splits_of(labels, val_fraction=0.2, seed=3).eval.paths == splits.eval.paths
    assert splits_of(labels, val_fraction=0.2, seed=4).eval.paths != splits.eval.paths
    assert not set(splits.train.paths) & set(splits.eval.paths)


def test_integer_labels_are_sorted_as_numbers(tmp_path):
    touch(tmp_path, *(f"{i}.png" for i in range(8)))
    labels = write(tmp_path / "labels.csv", "file,class,split", *(f"{i}.png,{[10, 2, 0, 1][i % 4]},"
                                                                   f"{'train' if i < 4 else 'val'}" for i in range(8)))
    splits = splits_of(labels)
    assert splits.classes == ["0", "1", "2", "10"]
    assert splits.train.labels == [3, 2, 0, 1]


def test_a_one_row_label_file_says_how_a_label_file_names_validation_images(tmp_path, capsys):
    from resnet.cli import main

    make_image_folder(tmp_path, ["cat"], per_class=1, size=(32, 32))
    labels = write(tmp_path / "one_row.csv", "path,label", "cat/0,cat")
    assert main(["train", "--labels", str(labels), "--image-size", "32", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err == ("resnet train: error: every class has a single image: nothing to hold out for validation; add "
                   "images or list validation images in one_row.csv with split val (a split column)\n")
    assert "DIR/train" not in err  # an image folder's way, not a label file's


@pytest.mark.parametrize("content, problem", [
    (None, "cannot read the label file"),
    (b"path,label\nna\xefve.png,cat\n", "not UTF-8 text"),
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b"path,label\n", "a header and no rows"),
    (b"a.png,cat\nb.png,dog\n", r"no path column in the header \('a.png', 'cat'\).*path, file, filename, image, id"),
    (b"path,name\na.png,cat\n", "no label column .*label, class, category"),
    (b"path,label\na\x00.png,cat\n", "line 2: a NUL byte"),
])
def test_an_unreadable_label_file_is_one_line(tmp_path, content, problem):
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_bytes(content)
    with pytest.raises(ResnetError, match=problem) as raised:
        splits_of(labels)
    assert "\n" not in str(raised.value)


def test_train_and_eval_with_a_label_file(tmp_path, capsys):
    from resnet.cli import main

    data = make_image_folder(tmp_path / "data" / "images", ["ant", "bee"], per_class=4, size=(32, 32))
    rows = [f"{name}/{i},{name},{'val' if i == 3 else 'train'}" for name in ("ant", "bee") for i in range(4)]
    labels = write(tmp_path / "data" / "labels.csv", "image,category,split", *rows)
    code = main(["train", "--labels", str(labels), "--data-dir", str(data), "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet", "--arch", "resnet10", "--out",
                 str(tmp_path / "run")])
    assert code == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file left out
        assert main(["eval", str(tmp_path / "run"), "--json", "--workers", "0", "--mistakes", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["subset"] == "val" and result["images"] == 2 and result["classes"] == 2
    # The images moved: --data-dir points at them, and the run's label file still lists them.
    moved = data.rename(tmp_path / "moved")
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(moved), "--json", "--workers", "0",
                 "--mistakes", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["data_dir"] == str(moved)
