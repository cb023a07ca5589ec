"""What a run survives: two processes on one directory, a full disk, SIGTERM, Ctrl-C and
kill -9, and the environment faults that must be one-line errors."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from resnet.data import cache as cache_module, pipeline
from resnet.engine import rundir
from resnet.engine.checkpoint import load_checkpoint
from resnet.util import files
from resnet.cli import main
from resnet.config import resolve_config
from resnet.errors import ResnetError
from resnet.engine.step import TrainStep

# resnet10: half resnet18's steps and checkpoint bytes (the full-disk test sizes its disk for resnet18's).
TINY = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--quiet",
        "--arch", "resnet10", "--lr", "0.05"]


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", ["a", "b", "c"], per_class=6)


def train_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "imagefolder", "--data-dir", str(folder), *TINY, "--out", str(out), *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return all(torch.equal(value, second[key]) for key, value in first.items())


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1",
            "RESNET_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


# --- one process per run directory --------------------------------------------------------


def claim_and_hold(out: str, start: float, results) -> None:
    """A process racing for ``out``: claim it at ``start``, hold it a moment, report."""
    config = resolve_config({"out": out})
    time.sleep(max(0.0, start - time.time()))
    try:
        claimed = rundir.claim_fresh(config)
    except ResnetError as error:
        results.put(("refused", os.getpid(), str(error)))
        return
    (claimed.path / "config.json").write_text(str(os.getpid()))
    time.sleep(0.2)
    results.put(("claimed", os.getpid(), (claimed.path / "config.json").read_text()))
    claimed.release(failed=False)


def test_processes_racing_for_one_out_dir_get_it_once(tmp_path):
    context = multiprocessing.get_context("fork")
    # 15 races of 4 processes for one directory each, all run at once (one start time, a second
    # away: every racer is forked by then) rather than one after another.
    start, races = time.time() + 1.0, []
    for attempt in range(15):
        out, results = str(tmp_path / f"run{attempt}"), context.Queue()
        races.append((out, results, [context.Process(target=claim_and_hold, args=(out, start, results))
                                     for _ in range(4)]))
    for _, _, racers in races:
        for racer in racers:
            racer.start()
    for out, results, racers in races:
        outcomes = [results.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join()
        claimed = [(pid, text) for kind, pid, text in outcomes if kind == "claimed"]
        refusals = [text for kind, _, text in outcomes if kind == "refused"]
        assert len(claimed) == 1, outcomes
        assert claimed[0][1] == str(claimed[0][0])  # what the holder wrote, nobody else's
        # "another resnet process" when the lock is read before its holder has written itself in
        assert all("is in use by another resnet " in text or "is not empty" in text for text in refusals), refusals
        assert not (Path(out) / rundir.LOCK_NAME).exists()  # released


@pytest.mark.slow  # two interpreters at once (~10 s of CPU); the claim itself is raced above in forks
def test_two_trainings_started_together_on_one_out_dir(folder, tmp_path):
    out = tmp_path / "run"
    env = subprocess_env(tmp_path)
    commands = [[sys.executable, "-m", "resnet", *train_args(folder, out, "--epochs", "1", "--seed", str(seed))]
                for seed in (1, 2)]
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    finished = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in finished)
    assert codes == [0, 2], finished
    loser_err = next(err for code, _, err in finished if code == 2).strip()
    assert len(loser_err.splitlines()) == 1 and ("is in use by another resnet train" in loser_err
                                                 or "is not empty" in loser_err), loser_err
    saved = json.loads((out / "config.json").read_text())
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == saved["seed"]  # one run's files, not a mix
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0


def test_a_lock_left_by_a_dead_process_is_taken_over(folder, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(folder, out, "--epochs", "1")) == 0
    (out / rundir.LOCK_NAME).write_text("process 999999 on a-host")  # as kill -9 leaves it
    with pytest.warns(UserWarning, match="taking over the lock left by process 999999 on a-host, which is no"):
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert not (out / rundir.LOCK_NAME).exists()


def test_a_live_lock_refuses_a_second_run_and_resume(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(folder, out, "--epochs", "1")) == 0
    held = rundir.claim_existing(out)  # another process's run, as far as the lock can tell
    try:
        capsys.readouterr()
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
        assert f"is in use by another resnet train (process {os.getpid()}" in one_line_error(capsys)
    finally:
        held.release(failed=False)
    assert load_checkpoint(out / "last.pt")["state"]["epoch"] == 1  # untouched


def test_default_run_dirs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config({})
    first, second = rundir.claim_fresh(config), rundir.claim_fresh(config)
    try:
        assert first.path != second.path and second.path.name.startswith(first.path.name[:20])
    finally:
        first.release(failed=True), second.release(failed=True)
    assert not any((tmp_path / "runs").iterdir())  # neither started: both removed


# --- a full disk ----------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(folder, tmp_path, capsys):
    """A real 120 MB tmpfs: resnet18's first best.pt (90 MB) fits, last.pt does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        assert main(train_args(folder, disk / "run", "--epochs", "1", "--arch", "resnet18")) == 2
        err = one_line_error(capsys)
        assert f"no space left on the device to write {disk / 'run' / 'last.pt'} (it needs " in err
        assert "MB free)" in err
        assert list(disk.iterdir()) == []  # no temporary file, no half a run
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fail_writes_of(monkeypatch, name: str, epoch: int) -> None:
    """Writing ``name`` at the end of 1-based ``epoch`` fails as a full disk does: ENOSPC."""
    real = files.write_atomic

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_atomic(path, write, needed=None):
        last = Path(path).parent / "last.pt"
        ending = load_checkpoint(last)["state"]["epoch"] + 1 if last.exists() else 1
        return real(path, full if Path(path).name == name and ending == epoch else write, needed)

    monkeypatch.setattr(files, "write_atomic", write_atomic)


def test_best_score_is_recorded_only_once_best_pt_is_written(folder, tmp_path, monkeypatch, capsys):
    args = ["--epochs", "4", "--eval-every", "1"]
    assert main(train_args(folder, tmp_path / "whole", *args)) == 0
    with open(tmp_path / "whole" / "metrics.csv") as f:
        top1 = [float(row["top1"]) for row in csv.DictReader(f)]
    improving = [e + 1 for e in range(1, len(top1)) if top1[e] > max(top1[:e])]
    assert improving, f"the run never improved after epoch 1 ({top1}): the test needs a later best"
    epoch = improving[0]

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        fail_writes_of(patch, "best.pt", epoch)
        capsys.readouterr()
        assert main(train_args(folder, cut, *args)) == 2
    err = one_line_error(capsys)
    assert f"no space left on the device to write {cut / 'best.pt'}" in err
    assert f"continue with: resnet train --resume {cut}" in err
    last = load_checkpoint(cut / "last.pt")["state"]
    assert last["epoch"] == epoch - 1 and last["best_top1"] == max(top1[:epoch - 1])  # the new best is not claimed
    assert not (cut / "summary.json").exists()

    assert main(["train", "--resume", str(cut)]) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert load_checkpoint(cut / "best.pt")["state"]["epoch"] == summary["best_epoch"]
    assert same_weights(cut / "last.pt", tmp_path / "whole" / "last.pt")
    assert same_weights(cut / "best.pt", tmp_path / "whole" / "best.pt")


# --- signals ---------------------------------------------------------------------------------


def signal_at_step(monkeypatch, signum: int, global_step: int) -> None:
    """A real signal to this process during the ``global_step``-th training step."""
    real, calls = TrainStep.__call__, iter(range(10**6))

    def step(self, images, labels):
        if next(calls) == global_step:
            os.kill(os.getpid(), signum)
        return real(self, images, labels)

    monkeypatch.setattr(TrainStep, "__call__", step)


def test_sigterm_mid_epoch_saves_and_resumes_bit_exact(folder, tmp_path, monkeypatch, capsys):
    args = ["--epochs", "3", "--ema-decay", "0.9"]
    assert main(train_args(folder, tmp_path / "whole", *args)) == 0
    with monkeypatch.context() as patch:
        signal_at_step(patch, signal.SIGTERM, 4 + 1)  # 4 steps an epoch: in epoch 2's second step
        capsys.readouterr()
        assert main(train_args(folder, tmp_path / "cut", *args)) == 128 + signal.SIGTERM
    err = one_line_error(capsys)
    assert "stopped by SIGTERM at epoch 2, step 2; checkpoint saved" in err
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's alone
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    assert same_weights(tmp_path / "whole" / "last.pt", tmp_path / "cut" / "last.pt")


def test_a_signal_before_the_first_checkpoint_leaves_no_directory(folder, tmp_path, monkeypatch, capsys):
    real = cache_module.decode

    def decode_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, as it would inside the decode
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode", decode_then_signal)
    assert main(train_args(folder, tmp_path / "run", "--epochs", "1")) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM before the first checkpoint: nothing to keep" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert main(train_args(folder, tmp_path / "run", "--epochs", "1")) == 0  # the same --out starts afresh


def test_a_swallowed_ctrl_c_during_the_decode_still_stops_the_run(folder, tmp_path, monkeypatch, capsys):
    """Python drops an exception raised in a fork handler (a DataLoader starting workers):
    the request itself must survive that."""
    real = cache_module.decode

    def decode_swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # "Exception ignored in: <function _releaseLock ...>"
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode", decode_swallowing)
    assert main(train_args(folder, tmp_path / "run", "--epochs", "1")) == 130
    assert "stopped by SIGINT before the first checkpoint" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two interpreters one after the other (~8 s); in-process: the SIGTERM and dead-lock tests
def test_kill_9_and_sigterm_to_real_runs_then_resume(folder, tmp_path):
    """Real processes: kill -9 during the first epoch leaves a directory that --resume starts
    over in; SIGTERM later stops with a checkpoint and exit status 143."""
    env, out = subprocess_env(tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "resnet", *train_args(folder, out, "--epochs", "40", "--batch-size", "2")]

    def start_and_wait_for(text: str) -> subprocess.Popen:
        process = subprocess.Popen(command if not out.exists() else
                                   [sys.executable, "-m", "resnet", "train", "--resume", str(out)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in process.stdout:
            if text in line:
                return process
        pytest.fail(f"no {text!r} in the output: {process.communicate()}")

    killed = start_and_wait_for("run ")  # the start line: data decoded, the first epoch begins
    killed.kill()
    killed.wait(timeout=60)
    assert not (out / "last.pt").exists() and (out / "config.json").exists()

    resumed = start_and_wait_for("epoch   1/40")
    resumed.send_signal(signal.SIGTERM)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at epoch" in err and f"resnet train --resume {out}" in err
    assert load_checkpoint(out / "last.pt")["state"]["epoch"] >= 1
    assert not (out / rundir.LOCK_NAME).exists()


# --- one-line errors ---------------------------------------------------------------------------


def test_batchnorm_single_value_steps_are_refused_before_training(folder, tmp_path, capsys):
    assert main(train_args(folder, tmp_path / "run", "--epochs", "1", "--batch-size", "1")) == 2
    assert "--batch-size 1 gives 1 image a step: at 32 px layer4's map is 1x1" in one_line_error(capsys)
    one = make_image_folder(tmp_path / "one", ["a"], per_class=1)
    (tmp_path / "split" / "train").mkdir(parents=True)
    (one / "a").rename(tmp_path / "split" / "train" / "a")
    make_image_folder(tmp_path / "split" / "val", ["a"], per_class=2)
    assert main(train_args(tmp_path / "split", tmp_path / "run", "--epochs", "1")) == 2
    assert "the training split has a single image" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    # 64 px gives layer4 a 2x2 map: one image a step is enough for BatchNorm there.
    assert main(train_args(folder, tmp_path / "run", "--epochs", "1", "--batch-size", "1",
                           "--image-size", "64", "--eval-image-size", "64", "--min-image-size", "64")) == 0


def test_unknown_arch_in_a_resumed_config_is_one_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(folder, out, "--epochs", "1")) == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "arch": "resnet9000"}))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    assert "--arch must be one of resnet10, resnet18" in one_line_error(capsys)


def test_a_truncated_last_pt_names_best_pt_before_any_decode(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(train_args(folder, out, "--epochs", "1")) == 0
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:5000])
    monkeypatch.setattr(pipeline, "decode", lambda *a, **k: pytest.fail("decoded before the error"))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = one_line_error(capsys)
    assert "last.pt is not a readable checkpoint" in err
    assert f"{out / 'best.pt'} is intact (saved after epoch 1): copy it over last.pt" in err


def test_data_dir_is_stored_absolute(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder.parent)
    assert resolve_config({"dataset": "imagefolder", "data_dir": folder.name}).data_dir == str(folder)


def test_eval_into_a_closed_pipe_exits_quietly(folder, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(folder, out, "--epochs", "1")) == 0
    process = subprocess.Popen([sys.executable, "-m", "resnet", "eval", str(out), "--workers", "0"],
                               env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line, as after head -1
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == "", err


class SlowItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        time.sleep(0.2)
        return index


def test_data_workers_leave_a_group_sigterm_to_the_main_process():
    """Slurm and a terminal signal the whole process group: a worker must not die of it."""
    from resnet.util.signals import leave_signals_to_the_main_process

    loader = torch.utils.data.DataLoader(SlowItems(), batch_size=1, num_workers=2,
                                         worker_init_fn=leave_signals_to_the_main_process)
    seen = []
    for batch in (iterator := iter(loader)):
        if not seen:
            for worker in iterator._workers:
                os.kill(worker.pid, signal.SIGTERM)
        seen.append(int(batch))
    assert seen == list(range(8))
