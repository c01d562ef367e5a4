"""Comparing experiments in the web UI, as a person does it: Debian's Chromium,
headless, against ``fflab serve`` (the embedded default) and against PostgreSQL +
Redis + S3 (``stack``), with a real worker. Two
tiny experiments (FF, two seeds, theta 0.3 and 0.5) are trained; on the list the
person searches them by name and by tag, sorts by accuracy (each model's accuracy
in its column, as the API's runs give it), ticks both and presses Compare; the
compare page shows the differing spec field highlighted, Tables 1-3 side by side
with the API's numbers, the overlaid figures (loaded as images) and the Jaccard
table. Another user is refused the page. The compare page's screenshots go to
$FFLAB_UI_SCREENSHOTS (``make screenshots``: docs/img/ui-compare-*.png).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from service_helpers import TINY, Serve, poll_experiment
from test_ui_browser import Person, browser, new_user, screenshot_dir  # noqa: F401  (fixtures)

pytest_plugins = ["service_support"]

BASE = {**TINY, "models": ["ff"], "seeds": [0, 1], "network": {"width": 48, "layers": 2}, "snapshots": []}


def submit_two(alice: httpx.Client, token: str) -> list[str]:
    ids = []
    for name, threshold, tags in ((f"theta-low-{token}", 0.3, ["baseline"]),
                                  (f"theta-high-{token}", 0.5, [f"probe{token}"])):
        response = alice.post("/v1/experiments", json={**BASE, "name": name, "tags": tags,
                                                       "network": {**BASE["network"], "threshold": threshold}})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for experiment_id in ids:
        assert poll_experiment(alice, experiment_id, ("succeeded", "failed"), timeout=300)["status"] == "succeeded"
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded_default", "stack"])
def test_compare_two_experiments_in_the_browser(backend: str, browser, serves: list[Serve],  # noqa: F811
                                                 request: pytest.FixtureRequest, tmp_path: Path,
                                                 screenshot_dir: Path) -> None:  # noqa: F811
    if backend == "stack":  # PostgreSQL + Redis + S3; its users may have other experiments
        stack = request.getfixturevalue("stack")
        url, keys, shots = stack.api_url, {"alice": stack.member_key, "bob": stack.other_key}, None
    else:
        serve = Serve(tmp_path, "serve", progress_interval_s="0.2")
        serves.append(serve)
        serve.wait_up(timeout=240)  # a loaded machine starts the worker slowly
        with serve.client() as admin:
            keys = {"alice": new_user(admin, "alice"), "bob": new_user(admin, "bob")}
        url, shots = serve.url, screenshot_dir
    token = secrets.token_hex(3)
    alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)
    low, high = submit_two(alice, token)
    accuracy = {experiment_id: sum(run["accuracy"] for run in alice.get(
        f"/v1/experiments/{experiment_id}/runs").json()["items"]) / 2 for experiment_id in (low, high)}
    person = Person(browser, url, shots)
    person.sign_in(keys["alice"])

    # Search by name and by tag; sort by accuracy; each model's accuracy in its column.
    def listed() -> list[str]:
        return [row.get_attribute("data-experiment") for row in browser.find_elements("css selector",
                                                                                      "tr[data-experiment]")]

    person.open(f"/ui/?q={token.upper()}")  # a part of the name, any case
    assert set(listed()) == {low, high}
    person.open(f"/ui/?q=probe{token}")  # a tag
    assert listed() == [high]
    person.open("/ui/?q=nothing-like-it")
    assert person.text("#no-experiments").startswith("No experiments")
    person.open(f"/ui/?q={token}")
    person.choose("#sort", "-accuracy")
    person.find("#filter").click()
    person.wait(lambda: "sort=-accuracy" in browser.current_url, "the sorted list")
    shown = listed()
    assert shown == sorted((low, high), key=lambda e: -accuracy[e])
    assert person.text("th[data-accuracy-model='ff']") == "FF accuracy"
    for experiment_id in (low, high):
        cell = person.text(f"tr[data-experiment='{experiment_id}'] td.accuracy[data-model='ff']")
        assert float(cell) == pytest.approx(accuracy[experiment_id], abs=5e-4)

    # Tick both, press Compare.
    for experiment_id in (low, high):
        person.find(f"#pick-{experiment_id}").click()
    person.find("#compare").click()
    person.wait(lambda: "/ui/compare?" in browser.current_url, "the compare page")
    assert person.text("h1") == "Compare 2 experiments"
    rows = browser.find_elements("css selector", "#spec-diff tr.differs[data-field]")
    assert {row.get_attribute("data-field") for row in rows} == {"name", "network.threshold"}
    highlighted = person.find("#spec-diff tr[data-field='network.threshold'] td")
    assert highlighted.value_of_css_property("background-color") == "rgba(255, 244, 214, 1)"
    reference, other = shown  # the list's order: the highest ticked is the reference
    found = alice.get("/v1/comparisons", params={"experiment": [reference, other]}).json()
    cell = next(c for c in found["tables"] if c["table"] == "table1")
    table1 = person.text("#compare-table1")
    assert f"{cell['estimates'][0]['mean']:.4g}" in table1 and cell["differences"][0]["verdict"] in table1
    assert person.text("#compare-table3") and person.text("#compare-table2")
    assert len(browser.find_elements("css selector", "#jaccard-summary tbody tr")) == 4  # 2 seeds x 2 layers
    for name in ("loss_curves", "layer_quantities"):
        width = person.wait(lambda: person.js(
            f"const i = document.querySelector(\"img[alt='{name}']\"); i.scrollIntoView();"
            " return i.complete && i.naturalWidth"), f"the {name} figure")
        assert width > 300
    person.js("window.scrollTo(0, 0)")
    assert person.resources_off_the_app() == []
    assert f"fflab diff {reference} {other}" in person.text("#compare-command")
    person.screenshot("compare")

    # Another user may not compare alice's private experiments.
    person.sign_out()
    person.sign_in(keys["bob"])
    person.open(f"/ui/compare?experiment={low}&experiment={high}")
    assert person.text("h1") == "Not found"
    person.open(f"/ui/compare?experiment={low}")
    assert "give 2 to 8" in person.text("#error") or person.text("h1").startswith("Error")
    alice.close()
