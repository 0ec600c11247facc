"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against a real
``lambdahat serve`` (embedded mode, SQLite in a temporary data dir).

One server and one browser for the module. The flow is a user's: log in with the key through the
page, upload a checkpoint with the form, submit a job with the form, watch it finish on the job
page, read the verdict and check the trace plots were drawn; then batches, overlays and logout.
Screenshots go to pytest's tmp_path, never into the repository.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright import sync_api as playwright_sync

from tests.client.conftest import start_server, stop_process
from tests.client.helpers import FAST_CONFIG, MLP_ARCHITECTURE, SLOW_CONFIG, classification_data, mlp

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_MS = 180_000  # a FAST_CONFIG job takes seconds; the 2 shared CI cores can be busy

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium; .ci/run does it)",
                allow_module_level=True)

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def upload_dataset(self, name: str) -> dict:
        buffer = io.BytesIO()
        np.savez(buffer, **classification_data(n=64, seed=0))
        response = self.http.post("/v1/datasets", files={"file": ("train.npz", buffer.getvalue())}, data={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    def upload_checkpoint(self, path: Path, **fields: str) -> dict:
        response = self.http.post("/v1/checkpoints", files={"file": (path.name, path.read_bytes())},
                                  data={"architecture": json.dumps(MLP_ARCHITECTURE), **fields})
        assert response.status_code == 201, response.text
        return response.json()


def save_checkpoint(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    save_file(mlp(seed).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("dashboard-server")
    process, url = start_server(root / "data", root / "server.log")
    try:
        key_file = root / "data" / "api_key"
        deadline = time.monotonic() + 10
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield Server(url, key_file.read_text().strip())
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def log_in(page, server: Server) -> None:
    page.goto(server.url + "/")
    page.wait_for_url("**/#/login")
    page.fill("#api-key", server.key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#jobs-table")


def test_login_submit_watch_a_job_and_read_its_plots_and_verdict(page, server, tmp_path):
    dataset = server.upload_dataset("digits-mini")

    # A wrong key: the server's 401 message, and no way in.
    page.goto(server.url + "/")
    page.wait_for_url("**/#/login")
    page.fill("#api-key", "lh_not-a-real-key")
    page.click("#login-form button[type=submit]")
    error = page.wait_for_selector("[data-testid=error]")
    server_message = httpx.get(server.url + "/v1/jobs", headers={"Authorization": "Bearer lh_not-a-real-key"}).json()
    assert error.text_content() == server_message["detail"]
    assert page.evaluate("sessionStorage.getItem('lambdahat.apiKey')") is None

    log_in(page, server)
    assert page.evaluate("sessionStorage.getItem('lambdahat.apiKey')") == server.key

    # Upload the checkpoint through the form (architecture JSON included).
    page.click("a[data-nav=new]")
    page.set_input_files("#checkpoint-form input[name=file]", str(save_checkpoint(tmp_path / "ck.safetensors", 1)))
    page.fill("#checkpoint-form textarea[name=architecture]", json.dumps(MLP_ARCHITECTURE))
    page.fill("#checkpoint-form input[name=collection]", "form-run")
    page.fill("#checkpoint-form input[name=step]", "10")
    page.click("#checkpoint-form button[type=submit]")
    assert "67 parameters" in page.wait_for_selector("#checkpoint-form [data-testid=upload-ok]").text_content()
    checkpoint = server.http.get("/v1/checkpoints", params={"collection": "form-run"}).json()["items"][0]
    assert checkpoint["step"] == 10 and checkpoint["architecture"]["hidden"] == [8]

    # Submit the job through the form.
    page.select_option("#job-checkpoint", checkpoint["id"])
    page.select_option("#job-dataset", dataset["id"])
    page.fill("#job-config", json.dumps(FAST_CONFIG))
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert job["config"] == FAST_CONFIG and job["checkpoint_id"] == checkpoint["id"]

    # Watch it finish on the page (it polls; no reload).
    page.wait_for_function("['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#job-status')?.textContent)",
                           timeout=JOB_TIMEOUT_MS)
    job = server.http.get(f"/v1/jobs/{job_id}").json()
    assert page.text_content("#job-status") == job["status"] == "succeeded", job["error"]
    result = job["result"]
    page.wait_for_selector("[data-testid=loss-chart] path.trace")
    assert page.text_content("#llc-value").startswith(f"{result['llc_mean']:.5g}"[:4])

    # Verdict: healthy exactly when the estimator raised no (non-informational) warning; each
    # warning shown with the server's message.
    informational = {"burnin_restart", "vmap_unavailable"}
    serious = [w for w in result["warnings"] if w["code"] not in informational]
    verdict = page.get_attribute("#verdict", "data-verdict")
    assert verdict == ("warning" if serious else "healthy")
    verdict_text = page.text_content("#verdicts")
    assert verdict_text.startswith("Verdict") and ("Healthy" in verdict_text or "Warning" in verdict_text)
    for w in result["warnings"]:
        assert w["message"] in verdict_text
        assert page.query_selector(f"#verdicts [data-code={w['code']}] .try") is not None

    # Plots: one path per chain in each chart, spanning the plot; the L_n(w*) line at the result's value.
    chains = FAST_CONFIG["num_chains"]
    for chart in ("loss-chart", "llc-chart"):
        paths = page.query_selector_all(f"[data-testid={chart}] path.trace")
        assert len(paths) == chains
        for path in paths:
            box = path.bounding_box()
            assert box["width"] > 500 and box["height"] > 5, (chart, box)  # drawn across the plot, not flat
            assert path.get_attribute("d").count("L") >= FAST_CONFIG["num_draws"] - 2
    hline = page.query_selector("[data-testid=loss-chart] line.hline")
    assert f"{result['init_loss']:.4g}"[:5] in hline.text_content().replace("L_n(w*) = ", "")[:8]
    # Non-blank pixels: the screenshot of the chart holds the chain colours.
    shot = page.query_selector("[data-testid=loss-chart] svg").screenshot(path=str(tmp_path / "loss-chart.png"))
    assert b"IDAT" in shot and len(shot) > 3000

    # Interaction: toggling chain 0 hides its trace; hovering shows the values; dragging zooms in.
    page.uncheck("[data-testid=loss-chart] input[data-series='0']")
    assert len(page.query_selector_all("[data-testid=loss-chart] path.trace")) == chains - 1
    page.check("[data-testid=loss-chart] input[data-series='0']")
    overlay_rect = page.query_selector("[data-testid=llc-chart] rect.overlay")
    overlay_rect.scroll_into_view_if_needed()
    overlay = overlay_rect.bounding_box()  # viewport coordinates, as the mouse uses
    page.mouse.move(overlay["x"] + overlay["width"] * 0.5, overlay["y"] + overlay["height"] / 2)
    tooltip = page.query_selector("[data-testid=llc-chart] .tooltip")
    assert tooltip.is_visible() and "chain 0:" in tooltip.text_content() and "chain 1:" in tooltip.text_content()
    before = page.get_attribute("[data-testid=llc-chart] path.trace", "d").count("L")
    page.mouse.move(overlay["x"] + overlay["width"] * 0.2, overlay["y"] + 20)
    page.mouse.down()
    page.mouse.move(overlay["x"] + overlay["width"] * 0.5, overlay["y"] + 20, steps=5)
    page.mouse.up()
    after = page.get_attribute("[data-testid=llc-chart] path.trace", "d").count("L")
    assert after < before * 0.6  # about 30% of the draws are in view now
    page.dblclick("[data-testid=llc-chart] rect.overlay")
    assert page.get_attribute("[data-testid=llc-chart] path.trace", "d").count("L") == before
    page.screenshot(path=str(tmp_path / "job-page.png"), full_page=True)

    # The jobs list shows it, finished, with its verdict.
    page.click("a[data-nav=jobs]")
    row = page.wait_for_selector(f"#jobs-table tr[data-job-id='{job_id}']")
    assert row.get_attribute("data-status") == "succeeded"
    assert ("warning" if serious else "healthy") in row.text_content()

    # Logout forgets the key.
    page.click("#logout")
    page.wait_for_selector("#login-form")
    assert page.evaluate("sessionStorage.getItem('lambdahat.apiKey')") is None
    assert page.is_hidden("#nav")


def test_forms_show_the_servers_errors_and_never_run_server_strings_as_html(page, server, tmp_path):
    hostile = "<img src=x onerror=\"window.__xss = 1\">"
    server.upload_dataset(hostile)
    log_in(page, server)
    page.goto(server.url + "/#/new")
    option = page.wait_for_selector(f"#job-dataset option:has-text('{hostile[:8]}')", state="attached")
    assert option.text_content().startswith(hostile)
    # A checkpoint whose weights do not fit the architecture: the API's 422 message, verbatim.
    path = save_checkpoint(tmp_path / "bad.safetensors", 2)
    wrong = {**MLP_ARCHITECTURE, "hidden": [16]}
    page.set_input_files("#checkpoint-form input[name=file]", str(path))
    page.fill("#checkpoint-form textarea[name=architecture]", json.dumps(wrong))
    page.click("#checkpoint-form button[type=submit]")
    shown = page.wait_for_selector("#checkpoint-form [data-testid=error]").text_content()
    expected = server.http.post("/v1/checkpoints", files={"file": (path.name, path.read_bytes())},
                                data={"architecture": json.dumps(wrong)}).json()["detail"]
    assert shown == expected and "shape mismatches" in shown
    # Invalid config: FastAPI's validation list, flattened to "field: message".
    page.fill("#job-config", '{"num_chains": 0}')
    page.click("#job-form button[type=submit]")
    shown = page.wait_for_selector("#job-form [data-testid=error]").text_content()
    assert shown.startswith("config.num_chains:") and "greater than or equal to 1" in shown
    assert page.evaluate("window.__xss") is None


def wait_for_batch(server: Server, batch_id: str, timeout_s: float = JOB_TIMEOUT_MS / 1000) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = server.http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("succeeded", "failed", "cancelled"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def test_batch_page_plots_llc_against_step_with_error_bars_and_overlays(page, server, tmp_path):
    dataset = server.upload_dataset("batch-data")
    for collection, seeds in (("curve-a", (11, 12)), ("curve-b", (21, 22))):
        for step, seed in zip((100, 200), seeds, strict=True):
            server.upload_checkpoint(save_checkpoint(tmp_path / f"{collection}-{step}.safetensors", seed),
                                     collection=collection, step=str(step))
    other = server.http.post("/v1/batches", json={"collection": "curve-b", "dataset_id": dataset["id"],
                                                  "loss": "cross_entropy", "config": FAST_CONFIG})
    assert other.status_code == 202, other.text
    other = wait_for_batch(server, other.json()["id"])
    assert other["status"] == "succeeded"

    # Submit curve-a through the batch form; the page follows it to the end.
    log_in(page, server)
    page.goto(server.url + "/#/new")
    page.wait_for_selector("#batch-collection option[value=curve-a]", state="attached")
    page.select_option("#batch-collection", "curve-a")
    page.select_option("#batch-dataset", dataset["id"])
    page.fill("#batch-config", json.dumps(FAST_CONFIG))
    page.click("#batch-form button[type=submit]")
    page.wait_for_url("**/#/batches/*")
    batch_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function("['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#batch-status')?.textContent)",
                           timeout=JOB_TIMEOUT_MS)
    rows = server.http.get(f"/v1/batches/{batch_id}/results").json()
    assert page.text_content("#batch-status") == "succeeded", rows
    assert [r["step"] for r in rows] == [100, 200]

    # Its own collection: a marker and an error bar per step, at the right heights (larger λ̂ higher up).
    chart = "[data-testid=batch-chart]"
    page.wait_for_selector(f"{chart} circle.marker")
    markers = page.query_selector_all(f"{chart} circle.marker")
    assert len(markers) == 2 and len(page.query_selector_all(f"{chart} line.errorbar")) == 2
    ys = [float(m.get_attribute("cy")) for m in markers]
    xs = [float(m.get_attribute("cx")) for m in markers]
    assert xs[0] < xs[1]
    assert (ys[0] > ys[1]) == (rows[0]["llc_mean"] < rows[1]["llc_mean"])  # SVG y grows downwards
    page.mouse.move(0, 0)
    table = page.text_content("#batch-results")
    for r in rows:
        assert r["job_id"][:12] in table

    # Overlay the other collection: two series, four points, both named in the legend.
    page.check(f"#overlay-choices input[data-overlay='{other['id']}']")
    page.wait_for_function(f"document.querySelectorAll('{chart} circle.marker').length === 4")
    assert len(page.query_selector_all(f"{chart} g.series")) == 2
    legend = page.text_content(f"{chart} .legend")
    assert "curve-a" in legend and "curve-b" in legend
    page.screenshot(path=str(tmp_path / "batch-page.png"), full_page=True)

    # The batches list shows both, finished.
    page.click("a[data-nav=batches]")
    for bid in (batch_id, other["id"]):
        row = page.wait_for_selector(f"#batches-table tr[data-batch-id='{bid}']")
        assert row.get_attribute("data-status") == "succeeded"


def test_a_running_job_shows_live_progress_and_can_be_cancelled_from_its_page(page, server, tmp_path):
    dataset = server.upload_dataset("slow-data")
    checkpoint = server.upload_checkpoint(save_checkpoint(tmp_path / "slow.safetensors", 3))
    job = server.http.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"],
                                             "loss": "cross_entropy", "config": SLOW_CONFIG}).json()
    log_in(page, server)
    page.goto(f"{server.url}/#/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'running'", timeout=JOB_TIMEOUT_MS)
    # The progress bar moves without a reload (the page polls while the job runs).
    progress = "parseFloat(document.querySelector('.progress-cell').textContent)"
    page.wait_for_function(f"{progress} > 0", timeout=JOB_TIMEOUT_MS)
    assert page.get_attribute("#verdict", "data-verdict") == "pending"
    page.click("#cancel-job")
    page.wait_for_function("document.querySelector('#job-status')?.textContent === 'cancelled'", timeout=60_000)
    assert server.http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert "No traces: the job cancelled." in page.text_content("#traces")
    assert page.query_selector("#cancel-job") is None
