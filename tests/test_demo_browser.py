"""The demo page in a real browser: headless Chromium (Debian's, driven by Playwright) clicks Speak and
Generate and must receive audio it can play. Screenshots go to ``$ARTEFACTS_DIR`` (default ``artefacts/``)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from mamba_audio.models import LMConfig, SaShiMiLM, backbone_preset  # noqa: E402
from tiny_voice import tiny_voice  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTEFACTS = Path(os.environ.get("ARTEFACTS_DIR", Path(__file__).resolve().parents[1] / "artefacts"))

# the duration in seconds of the audio an output component offers, as this browser's own <audio> element
# loads it from the component's download link (NaN if it cannot)
LOADED_DURATION = """async id => {
    const link = document.querySelector(`#${id} a.download-link`);
    const audio = new Audio(link.href);
    await new Promise((resolve, reject) => { audio.onloadedmetadata = resolve; audio.onerror = reject; });
    return audio.duration;
}"""
# true once the streamed player's <audio> has a source the browser loaded with a length
STREAM_PLAYABLE = """id => {
    const audio = document.querySelector(`#${id} audio`);
    return audio !== null && audio.src !== '' && audio.readyState >= 1 && audio.duration > 0;
}"""


@pytest.fixture(scope="module")
def page_url():
    path = Path(__file__).resolve().parents[1] / "demo" / "app.py"
    spec = importlib.util.spec_from_file_location("demo_app_browser", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    torch.manual_seed(0)
    lm = SaShiMiLM(LMConfig(backbone=backbone_preset("tiny", n_layers=1), sample_rate=8000)).eval()
    models = {"generator": {"tiny lm": lm}, "classifier": {}, "speech": {"tiny voice": tiny_voice(seconds=0.3)}}
    demo = app.build_demo(models)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: `make setup` installs Debian's chromium"
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


def _click_and_wait_for_audio(browser, url, tab, button, element_id, screenshot, stream_id=None):
    """Click ``button`` on ``tab``; the duration of the audio that ``element_id`` offers (and, with
    ``stream_id``, the streamed player must have played something); saves a screenshot."""
    page = browser.new_page()
    try:
        page.goto(url, wait_until="networkidle")
        page.get_by_role("tab", name=tab).click()
        page.get_by_role("button", name=button, exact=True).click()
        if stream_id is not None:
            page.wait_for_function(STREAM_PLAYABLE, arg=stream_id, timeout=90_000)
        page.wait_for_selector(f"#{element_id} a.download-link", timeout=90_000)
        duration = page.evaluate(LOADED_DURATION, element_id)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / screenshot), full_page=True)
        return duration
    finally:
        page.close()


def test_speak_gives_playable_audio(browser, page_url):
    duration = _click_and_wait_for_audio(browser, page_url, "Speak", "Speak", "speech-whole", "demo_speak.png",
                                         stream_id="speech-stream")
    assert duration == pytest.approx(0.3, abs=0.01)
    assert (ARTEFACTS / "demo_speak.png").stat().st_size > 0


def test_generate_gives_playable_audio(browser, page_url):
    duration = _click_and_wait_for_audio(browser, page_url, "Generate", "Generate", "generated", "demo_generate.png",
                                         stream_id="generated-stream")
    assert duration == pytest.approx(0.5, abs=0.01)  # the page's default length
