"""resnet serve in a real browser: Playwright drives the system Chromium against the app.

Playwright's own browser download is not reachable here, so the test launches the
Debian package's Chromium (``apt-get install chromium``; ``.ci/run`` does it). Without
it the test is skipped, saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import answers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (Debian: apt-get install -y chromium)")
pytest.importorskip("playwright", reason="playwright is not installed (pip install -e \".[dev]\")")
pytest.importorskip("gradio", reason='gradio is not installed (pip install -e ".[app]")')

# Without the background-networking flags Chromium phones home, which a closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def upload(page, path: Path) -> None:
    page.locator("#files input[type=file]").set_input_files(str(path))


def top1_shown(page) -> str:
    """The class the top-5 label shows as its headline, once probabilities are there."""
    page.wait_for_selector("#top5 >> text=%", timeout=60_000)
    return page.locator("#top5").inner_text().splitlines()[1].strip()


def test_the_app_classifies_in_a_browser_as_predict_does_and_survives_junk(server, tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from resnet.tools.evaluation import load_model_from_checkpoint
    from resnet.tools.prediction import predict_files

    image = tiny_run["data"] / "fox" / "2.png"
    model, checkpoint = load_model_from_checkpoint(tiny_run["dir"])
    expected = next(predict_files(model, checkpoint, [image], device="cpu")).top[0][0]
    junk = tmp_path / "holiday.jpg"
    junk.write_text("this is not a JPEG")

    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [browser.new_page(), browser.new_page()]  # two tabs at once go through the queue
            for page in pages:
                page.on("request", lambda request: requested.append(request.url))
                page.goto(server)
                page.wait_for_selector("#classify", timeout=60_000)
            for page in pages:
                upload(page, image)
            assert [top1_shown(page) for page in pages] == [expected, expected]

            upload(pages[0], junk)
            pages[0].wait_for_selector("#messages >> text=could not be classified", timeout=60_000)
            assert "holiday.jpg" in pages[0].locator("#messages").inner_text()
            assert answers(server)  # the server is still up ...
            pages[0].reload()  # ... and still classifies, in a fresh page (uploads accumulate in one)
            pages[0].wait_for_selector("#classify", timeout=60_000)
            upload(pages[0], tiny_run["data"] / "cat" / "0.png")
            top1_shown(pages[0])
            assert "could not be classified" not in pages[0].locator("#messages").inner_text()

            pages[1].get_by_role("tab", name="Runs").click()
            pages[1].wait_for_selector("text=final top-1", timeout=60_000)
        finally:
            browser.close()
    hosts = {urlparse(url).netloc for url in requested if not url.startswith(("data:", "blob:"))}
    assert hosts == {urlparse(server).netloc}, hosts  # nothing from another host: works offline
