"""What ``resnet serve`` gives out over HTTP: the pictures its page shows, and never the run's
checkpoints, config or metrics, nor the images of the dataset, under any of Gradio's file routes.

The server runs in a subprocess as a user starts it (the ``server`` fixture of conftest.py);
the requests are plain urllib, so no browser is needed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("gradio", reason='gradio is not installed (pip install -e ".[app]")')
pytest.importorskip("captum", reason='captum is not installed (pip install -e ".[app]")')

# Every route of Gradio 6 that answers with a file named by its path on the server's disk: the
# API's file route, its deprecated spelling, and the unprefixed forms of Gradio 4 (which must not
# come back and serve what the prefixed ones refuse).
FILE_ROUTES = ("gradio_api/file={}", "gradio_api/file/{}", "file={}", "file/{}")


def status(url: str) -> int:
    """The HTTP status the server answers a GET with (an error status is an answer too, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def page_examples(server: str) -> list[dict]:
    """The files the Classify tab's examples point to, as the page's config gives them (path, url)."""
    with urllib.request.urlopen(server + "config", timeout=10) as response:
        config = json.load(response)
    datasets = [c for c in config["components"] if c.get("type") == "dataset"]
    return [value for dataset in datasets for sample in dataset["props"]["samples"] for value in sample
            if isinstance(value, dict) and "path" in value]


def original_of(content: bytes, data: Path) -> Path | None:
    """The dataset image with exactly these bytes (None when none has them)."""
    return next((p for p in sorted(data.rglob("*.png")) if p.read_bytes() == content), None)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_the_page_still_serves_its_examples_from_copies_of_its_own(server, tiny_run):
    from gradio.utils import get_upload_folder

    examples = page_examples(server)
    assert examples, "the Classify tab shows no examples"
    for example in examples:
        served = Path(example["path"])
        assert not is_inside(served, tiny_run["root"]), served  # neither the run nor the data folder
        assert served.parent.name.startswith("resnet-serve-") or is_inside(served, get_upload_folder()), served
        content = fetch(example["url"])
        assert original_of(content, tiny_run["data"]) is not None  # the very bytes: classified as predict does


def test_no_file_route_gives_out_the_run_or_the_data(server, tiny_run):
    run, data = tiny_run["dir"], tiny_run["data"]
    originals = [original_of(fetch(e["url"]), data) for e in page_examples(server)]
    assert originals and None not in originals
    training = next(p for p in sorted(data.rglob("*.png")) if p not in originals)
    private = [run / "best.pt", run / "last.pt", run / "config.json", run / "metrics.csv", training, originals[0]]
    assert all(path.is_file() for path in private)  # there to be had: a refusal is the server's doing

    answered = {"/" + route.format(path): status(server + route.format(quote(str(path))))
                for route in FILE_ROUTES for path in private}
    given_out = {request: code for request, code in answered.items() if code not in (403, 404)}
    assert not given_out, json.dumps(given_out, indent=1)
