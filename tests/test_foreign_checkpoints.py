"""Files that are not checkpoints, given where one is expected: each is one ResnetError naming
the file, from load_checkpoint, from loading a model, and from the commands that read one."""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.engine.checkpoint import load_checkpoint
from resnet.cli import main
from resnet.errors import ResnetError
from resnet.tools.evaluation import load_model_from_checkpoint
from resnet.models.resnet import get_model
from resnet.engine.weights import load_pretrained

Make = Callable[[Path], bytes]  # the real checkpoint's path -> the foreign file's bytes


def random_bytes(n: int) -> Make:
    return lambda real: np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def image_bytes(kind: str) -> Make:
    def make(real: Path) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buffer, kind)
        return buffer.getvalue()
    return make


def truncated(keep: int) -> Make:
    """The real checkpoint cut to ``keep`` bytes (negative: that many short of whole)."""
    return lambda real: real.read_bytes()[:keep]


def flipped(at: int) -> Make:
    """The real checkpoint with 20 bytes inverted at ``at`` (negative: from the end, in the zip's directory)."""
    def make(real: Path) -> bytes:
        data = bytearray(real.read_bytes())
        start = at % len(data)
        data[start:start + 20] = bytes(b ^ 0xFF for b in data[start:start + 20])
        return bytes(data)
    return make


def zipped(entries: dict[str, bytes]) -> Make:
    def make(real: Path) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        return buffer.getvalue()
    return make


def real_zip_without_storages(real: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(buffer, "w") as archive:
        for name in source.namelist():
            if "/data/" not in name:
                archive.writestr(name, source.read(name))
    return buffer.getvalue()


def saved(obj: Any, **options: Any) -> Make:
    def make(real: Path) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer, **options)
        return buffer.getvalue()
    return make


def changed(**entries: Any) -> Make:
    """The real checkpoint (its model part) with entries replaced; a callable value is given the
    checkpoint, ``...`` removes the entry."""
    def make(real: Path) -> bytes:
        checkpoint = torch.load(real, weights_only=True)
        for name in ("optimizer", "scaler", "state"):  # what using a model never reads: smaller files
            checkpoint.pop(name, None)
        for name, value in entries.items():
            if value is ...:
                checkpoint.pop(name, None)
            else:
                checkpoint[name] = value(checkpoint) if callable(value) else value
        return saved(checkpoint)(real)
    return make


def config_with(**values: Any) -> Callable[[dict], dict]:
    return lambda checkpoint: {**checkpoint["config"], **values}


def normalization_with(**values: Any) -> Callable[[dict], dict]:
    return lambda checkpoint: {**checkpoint["normalization"], **values}


# Neither readable as a torch file nor a dict: load_checkpoint itself refuses these.
UNREADABLE: dict[str, Make] = {
    "empty": lambda real: b"",
    **{f"random-{n}-bytes": random_bytes(n) for n in (1, 7, 64, 4096, 100_000)},
    "etc-passwd": lambda real: b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "text": lambda real: b"hello world\n",
    "json": lambda real: b'{"arch": "resnet18", "classes": ["a"], "model": {}}',
    "png": image_bytes("PNG"),
    "jpeg": image_bytes("JPEG"),
    "truncated-to-10-bytes": truncated(10),
    "truncated-to-1000-bytes": truncated(1000),
    "truncated-to-30000-bytes": truncated(30_000),
    "truncated-by-one-byte": truncated(-1),
    "flipped-in-the-header": flipped(50),
    "flipped-in-the-zip-directory": flipped(-100),
    "empty-zip": zipped({}),
    "zip-of-a-text-file": zipped({"notes.txt": b"hello"}),
    "zip-with-a-garbage-data-pkl": zipped({"archive/data.pkl": b"garbage", "archive/version": b"3\n"}),
    "zip-without-its-tensors": real_zip_without_storages,
    "pickle-of-a-list": lambda real: pickle.dumps([1, 2, 3]),
    "pickle-of-a-dict": lambda real: pickle.dumps({"model": {}}, protocol=2),
    "torch-save-of-a-list": saved([1, 2]),
    "torch-save-of-a-tensor": saved(torch.zeros(3)),
    "torch-save-of-a-string": saved("resnet18"),
    "torch-save-of-none": saved(None),
    "legacy-torch-save-of-a-list": saved([1, 2], _use_new_zipfile_serialization=False),
}

# Dicts, readable as a state_dict might be, that are not a checkpoint a model can be loaded from.
NOT_A_MODEL: dict[str, Make] = {
    "empty-dict": saved({}),
    "dict-of-numbers": saved({"a": 1}),
    "without-model": changed(model=...),
    "without-arch": changed(arch=...),
    "without-classes": changed(classes=...),
    "model-is-a-number": changed(model=5),
    "model-is-a-list": changed(model=[1, 2]),
    "model-is-a-tensor": changed(model=torch.zeros(2)),
    "model-is-none": changed(model=None),
    "model-values-are-numbers": changed(model=lambda c: {key: 1 for key in c["model"]}),
    "model-keys-are-numbers": changed(model=lambda c: dict(enumerate(c["model"].values()))),
    "model-of-resnet34": changed(model=get_model("resnet34", num_classes=3).state_dict()),
    "model-of-five-classes": changed(model=get_model("resnet10", num_classes=5).state_dict()),  # the tiny run's arch
    "ema-is-a-number": changed(ema=5),
    "ema-of-resnet34": changed(ema=get_model("resnet34", num_classes=3).state_dict()),
    "arch-is-a-number": changed(arch=5),
    "arch-is-unknown": changed(arch="vgg16"),
    "classes-is-a-number": changed(classes=5),
    "classes-is-a-string": changed(classes="abc"),
    "classes-is-none": changed(classes=None),
    "classes-is-empty": changed(classes=[]),
    "classes-hold-lists": changed(classes=[["a"], ["b"], ["c"]]),
    "config-is-a-list": changed(config=[1, 2]),
    "config-is-a-string": changed(config="resnet18"),
    "config-stem-is-a-number": changed(config=config_with(stem=5)),
    "config-tta-is-a-string": changed(config=config_with(tta="yes")),
    "config-image-size-is-a-string": changed(config=config_with(image_size="big")),
    "normalization-is-a-list": changed(normalization=[1]),
    "normalization-is-a-string": changed(normalization="imagenet"),
    "normalization-mean-is-a-number": changed(normalization=normalization_with(mean=5)),
    "normalization-mean-has-one-value": changed(normalization=normalization_with(mean=[0.5])),
    "normalization-std-is-zero": changed(normalization=normalization_with(std=[0, 0, 0])),
    "normalization-size-is-a-string": changed(normalization=normalization_with(image_size="big")),
    "normalization-size-is-negative": changed(normalization=normalization_with(image_size=-3)),
    "normalization-size-is-huge": changed(normalization=normalization_with(image_size=10**9)),
    "temperature-is-a-string": changed(temperature="hot"),
    "format-is-a-string": changed(format="one"),
    "format-is-newer": changed(format=99),
}


def write(tmp_path: Path, real: Path, make: Make, name: str) -> Path:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(make(real))
    return path


@pytest.mark.parametrize("name", UNREADABLE)
def test_an_unreadable_file_is_one_error_from_load_checkpoint(tiny_run, tmp_path, name):
    path = write(tmp_path, tiny_run["ckpt"], UNREADABLE[name], name)
    with pytest.raises(ResnetError, match=f"^{re.escape(str(path))}") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    assert not re.search(r"\(\d+\)$", str(error.value))  # a reason in words, not a key torch's reader missed


@pytest.mark.parametrize("name", [*UNREADABLE, *NOT_A_MODEL])
def test_a_foreign_file_is_one_error_when_a_model_is_loaded_from_it(tiny_run, tmp_path, name):
    path = write(tmp_path, tiny_run["ckpt"], {**UNREADABLE, **NOT_A_MODEL}[name], name)
    with pytest.raises(ResnetError, match=f"^{re.escape(str(path))}") as error:
        load_model_from_checkpoint(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["etc-passwd", "text", "random-64-bytes", "pickle-of-a-list", "model-keys-are-numbers",
                                  "classes-is-a-number", "config-is-a-list", "normalization-is-a-string"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "calibrate"])
def test_the_commands_refuse_a_foreign_file_in_one_line(tiny_run, tmp_path, capsys, command, name):
    path = write(tmp_path, tiny_run["ckpt"], {**UNREADABLE, **NOT_A_MODEL}[name], name)
    extra = {"eval": ["--workers", "0", "--device", "cpu"], "predict": [str(tiny_run["data"] / "cat" / "0.png")],
             "export": ["--format", "torchscript", "--out", str(tmp_path / "out.pt")],
             "calibrate": ["--workers", "0", "--device", "cpu"]}[command]
    with warnings.catch_warnings(record=True) as caught:  # each would be a line of its own on stderr
        warnings.simplefilter("always")
        assert main([command, str(path), *extra]) == 2
    assert not caught, [str(w.message) for w in caught]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"resnet {command}: error: {path}"), err


@pytest.mark.parametrize("name", ["model-keys-are-numbers", "model-values-are-numbers"])
def test_weights_from_a_foreign_dict_are_one_error(tiny_run, tmp_path, name):
    """train --weights FILE reads a state_dict, or a checkpoint's model entry."""
    path = write(tmp_path, tiny_run["ckpt"], NOT_A_MODEL[name], name)
    with pytest.raises(ResnetError, match=f"^--weights {re.escape(str(path))}"):
        load_pretrained(get_model("resnet18", num_classes=3), str(path), "resnet18")
