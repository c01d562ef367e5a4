"""The web UI as a person uses it: Debian's Chromium, headless, driven by
Selenium through chromedriver, against the real service with a real worker, on
the embedded default (``fflab serve``) and on PostgreSQL + Redis + S3 (the
``stack`` fixture). One long scenario per back end, since each browser start
costs seconds: sign in, submit the quick preset with small overrides (after an
invalid value is refused next to its field), watch it finish, download a table,
open a figure, explore an ensemble (checked against the API's ensembles and the
stored representations), a form post without its CSRF token refused, another
user refused the private experiment, the admin seeing it.

Screenshots of the main pages at a laptop's 1366 x 900 and a phone's 390 x 844
go to a temporary folder, or to $FFLAB_UI_SCREENSHOTS (``make screenshots``
writes docs/img/ui-*.png). On the phone no page may scroll sideways.

Nothing is skipped: without /usr/bin/chromium and /usr/bin/chromedriver the
tests fail and say what to install. The browser resolves no host but 127.0.0.1,
and every resource a page loads must come from the app.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from fflab.pipeline.folders import analysed_rows
from service_helpers import Serve, Stack

pytest_plugins = ["service_support"]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SIZES = {"laptop": (1366, 900, False), "phone": (390, 844, True)}
OVERRIDES = {"models": ["ff"], "seeds": "0", "epochs": "1", "train_subset": "500", "test_subset": "500",
             "threshold": "0.3"}
WAIT_S = 240


@pytest.fixture(scope="module")
def browser() -> Iterator:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browser tests need Debian's chromium and "
                    f"chromium-driver (apt-get install -y chromium chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FFLAB_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@dataclass
class Person:
    """A person at the browser, on the app at ``url``."""

    driver: object
    url: str
    shots: Path | None = None

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The element's visible text, or "" if there is none. A page that swaps a
        fragment in (htmx) can replace the element between finding it and reading it:
        Selenium then raises StaleElementReferenceException, or chromedriver a plain
        WebDriverException ("Node with given id does not belong to the document"), and
        the element is found again."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        )

        for _ in range(3):
            try:
                return self.find(css).text
            except NoSuchElementException:
                return ""
            except StaleElementReferenceException:
                continue
            except WebDriverException as error:
                if "does not belong to the document" not in str(error):
                    raise
        return ""

    def wait(self, condition, what: str, timeout: float = 30):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
            lambda _: condition(), message=f"timed out waiting for {what}")

    def type(self, css: str, value: str) -> None:
        """Replace a field's text and leave it (which fires its change event)."""
        from selenium.webdriver.common.keys import Keys

        field = self.find(css)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE, value, Keys.TAB)

    def choose(self, css: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_value(value)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def fetch(self, path: str, method: str = "GET") -> dict:
        """A request from the page's own scripts (same origin, with its cookies)."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: arguments[1], credentials: 'same-origin'})"
            ".then(async r => done({status: r.status, text: await r.text()}))"
            ".catch(e => done({status: 0, text: String(e)}));", path, method)

    def sign_in(self, key: str) -> None:
        self.open("/")
        self.wait(lambda: "/ui/sign-in" in self.driver.current_url, "the sign-in page")
        self.find("#api_key").send_keys(key)
        self.find("#sign-in").click()
        self.wait(lambda: self.text("#signed-in-as"), "signing in")
        assert key not in self.driver.current_url

    def sign_out(self) -> None:
        self.find("#sign-out").click()
        self.wait(lambda: "/ui/sign-in" in self.driver.current_url, "signing out")

    def screenshot(self, name: str) -> None:
        """The page at each width; on the phone it must not scroll sideways."""
        if self.shots is None:
            return
        for label, (width, height, mobile) in SIZES.items():
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
            self.js("window.scrollTo(0, 0)")
            time.sleep(0.3)  # relayout
            path = self.shots / f"ui-{name}-{label}.png"
            self.driver.save_screenshot(str(path))
            assert png_size(path) == (width, height), path
            overflow = self.js("return document.documentElement.scrollWidth")
            assert overflow <= width, f"{name} scrolls sideways at {width} px ({overflow} px wide)"
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def resources_off_the_app(self) -> list[str]:
        names = self.js("return performance.getEntriesByType('resource').map(e => e.name)")
        return [name for name in names if not name.startswith(self.url)]


def mean_activity(api: httpx.Client, experiment_id: str, run_id: str, layer: int, class_index: int,
                  correct_only: bool) -> np.ndarray:
    """The mean activity of each unit over a class's analysed images, from the run's
    stored representations (fetched through the JSON API)."""
    response = api.get(f"/v1/experiments/{experiment_id}/artifacts/runs/{run_id}/representations.npz")
    assert response.status_code == 200
    with np.load(io.BytesIO(response.content)) as npz:
        stored = {name: npz[name] for name in npz.files}
    rows = analysed_rows(stored, None, correct_only) & (stored["labels"] == class_index)
    return stored[f"layer{layer}"][rows].mean(axis=0)


def walk_through(person: Person, keys: dict[str, str]) -> str:
    """The whole scenario; returns the experiment's id."""
    url = person.url
    alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=30)

    # Signing in keeps the key in an HttpOnly, SameSite=Strict cookie.
    person.open("/")
    person.wait(lambda: "/ui/sign-in" in person.driver.current_url, "the sign-in page")
    person.screenshot("sign-in")
    person.sign_in(keys["alice"])
    cookie = person.driver.get_cookie("fflab_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert keys["alice"] not in cookie["value"]  # a server-side session's id, never the key
    assert person.js("return document.cookie") == ""  # nothing a script can read

    # Submit the quick preset with small overrides; an invalid theta is refused inline first.
    person.open("/ui/submit")
    for model in ("bpff", "bp"):
        person.find(f"#model-{model}").click()
    person.type("#seeds", OVERRIDES["seeds"])
    person.type("#epochs", OVERRIDES["epochs"])
    person.type("#train_subset", OVERRIDES["train_subset"])
    person.type("#test_subset", OVERRIDES["test_subset"])
    person.type("#threshold", "-1")
    person.wait(lambda: person.text("#threshold-error") == "Input should be greater than 0", "theta's error")
    assert person.text("#spec-preview-invalid")
    person.type("#threshold", OVERRIDES["threshold"])
    person.wait(lambda: '"threshold": 0.3' in person.text("#spec-preview"), "the spec preview")
    assert person.text("#threshold-error") == "" and person.text("#run-count") == "2 runs"
    preview = person.text("#spec-preview")
    assert '"train_subset": 500' in preview and '"models": [\n    "ff"\n  ]' in preview
    person.screenshot("submit")
    person.find("#submit").click()
    person.wait(lambda: "/ui/experiments/" in person.driver.current_url, "the experiment's page")
    experiment_id = person.driver.current_url.rstrip("/").rsplit("/", 1)[-1]

    # Watch it finish: the progress section polls, then the page reloads with the results.
    person.wait(lambda: person.text("#live-status") or person.text("#status") == "succeeded", "progress")
    person.wait(lambda: person.text("#status") == "succeeded", "the experiment to succeed", WAIT_S)
    assert alice.get(f"/v1/experiments/{experiment_id}").json()["status"] == "succeeded"
    assert "Table 1" in person.text("#tables") and person.text("tr[data-run='ff-mnist-seed0'] .status") == "succeeded"
    assert person.js("return document.querySelectorAll('#runs svg.loss polyline').length") >= 3  # FF: per layer
    csv = person.fetch(person.find("#table1 a.download").get_attribute("href"))
    assert csv["status"] == 200
    assert csv["text"] == alice.get(f"/v1/experiments/{experiment_id}/results",
                                    params={"format": "csv", "table": "table1"}).text
    person.screenshot("experiment")
    # Every table reads whole on a 1280 px laptop: no sideways scrolling inside the tables card.
    person.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    cut = person.js("return [...document.querySelectorAll('#tables .scroll')]"
                    ".filter(s => s.scrollWidth > s.clientWidth).map(s => s.parentElement.id)")
    person.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert cut == [], f"tables cut at 1280 px: {cut}"

    # Open a figure.
    link = person.find("#figures a.figure-link[href$='figure2.png']")
    link.click()
    person.wait(lambda: person.driver.current_url.endswith("/figures/figure2.png"), "the figure")
    width = person.wait(lambda: person.js("return document.images.length && document.images[0].naturalWidth"),
                        "the figure to load")
    assert width > 100
    person.driver.back()

    # Explore an ensemble and check it against the API and the stored representations.
    spec = alice.get(f"/v1/experiments/{experiment_id}").json()["spec"]
    records = alice.get(f"/v1/experiments/{experiment_id}/ensembles",
                        params={"run_id": "ff-mnist-seed0"}).json()["runs"][0]["ensembles"]
    shown = [r for r in records if r["quantile"] in (None, spec["analysis"]["figure_quantile"])]
    # The largest ensemble of a class other than 0 (the page's default), Method 2 first.
    pick = max((r for r in shown if r["class_index"] != 0),
               key=lambda r: (r["size"], r["method"] == "method2", -r["layer"]))
    layer, chosen, method = pick["layer"], pick["class_index"], pick["method"]
    units = {r["class_index"]: set(r["units"]) for r in shown if r["layer"] == layer and r["method"] == method}
    assert units[chosen], "no class has an ensemble: the run learned nothing"
    person.open(f"/ui/experiments/{experiment_id}/ensembles")
    person.choose("#method", method)
    person.wait(lambda: f"· {method}" in person.text("#ensemble-summary"), method)
    person.choose("#layer", str(layer))
    person.wait(lambda: f"layer {layer} · class 0" in person.text("#ensemble-summary"), f"layer {layer}")
    person.choose("#class", str(chosen))
    person.wait(lambda: f"layer {layer} · class {chosen}" in person.text("#ensemble-summary"), f"class {chosen}")
    other = int(person.find("#other").get_attribute("value"))
    assert person.text("#ensemble-size") == str(len(units[chosen]))
    cells = person.js("return [...document.querySelectorAll('#unit-grid .u')].map("
                      "c => [c.classList.contains('e'), c.classList.contains('s'), c.dataset.mean])")
    assert len(cells) == 784 and person.find("#unit-grid").value_of_css_property("grid-template-columns").count(
        "px") == 28
    assert {unit for unit, (inside, _, _) in enumerate(cells) if inside} == units[chosen]
    assert {unit for unit, (_, shared, _) in enumerate(cells) if shared} == units[chosen] & units.get(other, set())
    expected = mean_activity(alice, experiment_id, "ff-mnist-seed0", layer, chosen,
                             spec["analysis"]["correct_only"])
    np.testing.assert_allclose([float(mean) for _, _, mean in cells], expected, rtol=1e-4, atol=1e-6)
    person.screenshot("explorer")
    assert person.resources_off_the_app() == []

    # A form post without its CSRF token is refused, and changes nothing.
    refused = person.fetch(f"/ui/experiments/{experiment_id}/delete", "POST")
    assert refused["status"] == 403 and "no valid CSRF token" in refused["text"]
    assert alice.get(f"/v1/experiments/{experiment_id}").status_code == 200

    # Another user is refused the private experiment; the admin sees it.
    person.sign_out()
    person.sign_in(keys["bob"])
    person.open(f"/ui/experiments/{experiment_id}")
    assert person.text("h1") == "Not found" and f"no experiment {experiment_id}" in person.text("#error")
    person.open("/ui/")
    assert experiment_id not in person.driver.page_source
    person.sign_out()
    person.sign_in(keys["root"])
    person.open("/ui/?scope=visible")
    assert person.text(f"tr[data-experiment='{experiment_id}'] td.owner") == "alice"
    person.screenshot("experiments")
    person.sign_out()
    alice.close()
    return experiment_id


def new_user(admin: httpx.Client, name: str) -> str:
    response = admin.post("/v1/admin/users", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["api_key"]


@pytest.mark.slow
def test_the_web_ui_on_the_embedded_default(browser, serves: list[Serve], tmp_path: Path,
                                            screenshot_dir: Path) -> None:
    serve = Serve(tmp_path, "serve", progress_interval_s="0.2")
    serves.append(serve)
    serve.wait_up()
    with serve.client() as admin:
        keys = {"root": serve.key(), "alice": new_user(admin, "alice"), "bob": new_user(admin, "bob")}
    walk_through(Person(browser, serve.url, screenshot_dir), keys)
    shots = sorted(path.name for path in screenshot_dir.glob("ui-*.png")
                   if path.name.split("-")[1] in ("sign", "submit", "experiment", "explorer", "experiments"))
    assert len(shots) == 10 and all(png_size(screenshot_dir / name)[0] in (1366, 390) for name in shots)


@pytest.mark.slow
def test_the_web_ui_on_postgresql_redis_and_s3(browser, stack: Stack) -> None:
    keys = {"root": stack.admin_key, "alice": stack.member_key, "bob": stack.other_key}
    walk_through(Person(browser, stack.api_url), keys)


class Attacker:
    """A page of another port of 127.0.0.1 (same site, another origin): it plants a
    ``fflab_csrf`` cookie (cookies are shared across ports) and auto-submits a form
    deleting an experiment with the same value as its ``csrf_token``."""

    def __init__(self, target: str):
        import http.server
        import secrets
        import threading

        planted = secrets.token_urlsafe(32)
        self.posted: list[str] = []
        page = (f'<!doctype html><form id="f" method="post" action="{target}">'
                f'<input name="csrf_token" value="{planted}"></form>'
                f'<script>document.getElementById("f").submit()</script>').encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Set-Cookie", f"fflab_csrf={planted}; Path=/ui")
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_csrf_token_planted_from_another_port_deletes_nothing(browser, serves: list[Serve], tmp_path: Path) -> None:
    serve = Serve(tmp_path, "serve", "--no-worker")
    serves.append(serve)
    serve.wait_up("/healthz")
    with serve.client() as admin:
        key = new_user(admin, "alice")
    alice = httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    submitted = alice.post("/v1/experiments", json={"preset": "quick", "name": "kept", "models": ["ff"],
                                                    "seeds": [0], "data": {"train_subset": 200, "test_subset": 200}})
    assert submitted.status_code == 202, submitted.text
    experiment_id = submitted.json()["id"]
    person = Person(browser, serve.url)
    person.sign_in(key)
    attacker = Attacker(f"{serve.url}/ui/experiments/{experiment_id}/delete")
    try:
        browser.get(attacker.url)
        person.wait(lambda: browser.current_url.startswith(serve.url), "the attacker's form to be sent")
        person.wait(lambda: "another site" in browser.page_source or "CSRF" in browser.page_source
                    or browser.current_url.rstrip("/").endswith("/ui"), "the answer to the attacker's form")
        assert alice.get(f"/v1/experiments/{experiment_id}").status_code == 200, browser.page_source[:2000]
        assert "/ui/experiments/" in browser.current_url  # the 403 page, no redirect to the list
    finally:
        attacker.close()
        alice.close()


# One FF run of three layers, long enough to be watched while it trains; and one that
# trains until cancelled, to hold the worker while the first waits.
# Both train far longer than the test watches, on any machine: the test ends the live one itself.
LIVE = {"preset": "quick", "name": "live", "models": ["ff"], "seeds": [0], "unseen_class": None,
        "data": {"train_subset": 200, "test_subset": 200}, "network": {"width": 64},
        "ff": {"epochs": 5000, "batch_size": 100, "learning_rate": 0.003}}
BLOCKER = {**LIVE, "name": "blocker"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("sqlite", id="embedded_default"),
                                     pytest.param("postgresql", id="postgresql_redis")])
def test_a_run_followed_live_in_the_web_ui(backend: str, browser, serves: list[Serve], tmp_path: Path, pg_database,
                                          redis_prefix: str, screenshot_dir: Path) -> None:
    """An experiment's page opened while it waits: its title's badge and its runs
    table say queued, then running without a reload, and the live loss chart draws
    more points as the run trains; its owner edits its tags and visibility and
    cancels it on the page (confirming first); once cancelled, the run's log page
    shows its log and the code version that trained it."""
    from service_helpers import backend_settings

    serve = Serve(tmp_path, "serve", progress_interval_s="0.2", stop_check_interval_s="0.2",
                  **backend_settings(backend, pg_database, redis_prefix))
    serves.append(serve)
    serve.wait_up(timeout=240)
    person = Person(browser, serve.url, screenshot_dir if backend == "sqlite" else None)
    with serve.client() as admin:
        blocker = admin.post("/v1/experiments", json=BLOCKER).json()["id"]
        live = admin.post("/v1/experiments", json=LIVE).json()["id"]
        person.sign_in(serve.key())
        person.open(f"/ui/experiments/{live}")
        assert person.text("h1 #status") == "queued"
        assert person.text("tr[data-run='ff-mnist-seed0'] .status") == "queued"
        person.js("window.notReloaded = true")
        assert admin.post(f"/v1/experiments/{blocker}/cancel").status_code == 200

        person.wait(lambda: person.text("h1 #status") == "running", "the title's badge to say running", 120)
        person.wait(lambda: person.text("tr[data-run='ff-mnist-seed0'] .status") == "running",
                    "the runs table to say running")

        def points() -> int:
            try:
                return int(person.js("const f = document.querySelector('figure.live-loss');"
                                     "return f ? f.dataset.points : 0"))
            except Exception:  # swapped while read
                return 0

        first = person.wait(lambda: points() if points() >= 2 else 0, "the live chart's first points", 120)
        drawn = person.js("return [...document.querySelectorAll('figure.live-loss polyline')]"
                          ".map(p => p.getAttribute('points').trim().split(/\\s+/).length)")
        assert sum(drawn) >= first and all(n >= 2 for n in drawn)
        person.wait(lambda: points() > first, "more points while it trains", 120)
        assert person.js("return window.notReloaded === true")  # updated in place, not reloaded
        person.wait(lambda: points() >= max(20, first + 2), "a curve worth a picture", 120)
        person.screenshot("live")

        # Its owner tags it and shares it with the lab from the page (the PATCH's service function).
        person.find("#edit-form summary").click()
        person.type("#edit-tags", "live, watched")
        person.choose("#edit-visibility", "lab")
        person.find("#save-edit").click()
        person.wait(lambda: person.js("return [...document.querySelectorAll('#tags .tag')].map(t => t.textContent)")
                    == ["live", "watched"], "the page to show the new tags")
        assert person.text("#visibility") == "lab"
        edited = admin.get(f"/v1/experiments/{live}").json()
        assert (edited["tags"], edited["visibility"]) == (["live", "watched"], "lab")

        # Cancel asks to be confirmed, as Delete does: its button shows only once asked for.
        assert not person.find("#cancel").is_displayed()
        person.find("#cancel-confirm summary").click()
        person.wait(lambda: person.find("#cancel").is_displayed(), "the cancel confirmation")
        person.find("#cancel").click()
        person.wait(lambda: person.text("h1 #status") == "cancelled", "the badge to say cancelled", WAIT_S)
        person.wait(lambda: "ended cancelled" in admin.get(
            f"/v1/experiments/{live}/runs/ff-mnist-seed0/log").json()["text"], "the log's last line", 60)
        run = admin.get(f"/v1/experiments/{live}/runs/ff-mnist-seed0").json()
        log = admin.get(f"/v1/experiments/{live}/runs/ff-mnist-seed0/log").json()
    person.find("tr[data-run='ff-mnist-seed0'] a.run-log").click()
    person.wait(lambda: person.driver.current_url.endswith("/runs/ff-mnist-seed0/log"), "the run's log page")
    assert "ended cancelled" in person.text("#run-log pre.log")
    assert person.text("#run-log pre.log") == log["text"].strip()
    assert f"torch {run['code_version']['torch']}" in person.text("#code-version")
    person.screenshot("run-log")
    assert person.resources_off_the_app() == []
    person.sign_out()
