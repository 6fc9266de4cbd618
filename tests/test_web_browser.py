"""The feature browser in a real browser: Playwright driving Debian's chromium, headless, against
the app served by uvicorn. Every page loads without console errors; search, a feature page, the
token tooltip, the map and the family tree work."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monosemantic.web.app import create_app
from monosemantic.web.live import live_server
from monosemantic.web.state import Served
from tests.web_run import EXPLAINED, SCRIPT, make_analysed_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
    pytest.mark.slow,  # a real browser
]


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path
) -> Iterator[str]:
    run = make_analysed_run(tmp_path_factory.mktemp("web") / "tiny", tiny_llama_dir, tiny_corpus)
    with live_server(create_app(Served([run]))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records console errors and failed requests; the test fails on any."""
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an injected alert() would show
    pg.expected_errors = []  # what a test provokes on purpose (the browser logs a 4xx answer)
    yield pg
    pg.close()
    assert [e for e in errors if not any(x in e for x in pg.expected_errors)] == []


def test_every_page_loads(page: Any, base_url: str) -> None:
    for path, heading in [
        ("/", "Run tiny"),
        ("/run/tiny/search", "Search"),
        ("/run/tiny/catalog", "Catalog"),
        ("/run/tiny/relu-64/features", "relu-64: features"),
        ("/run/tiny/relu-64/feature/0", "relu-64 feature #0"),
        ("/run/tiny/relu-64/map", "relu-64: feature map"),
    ]:
        response = page.goto(base_url + path)
        assert response.status == 200, path
        assert heading in page.inner_text("h1"), path


def test_search_then_open_a_feature_and_hover_a_token(page: Any, base_url: str) -> None:
    page.goto(base_url + "/run/tiny/search")
    page.fill("input[name=q]", "code")
    page.select_option("select[name=sae]", "relu-64")
    page.click("form.search button")
    page.wait_for_selector("table.results a")
    assert "code" in page.inner_text("h2")
    page.click(f"a[href='/run/tiny/relu-64/feature/{EXPLAINED}']")
    page.wait_for_selector("#top .tok")
    assert page.inner_text("#explanation").startswith(SCRIPT)  # shown as text, never run
    token = page.locator("#top .tok[style]").first
    token.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert tip.inner_text() == "activation " + token.get_attribute("data-act")


def test_concept_search(page: Any, base_url: str) -> None:
    page.goto(base_url + "/run/tiny/search?mode=concept&sae=relu-64&q=sql+select")
    assert "Features that fire on" in page.inner_text("main h2")


def test_map_hover_and_click_open_a_feature(page: Any, base_url: str) -> None:
    page.goto(base_url + "/run/tiny/relu-16/map")
    page.wait_for_selector("#map[data-ready]", timeout=120_000)
    assert page.inner_text("#map-status") == "16 features"
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.select_option("#map-colour", "label")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -200)  # zoom in, then out: no error
    page.mouse.wheel(0, 200)
    page.wait_for_timeout(300)  # the zoom settles (a loaded machine draws late)
    # hover over each drawn point (read back from the canvas's pixels) and click the first that names
    # a feature: a grid of pointer positions missed 16 small points depending on the UMAP layout
    points = page.evaluate(
        """() => {
        const c = document.getElementById("map");
        const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const out = [];
        for (let y = 0; y < c.height; y += 1) for (let x = 0; x < c.width; x += 1)
          if (px[4 * (y * c.width + x) + 3] > 0) out.push([x / c.width, y / c.height]);
        return out;
      }"""
    )
    assert points, "the map drew nothing"
    for fx, fy in points[:: max(1, len(points) // 40)]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        page.wait_for_timeout(15)  # the tooltip follows the pointer on the next frame
        if page.locator("#tip").is_visible() and page.inner_text("#tip").startswith("#"):
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.wait_for_url("**/run/tiny/relu-16/feature/*")
            return
    pytest.fail("no point of the map answered a hover")


def test_family_tree_loads_on_demand(page: Any, base_url: str) -> None:
    page.goto(base_url + "/run/tiny/relu-16/feature/0")
    page.click("#family-button")
    page.wait_for_selector("#family ul.tree, #family p.note", timeout=60_000)


def test_steer_from_a_feature_page_and_see_both_completions(page: Any, base_url: str) -> None:
    page.goto(base_url + f"/run/tiny/relu-64/feature/{EXPLAINED}")
    page.click("#steer-button")
    page.wait_for_url("**/run/tiny/steer?*")
    assert page.input_value("#steer-features input[name=feature]") == str(EXPLAINED)
    page.fill("#steer-features input[name=scale]", "20")
    page.click("#add-feature")  # a second row, left blank: ignored
    page.fill("input[name=max_new_tokens]", "6")
    page.fill("textarea[name=prompt]", "the code of")
    page.click("#steer-go")
    page.wait_for_selector("#steer-form[data-state=done]", timeout=60_000)
    assert page.inner_text("#steer-status") == "done"
    for which in ("base", "steered"):
        assert re.match(r"\d+ tokens", page.inner_text(f"#score-{which}")), which
    assert page.inner_text("#out-steered").strip()
    assert page.inner_text("#steer-out b.prompt >> nth=0") == "the code of"
    # the streamed page and the server-rendered one (the same URL with go=1) agree
    streamed = {w: page.inner_text(f"#out-{w}") for w in ("base", "steered")}
    assert "feature=" in page.url and "go=" not in page.url
    page.goto(page.url + "&go=1")
    assert {w: page.inner_text(f"#out-{w}") for w in ("base", "steered")} == streamed


def test_steering_error_shows_its_message(page: Any, base_url: str) -> None:
    page.expected_errors.append("status of 400 (Bad Request)")
    page.goto(base_url + "/run/tiny/steer?sae=relu-64&feature=99")
    page.fill("textarea[name=prompt]", "the code")
    page.click("#steer-go")
    page.wait_for_selector("#steer-form[data-state=error]")
    assert "no feature 99" in page.inner_text("#steer-status")


def test_analyse_a_text_and_click_a_token(page: Any, base_url: str) -> None:
    page.goto(base_url + "/run/tiny/search")
    page.fill("textarea[name=text]", "the code of paris has a buffer overflow")
    page.select_option("form.analyse select[name=sae]", "relu-64")
    page.click("form.analyse button")
    page.wait_for_selector(".analysed .atok")
    assert page.locator(".tokfeats.shown").count() == 0
    token = page.locator(".analysed .atok").nth(1)
    assert token.inner_text() == " code"
    token.click()
    panel = page.locator(".tokfeats.shown")
    panel.wait_for(state="visible")
    assert "code" in panel.locator("h3").inner_text()
    link = panel.locator("td a[href*='/feature/']").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_url("**" + href)
    assert "feature #" in page.inner_text("h1")
