"""The dashboard's server side: files served at / and /ui/, API routes untouched, files in the package."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.helpers import api, make_api, service_settings  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api" / "dashboard" / "static"


def test_index_and_assets_are_served(api):  # noqa: F811
    index = api.get("/", headers={"Authorization": ""})  # the page itself needs no key: the API calls do
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/app.js">' in index.text
    for asset, media in [("app.js", "javascript"), ("chart.js", "javascript"), ("verdicts.js", "javascript"),
                         ("style.css", "text/css")]:
        response = api.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        assert media in response.headers["content-type"], (asset, response.headers["content-type"])
        assert response.text == (STATIC / asset).read_text()
    redirect = api.get("/dashboard", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/"
    assert api.get("/ui/nope.js").status_code == 404
    assert api.get("/ui/../main.py").status_code == 404  # StaticFiles stays inside its directory


def test_the_api_routes_are_not_shadowed(api):  # noqa: F811
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    assert api.get("/openapi.json").json()["info"]["title"] == "lambdahat"
    assert "swagger" in api.get("/docs").text.lower()
    assert api.get("/metrics").status_code in (200, 401)  # a metrics token may be configured
    assert api.get("/v1/jobs").json()["items"] == []
    assert api.get("/v1/jobs", headers={"Authorization": ""}).status_code == 401
    assert "/" not in api.get("/openapi.json").json()["paths"]  # the page is not part of the API schema


def test_static_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api.dashboard"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "api" / "dashboard").glob(pattern)}
    assert {p.name for p in STATIC.iterdir()} <= shipped


def test_no_server_string_is_inserted_as_html():
    # XSS guard: the dashboard builds every node with createElement/textContent.
    for source in STATIC.glob("*.js"):
        text = source.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{source.name} uses {sink}"
    index = (STATIC / "index.html").read_text()
    assert 'src="http' not in index and 'href="http' not in index, "no CDN: everything is served locally"
