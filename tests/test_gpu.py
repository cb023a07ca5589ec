"""Every command on a CUDA GPU, on tiny generated data: marked ``gpu``, left out of the default run
(pyproject's addopts) and skipped without CUDA. Run them on a machine with one:

    python -m pytest -m gpu -q

They check that each command runs on CUDA (tensors from checkpoints, the CPU and the device meet
where they should) and that a CUDA-graphed step trains as an eager one does, within tolerance: the
float rounding of two runs of the same kernels differs, so nothing here asks for equal bits.
Commands that run on the CPU by design (explain, the app, export) are run on a machine with a GPU
from a run trained on it. The optional packages (captum, onnx, onnxruntime) are skipped when absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder, read_metrics
from resnet.cli import main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]

CLASSES = ["cat", "dog", "fox"]
# 33 images; about 27 train in batches of 4: the graph is captured after 3 eager steps and replayed,
# and an epoch ends with a partial batch, which steps eagerly.
SMALL = ["--epochs", "2", "--image-size", "32", "--eval-image-size", "32", "--batch-size", "4", "--workers", "0",
         "--quiet", "--arch", "resnet10", "--device", "cuda"]
TINY = [*SMALL, "--lr", "0.02"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("gpu-data") / "images", CLASSES, per_class=11)


def train(data: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["train", "--data-dir", str(data), *TINY, "--out", str(out), *extra]) == 0
    return read_metrics(out)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A run trained with the defaults on CUDA (fp16, the step a CUDA graph), for the commands after training."""
    root = tmp_path_factory.mktemp("gpu-run")
    with pytest.MonkeyPatch.context() as patch:  # the per-test cache folder is not set up for a module's fixture
        patch.setenv("RESNET_CACHE", str(root / "cache"))
        train(data, root / "run")
    return root / "run"


def losses(rows: list[dict]) -> list[float]:
    return [float(row["train_loss"]) for row in rows]


# --- training ------------------------------------------------------------------------------------


def test_train_says_fp16_and_cuda_graphs(data, tmp_path, capsys):
    train(data, tmp_path / "run", "--epochs", "1")
    assert "cuda fp16, fast pipeline, CUDA graphs" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["cuda_graphs"] == "auto" and config["precision"] == "auto"


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_a_graphed_run_gives_the_eager_runs_losses(data, tmp_path, precision):
    graphed = train(data, tmp_path / "graphed", "--precision", precision, "--cuda-graphs", "on")
    eager = train(data, tmp_path / "eager", "--precision", precision, "--cuda-graphs", "off")
    assert losses(graphed) == pytest.approx(losses(eager), rel=2e-2)
    assert [r["top1"] for r in graphed] == pytest.approx([r["top1"] for r in eager], abs=0.34)  # one image of 3


def steps(config_options: dict, graphs: str):
    from resnet.config import resolve_config
    from resnet.engine.assembly import build_parts, training_step
    from resnet.util.hardware import select_precision

    device = torch.device("cuda")
    config = resolve_config({"arch": "resnet10", "device": "cuda", "cuda_graphs": graphs, **config_options})
    dtype = select_precision(config.precision, device)
    parts = build_parts(config, 3, device, dtype)
    parts.model.train()
    return training_step(config, parts, device, dtype), parts


def batches(n: int, mixed: bool = False):
    generator = torch.Generator().manual_seed(0)
    for i in range(n):
        size = 6 if i != n // 2 else 4  # a partial batch halfway
        images = torch.randn(size, 3, 32, 32, generator=generator).cuda()
        labels = torch.randint(0, 3, (size,), generator=generator).cuda()
        if mixed and i % 2:
            labels = torch.softmax(torch.randn(size, 3, generator=generator), 1).cuda()
        yield images, labels


@pytest.mark.parametrize("options", [{"precision": "fp16"}, {"precision": "bf16"}, {"precision": "fp32"},
                                     {"precision": "fp16", "optimizer": "adamw", "lr": 1e-3},
                                     {"precision": "fp16", "mixup": 0.2}],
                         ids=["fp16", "bf16", "fp32", "adamw", "mixed-targets"])
def test_the_graphed_step_gives_the_eager_steps_losses(options):
    from resnet.engine.graphs import GraphedStep

    (graphed, _), (eager, _) = steps(options, "on"), steps(options, "off")
    assert isinstance(graphed, GraphedStep)
    got, expected = [], []
    for i, (images, labels) in enumerate(batches(12, mixed="mixup" in options)):
        for step, out in ((graphed, got), (eager, expected)):
            for group in step.optimizer.param_groups:
                group["lr"] = options.get("lr", 0.02) * (i + 1) / 12
            out.append(step(images, labels).item())
    assert graphed.graph is not None and not graphed.failed
    assert got == pytest.approx(expected, rel=1e-2)
    for a, b in zip(graphed.model.state_dict().values(), eager.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)  # BatchNorm statistics included


def test_fp16_overflow_is_skipped_and_backed_off_inside_the_graph():
    """GradScaler in the graph: inf gradients skip the update and halve the scale, on the device."""
    (graphed, graphed_parts), (eager, eager_parts) = steps({"precision": "fp16"}, "on"), steps({"precision": "fp16"},
                                                                                               "off")
    stream = list(batches(10))
    for images, labels in stream[:5]:  # warm-up and capture
        graphed(images, labels), eager(images, labels)
    for parts in (graphed_parts, eager_parts):
        parts.scaler.update(new_scale=2.0 ** 40)  # every fp16 gradient overflows
    before = {k: v.clone() for k, v in graphed.model.state_dict().items() if k.endswith("weight")}
    graphed(*stream[6]), eager(*stream[6])
    assert graphed_parts.scaler.get_scale() == eager_parts.scaler.get_scale() == 2.0 ** 39
    for key, value in before.items():
        assert torch.equal(graphed.model.state_dict()[key], value), key  # the update was skipped


def test_classic_pipeline_balance_and_mixup(data, tmp_path):
    assert len(train(data, tmp_path / "classic", "--pipeline", "classic")) == 2
    assert len(train(data, tmp_path / "loss", "--balance", "loss")) == 2
    assert len(train(data, tmp_path / "sampler", "--balance", "sampler")) == 2
    assert len(train(data, tmp_path / "mix", "--mixup", "0.2", "--cutmix", "1.0")) == 2


def test_stop_then_resume_continues_the_run(data, tmp_path, monkeypatch):
    import signal

    from resnet.engine import training

    whole = train(data, tmp_path / "whole")
    calls = iter(range(10 ** 6))
    with monkeypatch.context() as patch:
        patch.setattr(training, "stop_requested", lambda stop, topology, step: signal.SIGINT
                      if next(calls) == 9 else None)  # epoch 2, after the graph's capture
        assert main(["train", "--data-dir", str(data), *TINY, "--out", str(tmp_path / "cut")]) == 130
    assert main(["train", "--resume", str(tmp_path / "cut"), "--cuda-graphs", "off"]) == 0  # may change on resume
    assert losses(read_metrics(tmp_path / "cut")) == pytest.approx(losses(whole), rel=2e-2)


# --- after training ------------------------------------------------------------------------------


def test_eval_calibrate_and_predict_on_cuda(run, data, capsys):
    assert main(["eval", str(run), "--device", "cuda", "--workers", "0", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["images"] > 0
    # best.pt and last.pt: the first is scored on CUDA, then compared with the second, read on the CPU.
    assert main(["calibrate", str(run), "--device", "cuda", "--workers", "0", "--json"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert len(calibrated["checkpoints"]) == 2
    assert main(["predict", str(run), str(data / "fox"), "--device", "cuda", "--min-confidence", "0.6",
                 "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert len(predicted["predictions"]) == 11
    assert all(p["label"] == "unknown" or p["top_probability"] >= 0.6 for p in predicted["predictions"])


def test_eval_on_cuda_matches_the_cpu(run, capsys):
    results = []
    for device in ("cuda", "cpu"):
        assert main(["eval", str(run), "--device", device, "--workers", "0", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["top1"] == pytest.approx(results[1]["top1"], abs=0.15)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-2)


def test_explain_and_the_apps_classify(run, data, tmp_path):
    from resnet.tools.app import classify
    from resnet.tools.evaluation import load_model_from_checkpoint

    model, checkpoint = load_model_from_checkpoint(run)
    [result] = classify(model, checkpoint, [str(data / "cat" / "0.png")], with_cam=False)
    assert result.error is None and len(result.top) == 3
    pytest.importorskip("captum", reason="captum is not installed (the explain extra)")
    assert main(["explain", str(run), str(data / "dog" / "0.png"), "--out", str(tmp_path / "cams")]) == 0
    assert list((tmp_path / "cams").glob("*.png"))
    [result] = classify(model, checkpoint, [str(data / "cat" / "0.png")])
    assert result.error is None and result.overlay is not None


def test_export_torchscript_onnx_and_int8(run, tmp_path):
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    pytest.importorskip("onnx", reason="onnx is not installed (the export extra)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the export extra)")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    # --min-agreement 0: on 33 images of noise the int8 model's agreement is no verdict on the export.
    assert main(["export", str(run), "--int8", "--out", str(tmp_path / "q.onnx"), "--calibration-images", "6",
                 "--min-agreement", "0"]) == 0


def test_lr_find_on_cuda(data, tmp_path, capsys):
    assert main(["lr-find", "--data-dir", str(data), *SMALL, "--out", str(tmp_path / "lr"), "--steps", "20"]) == 0
    assert "suggested lr:" in capsys.readouterr().out
    assert (tmp_path / "lr" / "lr_find.csv").is_file()


def test_the_python_api_on_cuda(data, tmp_path):
    import resnet

    result = resnet.train(data_dir=data, epochs=1, image_size=32, eval_image_size=32, batch_size=4, workers=0,
                          quiet=True, arch="resnet10", device="cuda", out=tmp_path / "api")
    scores = resnet.evaluate(result.run_dir, device="cuda", workers=0)
    assert scores["images"] > 0
    answers = resnet.predict(result.run_dir / "best.pt", [data / "cat"], top_k=2, device="cuda")
    assert len(answers["predictions"]) == 11 and answers["failed"] == 0


def test_bench_times_graphs_and_both_half_precisions(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cuda", "--arch", "resnet10", "--image-size", "64", "--batch-size", "16",
                 "--steps", "2", "--rounds", "1", "--images", "32", "--generated-size", "80", "--workers", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["model_only_graphs"]) >= {"fp16", "fp32"}
    assert result["end_to_end"]["ours_setup"] == {**result["end_to_end"]["ours_setup"], "precision": "fp16",
                                                  "cuda_graphs": True}
    assert "as a CUDA graph" in capsys.readouterr().out


# --- torchrun ------------------------------------------------------------------------------------


def torchrun(data: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
              "-m", "resnet", "train", "--data-dir", str(data), *TINY, "--out", str(out)]
    return subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_one_process(data, tmp_path):
    """One process is no process group (world size 1), so this checks torchrun's launch on CUDA;
    NCCL itself needs two GPUs (below)."""
    result = torchrun(data, tmp_path / "one", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metrics(tmp_path / "one")) == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per process: two GPUs")
def test_torchrun_two_processes_over_nccl(data, tmp_path):
    result = torchrun(data, tmp_path / "two", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metrics(tmp_path / "two")) == 2
