"""The command line itself: version, help, usage errors, bugs and warnings."""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import pytest

import resnet
from resnet.cli import build_parser, main, warnings_as_lines
from resnet.errors import ResnetError


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"resnet {resnet.__version__}"


def test_bare_resnet_lists_the_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "export", "list", "summary", "bench"):
        assert f"\n    {command} " in out, command
    assert "score a checkpoint" in out  # the commands' descriptions, not only the usage line


def test_a_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["eval", "run", "--workers", "many"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("resnet eval: error: argument --workers: invalid int value: 'many'")


def test_a_bad_value_is_one_line_naming_the_flag(capsys):
    """Checked with the command's options (as resnet.evaluate checks them), before the checkpoint is read."""
    assert main(["eval", "run", "--workers", "-1"]) == 2
    assert capsys.readouterr().err == "resnet eval: error: --workers must be a non-negative integer, got -1\n"


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def user_mistake(*args, **kwargs):
        raise ResnetError("a problem with the input")

    def bug(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr("resnet.tools.summary.summary_table", user_mistake)
    assert main(["summary", "resnet18"]) == 2
    assert capsys.readouterr().err == "resnet summary: error: a problem with the input\n"
    monkeypatch.setattr("resnet.tools.summary.summary_table", bug)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["summary", "resnet18"])


def test_warnings_are_one_line_without_source():
    with warnings_as_lines("train"):
        text = warnings.formatwarning("skipping 1 unreadable image: x.png", UserWarning, "/src/resnet/data.py",
                                      12, "warnings.warn(...)")
    assert text == "resnet train: warning: skipping 1 unreadable image: x.png\n"
    assert "data.py" in warnings.formatwarning("x", UserWarning, "/src/resnet/data.py", 12, "")  # restored


def test_counts_read_right_for_one():
    from resnet.data.sources import warn_of_classes_without
    from resnet.engine.sampling import class_count_line
    from resnet.words import plural

    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert (plural(1, "class"), plural(3, "worker process"), plural(1234, "image", ",")) == (
        "1 class", "3 worker processes", "1,234 images")
    assert class_count_line([1, 1], "none") == "classes: 2, 1 training image each"
    with pytest.warns(UserWarning) as caught:
        warn_of_classes_without(["a", "b", "c"], [0, 0], "no validation image")
        warn_of_classes_without(["a", "b", "c"], [0, 1], "no validation image")
    assert [str(w.message) for w in caught] == ["2 classes have no validation image: b, c",
                                                "1 class has no validation image: c"]


def train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_train_help_shows_each_options_default_in_words_a_user_knows(capsys):
    text = train_help(capsys)
    assert "resnet.config" not in text
    assert ("--epochs EPOCHS training epochs (default: 9 for petals, 64 for flowers102 and imagefolder; 36 with "
            "--recipe fast, 500 with --recipe tutorial; small images: 4 on a CPU, 30 on a GPU)") in text
    assert ("(default: 0.05; 0.1 with --recipe fast, 0.02 with --recipe tutorial; small images: 0.2 on a CPU, 0.1 on "
            "a GPU)") in text  # --lr
    assert "--batch-size SIZE images per optimizer step (the global batch under torchrun) (default: 32; 256" in text
    assert "--tta, --no-tta evaluate each image and its mirror image, averaging their logits (default: off for " in text
    assert "layer4 map" not in text and "skips 80 px" not in text  # measurements belong in docs/recipes.md
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for action in subparsers.choices["train"]._actions:
        if action.dest != "help":
            assert "(default: " in action.help, action.dest


def test_the_defaults_the_help_names_are_the_ones_a_run_gets():
    """Each dataset's, each recipe's and the small-image value of every option with a default,
    as resolve_config resolves them, is in its help."""
    from resnet.config import CHOICES, RECIPES, SMALL_IMAGE_SIDE, TrainConfig, resolve_config
    from resnet.helptext import SIDE_WORDS, default_note, shown

    small = {device: resolve_config({"dataset": "imagefolder", "data_dir": "x"}, SMALL_IMAGE_SIDE, device)
             for device in ("cpu", "cuda")}
    for field in dataclasses.fields(TrainConfig):
        if field.default is None:
            continue  # said in words by the field's help, which no table holds
        note = default_note(field.name, field.default)
        runs = [resolve_config({"dataset": dataset}) for dataset in CHOICES["dataset"] if field.name != "dataset"]
        runs += [resolve_config({"recipe": recipe}) for recipe in RECIPES if field.name != "recipe"]
        runs += list(small.values()) if field.name not in [*SIDE_WORDS, "dataset"] else []
        for config in runs:
            assert shown(getattr(config, field.name), "none") in note, (field.name, note)


def test_the_small_image_values_in_words_are_those_that_follow_the_images_size():
    from resnet.config import small_image_preset
    from resnet.helptext import SIDE_WORDS

    for device in ("cpu", "cuda"):
        a, b = small_image_preset(40, device), small_image_preset(48, device)
        assert {name for name in a if a[name] != b[name]} == set(SIDE_WORDS)
