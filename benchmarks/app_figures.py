"""The app figures of docs/using.md from a trained run: classify timing, Grad-CAM overlays, a screenshot.

    PYTHONPATH=src python benchmarks/app_figures.py RUN_DIR [--out docs] [--calls 20]

1. Times ``resnet.tools.app.classify`` (what the Classify tab runs per image) on real evaluation
   images, one image per call: the median of ``--calls`` calls with the Grad-CAM overlay
   and without it. Written to OUT/app-timing.json.
2. Picks two evaluation images of different classes the model gets right most confidently
   and writes their overlays with ``resnet explain`` (OUT/<stem>.cam.png).
3. Starts ``resnet serve`` on a free port, uploads the first image in the system Chromium
   (Playwright) and saves a screenshot of the Classify tab as OUT/app-classify.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

from resnet.tools.app import classify
from resnet.cli import main as resnet
from resnet.tools.evaluation import eval_source, load_model_from_checkpoint
from resnet.tools.prediction import predict_files

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def time_classify(model, checkpoint, paths: list[str], calls: int) -> dict:
    classify(model, checkpoint, paths[:1])  # warm-up: first-call allocations, captum import
    timings = {}
    for with_cam in (True, False):
        seconds = []
        for path in (paths * calls)[:calls]:
            start = time.perf_counter()
            classify(model, checkpoint, [path], with_cam=with_cam)
            seconds.append(time.perf_counter() - start)
        timings["with_cam" if with_cam else "without_cam"] = statistics.median(seconds)
    return timings


def confident_correct(model, checkpoint, source, limit: int = 300) -> list[str]:
    """Two eval images of different classes, the most confidently right first."""
    paths = [str(p) for p in source.paths[:limit]]
    right = []
    for prediction, label in zip(predict_files(model, checkpoint, paths, device="cpu"), source.labels):
        name, probability = prediction.top[0]
        if name == checkpoint["classes"][label]:
            right.append((probability, name, prediction.path))
    chosen, seen = [], set()
    for _, name, path in sorted(right, reverse=True):
        if name not in seen:
            chosen.append(path)
            seen.add(name)
    return (chosen + [p for p in paths if p not in chosen])[:2]  # a weak model: fill with any


def screenshot(run: Path, image: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "resnet", "serve", str(run), "--runs-dir", str(run.parent),
                               "--port", str(port)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.locator("#files input[type=file]").set_input_files(image)
            page.wait_for_selector("#top5 >> text=%", timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)  # < 300 KB for the docs page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, checkpoint = load_model_from_checkpoint(args.run)
    source = eval_source(checkpoint)[0]
    paths = [str(p) for p in source.paths[: args.calls]]
    timings = time_classify(model, checkpoint, paths, args.calls)
    result = {"checkpoint": checkpoint["path"], "arch": checkpoint["arch"], "tta": checkpoint["tta"],
              "image_size": checkpoint["normalization"]["image_size"], "calls": args.calls,
              "median_seconds": timings, "cpus": os.cpu_count(), "torch_threads": __import__("torch").get_num_threads()}
    (args.out / "app-timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    chosen = confident_correct(model, checkpoint, source)
    resnet(["explain", str(args.run), *chosen, "--out", str(args.out)])
    screenshot(args.run, chosen[0], args.out / "app-classify.png")
    print("wrote", *sorted(p.name for p in args.out.iterdir()))


if __name__ == "__main__":
    main()
