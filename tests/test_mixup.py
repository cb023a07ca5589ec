"""MixUp and CutMix: the mixed targets, their seeding by (seed, epoch, step), the loss with soft
targets, and a run that mixes."""

from __future__ import annotations

import json
import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder
from resnet.engine import training
from resnet.engine.checkpoint import load_checkpoint
from resnet.cli import main
from resnet.config import TrainConfig, resolve_config
from resnet.errors import ResnetError
from resnet.engine.mixing import BatchMixer, mix_generator
from resnet.engine.step import TrainStep

CLASSES = 5


def batch(n: int = 8, side: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=generator), torch.arange(n) % CLASSES


def test_mixed_targets_are_probabilities_that_sum_to_one():
    images, labels = batch()
    mixer = BatchMixer(CLASSES, mixup=0.2, cutmix=1.0)
    for step in range(6):
        mixed, targets = mixer(images, labels, mix_generator(0, 0, step))
        assert mixed.shape == images.shape and targets.shape == (len(labels), CLASSES)
        assert targets.dtype.is_floating_point and (targets >= 0).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))


def test_mixup_blends_each_image_with_the_previous_one_by_its_label_share():
    images, labels = torch.rand(4, 3, 8, 8), torch.arange(4)  # distinct labels: the share is readable
    mixer = BatchMixer(4, mixup=0.4, cutmix=1.0, switch=0.0)  # switch 0: always MixUp
    mixed, targets = mixer(images, labels, mix_generator(3, 1, 2))
    share = targets[0, 0]
    assert 0 < share < 1
    torch.testing.assert_close(mixed, share * images + (1 - share) * images.roll(1, 0))
    torch.testing.assert_close(targets[torch.arange(4), labels.roll(1, 0)], (1 - share).expand(4))


def test_cutmix_pastes_a_box_and_mixes_the_labels_by_its_area():
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    mixer = BatchMixer(4, mixup=0.4, cutmix=1.0, switch=1.0)  # switch 1: always CutMix
    for step in range(4):
        mixed, targets = mixer(images, labels, mix_generator(0, 0, step))
        pasted = (mixed == images.roll(1, 0)).all(1) & (mixed != images).any(1)  # (N, H, W)
        kept = (mixed == images).all(1)
        assert (pasted | kept).all()  # every pixel is its own or the previous image's
        torch.testing.assert_close(targets[torch.arange(4), labels], 1 - pasted.float().mean((1, 2)))


def test_with_probability_zero_nothing_changes():
    images, labels = batch()
    mixer = BatchMixer(CLASSES, mixup=0.2, cutmix=1.0, prob=0.0)
    for step in range(4):
        mixed, targets = mixer(images, labels, mix_generator(0, 0, step))
        assert torch.equal(mixed, images) and torch.equal(targets, labels)
    config = resolve_config({"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.0})
    assert BatchMixer.from_config(config, CLASSES) is None
    assert BatchMixer.from_config(resolve_config({}), CLASSES) is None  # the default: off


def test_a_share_of_the_batches_is_mixed():
    images, labels = batch()
    mixer = BatchMixer(CLASSES, mixup=0.2, prob=0.5)
    mixed = [mixer(images, labels, mix_generator(0, 0, step))[1].is_floating_point() for step in range(200)]
    assert 60 < sum(mixed) < 140


def test_a_mix_is_a_function_of_seed_epoch_and_step():
    images, labels = batch()
    mixer = BatchMixer(CLASSES, mixup=0.2, cutmix=1.0)
    torch.manual_seed(1)
    first = mixer(images, labels, mix_generator(7, 2, 5))
    state = torch.get_rng_state()
    torch.manual_seed(2)  # the global RNG plays no part
    again = mixer(images, labels, mix_generator(7, 2, 5))
    other = mixer(images, labels, mix_generator(7, 2, 6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    torch.manual_seed(1)
    mixer(images, labels, mix_generator(7, 2, 5))
    assert torch.equal(torch.get_rng_state(), state)  # and is left as it was


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_loss_of_one_hot_targets_is_the_loss_of_their_labels(smoothing, weighted):
    model = torch.nn.Linear(4, CLASSES)
    weights = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.5]) if weighted else None
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"),
                     label_smoothing=smoothing, class_weights=weights)
    logits, labels = torch.randn(8, CLASSES), torch.tensor([0, 1, 2, 3, 4, 0, 2, 2])
    hard = step.loss(logits, labels)
    torch.testing.assert_close(step.loss(logits, F.one_hot(labels, CLASSES).float()), hard)
    if weighted:  # an image half of class 0, half of class 2 weighs (0.5 + 2.0) / 2
        soft = torch.zeros(1, CLASSES)
        soft[0, 0] = soft[0, 2] = 0.5
        expected = F.cross_entropy(logits[:1], soft, label_smoothing=smoothing) * 1.25
        torch.testing.assert_close(step.loss(logits[:1], soft), expected)


def test_the_options_are_checked_and_old_configs_load_without_them():
    with pytest.raises(ResnetError, match="--mixup must be at least 0"):
        resolve_config({"mixup": -0.2})
    with pytest.raises(ResnetError, match=r"--mix-prob must be in \[0, 1\]"):
        resolve_config({"mix_prob": 1.5})
    old = TrainConfig.from_dict({"arch": "resnet18", "epochs": 3})
    assert (old.mixup, old.cutmix, old.mix_prob, old.mix_switch) == (0.0, 0.0, 1.0, 0.5)


def test_a_run_with_mixup_and_cutmix_trains_and_records_them(tmp_path):
    data = make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=4)
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "1", "--image-size", "32",
                 "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet",
                 "--out", str(tmp_path / "run"), "--mixup", "0.2", "--cutmix", "1.0"])
    assert code == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["mixup"], config["cutmix"], config["mix_prob"], config["mix_switch"]) == (0.2, 1.0, 1.0, 0.5)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["final_top1"] <= 1


def test_a_mixing_run_resumes_bit_exact(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=4)
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "2", "--eval-every", "0",
            "--image-size", "32", "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet",
            "--mixup", "0.4", "--cutmix", "1.0", "--mix-prob", "0.8", "--balance", "loss", "--arch", "resnet10"]
    targets, loss = [], TrainStep.loss

    def recorded_loss(step: TrainStep, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets.append(labels)
        return loss(step, logits, labels)

    with monkeypatch.context() as patch:
        patch.setattr(TrainStep, "loss", recorded_loss)
        assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert len(targets) == 4 and any(t.is_floating_point() for t in targets)  # 2 steps an epoch, mixed
    steps = iter(range(10 ** 6))
    with monkeypatch.context() as patch:  # Ctrl-C after the first step of the second epoch
        patch.setattr(training, "stop_requested", lambda *_: signal.SIGINT if next(steps) == 2 else None)
        assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["step"] == 1
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    whole, cut = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("whole", "cut"))
    assert all(torch.equal(value, cut[key]) for key, value in whole.items())
