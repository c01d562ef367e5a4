"""The web UI over real HTTP (the app in uvicorn, SQLite, a local artifact folder)
on hand-built experiments whose answers are known, without a browser: sign-in
cookies, CSRF, who may see and change what, inline validation errors, CSV
downloads and the ensemble explorer's numbers. The pure helpers behind the pages
are checked on known answers too. The browser scenarios are in test_ui_browser.py.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.routing import APIRoute
from matplotlib.figure import Figure

from api.ui import STATIC_DIR
from api.ui.charts import loss_chart
from api.ui.explorer import class_mean_activity, unit_grid
from api.ui.forms import ANALYSIS_FIELDS, SUBMIT_FIELDS, AnalysisForm, SubmitForm, field_errors, form_errors
from fflab import accounts
from fflab.db import Artifact, Ensemble, Experiment, Result, Run, session_scope
from fflab.db.migrate import upgrade_database
from fflab.figures import save_png
from fflab.settings import Settings
from fflab.spec import AnalysisSpec, build_spec
from fflab.storage import get_storage
from service_helpers import free_port, http_ready, wait_for

FINISHED, LAB, BOBS, RUNNING = "a" * 32, "b" * 32, "c" * 32, "d" * 32
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
# Layer 1 of 5 test images, 4 units; image 3 was misclassified (left out of the means).
LABELS = np.array([0, 0, 1, 1, 2])
CORRECT = np.array([True, True, True, False, True])
LAYER1 = np.array([[1, 0, 1, 0], [3, 0, 1, 0], [0, 0, 2, 4], [9, 9, 9, 9], [0, 0, 0, 0]], dtype=np.float32)
ENSEMBLES = {0: [0, 2], 1: [2, 3], 2: [1]}  # method 2, layer 1


# ----------------------------------------------------------------------------- pure helpers


def test_vendored_htmx_is_the_recorded_file() -> None:
    digest = hashlib.sha256((STATIC_DIR / "htmx.min.js").read_bytes()).hexdigest()
    assert digest == HTMX_SHA256
    assert HTMX_SHA256 in (STATIC_DIR / "VENDORED.md").read_text()


def test_field_errors_reads_both_error_shapes() -> None:
    fastapi_body = {"detail": [{"loc": ["body", "ff", "epochs"], "msg": "Input should be a valid integer"},
                               {"loc": ["body", "seeds", 2], "msg": "bad seed"}, {"loc": ["body"], "msg": "whole"}]}
    problem_body = {"type": "about:blank", "status": 422, "code": "validation_error", "message": "invalid",
                    "detail": "invalid", "details": [
                        {"field": "ff.epochs", "given": "x", "allowed": "an integer",
                         "message": "Input should be a valid integer"},
                        {"field": "seeds.2", "message": "bad seed"}, {"field": "", "message": "whole"}]}
    expected = {"ff.epochs": ["Input should be a valid integer"], "seeds.2": ["bad seed"], "": ["whole"]}
    assert field_errors(fastapi_body) == expected
    assert field_errors(problem_body) == expected
    assert field_errors({"detail": "experiment x is running"}) == {"": ["experiment x is running"]}
    assert field_errors({"code": "conflict", "message": "busy", "detail": "busy", "details": []}) == {"": ["busy"]}


def test_form_errors_file_messages_under_the_fields_holding_them() -> None:
    errors = {"ff.epochs": ["not an integer"], "bp.epochs": ["too many"], "network.threshold": ["> 0"],
              "seeds.2": ["bad"], "network.width": ["too wide"], "": ["no preset"]}
    assert form_errors(errors, SUBMIT_FIELDS) == {
        "epochs": ["ff.epochs: not an integer", "bp.epochs: too many"], "threshold": ["> 0"],
        "seeds": ["bad"], "": ["network.width: too wide", "no preset"]}


def test_submit_form_body_applies_the_common_overrides() -> None:
    form = SubmitForm(preset="quick", name=" tiny ", visibility="lab", models=["ff", "bp"], datasets=["mnist"],
                      seeds="0, 3 x", epochs="2", train_subset="500", test_subset="", threshold="0.4")
    assert form.body() == {"preset": "quick", "visibility": "lab", "priority": "normal", "name": "tiny",
                           "models": ["ff", "bp"],
                           "datasets": ["mnist"], "seeds": [0, 3, "x"], "ff": {"epochs": 2}, "bp": {"epochs": 2},
                           "data": {"train_subset": 500}, "network": {"threshold": 0.4}}
    first = SubmitForm.for_preset("quick")
    assert (first.models, first.datasets, first.seeds) == (["ff", "bpff", "bp"], ["mnist"], "0, 1, 2")
    assert first.body() == {"preset": "quick", "visibility": "private", "priority": "normal",
                            "models": ["ff", "bpff", "bp"],
                            "datasets": ["mnist"], "seeds": [0, 1, 2]}


def test_analysis_form_round_trips_a_spec() -> None:
    analysis = build_spec("quick").analysis.model_dump(mode="json")
    form = AnalysisForm.from_spec(analysis)
    assert form.quantiles == "0.9, 0.95, 0.99" and form.rho_cut == "" and form.correct_only
    assert form.body() == {"correct_only": True, "quantiles": [0.9, 0.95, 0.99], "table_quantile": 0.95,
                           "figure_quantile": 0.9, "method1_threshold": "quantile", "histogram_bins": 10,
                           "epsilon": 0.2, "method2_cut": "isolated", "rho_cut": None, "nh_cut": None}
    assert set(ANALYSIS_FIELDS) >= {"quantiles", "epsilon", "rho_cut", "nh_cut", "method1_threshold"}
    # A re-analysis from the page keeps every setting it does not change: the form
    # carries each field of AnalysisSpec.
    assert set(ANALYSIS_FIELDS) == set(AnalysisSpec.model_fields)
    histogram = {**analysis, "method1_threshold": "histogram", "histogram_bins": 7, "method2_cut": "top_cluster"}
    assert AnalysisSpec.model_validate(AnalysisForm.from_spec(histogram).body()) == AnalysisSpec(**histogram)


def test_loss_chart_scales_every_layer_on_shared_axes() -> None:
    chart = loss_chart([[4.0, 2.0, 0.0], [2.0, float("nan"), 1.0]], width=104, height=44, pad=2)
    assert (chart.low, chart.high, chart.epochs) == (0.0, 4.0, 3)
    assert chart.lines == ["2,2 52,22 102,42", "2,22 102,32"]
    assert loss_chart([[0.5]], width=10, height=10, pad=1).lines == ["1,1 9,1"]
    assert loss_chart([[float("inf")]]) is None and loss_chart([]) is None


def test_class_mean_activity_and_unit_grid_known_answers() -> None:
    means = class_mean_activity(LAYER1, LABELS, CORRECT, n_classes=4)
    np.testing.assert_allclose(means[:3], [[2, 0, 1, 0], [0, 0, 2, 4], [0, 0, 0, 0]])
    assert np.isnan(means[3]).all()  # no image of class 3
    side, cells = unit_grid(5, ensemble=[0, 4], other=[4, 1], mean=np.array([2.0, 0, 1, np.nan, 4]))
    assert side == 3 and [c.unit for c in cells] == [0, 1, 2, 3, 4]
    assert [(c.in_ensemble, c.shared) for c in cells] == [(True, False), (False, False), (False, False),
                                                          (False, False), (True, True)]
    assert [c.level for c in cells] == [0.5, 0.0, 0.25, 0.0, 1.0] and cells[3].mean is None
    assert unit_grid(784, [])[0] == 28
    with pytest.raises(ValueError, match="outside"):
        unit_grid(4, [4])
    with pytest.raises(ValueError, match="labels"):
        class_mean_activity(LAYER1, np.array([0, 1, 2, 3, 10]), CORRECT)


# ----------------------------------------------------------------------------- the app over HTTP


@dataclass
class World:
    url: str
    keys: dict[str, str]
    app: object

    def client(self, who: str | None = None) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)
        if who is not None:
            sign_in(client, self.keys[who])
        return client


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    token = csrf_of(client.get("/ui/sign-in").text)
    response = client.post("/ui/sign-in", data={"api_key": key, "csrf_token": token, "next": "/ui/"})
    assert response.status_code == 303, response.text
    return response


def field_error(page: str, element_id: str) -> str:
    found = re.search(rf'id="{re.escape(element_id)}">([^<]*)<', page)
    return found.group(1) if found else ""


def _hand_built(settings: Settings, folder: Path) -> dict[str, str]:
    """alice's finished private experiment (one FF run, hand-made documents), her
    lab-visible queued one and bob's; returns the users' keys."""
    storage = get_storage(settings)
    spec = build_spec("quick", {"name": "handmade", "models": ["ff"], "seeds": [0], "unseen_class": None,
                                "network": {"width": 4, "layers": 1}}).model_dump(mode="json")
    np.savez(folder / "representations.npz", labels=LABELS, correct=CORRECT, predictions=LABELS, layer1=LAYER1)
    figure = Figure(figsize=(2, 1))
    figure.subplots().plot([0, 1], [1, 0])
    save_png(figure, folder / "figure2.png")
    (folder / "ensembles.json").write_text(json.dumps({"run_id": "ff-mnist-seed0"}))
    with session_scope(settings.resolved_database_url) as session:
        alice, bob = accounts.create_user(session, "alice"), accounts.create_user(session, "bob")
        keys = {"alice": accounts.issue_key(session, alice), "bob": accounts.issue_key(session, bob),
                "root": accounts.issue_key(session, accounts.create_user(session, "root", "admin"))}
        identity = {"run_id": "ff-mnist-seed0", "model": "ff", "dataset": "mnist", "seed": 0, "unseen_class": None}
        session.add(Experiment(id=FINISHED, owner=alice, name="handmade", spec=spec, runs_total=1,
                               status="succeeded", runs=[Run(
            **identity, queue="cpu", status="succeeded", attempts=1, record={"accuracy": 0.75},
            metrics={"loss_history": [[1.0, 0.5, 0.25]]},
            ensemble_summary={"schema_version": "1.0", **identity, "analysis": spec["analysis"], "n_units": 4,
                              "sparseness": []})]))
        session.add(Experiment(id=LAB, owner=alice, name="shared", spec=spec, runs_total=1, visibility="lab",
                               runs=[Run(**identity, queue="cpu")]))
        session.add(Experiment(id=BOBS, owner=bob, name="bobs", spec=spec, runs_total=1,
                               runs=[Run(**identity, queue="cpu")]))
        session.add(Experiment(id=RUNNING, owner=alice, name="training", spec=spec, runs_total=1, status="running",
                               runs=[Run(**identity, queue="cpu", status="running", attempts=1, progress={
                                   "model": "ff", "layer": 2, "layers": 3, "epoch": 5, "epochs": 20,
                                   "eta_seconds": 75.0})]))
        session.flush()
        for class_index, units in ENSEMBLES.items():
            session.add(Ensemble(experiment_id=FINISHED, **identity, layer=1, class_index=class_index,
                                 class_name=str(class_index), method="method2", epsilon=0.2, n_images=2,
                                 size=len(units), units=units))
        for name, source, kind in (("runs/ff-mnist-seed0/representations.npz", "representations.npz",
                                    "application/octet-stream"), ("figures/figure2.png", "figure2.png", "image/png"),
                                   ("runs/ff-mnist-seed0/ensembles.json", "ensembles.json", "application/json")):
            stored = storage.put_file(f"experiments/{FINISHED}/{name}", folder / source)
            session.add(Artifact(experiment_id=FINISHED, name=name, key=stored.key, size=stored.size,
                                 sha256=stored.sha256, content_type=kind))
        session.add(Result(experiment_id=FINISHED, tables={"table1": {"csv": "Model,Accuracy mean\nFF,0.75\n",
                                                                        "md": "| Model |"}},
                           results={"tables": {"table1": {"name": "table1", "title": "Table 1: accuracy",
                                                          "columns": ["Model", "Accuracy mean"],
                                                          "rows": [["FF", 0.75]]}}, "runs": [], "figures": [],
                                    "partial": True, "runs_included": ["ff-mnist-seed0"],
                                    "runs_missing": [{"run_id": "ff-mnist-seed1", "status": "failed",
                                                      "error": "RuntimeError: <b>boom</b>"}]}))
    return keys


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from api.main import create_app

    folder = tmp_path_factory.mktemp("ui")
    settings = Settings(var_dir=folder / "var")
    upgrade_database(settings.resolved_database_url)
    keys = _hand_built(settings, folder)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(http_ready(f"http://127.0.0.1:{port}/healthz"), 30, "the API")
        yield World(f"http://127.0.0.1:{port}", keys, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_sign_in_keeps_the_key_in_a_strict_httponly_cookie(world: World) -> None:
    client = world.client()
    assert client.get("/").headers["location"] == "/ui/"
    to_sign_in = client.get("/ui/experiments/" + FINISHED)
    assert to_sign_in.status_code == 303
    assert to_sign_in.headers["location"] == f"/ui/sign-in?next=%2Fui%2Fexperiments%2F{FINISHED}"
    page = client.get("/ui/sign-in")
    assert 'type="password"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    wrong = client.post("/ui/sign-in", data={"api_key": "fflab_" + "x" * 43, "csrf_token": csrf_of(page.text)})
    assert wrong.status_code == 401 and field_error(wrong.text, "api_key-error") == "invalid or revoked API key"

    response = sign_in(client, world.keys["alice"])
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith("fflab_session=")]
    session_id = client.cookies.get("fflab_session")  # a server-side session's id, not the key
    assert cookies == [f"fflab_session={session_id}; HttpOnly; Path=/ui; SameSite=strict"]
    assert world.keys["alice"] not in cookies[0]
    assert world.keys["alice"] not in response.headers["location"]
    assert 'id="signed-in-as">alice<' in client.get("/ui/").text
    # The JSON API does not take the cookie: it keeps header authentication.
    assert httpx.get(f"{world.url}/v1/experiments", cookies={"fflab_session": session_id}).status_code == 401

    signed_out = client.post("/ui/sign-out", data={"csrf_token": csrf_of(client.get("/ui/").text)})
    assert signed_out.status_code == 303 and 'fflab_session=""' in signed_out.headers["set-cookie"]
    assert client.get("/ui/").headers["location"].startswith("/ui/sign-in")


def ui_routes(world: World) -> list[tuple[str, str]]:
    """Every (method, path) of the UI's router: a new page is covered automatically."""
    from api.ui.routes import router

    assert all(isinstance(route, APIRoute) for route in router.routes)
    return [(method, route.path) for route in router.routes for method in sorted(route.methods - {"HEAD"})]


def filled(path: str, experiment_id: str) -> str:
    return (path.replace("{experiment_id}", experiment_id).replace("{table}", "table1")
            .replace("{name}", "figure2.png").replace("{run_id}", "ff-mnist-seed0")
            .replace("{document}", "ensembles"))


def test_every_form_post_without_its_csrf_token_is_refused(world: World) -> None:
    posts = [path for method, path in ui_routes(world) if method == "POST"]
    assert len(posts) >= 7
    alice = world.client("alice")
    for path in posts:
        for headers, data in (({}, {}), ({}, {"csrf_token": "x" * 43}), ({"X-CSRF-Token": "forged"}, {})):
            response = alice.post(filled(path, FINISHED), data=data, headers=headers)
            assert response.status_code == 403, (path, response.text)
            assert "no valid CSRF token" in response.text
    assert alice.get(f"/ui/experiments/{FINISHED}").status_code == 200  # the delete was refused


def test_pages_need_a_signed_in_user_and_hide_others_private_experiments(world: World) -> None:
    gets = [path for method, path in ui_routes(world) if method == "GET" and path != "/ui/sign-in"]
    assert len(gets) >= 9
    anonymous, bob, admin = world.client(), world.client("bob"), world.client("root")
    for path in gets:
        response = anonymous.get(filled(path, FINISHED))
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/sign-in"), path
        if "{experiment_id}" in path:
            refused = bob.get(filled(path, FINISHED))
            assert refused.status_code == 404 and f"no experiment {FINISHED}" in refused.text, path
            assert admin.get(filled(path, FINISHED)).status_code == 200, path
    listed = bob.get("/ui/").text
    assert LAB in listed and BOBS in listed and FINISHED not in listed
    assert FINISHED in admin.get("/ui/").text and LAB not in bob.get("/ui/?scope=mine").text
    assert LAB in bob.get(f"/ui/experiments/{LAB}").text  # the lab's: readable, not changeable
    cancel = bob.post(f"/ui/experiments/{LAB}/cancel", data={"csrf_token": csrf_of(listed)})
    assert cancel.status_code == 403 and "only the experiment's owner or an admin" in html.unescape(cancel.text)
    assert "1 run waiting ahead" in bob.get("/ui/?status=queued").text  # bob's waits behind alice's


def test_experiment_page_tables_csv_figure_and_progress(world: World) -> None:
    alice = world.client("alice")
    page = alice.get(f"/ui/experiments/{FINISHED}").text
    assert "Partial results: 1 of 2 runs" in page  # cancelled, or a run failed: said above the tables
    assert "ff-mnist-seed1 (failed: RuntimeError: &lt;b&gt;boom&lt;/b&gt;)" in page
    assert "Table 1: accuracy" in page and "<td>0.75</td>" in page and 'points="2,2 120,39.33 238,58"' in page
    assert f'src="/ui/experiments/{FINISHED}/figures/figure2.png"' in page and "Against the paper" in page
    csv = alice.get(f"/ui/experiments/{FINISHED}/tables/table1.csv")
    assert csv.text == "Model,Accuracy mean\nFF,0.75\n"
    assert csv.headers["content-disposition"] == 'attachment; filename="handmade-table1.csv"'
    comparison = alice.get(f"/ui/experiments/{FINISHED}/paper-comparison.csv")
    assert comparison.status_code == 200 and comparison.text.startswith("id,")
    png = alice.get(f"/ui/experiments/{FINISHED}/figures/figure2.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    assert alice.get(f"/ui/experiments/{FINISHED}/figures/x%5C..").status_code == 422
    assert alice.get(f"/ui/experiments/{FINISHED}/progress").headers["hx-refresh"] == "true"
    live = alice.get(f"/ui/experiments/{LAB}/progress")
    assert 'hx-trigger="every 2s"' in live.text and "0 runs waiting ahead" in live.text


def test_explorer_shows_the_ensemble_its_mean_activity_and_shared_units(world: World) -> None:
    alice = world.client("alice")
    page = alice.get(f"/ui/experiments/{FINISHED}/ensembles",
                     params={"layer": 1, "class_index": 0, "method": "method2"}).text
    cells = re.findall(r'<div class="u( e)?( s)?" data-unit="(\d)" data-mean="([^"]+)"', page)
    # Class 0's analysed images are 0 and 1: means (1+3)/2, 0, 1, 0. Class 1 shares unit 2.
    assert cells == [(" e", "", "0", "2"), ("", "", "1", "0"), (" e", " s", "2", "1"), ("", "", "3", "0")]
    assert 'grid-template-columns: repeat(2, 1fr)' in page
    assert '<span id="ensemble-size">2</span>' in page and '<span id="shared-count">1</span>' in page
    other = alice.get(f"/ui/experiments/{FINISHED}/ensembles",
                      params={"class_index": 1, "other": 2, "method": "method2"}).text
    # Class 1: only image 2 (image 3 was misclassified); it shares nothing with class 2.
    assert re.findall(r'data-unit="(\d)" data-mean="([^"]+)"', other) == [("0", "0"), ("1", "0"), ("2", "2"),
                                                                          ("3", "4")]
    assert '<span id="shared-count">0</span>' in other
    assert '<option value="1" selected>1</option>' in other  # MNIST's class 1 is "1", not "1 · 1"
    bad = alice.get(f"/ui/experiments/{FINISHED}/ensembles", params={"class_index": 99})
    assert bad.status_code == 422 and "<code>class_index</code>" in bad.text
    for params, field in (({"class_index": 12}, "class_index"), ({"other": 10}, "other"), ({"layer": 7}, "layer")):
        beyond = alice.get(f"/ui/experiments/{FINISHED}/ensembles", params=params)  # MNIST's 10 classes, 1 layer
        assert beyond.status_code == 422 and f"<code>{field}</code>" in beyond.text, (params, beyond.text[-600:])
    # The page takes the ensembles endpoint's parameters; one it does not take is named, never ignored.
    unknown = alice.get(f"/ui/experiments/{FINISHED}/ensembles", params={"class": 3, "run": "x"})
    assert unknown.status_code == 422 and "<code>class</code>" in unknown.text and "<code>run</code>" in unknown.text
    assert "class_index" in unknown.text and "run_id" in unknown.text
    default = alice.get(f"/ui/experiments/{FINISHED}/ensembles").text
    assert '<option value="method1" selected>' in default  # the paper's tables are Method 1's


def test_a_page_names_a_query_parameter_it_does_not_take(world: World) -> None:
    alice = world.client("alice")
    for page in ("/ui/", f"/ui/experiments/{FINISHED}", f"/ui/experiments/{FINISHED}/progress"):
        response = alice.get(page, params={"stauts": "running"})
        assert response.status_code == 422 and "<code>stauts</code>" in response.text, page
    assert alice.get("/ui/", params={"status": "running", "q": "x", "sort": "name"}).status_code == 200


def test_forms_show_the_apis_validation_errors_next_to_their_fields(world: World) -> None:
    alice = world.client("alice")
    token = csrf_of(alice.get("/ui/submit").text)
    form = {"csrf_token": token, "preset": "quick", "models": ["ff"], "datasets": ["mnist"], "seeds": "0",
            "epochs": "two", "threshold": "-1", "train_subset": "500"}
    preview = alice.post("/ui/submit/preview", data=form)
    assert preview.status_code == 200 and 'id="spec-preview-invalid"' in preview.text
    assert field_error(preview.text, "threshold-error") == "Input should be greater than 0"
    assert field_error(preview.text, "epochs-error") == "ff.epochs: Input should be a valid integer"
    good = alice.post("/ui/submit/preview", data={**form, "epochs": "1", "threshold": "0.4"})
    assert '"threshold": 0.4' in html.unescape(good.text) and '<p id="run-count">2 runs</p>' in good.text
    refused = alice.post("/ui/submit", data={**form, "models": [], "epochs": ""})
    assert refused.status_code == 422 and "at least 1 item" in field_error(refused.text, "models-error")

    analysis = {"csrf_token": token, "quantiles": "0.9, 0.95", "table_quantile": "0.95", "figure_quantile": "0.9",
                "epsilon": "2", "nh_cut": "many", "correct_only": "on"}
    page = alice.post(f"/ui/experiments/{FINISHED}/analyses", data=analysis)
    assert page.status_code == 422
    assert field_error(page.text, "an-epsilon-error") == "Input should be less than or equal to 1"
    assert field_error(page.text, "an-nh_cut-error") == "Input should be a valid integer"
    assert 'value="many"' in page.text  # what was typed stays in the form


def test_live_progress_then_cancel_delete_and_reanalyse_through_the_forms(world: World) -> None:
    alice = world.client("alice")
    listed = alice.get("/ui/?status=running").text
    assert "ff-mnist-seed0 · layer 2/3 · epoch 5/20 · ETA 1 min 15 s" in listed
    assert ('hx-get="/ui/fragments/experiments?status=running&amp;scope=visible&amp;q=&amp;sort=-created_at" '
            'hx-trigger="every 3s"') in listed  # the list refreshes with its filter, search and sort
    progress = alice.get(f"/ui/experiments/{RUNNING}/progress").text
    assert "<td>2/3</td>" in progress and "<td>5/20</td>" in progress and "1 min 15 s" in progress
    token = csrf_of(listed)

    cancelled = alice.post(f"/ui/experiments/{RUNNING}/cancel", data={"csrf_token": token})
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/ui/experiments/{RUNNING}"
    assert 'id="status">cancelling<' in alice.get(f"/ui/experiments/{RUNNING}").text  # its run stops at its next epoch
    deleted = alice.post(f"/ui/experiments/{RUNNING}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303 and alice.get(f"/ui/experiments/{RUNNING}").status_code == 404

    queued = alice.post(f"/ui/experiments/{FINISHED}/analyses", data={
        "csrf_token": token, "quantiles": "0.8, 0.9", "table_quantile": "0.9", "figure_quantile": "0.8",
        "epsilon": "0.3", "correct_only": "on"})
    assert queued.status_code == 303
    page = alice.get(f"/ui/experiments/{FINISHED}").text
    assert re.search(r'id="analyses".*status-queued">queued<.*<td>0.8, 0.9</td><td>0.3</td>', page, re.S)
    again = alice.post(f"/ui/experiments/{FINISHED}/analyses", data={"csrf_token": token, "correct_only": "on"})
    assert again.status_code == 409 and "has an analysis queued or running" in again.text


def test_submit_form_body_takes_training_a_sweep_tags_priority_and_pasted_json() -> None:
    form = SubmitForm(preset="quick", models=["ff", "bp"], datasets=["mnist"], seeds="0", learning_rate="0.01",
                      batch_size="full", tags="baseline, theta:0.5", priority="low",
                      sweep_field=" network.threshold ", sweep_values="0.1, 0.3",
                      spec_json='{"bp": {"epochs": 2}, "seeds": [4], "network": {"width": 8}}')
    assert form.body() == {"preset": "quick", "models": ["ff", "bp"], "datasets": ["mnist"], "seeds": [4],
                           "visibility": "private", "priority": "low", "tags": ["baseline", "theta:0.5"],
                           "ff": {"learning_rate": 0.01, "batch_size": None},
                           "bp": {"learning_rate": 0.01, "batch_size": None, "epochs": 2},
                           "sweep": {"network.threshold": [0.1, 0.3]}, "network": {"width": 8}}
    # A message on a field the JSON gives goes under the JSON's box, naming the field;
    # one on a tag names the tag as typed.
    errors = form.errors({"seeds.0": ["bad seed"], "ff.learning_rate": ["too big"], "bp.learning_rate": ["too big"],
                          "tags.1": ["bad"], "sweep.network.threshold": ["no"]})
    assert errors == {"learning_rate": ["ff.learning_rate: too big", "bp.learning_rate: too big"],
                      "tags": ["tag 'theta:0.5': bad"], "sweep": ["no"], "spec_json": ["seeds.0: bad seed"]}
    with pytest.raises(ValueError, match="not valid JSON"):
        SubmitForm(spec_json="{").body()
    assert SubmitForm(spec_json="[1]").errors({}) == {"spec_json": [
        "give a JSON object: the body of POST /v1/experiments (a preset and the fields over it, or a whole spec)"]}


def test_submit_form_previews_runs_and_submits_tags_a_sweep_and_a_pasted_spec(world: World) -> None:
    alice = world.client("alice")
    page = alice.get("/ui/submit").text
    for name in ("learning_rate", "batch_size", "tags", "sweep_field", "sweep_values", "priority", "spec_json"):
        assert f'name="{name}"' in page, name
    form = {"csrf_token": csrf_of(page), "preset": "quick", "models": ["ff"], "datasets": ["mnist"], "seeds": "0, 1",
            "epochs": "1", "train_subset": "500", "learning_rate": "0.02", "batch_size": "100",
            "tags": "small, theta", "priority": "low", "sweep_field": "network.threshold",
            "sweep_values": "0.2, 0.4", "spec_json": '{"unseen_class": null, "test_subset": 1}'}
    # An unknown field of the pasted JSON is named under its box (the API's nearest-field hint too).
    unknown = alice.post("/ui/submit/preview", data=form)
    assert unknown.status_code == 200 and 'id="spec-preview-invalid"' in unknown.text
    assert html.unescape(field_error(unknown.text, "spec_json-error")).startswith("test_subset: ")
    preview = alice.post("/ui/submit/preview", data={**form, "spec_json": '{"unseen_class": null}'})
    text = html.unescape(preview.text)
    assert '<p id="run-count">4 runs</p>' in preview.text and '"learning_rate": 0.02' in text
    assert '"batch_size": 100' in text and '"unseen_class": null' in text
    runs = re.findall(r"<li><code>([^<]+)</code> <span class=\"muted\">([^<]+)</span>", text)
    assert runs == [("ff-mnist-seed0-p0", "network.threshold=0.2"), ("ff-mnist-seed1-p0", "network.threshold=0.2"),
                    ("ff-mnist-seed0-p1", "network.threshold=0.4"), ("ff-mnist-seed1-p1", "network.threshold=0.4")]

    # Each refused value is shown next to the field that holds it, naming it.
    bad = alice.post("/ui/submit/preview", data={
        **form, "learning_rate": "2", "tags": "ok, not ok", "batch_size": "x", "spec_json": '{"ff": {"epochs": "three"}}'})
    assert field_error(bad.text, "learning_rate-error") == "ff.learning_rate: Input should be less than or equal to 1"
    assert html.unescape(field_error(bad.text, "tags-error")).startswith("tag 'not ok': String should match pattern")
    assert field_error(bad.text, "batch_size-error") == "ff.batch_size: Input should be a valid integer"
    assert field_error(bad.text, "spec_json-error") == "ff.epochs: Input should be a valid integer"
    swept = alice.post("/ui/submit/preview", data={**form, "sweep_field": "network.widht", "spec_json": ""})
    assert "'network.widht' cannot be swept" in html.unescape(field_error(swept.text, "sweep-error"))
    broken = alice.post("/ui/submit/preview", data={**form, "spec_json": '{"seeds": [0,'})
    assert field_error(broken.text, "spec_json-error").startswith("not valid JSON: Expecting value (line 1")
    refused = alice.post("/ui/submit", data={**form, "spec_json": "[]"})
    assert refused.status_code == 422 and "give a JSON object" in field_error(refused.text, "spec_json-error")

    created = alice.post("/ui/submit", data={**form, "name": "ui-sweep", "spec_json": '{"unseen_class": null}'})
    assert created.status_code == 303, created.text
    experiment_id = created.headers["location"].rsplit("/", 1)[-1]
    api = httpx.get(f"{world.url}/v1/experiments/{experiment_id}",
                    headers={"Authorization": f"Bearer {world.keys['alice']}"}).json()
    assert (api["name"], api["tags"], api["priority"], api["progress"]["runs_total"]) == (
        "ui-sweep", ["small", "theta"], "low", 4)
    assert api["spec"]["sweep"] == {"network.threshold": [0.2, 0.4]} and api["spec"]["ff"]["learning_rate"] == 0.02


def test_experiment_page_edits_name_tags_and_visibility_for_its_owner(world: World) -> None:
    bob, alice, admin = world.client("bob"), world.client("alice"), world.client("root")
    page = bob.get(f"/ui/experiments/{BOBS}").text
    assert 'id="edit-form"' in page and 'id="edit-tags"' in page and 'id="visibility">private<' in page
    assert 'id="edit-form"' in admin.get(f"/ui/experiments/{BOBS}").text
    assert 'id="edit-form"' not in bob.get(f"/ui/experiments/{LAB}").text  # the lab's: readable, not changeable
    token = csrf_of(page)
    forbidden = bob.post(f"/ui/experiments/{LAB}/edit", data={"csrf_token": token, "name": "mine", "tags": "",
                                                               "visibility": "private"})
    assert forbidden.status_code == 403

    bad = bob.post(f"/ui/experiments/{BOBS}/edit", data={"csrf_token": token, "name": "", "tags": "ok, not ok",
                                                         "visibility": "lab"})
    assert bad.status_code == 422 and 'id="edit-form" open' in bad.text
    assert field_error(bad.text, "edit-name-error") == "String should have at least 1 character"
    assert html.unescape(field_error(bad.text, "edit-tags-error")).startswith(
        "tag 'not ok': String should match pattern")
    assert 'value="ok, not ok"' in bad.text  # what was typed stays in the form
    headers = {"Authorization": f"Bearer {world.keys['bob']}"}
    assert httpx.get(f"{world.url}/v1/experiments/{BOBS}", headers=headers).json()["name"] == "bobs"  # unchanged

    saved = bob.post(f"/ui/experiments/{BOBS}/edit", data={"csrf_token": token, "name": "bobs-renamed",
                                                           "tags": "baseline, theta:0.5", "visibility": "lab"})
    assert saved.status_code == 303 and saved.headers["location"] == f"/ui/experiments/{BOBS}"
    api = httpx.get(f"{world.url}/v1/experiments/{BOBS}", headers=headers).json()
    assert (api["name"], api["tags"], api["visibility"]) == ("bobs-renamed", ["baseline", "theta:0.5"], "lab")
    shown = bob.get(f"/ui/experiments/{BOBS}").text
    assert "<h1>bobs-renamed " in shown and '<span class="tag">theta:0.5</span>' in shown
    assert 'value="baseline, theta:0.5"' in shown
    assert 'id="edit-form"' not in alice.get(f"/ui/experiments/{BOBS}").text  # now readable by alice, not hers
    cleared = admin.post(f"/ui/experiments/{BOBS}/edit", data={"csrf_token": csrf_of(admin.get("/ui/").text),
                                                               "name": "bobs", "tags": "", "visibility": "private"})
    assert cleared.status_code == 303
    assert httpx.get(f"{world.url}/v1/experiments/{BOBS}", headers=headers).json()["tags"] == []


def test_cancel_asks_for_confirmation_as_delete_does(world: World) -> None:
    page = world.client("alice").get(f"/ui/experiments/{LAB}").text
    for action, button in (("cancel", "cancel"), ("delete", "delete")):
        confirm = re.search(rf'<details class="danger"[^>]*>\s*<summary>[^<]+…</summary>\s*'
                            rf'<form method="post" action="/ui/experiments/{LAB}/{action}">(.*?)</details>', page, re.S)
        assert confirm and f'id="{button}"' in confirm.group(1), action


def test_a_run_the_experiment_lacks_is_a_404_naming_the_runs_it_has(world: World) -> None:
    page, api = world.client("alice"), httpx.Client(base_url=world.url, timeout=30, headers={
        "Authorization": f"Bearer {world.keys['alice']}"})
    for client, path in ((api, f"/v1/experiments/{FINISHED}/runs/ff-mnist-seed9"),
                         (api, f"/v1/experiments/{FINISHED}/runs/x/log"),
                         (page, f"/ui/experiments/{FINISHED}/runs/ff-mnist-seed9"),
                         (page, f"/ui/experiments/{FINISHED}/runs/x/log")):
        response = client.get(path)
        assert response.status_code == 404 and "its runs: ff-mnist-seed0" in response.text, (path, response.text)
