"""The web page in a real browser: headless Debian Chromium, driven by Playwright, against
`pneumoscope serve` started as a subprocess on a free local port. What a person sees on the
page (probability, heat map, errors) must be what the API answers for the same file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.helpers import REPO

CHROMIUM = Path("/usr/bin/chromium")
# the committed tiny run; PNEUMOSCOPE_SERVE_RUN serves another (the README's screenshot
# comes from a real run: PNEUMOSCOPE_SERVE_RUN=RUN PNEUMOSCOPE_SCREENSHOT=docs/images/serve.png)
RUN = Path(os.environ.get("PNEUMOSCOPE_SERVE_RUN") or REPO / "tests" / "fixtures" / "run_v1")
READY_TIMEOUT_S = 120.0
RESULT_TIMEOUT_MS = 60_000
README_CLIP = {"x": 0, "y": 0, "width": 1280, "height": 1100}  # the first screen and a bit
TOKEN = "s3cret-token-for-the-browser-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll /readyz until the model is loaded; fail with the server's log if it dies."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pneumoscope serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"pneumoscope serve not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()}")


@contextmanager
def _serve(log: Path, *extra: str, run: Path = RUN) -> Iterator[str]:
    """`pneumoscope serve` on 127.0.0.1 serving ``run`` (default: the committed one) until
    the block ends; yields its base URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(run), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The real server, without a token; its base URL."""
    with _serve(tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Page]:
    """A fresh page of headless Debian Chromium (never a downloaded browser)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
            "(.ci/run installs it: apt-get install chromium chromium-driver)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _real_xray(shared_data: Path) -> Path:
    folder = shared_data / "chest_xray_224" / "test" / "PNEUMONIA"
    return sorted(folder.glob("*.jpeg"))[0]


def _api_predict(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=data, timeout=60)


def _save_screenshot(page: Page, tmp_path: Path) -> None:
    """The whole page in the test's folder; the first screen (the README's picture) where
    PNEUMOSCOPE_SCREENSHOT says."""
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    target = os.environ.get("PNEUMOSCOPE_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=target, full_page=True, clip=README_CLIP)


def _opacity(img) -> str:
    return img.evaluate("i => getComputedStyle(i).opacity")


def _check_heatmap(card) -> None:
    """Both layers decoded and displayed, and the slider (mouse or keyboard) drives the
    overlay's opacity."""
    for cls in ("xray", "heatmap"):
        img = card.locator(f"img.{cls}")
        assert img.is_visible()
        assert img.evaluate("i => i.complete && i.naturalWidth") > 0, f"{cls} image not decoded"
    heat = card.locator("img.heatmap")
    slider = card.get_by_label("Heat map opacity")
    slider.fill("80")
    assert _opacity(heat) == "0.8"
    slider.focus()
    slider.press("Home")
    assert _opacity(heat) == "0"
    slider.press("End")
    assert _opacity(heat) == "1"
    slider.fill("50")
    assert _opacity(heat) == "0.5"


def _wait_card(page: Page, name: str, status: str):
    card = page.locator(f'li.result[data-filename="{name}"][data-status="{status}"]')
    card.wait_for(timeout=RESULT_TIMEOUT_MS)
    return card


@pytest.mark.realdata
def test_page_shows_the_api_answer(server, browser_page, shared_data, tmp_path):
    page = browser_page
    xray = _real_xray(shared_data)
    truncated = tmp_path / "truncated.jpeg"  # the film's first bytes only: no image in them
    truncated.write_bytes(xray.read_bytes()[:400])
    model = httpx.get(f"{server}/v1/model", timeout=30).json()

    page.goto(server + "/")
    assert page.get_by_text("not a medical device", exact=False).first.is_visible()
    assert page.locator("#model-id").text_content(timeout=RESULT_TIMEOUT_MS) == model["model_id"]
    assert page.locator("#card-policy").text_content() == model["threshold_policy"]
    page.set_input_files("#files", [str(xray), str(truncated)])
    card = _wait_card(page, xray.name, "ok")
    failed = _wait_card(page, truncated.name, "error")

    api = _api_predict(server, xray.read_bytes()).json()
    shown = card.locator(".probability")
    assert float(shown.get_attribute("data-probability")) == api["probability"]
    assert shown.text_content() == f"{100 * api['probability']:.1f}%"
    assert card.locator(".call").text_content() == api["label"]
    assert card.locator(".policy").text_content() == api["threshold_policy"]
    assert card.locator(".ood-warning").count() == (1 if api["ood"] else 0)
    _check_heatmap(card)

    bad = _api_predict(server, truncated.read_bytes())
    assert bad.status_code in (400, 415)
    assert failed.locator(".error-message").text_content() == bad.json()["error"]
    _save_screenshot(page, tmp_path)


def test_page_fits_a_phone(server, browser_page):
    """Readable on a 360 px wide window: nothing wider than the screen."""
    page = browser_page
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(server + "/")
    page.locator("#model-id").wait_for(timeout=RESULT_TIMEOUT_MS)
    assert page.locator("#banner").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


@pytest.mark.realdata
def test_page_asks_for_the_token(browser_page, shared_data, tmp_path):
    """With --token-file, the page asks for the token on the first 401 and sends it."""
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    with _serve(tmp_path / "serve.log", "--token-file", str(token_file)) as url:
        assert httpx.get(f"{url}/v1/model", timeout=30).status_code == 401
        page.goto(url + "/")
        field = page.get_by_label("Access token")
        field.wait_for(timeout=RESULT_TIMEOUT_MS)
        assert page.locator("#token-error").is_visible()
        field.fill(TOKEN)
        field.press("Enter")
        page.locator("#model-id").wait_for(timeout=RESULT_TIMEOUT_MS)
        xray = _real_xray(shared_data)
        page.set_input_files("#files", str(xray))
        card = _wait_card(page, xray.name, "ok")
        assert float(card.locator(".probability").get_attribute("data-probability")) > 0


@pytest.mark.realdata
def test_page_warns_out_of_distribution_and_escapes(server, browser_page, shared_data):
    """An answer flagged out of distribution shows the warning; server strings are shown as
    text, never parsed as HTML (the answer is the real one, with those fields changed)."""
    markup = '<img src="x" onerror="document.title=\'pwned\'">'

    def flag(route):
        answer = route.fetch().json()
        answer.update(ood=True, threshold_policy=markup)
        route.fulfill(json=answer)

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    page.route("**/v1/predict?*", flag)
    try:
        page.goto(server + "/")
        xray = _real_xray(shared_data)
        page.set_input_files("#files", str(xray))
        card = _wait_card(page, xray.name, "ok")
    finally:
        page.unroute("**/v1/predict?*")
    assert card.locator(".ood-warning").is_visible()
    assert card.locator(".policy").text_content() == markup
    assert card.locator(".policy img").count() == 0
    assert page.title() != "pwned"


@pytest.mark.realdata
def test_page_says_when_a_film_is_outside_the_training_population(
    browser_page, shared_data, tmp_path
):
    """Served with --allow age, an adult's film of a children's model is analysed, and the
    page says it is outside the intended use, with the API's note."""
    import json
    import shutil

    import cv2

    from tests.helpers import film_dataset, write_dicom

    run = shutil.copytree(RUN, tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    card["population"] = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    (run / "model.json").write_text(json.dumps(card))
    gray = cv2.imread(str(_real_xray(shared_data)), cv2.IMREAD_GRAYSCALE)
    adult = write_dicom(film_dataset(gray, PatientAge="045Y"), tmp_path / "adult.dcm")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    with _serve(tmp_path / "serve.log", "--allow", "age", run=run) as url:
        api = _api_predict(url, adult.read_bytes()).json()
        page.goto(url + "/")
        page.set_input_files("#files", [str(adult)])
        card = _wait_card(page, adult.name, "ok")
    note = card.locator(".outside-note")
    shown = note.text_content()
    assert note.is_visible() and shown.startswith("Outside the intended use. Analysed because")
    assert api["note"].split(", analysed because ", 1)[1] in shown
    assert "patient aged 45 years" in note.text_content()
    assert "children aged 1-5 years" in note.text_content()
    page.screenshot(path=str(tmp_path / "outside.png"), full_page=True)
    target = os.environ.get("PNEUMOSCOPE_OUTSIDE_SCREENSHOT")
    if target:
        shutil.copy(tmp_path / "outside.png", target)


@pytest.mark.realdata
def test_page_says_an_adult_film_is_outside_the_population(browser_page, shared_data, tmp_path):
    """Issue 30: on a run trained on children, an adult's JPEG is not analysed, and the
    page says why (the age group estimated from the image), while a child's film is."""
    import json
    import shutil

    run = tmp_path / "children_run"
    shutil.copytree(RUN, run)
    card = json.loads((run / "model.json").read_text())
    card["population"] = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    (run / "model.json").write_text(json.dumps(card))
    adult = shared_data / "adult_public/images/ieee8023/covid-19-pneumonia-58-prior.jpg"
    child = _real_xray(shared_data)
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    with _serve(tmp_path / "serve.log", run=run) as url:
        page.goto(url + "/")
        page.locator("#model-id").wait_for(timeout=RESULT_TIMEOUT_MS)
        page.set_input_files("#files", [str(adult), str(child)])
        refused = _wait_card(page, adult.name, "error")
        ok = _wait_card(page, child.name, "ok")
        api = _api_predict(url, adult.read_bytes()).json()
        assert refused.get_attribute("data-outcome") == "out_of_scope"
        shown = refused.locator(".error-message").text_content()
        assert shown == api["error"].removeprefix("not analysed: ")
        assert "estimated from the image" in shown and "--allow age" in shown
        assert "outside the model's intended use" in refused.locator(".error").text_content()
        assert ok.locator(".age-group").text_content().startswith("young child, p(adult) ")
        page.screenshot(path=str(tmp_path / "population.png"), full_page=True)
