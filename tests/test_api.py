"""The Python API: resnet.train, resnet.evaluate and resnet.predict against the commands they mirror."""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import resnet
from conftest import make_image_folder
from resnet.cli import build_parser, main
from resnet.errors import ResnetError

LIGHT_IMPORT = """
import json, sys
import torch
before = set(sys.modules)
import resnet
loaded = sorted(set(sys.modules) - before)
import resnet.engine.training, resnet.tools.evaluation, resnet.tools.prediction
import resnet.api
print(json.dumps({"loaded": loaded, "functions": [resnet.train is resnet.api.train,
      resnet.evaluate is resnet.api.evaluate, resnet.predict is resnet.api.predict]}))
"""


@pytest.fixture(scope="module")
def fresh_import():
    """What a fresh interpreter loads for ``import resnet`` beyond torch, and what the names are after."""
    done = subprocess.run([sys.executable, "-c", LIGHT_IMPORT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_resnet_stays_light(fresh_import):
    heavy = ("matplotlib", "tqdm", "PIL", "torchvision", "resnet.engine.training", "resnet.data.sources",
             "resnet.data.pipeline", "resnet.tools.evaluation", "resnet.tools.prediction", "resnet.config")
    assert [m for m in fresh_import["loaded"] if m.split(".")[0] in heavy or m in heavy] == []
    assert "resnet.api" in fresh_import["loaded"]


def test_the_modules_leave_the_names_to_the_functions(fresh_import):
    assert fresh_import["functions"] == [True, True, True]


# --- train --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """One epoch of resnet.train on 12 generated 40x48 images, with what it printed."""
    root = tmp_path_factory.mktemp("api-run")
    data = make_image_folder(root / "data", ["cat", "dog", "fox"], per_class=4)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("RESNET_CACHE", str(root / "cache"))
        result = resnet.train(dataset="imagefolder", data_dir=data, epochs=1, batch_size=4, workers=0,
                              precision="fp32", quiet=True, out=root / "run", image_size=None, device="cpu")
    return {"result": result, "printed": printed.getvalue(), "root": root}


def test_train_returns_what_the_run_recorded(api_run):
    result = api_run["result"]
    run_dir = api_run["root"] / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result.run_dir == result["run_dir"] == run_dir
    assert {k: v for k, v in result.items() if k in summary and k != "run_dir"} == \
           {k: v for k, v in summary.items() if k != "run_dir"}
    assert set(summary) < set(result)
    assert result["final_top1"] == result.final_top1 == summary["final_top1"]
    assert result["best_top1"] == result.best_top1 == summary["best_top1"]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(result.history) == len(rows) == 1
    assert result.history[0]["epoch"] == 1 and result.history[0]["top1"] == result.final_top1
    assert result.history[0].keys() == rows[0].keys()
    assert all(rows[0][k] == "" if v is None else float(rows[0][k]) == v for k, v in result.history[0].items())
    assert result.config.to_json() == (run_dir / "config.json").read_text()
    with pytest.raises(AttributeError, match="no 'final_top2'"):
        result.final_top2


def test_train_resolves_the_options_as_the_command_does(api_run):
    config = api_run["result"].config
    # Neither a size nor a stem given: 40 px images take the small-image defaults, said in a line.
    assert "images of about 40 px" in api_run["printed"]
    assert (config.arch, config.stem, config.image_size, config.epochs, config.batch_size) == \
        ("resnet10", "small-pool", 40, 1, 4)
    assert config.data_dir == str(api_run["root"] / "data")  # a Path is taken, stored absolute as the CLI does


def test_train_resumes(api_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_CACHE", str(api_run["root"] / "cache"))
    run = shutil.copytree(api_run["root"] / "run", tmp_path / "run")
    result = resnet.train(resume=run, epochs=2, quiet=True)
    assert result.epochs == 2 and [row["epoch"] for row in result.history] == [1, 2]
    assert result.history[0] == api_run["result"].history[0]


def test_an_unknown_option_is_named_with_the_closest_one():
    with pytest.raises(ResnetError, match=r"resnet.train has no option 'epoch'; did you mean 'epochs'\?"):
        resnet.train(epoch=3)
    with pytest.raises(ResnetError, match="has no option 'batchsize'; did you mean 'batch_size'"):
        resnet.evaluate("run", batchsize=3)
    with pytest.raises(ResnetError, match="has no option 'topk'; did you mean 'top_k'"):
        resnet.predict("best.pt", "images", topk=3)


@pytest.mark.parametrize("options, flags", [({"lr": -1.0}, ["--lr", "-1"]), ({"arch": "resnet19"}, None),
                                            ({"epochs": "3"}, None), ({"mixup": -0.5}, ["--mixup", "-0.5"])])
def test_errors_are_the_commands_sentences(options, flags, capsys):
    with pytest.raises(ResnetError) as raised:
        resnet.train(**options)
    if flags is not None:  # the command's parser refuses the others itself
        assert main(["train", *flags]) == 2
        assert capsys.readouterr().err.strip() == f"resnet train: error: {raised.value}"
    assert f"--{next(iter(options))}" in str(raised.value)


def test_lr_auto_is_the_commands():
    with pytest.raises(ResnetError, match="--epochs must be an int, got '3'"):  # not an error about the lr
        resnet.train(lr="auto", epochs="3")


# --- evaluate and predict --------------------------------------------------------------------


def as_json(value):
    return json.loads(json.dumps(dict(value)))


def test_evaluate_gives_the_commands_numbers(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run["dir"]), "--json", "--out", str(tmp_path / "cli"), "--device", "cpu",
                 "--workers", "0", "--mistakes", "0"]) == 0
    command = json.loads(capsys.readouterr().out)
    result = resnet.evaluate(tiny_run["dir"], out=tmp_path / "api", device="cpu", workers=0, mistakes=0)
    assert result.top1 == result["top1"] == command["top1"]
    files = {k for k in command if k.endswith(("_png", "_csv"))}  # in each one's --out
    assert {k: v for k, v in as_json(result).items() if k not in files} == \
           {k: v for k, v in command.items() if k not in files}
    assert files and all(Path(result[k]).parent == tmp_path / "api" and Path(result[k]).exists() for k in files)


def test_predict_gives_the_commands_answers_and_reports_unreadable_files(tiny_run, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    inputs = [str(tiny_run["data"] / "cat"), str(tmp_path / "broken.png")]
    assert main(["predict", str(tiny_run["ckpt"]), *inputs, "--json", "--device", "cpu", "--top-k", "2"]) == 1
    command = json.loads(capsys.readouterr().out)
    result = resnet.predict(tiny_run["ckpt"], inputs, device="cpu", top_k=2)
    assert as_json(result) == command
    assert result.failed == 1 and result.errors[0]["path"] == str(tmp_path / "broken.png")
    assert len(result.predictions) == 4 and len(result.predictions[0]["top"]) == 2
    one = resnet.predict(tiny_run["ckpt"], tiny_run["data"] / "cat" / "0.png", device="cpu")  # a path alone
    # The same classes and probabilities, the latter to float32's rounding: a batch of one and a batch
    # of four need not agree to the last bit (they did for one set of weights, not for every one).
    alone, in_batch = one.predictions[0]["top"][:2], result.predictions[0]["top"]
    assert [p["class"] for p in alone] == [p["class"] for p in in_batch]
    assert [p["probability"] for p in alone] == pytest.approx([p["probability"] for p in in_batch], abs=1e-6)


def command_options(name: str) -> dict[str, object]:
    """The options of a subcommand and their defaults, by their Python names."""
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    return {a.dest: a.default for a in subcommands[name]._actions
            if a.option_strings and a.dest not in ("help", "json", "csv")}


@pytest.mark.parametrize("function, command", [(resnet.evaluate, "eval"), (resnet.predict, "predict")])
def test_the_functions_take_the_commands_options_and_defaults(function, command):
    parameters = inspect.signature(function).parameters.values()
    assert {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY} == command_options(command)


@pytest.mark.parametrize("call, message", [
    (lambda run: resnet.evaluate(123), "resnet.evaluate: run_or_checkpoint must be a path, got 123"),
    (lambda run: resnet.evaluate(None), "resnet.evaluate: run_or_checkpoint must be a path, got None"),
    (lambda run: resnet.evaluate(run["dir"], data_dir=5), "resnet.evaluate: data_dir must be a path, got 5"),
    (lambda run: resnet.evaluate(run["dir"], out=[1]), r"resnet.evaluate: out must be a path, got \[1\]"),
    (lambda run: resnet.predict(123, [run["data"]]), "resnet.predict: checkpoint must be a path, got 123"),
    (lambda run: resnet.predict(run["ckpt"], [123]), "resnet.predict: images must be paths, got 123"),
    (lambda run: resnet.predict(run["ckpt"], 123), "resnet.predict: images must be a path or a list of paths, "
                                                   "got 123"),
    (lambda run: resnet.predict(run["ckpt"], []), "resnet.predict: no images given"),
])
def test_what_is_not_a_path_is_an_error_naming_the_argument(tiny_run, call, message):
    """The command's parser takes only strings, and resnet predict without an image is refused."""
    with pytest.raises(ResnetError, match=f"^{message}$"):
        call(tiny_run)


def test_bad_values_are_one_line_errors(tiny_run):
    with pytest.raises(ResnetError, match="--batch-size must be a positive integer, got 0"):
        resnet.evaluate(tiny_run["dir"], batch_size=0)
    with pytest.raises(ResnetError, match="--split must be one of tutorial, official, got 'mine'"):
        resnet.evaluate(tiny_run["dir"], split="mine")
    with pytest.raises(ResnetError, match="--top-k must be a positive integer, got -1"):
        resnet.predict(tiny_run["ckpt"], tiny_run["data"], top_k=-1)
    with pytest.raises(ResnetError, match="no checkpoint at .*missing.pt"):
        resnet.predict(tiny_run["root"] / "missing.pt", tiny_run["data"])


@pytest.mark.slow  # the 20 epochs the README's example asks for (~8 s): run in CI with -m slow
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example on a small folder named as it names it: photos/, a.jpg and more/."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("```python\n")[1].split("```")[0]
    assert 'resnet.train(data_dir="photos"' in example
    make_image_folder(tmp_path / "photos", ["cat", "dog"], per_class=4, size=(32, 32))
    shutil.copy(tmp_path / "photos" / "cat" / "0.png", tmp_path / "a.jpg")
    shutil.copytree(tmp_path / "photos" / "dog", tmp_path / "more")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md", "exec"), {})
    config = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    assert (config["dataset"], config["data_dir"]) == ("imagefolder", str(tmp_path / "photos"))
    assert config["epochs"] == 20
