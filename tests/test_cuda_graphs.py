"""--cuda-graphs and --precision auto, as far as a CPU can check them: the option's validation and
resolution, and the graphed step's bookkeeping (static tensors, the lr as a device tensor, eager
partial batches, a new crop size, a failed capture) with the CUDA graph replaced by a recorder that
replays by calling the step again. The graph itself is checked by tests/test_gpu.py (-m gpu)."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import make_image_folder
from resnet.cli import main
from resnet.config import resolve_config, resume_config
from resnet.engine.assembly import build_parts, training_step
from resnet.engine.graphs import WARMUP_STEPS, GraphedStep, uses_cuda_graphs
from resnet.engine.step import TrainStep
from resnet.errors import ResnetError
from resnet.util.distributed import Topology
from resnet.util.hardware import cpu_supports_bf16, select_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it here


# --- the option --------------------------------------------------------------------------------


def test_cuda_graphs_resolves_to_eager_off_cuda_and_on_with_one_cuda_process():
    assert not uses_cuda_graphs(resolve_config({}), CPU)
    assert not uses_cuda_graphs(resolve_config({"cuda_graphs": "off"}), CUDA)
    assert uses_cuda_graphs(resolve_config({}), CUDA)
    assert uses_cuda_graphs(resolve_config({"cuda_graphs": "on"}), CUDA)
    assert not uses_cuda_graphs(resolve_config({}), CUDA, Topology(0, 2))  # torchrun: DDP
    assert not uses_cuda_graphs(resolve_config({"compile": True}), CUDA)


@pytest.mark.parametrize("config, device, topology, why", [
    ({"cuda_graphs": "on"}, CPU, Topology(), "this run is on cpu"),
    ({"cuda_graphs": "on"}, torch.device("mps"), Topology(), "this run is on mps"),
    ({"cuda_graphs": "on"}, CUDA, Topology(0, 2), "torchrun"),
    ({"cuda_graphs": "on", "compile": True}, CUDA, Topology(), "--compile"),
])
def test_cuda_graphs_on_where_it_cannot_be_is_one_line(config, device, topology, why):
    with pytest.raises(ResnetError, match=f"--cuda-graphs on: .*{why}") as error:
        uses_cuda_graphs(resolve_config(config), device, topology)
    assert "\n" not in str(error.value)


def test_cuda_graphs_takes_auto_on_off_only_and_may_change_on_resume(tmp_path):
    with pytest.raises(ResnetError, match="--cuda-graphs must be one of auto, on, off, got 'yes'"):
        resolve_config({"cuda_graphs": "yes"})
    (tmp_path / "config.json").write_text(resolve_config({"cuda_graphs": "on"}).to_json())
    assert resume_config(tmp_path, {"cuda_graphs": "off"}).cuda_graphs == "off"


def test_train_with_cuda_graphs_on_a_cpu_is_one_line_before_any_decode(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", ["a", "b"], per_class=4)
    code = main(["train", "--data-dir", str(data), "--device", "cpu", "--cuda-graphs", "on", "--epochs", "1",
                 "--image-size", "32", "--out", str(tmp_path / "run"), "--quiet", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["resnet train: error: --cuda-graphs on: it needs a CUDA GPU, and this run "
                                        "is on cpu; use --cuda-graphs auto or off"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_bench_with_cuda_graphs_on_a_cpu_is_one_line(capsys):
    assert main(["bench", "--device", "cpu", "--cuda-graphs", "on"]) == 2
    assert capsys.readouterr().err.strip() == ("resnet bench: error: --cuda-graphs on: CUDA graphs need a CUDA GPU, "
                                               "and this bench runs on cpu")


def test_a_cpu_run_steps_eagerly_whatever_the_option_says():
    for setting in ("auto", "off"):
        config = resolve_config({"cuda_graphs": setting, "device": "cpu"})
        parts = build_parts(config, 3, CPU, None)
        assert type(training_step(config, parts, CPU, None)) is TrainStep


# --- precision auto -----------------------------------------------------------------------------


def test_precision_auto_is_fp16_on_cuda_and_unchanged_on_a_cpu():
    assert select_precision("auto", CUDA) is torch.float16
    assert select_precision("bf16", CUDA) is torch.bfloat16  # still a choice
    assert select_precision("auto", CPU) is (torch.bfloat16 if cpu_supports_bf16() else None)
    assert select_precision("auto", torch.device("mps")) is None


# --- the graphed step's bookkeeping, with the graph replaced ---------------------------------------


class CallAgain:
    """Stands in for a CUDA graph on a CPU: ``capture`` runs nothing and returns a loss tensor that
    each ``replay`` fills by calling the captured function again, on the static tensors."""

    captures = 0

    def __init__(self, device: torch.device) -> None:
        self.body, self.loss = None, None

    def capture(self, body):
        CallAgain.captures += 1
        self.body, self.loss = body, torch.zeros(())
        return self.loss

    def replay(self) -> None:
        self.loss.copy_(self.body())

    def warmup(self, body):
        return body()


class FailingCapture(CallAgain):
    def capture(self, body):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def steps(mix: bool = False, balance: bool = False):
    """The same model, optimizer and scaler twice: eagerly stepped, and as a graphed step."""
    options = {"arch": "resnet10", "device": "cpu", "precision": "fp32", "lr": 0.2, "weight_decay": 5e-4}
    if mix:
        options.update(mixup=0.2, cutmix=1.0)
    config = resolve_config(options)
    counts = torch.tensor([5, 1, 2]) if balance else None
    made = []
    for _ in range(2):
        parts = build_parts(config, 3, CPU, None)
        parts.model.train()
        made.append(training_step(config, parts, CPU, None, counts))
    return made


def batches(mix: bool = False):
    """Full batches of 6 at 32 px, a partial one, full ones again, then a new crop size (48 px)."""
    generator = torch.Generator().manual_seed(0)
    for n, size in [(6, 32)] * (WARMUP_STEPS + 3) + [(4, 32), (6, 32), (6, 32)] + [(6, 48)] * (WARMUP_STEPS + 2):
        images = torch.randn(n, 3, size, size, generator=generator)
        labels = torch.randint(0, 3, (n,), generator=generator)
        if mix and n == 6 and size == 32 and torch.rand((), generator=generator) < 0.5:  # a mixed batch: probabilities
            labels = torch.softmax(torch.randn(n, 3, generator=generator), 1)
        yield images, labels


def run_both(eager, graphed, mix=False):
    losses = ([], [])
    for i, (images, labels) in enumerate(batches(mix)):
        lr = 0.02 * (i + 1) / 20  # a schedule: each step its own lr
        for step, out in zip((eager, graphed), losses):
            for group in step.optimizer.param_groups:
                group["lr"] = lr
            out.append(step(images, labels).item())
    return losses


@pytest.mark.parametrize("mix, balance", [(False, False), (True, True)])
def test_graphed_step_trains_as_the_eager_step(mix, balance):
    eager, inner = steps(mix, balance)
    graphed = GraphedStep(inner, 3 if mix else None, graph=CallAgain)
    CallAgain.captures = 0
    eager_losses, graphed_losses = run_both(eager, graphed, mix)
    # One capture a crop size; the partial batch of 4 stepped eagerly without a new one.
    assert CallAgain.captures == 2
    if mix:  # one-hot targets against class indices: the same loss up to float rounding
        torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-4, atol=1e-5)
    else:
        assert graphed_losses == eager_losses
    for a, b in zip(eager.model.state_dict().values(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # BatchNorm's statistics and batch count too
    groups = graphed.optimizer.state_dict()["param_groups"]
    assert all(type(group["lr"]) is float for group in groups)  # what a checkpoint holds


def test_a_failed_capture_is_one_warning_then_eager_steps():
    eager, inner = steps()
    graphed = GraphedStep(inner, graph=FailingCapture)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager_losses, graphed_losses = run_both(eager, graphed)
    messages = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    assert messages == ["the CUDA graph capture of the training step failed (operation not permitted when stream "
                        "is capturing); training on with eager steps (--cuda-graphs off skips the attempt)"]
    assert graphed_losses == eager_losses


def test_graph_lines_compare_graphs_with_eager_and_fp16_with_bf16():
    from resnet.tools.bench import graph_lines

    result = {"model_only": {"fp32": {"nchw": 1.0, "channels_last": 100.0},
                             "bf16": {"nchw": 1.0, "channels_last": 200.0},
                             "fp16": {"nchw": 1.0, "channels_last": 260.0}},
              "model_only_graphs": {"bf16": 300.0, "fp16": 520.0}}
    assert graph_lines(result) == [
        "  bf16 as a CUDA graph: 300.0 images/s against 200.0 eager (1.50x)",
        "  fp16 as a CUDA graph: 520.0 images/s against 260.0 eager (2.00x)",
        "  fp16 / bf16 (channels_last): 1.30x eager, 1.73x as CUDA graphs",
    ]
    assert graph_lines({"model_only": {"fp32": {"nchw": 1.0, "channels_last": 2.0}}}) == []


def test_a_resumed_optimizer_keeps_its_own_way_of_updating():
    """A checkpoint's optimizer groups say how the saving run updated (fused, capturable): the
    resuming run keeps its own, which its device and --cuda-graphs chose, and the state fits it."""
    from resnet.engine.checkpoint import load_optimizer_state

    def adamw(fused: bool, capturable: bool) -> torch.optim.AdamW:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused, capturable=capturable)

    saving = adamw(fused=False, capturable=False)
    saving.param_groups[0]["params"][0].sum().backward()
    saving.step()
    resuming = adamw(fused=True, capturable=True)
    load_optimizer_state(resuming, saving.state_dict())
    group = resuming.param_groups[0]
    assert (group["fused"], group["capturable"], group["lr"]) == (True, True, 0.1)
    step = resuming.state[group["params"][0]]["step"]
    assert step.dtype == torch.float32 and step.item() == 1
