"""``resnet serve``: a local web app to try a trained model and look at its runs.

Two tabs. **Classify**: images in, the top-5 classes with probabilities and a Grad-CAM
overlay out; the probabilities come from ``resnet.tools.prediction``'s decoding and ranking (through
``resnet.tools.explain.explain_image``), so a file gets exactly what ``resnet predict`` prints.
**Runs**: each run's config, headline metrics (top-1, and balanced accuracy and macro-F1 for
runs that recorded them), learning curves (re-read from
``metrics.csv`` every few seconds, so a run still training updates as epochs land),
and what ``resnet eval`` wrote: confusion matrix, most-confused pairs, per-class table,
mistakes gallery.

The page works offline: Gradio's analytics and version check are off, the theme uses
system fonts (nothing from Google Fonts), no share link is made. The server binds to
127.0.0.1 unless told otherwise, and has no authentication.

The server gives out only what the page shows: the thumbnails, plots and overlays it made or
copied into its own temporary folder (and what Gradio keeps in its cache: uploads, the copies
it makes of outputs), never a checkpoint, a run's config or metrics, or an image of the dataset.

Everything except ``build_app`` and ``serve`` is plain Python, testable without a browser.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet.errors import ResnetError
from resnet.util.optional import require
from resnet.words import plural
from resnet.data.sources import ImageFiles
from resnet.tools.evaluation import eval_source, load_model_from_checkpoint
from resnet.tools.explain import explain_image
from resnet.tools.options import PredictOptions
from resnet.tools.prediction import below, predict_files

TOP_CLASS = "(top class)"
REFRESH_SECONDS = 5  # how often the Runs tab re-reads a run's metrics.csv
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial",
                "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


# --- runs ------------------------------------------------------------------------------


def find_runs(named: list[str], runs_dir: str | os.PathLike) -> list[Path]:
    """The named runs (first, in order), then every run directory directly under ``runs_dir``."""
    runs = []
    for name in named:
        path = Path(name)
        if not (path / "config.json").exists() and not (path.is_file() and path.suffix == ".pt"):
            raise ResnetError(f"{name} is not a run directory (no config.json) or a checkpoint file")
        runs.append(path)
    root = Path(runs_dir)
    if root.is_dir():
        found = sorted(p.parent for p in root.glob("*/config.json"))
        runs += [p for p in found if p.resolve() not in {r.resolve() for r in runs}]
    return runs


def has_checkpoint(run: Path) -> bool:
    return run.is_file() or (run / "best.pt").exists() or (run / "last.pt").exists()


def read_metrics(run: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` as numbers (empty when there is none yet)."""
    try:
        with open(run / "metrics.csv", newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return []


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


CONFIG_BRIEF = ("dataset", "arch", "weights", "epochs", "image_size", "eval_image_size", "batch_size", "optimizer",
                "lr", "weight_decay", "label_smoothing", "ema_decay", "tta", "balance", "select_metric", "precision",
                "seed", "temperature")  # temperature: resnet calibrate's, kept beside the options
# The scores a run records besides top-1 and top-5 (runs of older versions have none of them).
CLASS_SCORES = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))
SCORE_NAMES = {"top1": "top-1", **dict(CLASS_SCORES)}
PER_CLASS_COLUMNS = ["class", "images", "correct", "accuracy", "precision", "recall", "f1"]


def class_scores_brief(values: dict[str, Any], prefix: str = "") -> str:
    """", balanced accuracy X%, macro-F1 Y%" of a summary (``prefix`` "final_") or a metrics row,
    for the scores it has."""
    return "".join(f", {name} {100 * values[prefix + key]:.2f}%" for key, name in CLASS_SCORES
                   if values.get(prefix + key) is not None)


def run_brief(run: Path) -> str:
    """Markdown: the config in brief and the headline metrics (or the progress of a live run)."""
    from resnet.util.plots import evaluated

    config, summary, rows = read_json(run / "config.json"), read_json(run / "summary.json"), read_metrics(run)
    lines = [f"### {run.name}", "", " · ".join(f"**{k}** {config[k]}" for k in CONFIG_BRIEF
                                              if config.get(k) is not None), ""]
    if summary:
        chosen = summary.get("select_metric", "top1")  # best.pt's epoch has the best of it
        lines.append(f"final top-1 **{100 * summary['final_top1']:.2f}%**, top-5 {100 * summary['final_top5']:.2f}%"
                     f"{class_scores_brief(summary, 'final_')}, best {SCORE_NAMES[chosen]} "
                     f"{100 * summary['best_' + chosen]:.2f}% (epoch {summary['best_epoch']}), "
                     f"{plural(summary['epochs'], 'epoch')} in {summary['seconds'] / 60:.1f} min")
        if "test_top1" in summary:
            lines.append(f"; test top-1 **{100 * summary['test_top1']:.2f}%**")
    elif rows:
        scored = evaluated(rows)
        score = (f", top-1 {100 * scored[-1]['top1']:.2f}% after epoch {int(scored[-1]['epoch'])}"
                 f"{class_scores_brief(scored[-1])}, eval loss {scored[-1]['eval_loss']:.3f}"
                 ) if scored else ", not evaluated yet"
        lines.append(f"training: epoch {int(rows[-1]['epoch'])} of {config.get('epochs', '?')}{score}")
    else:
        lines.append("no epoch finished yet")
    return "\n".join(lines)


def served_copy(path: str | os.PathLike, folder: Path, stem: str = "file") -> str:
    """A copy of ``path`` in the served ``folder``: the same bytes, under a generated name (``stem``,
    a hash, the extension) that tells nothing of where the original lies.

    Gradio serves only the files in ``folder``, so whatever the page shows from disk comes through
    here. The name is derived from the original's path, size and modification time, so a file left
    unchanged is copied once, and one rewritten (a new ``resnet eval``) gets a fresh copy."""
    source = Path(path).resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    suffix = source.suffix if source.suffix[1:].isalnum() else ""
    copy = folder / f"{stem}-{key}{suffix}"
    if not copy.exists():
        # Copied under a temporary name first: two events asking at once never show a half-written file.
        fd, partial = tempfile.mkstemp(dir=folder, suffix=".part")
        os.close(fd)
        shutil.copyfile(source, partial)
        os.replace(partial, copy)
    return str(copy)


def curves_png(run: Path, folder: Path) -> str | None:
    """The learning curves drawn from ``metrics.csv`` now (None before the first epoch)."""
    from resnet.util.plots import plot_curves

    rows = read_metrics(run)
    if not rows:
        return None
    path = folder / f"curves-{abs(hash(str(run.resolve())))}-{len(rows)}.png"
    if not path.exists():
        plot_curves(rows, path, run.name)
    return str(path)


def eval_views(run: Path, folder: Path) -> dict[str, Any]:
    """What ``resnet eval`` left in the run directory: its PNGs as copies in the served ``folder``,
    and its tables (None when absent)."""
    run_dir = run.parent if run.is_file() else run

    def table(name: str) -> list[list[str]] | None:
        try:
            with open(run_dir / name, newline="") as f:
                return list(csv.reader(f))
        except OSError:
            return None

    def png(name: str) -> str | None:
        path = run_dir / name
        return served_copy(path, folder, path.stem) if path.exists() else None

    pairs, per_class = table("most_confused.csv"), table("per_class.csv")
    # per_class.csv gained precision, recall and f1: its own header says which columns it has.
    return {"confusion": png("confusion_matrix.png"), "mistakes": png("mistakes.png"),
            "most_confused": pairs[1:] if pairs else pairs, "per_class": per_class[1:] if per_class else per_class,
            "per_class_columns": per_class[0] if per_class else PER_CLASS_COLUMNS}


# --- classify ----------------------------------------------------------------------------


@dataclass
class Classified:
    name: str  # the file's name as shown
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    target: str | None = None  # the class the overlay explains
    probability: float | None = None
    overlay: np.ndarray | None = None
    error: str | None = None
    unknown: bool = False  # the top probability is below the minimum confidence


class ModelCache:
    """Checkpoints loaded once per server; the app classifies with whichever run is chosen."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[Any, dict[str, Any]]] = {}

    def get(self, run: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
        key = str(Path(run).resolve())
        if key not in self.models:
            self.models[key] = load_model_from_checkpoint(run)
        return self.models[key]


def classify(model: Any, checkpoint: dict[str, Any], paths: list[str], cam_class: str | None = None,
             with_cam: bool = True, min_confidence: float = 0.0) -> list[Classified]:
    """Top-5 and (``with_cam``) the Grad-CAM overlay of ``cam_class`` (None: the top class)
    for each file, ``unknown`` when the top probability is below ``min_confidence`` (as
    ``resnet predict --min-confidence``); a file that cannot be read or classified gets an
    ``error``, never an exception."""

    results = []
    for path in paths:
        name = Path(path).name
        try:
            if with_cam:
                e = explain_image(model, checkpoint, path, cam_class)
                result = Classified(name, e.top, e.target, e.probability, e.overlay)
            else:
                prediction = next(predict_files(model, checkpoint, [path], PredictOptions(top_k=5), device="cpu"))
                result = Classified(name, prediction.top, error=prediction.error)
        except Exception as error:  # a bad upload must never take the server down
            text = str(error).strip()
            result = Classified(name, error=text.splitlines()[0] if text else type(error).__name__)
        if result.error is not None:  # name the file as the user knows it, not by the server's temp path
            result.error = result.error.removeprefix(f"{path}: ").replace(str(path), name)
        result.unknown = below(result.top, min_confidence)
        results.append(result)
    return results


def example_images(checkpoint: dict[str, Any], folder: Path, n: int = 4) -> list[str]:
    """Up to ``n`` evaluation images of different classes, when the run's data is on disk, as files
    in the served ``folder``: copies of image files byte for byte (so an example is classified
    exactly as ``resnet predict`` classifies its original), PNGs of in-memory datasets."""
    from PIL import Image

    try:
        source, _, _, _ = eval_source(checkpoint)
    except Exception:  # no data on this machine: the app works without examples
        return []
    first_of_class: dict[int, int] = {}
    for i, label in enumerate(source.labels):
        first_of_class.setdefault(int(label), i)
    chosen = list(first_of_class.values())[:n]
    if isinstance(source, ImageFiles):
        return [served_copy(source.paths[i], folder, "example") for i in chosen]
    paths = []
    for i in chosen:
        path = folder / f"example-{i}.png"
        Image.fromarray(np.asarray(source.images[i]).transpose(1, 2, 0)).save(path)
        paths.append(str(path))
    return paths


# --- the Gradio app --------------------------------------------------------------------------


def classify_outputs(results: list[Classified]) -> tuple[dict[str, float] | str | None, list, list[list], str]:
    """(label of the first good image, gallery, top-5 table, messages) for the page; an image
    below the minimum confidence is labelled ``unknown``, its top class beside it."""
    good = [r for r in results if r.error is None]
    label: dict[str, float] | str | None = dict(good[0].top) if good else None
    if good and good[0].unknown:
        label = f"unknown ({good[0].top[0][0]} {100 * good[0].top[0][1]:.1f}%)"
    gallery = [(r.overlay, f"{r.name}: {'unknown, ' if r.unknown else ''}{r.target} {100 * r.probability:.1f}%")
               for r in good if r.overlay is not None]
    table = [[r.name, rank, name, round(100 * p, 2)] for r in good for rank, (name, p) in enumerate(r.top, 1)]
    messages = [f"**{r.name}**: unknown, its top class {r.top[0][0]} has {100 * r.top[0][1]:.1f}%, below the "
                "minimum confidence" for r in good if r.unknown]
    messages += [f"**{r.name}** could not be classified: {r.error}" for r in results if r.error is not None]
    if not results:
        messages = ["Upload, drop or paste an image."]
    return label, gallery, table, "\n\n".join(messages)


def build_app(runs: list[Path]) -> tuple[Any, list[str]]:
    """The Gradio Blocks of the two tabs, and the ``allowed_paths`` to launch it with: the app's
    own temporary folder alone, where everything the page shows from disk is drawn or copied.

    Gradio then serves, from disk, only that folder and the files it put in its cache itself:
    the runs' checkpoints, configs and metrics, and the dataset's images, stay out of reach."""
    gr = _gradio()
    folder = Path(tempfile.mkdtemp(prefix="resnet-serve-"))
    models = ModelCache()
    usable = [str(r) for r in runs if has_checkpoint(r)]
    with gr.Blocks(title="resnet", analytics_enabled=False) as demo:
        gr.Markdown("# resnet: try a trained model")
        with gr.Tab("Classify"):
            _classify_tab(gr, usable, models, folder)
        with gr.Tab("Runs"):
            _runs_tab(gr, demo, [str(r) for r in runs], folder)
    return demo, [str(folder)]


def _classify_tab(gr, usable: list[str], models: ModelCache, folder: Path) -> None:
    """The Classify tab's components and events; its examples are copied into ``folder``."""
    if not usable:
        gr.Markdown("No run with a checkpoint: name one (`resnet serve RUN_DIR`) or train one first.")
        return
    classes = models.get(usable[0])[1]["classes"]
    with gr.Row():
        with gr.Column():
            run = gr.Dropdown(usable, value=usable[0], label="model (run)")
            files = gr.File(file_count="multiple", label="images: upload or drop one or more", elem_id="files")
            pasted = gr.Image(type="filepath", sources=["upload", "clipboard"], label="or paste one", elem_id="pasted")
            target = gr.Dropdown([TOP_CLASS] + classes, value=TOP_CLASS, label="Grad-CAM for class")
            minimum = gr.Slider(0, 1, value=0, step=0.01, elem_id="min-confidence",
                                label="minimum confidence: below it the answer is unknown (0: off)")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Column():
            messages = gr.Markdown(elem_id="messages")
            label = gr.Label(num_top_classes=5, label="top-5 (first image)", elem_id="top5")
            gallery = gr.Gallery(label="Grad-CAM", columns=3, height="auto")
            table = gr.Dataframe(headers=["image", "rank", "class", "probability (%)"], label="top-5 of every image")
    examples = example_images(models.get(usable[0])[1], folder)
    if examples:
        gr.Examples([[p] for p in examples], inputs=[pasted], label="examples from the evaluation set")

    def run_classify(run_dir, uploaded, pasted_path, cam_class, min_confidence):
        paths = [str(p) for p in (uploaded or [])] + ([pasted_path] if pasted_path else [])
        model, checkpoint = models.get(run_dir)
        chosen = None if cam_class in (None, TOP_CLASS) or cam_class not in checkpoint["classes"] else cam_class
        return classify_outputs(classify(model, checkpoint, paths, chosen, min_confidence=float(min_confidence or 0)))

    def class_choices(run_dir):
        return gr.Dropdown(choices=[TOP_CLASS] + models.get(run_dir)[1]["classes"], value=TOP_CLASS)

    inputs, outputs = [run, files, pasted, target, minimum], [label, gallery, table, messages]
    button.click(run_classify, inputs, outputs)
    for trigger in (files.upload, pasted.change, target.change, minimum.release):
        trigger(run_classify, inputs, outputs)
    run.change(class_choices, [run], [target])


def _runs_tab(gr, demo, runs: list[str], folder: Path) -> None:
    if not runs:
        gr.Markdown("No runs found: name one (`resnet serve RUN_DIR`) or pass `--runs-dir`.")
        return
    chosen = gr.Dropdown(runs, value=runs[0], label="run")
    brief = gr.Markdown()
    curves = gr.Image(label="learning curves (live)", type="filepath")
    note = gr.Markdown()
    with gr.Row():
        confusion = gr.Image(label="confusion matrix", type="filepath")
        mistakes = gr.Image(label="the most confident mistakes", type="filepath")
    with gr.Row():
        pairs = gr.Dataframe(headers=["true", "predicted", "count"], label="most confused pairs")
        per_class = gr.Dataframe(headers=PER_CLASS_COLUMNS, label="per class")

    def live(run_dir):
        return run_brief(Path(run_dir)), curves_png(Path(run_dir), folder)

    def evaluated(run_dir):
        views = eval_views(Path(run_dir), folder)
        missing = "" if views["confusion"] else (f"Run `resnet eval {run_dir}` for the confusion matrix, "
                                                 "most-confused pairs, per-class table and mistakes.")
        return (missing, views["confusion"], views["mistakes"], views["most_confused"] or [],
                {"data": views["per_class"] or [], "headers": views["per_class_columns"]})

    live_outputs, eval_outputs = [brief, curves], [note, confusion, mistakes, pairs, per_class]
    chosen.change(live, [chosen], live_outputs)
    chosen.change(evaluated, [chosen], eval_outputs)
    gr.Timer(REFRESH_SECONDS).tick(live, [chosen], live_outputs)
    demo.load(live, [chosen], live_outputs)
    demo.load(evaluated, [chosen], eval_outputs)


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check
    return require("gradio", "app", "resnet serve")


def serve(named: list[str], runs_dir: str, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Build the app and serve it until interrupted."""
    gr = _gradio()
    require("captum.attr", "app", "resnet serve")
    runs = find_runs(named, runs_dir)
    if not runs:
        raise ResnetError(f"no runs: name a run directory or put runs under {runs_dir}/")
    if host not in LOOPBACK:
        print(f"resnet serve: warning: listening on {host}: the app has no authentication; anyone who can "
              "reach this address can use it", file=sys.stderr)
    demo, served = build_app(runs)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, theme=theme, ssr_mode=False, show_error=True,
        inbrowser=False, max_file_size="200mb", footer_links=["api", "settings"], allowed_paths=served)
