"""The command line itself: version, help, usage errors, bugs and warnings."""

from __future__ import annotations

import warnings

import pytest

import resnet
from resnet.cli import main, warnings_as_lines
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
        main(["eval", "run", "--workers", "-1"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("resnet eval: error: argument --workers: must be a non-negative integer")


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def user_mistake(*args, **kwargs):
        raise ResnetError("a problem with the input")

    def bug(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr("resnet.summary.summary_table", user_mistake)
    assert main(["summary", "resnet18"]) == 2
    assert capsys.readouterr().err == "resnet summary: error: a problem with the input\n"
    monkeypatch.setattr("resnet.summary.summary_table", bug)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["summary", "resnet18"])


def test_warnings_are_one_line_without_source():
    with warnings_as_lines("train"):
        text = warnings.formatwarning("skipping 1 unreadable image: x.png", UserWarning, "/src/resnet/data.py",
                                      12, "warnings.warn(...)")
    assert text == "resnet train: warning: skipping 1 unreadable image: x.png\n"
    assert "data.py" in warnings.formatwarning("x", UserWarning, "/src/resnet/data.py", 12, "")  # restored


def test_counts_read_right_for_one():
    from resnet.data import warn_of_classes_without
    from resnet.sampling import class_count_line
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
