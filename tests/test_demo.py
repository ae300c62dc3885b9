"""The demo page at ``/``: its files over HTTP, then the page itself in headless Chromium (Playwright).

The browser tests drive the real server on 127.0.0.1: pick a model, upload a clip, wait for the answer,
and compare what the page shows with the JSON the page received (captured from the network). They skip
when Debian's Chromium (/usr/bin/chromium) or Playwright is missing (under CI=true they fail: conftest);
no browser is ever downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from clipwise.models import create_model
from clipwise.models.checkpoint import save_version
from clipwise.service.api.routes.demo import ASSETS, STATIC_DIR
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.local import local_server
from clipwise.service.schemas import PredictResponse

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADAFUSE, ADA3D, FUSION, STATIC = "adafuse_tsn_r18_tiny", "ada3d_i3d_r50_tiny", "fusion_densenet121_tiny", "tsn_r18_tiny"
LABELS = [f"action_{i}" for i in range(7)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("demo-repository")
    for name in (ADAFUSE, ADA3D, FUSION, STATIC):
        torch.manual_seed(0)
        save_version(create_model(name, num_classes=len(LABELS)), LABELS, repository, name, trained=False)
    with local_server(create_app(Settings(model_repository=repository, log_level="warning"))) as url:
        yield url


# ---------------------------------------------------------------- the files


def test_page_and_assets_are_served(server_url: str) -> None:
    page = httpx.get(server_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, media_type in ASSETS.items():
        assert f"/static/{name}" in page.text
        asset = httpx.get(f"{server_url}/static/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert asset.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("path", ["/static/nothing.js", "/static/index.html", "/static/..%2Fapi%2Fmain.py"])
def test_only_the_listed_assets_are_served(server_url: str, path: str) -> None:
    response = httpx.get(server_url + path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_names_no_other_origin() -> None:
    """Nothing is fetched from elsewhere: no URL in the page's files but the SVG namespace."""
    for path in STATIC_DIR.iterdir():
        urls = set(re.findall(r"\b(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, path.name


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package); the browser tests need it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need Playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url: str) -> Iterator:
    """The demo page with its models listed; fails the test on a script error or a request elsewhere."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("request", lambda request: request.url.startswith(server_url) or problems.append(request.url))
    page.goto(server_url + "/")
    page.wait_for_selector("#model:enabled")
    yield page
    page.close()
    assert problems == []


def classify(page, server_url: str, model: str, video: Path, clips: int = 1, crops: int = 1) -> PredictResponse:
    """Pick ``model``, upload ``video``, wait for the page to show the answer; the answer it got."""
    page.select_option("#model", model)
    page.set_input_files("#video", str(video))
    page.fill("#clips", str(clips))
    page.select_option("#crops", str(crops))
    with page.expect_response(lambda response: "/predict" in response.url) as answer:
        page.click("#submit")
    page.wait_for_selector("#status[data-state=done]")
    return PredictResponse.model_validate_json(answer.value.body())


def definition(page, term: str) -> str:
    return page.locator(f"#compute dt:text-is('{term}') + dd").inner_text()


def test_models_come_from_the_api(page, server_url: str) -> None:
    listed = [model["name"] for model in httpx.get(server_url + "/v1/models").json()["models"]]
    assert page.eval_on_selector_all("#model option", "options => options.map(o => o.value)") == listed


def test_adafuse_top5_gflops_and_policy(page, server_url: str, h264_video: Path, tmp_path: Path) -> None:
    answer = classify(page, server_url, ADAFUSE, h264_video)

    rows = page.locator("#top-classes tbody tr")
    assert rows.count() == 5
    assert [rows.nth(i).locator("th").inner_text() for i in range(5)] == [p.label for p in answer.predictions]
    assert definition(page, "Policy asked for") == f"{answer.flops.policy_gflops:.3f} GFLOPs"
    assert definition(page, "Executed") == f"{answer.flops.executed_gflops:.3f} GFLOPs"
    assert definition(page, "Full model") == f"{answer.flops.full_gflops:.3f} GFLOPs"
    assert definition(page, "Saved") == f"{answer.flops.saving * 100:.1f}%"
    assert definition(page, "Full-compute time") == f"{answer.full_compute_ms_per_view:.1f} ms"
    per_view = answer.timing_ms.inference  # one view
    change = (per_view / answer.full_compute_ms_per_view - 1) * 100
    assert definition(page, "Time vs full compute") == f"{'+' if change >= 0 else ''}{change:.1f}%"
    (policy,) = answer.policy
    block_chart = page.locator("#policy figure").first
    assert block_chart.locator("g.bar").count() == len(policy.blocks)
    shown = block_chart.locator("rect[data-category=keep] title").evaluate_all(
        "titles => titles.map(t => t.textContent)"
    )
    assert shown == [f"block {i + 1}: keep {usage.keep * 100:.1f}%" for i, usage in enumerate(policy.blocks)]

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)


def test_ada3d_frames_and_stages_of_every_view(page, server_url: str, h264_video: Path) -> None:
    answer = classify(page, server_url, ADA3D, h264_video, clips=2, crops=3)

    frames_chart, stages_chart = page.locator("#policy figure").all()
    for chart, decided in ((frames_chart, "kept"), (stages_chart, "3D")):
        covered = []
        for row in chart.locator("g.row").all():
            views = row_views(row.get_attribute("data-label"), len(answer.policy))
            cells = row.locator("rect").evaluate_all("cells => cells.map(c => c.dataset.category)")
            for view in views:
                policy = answer.policy[view - 1]
                expected = policy.stages_3d if decided == "3D" else [i in policy.frames_kept for i in range(8)]
                assert [cell == decided for cell in cells] == list(expected)
            covered += views
        assert sorted(covered) == list(range(1, 7))


def row_views(label: str, count: int) -> list[int]:
    """The 1-based views a chart row stands for: 'view 3', 'views 1, 4' or 'all views'."""
    return list(range(1, count + 1)) if label == "all views" else [int(n) for n in re.findall(r"\d+", label)]


def test_fusion_strategy(page, server_url: str, h264_video: Path) -> None:
    answer = classify(page, server_url, FUSION, h264_video)

    cells = page.locator("#policy g.row rect").evaluate_all("cells => cells.map(c => c.dataset.category)")
    assert cells == answer.policy[0].strategy


def test_static_model_has_no_policy(page, server_url: str, h264_video: Path) -> None:
    answer = classify(page, server_url, STATIC, h264_video)

    assert answer.policy is None
    assert "Static model" in page.inner_text("#policy")
    assert page.locator("#policy svg").count() == 0


def test_an_error_is_shown(page, tmp_path: Path) -> None:
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is text, not a video\n" * 20)
    page.set_input_files("#video", str(not_a_video))
    page.click("#submit")

    page.wait_for_selector("#status[data-state=error]")
    assert "415 not_a_video" in page.inner_text("#status")
