"""What researchers' tools lean on, through real HTTP against the real app (uvicorn
in a thread, SQLite, local artifact storage): the typed and documented submission
schema, offline docs, one error shape, paging and filters of every list, lab
listing, PATCH, own keys, HTTP caching and ranges of files, the readiness rule,
the quantile hint, public URLs and trusted proxies, run metrics, and the client
and CLI over all of it. A finished experiment is built by hand (rows and files with
known content), so nothing here trains."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from fflab import accounts, jobs
from fflab.client import ApiError, Client
from fflab.db import Artifact, Ensemble, Result, get_sessionmaker
from fflab.settings import Settings
from fflab.spec import AnalysisSpec, build_spec
from fflab.storage import LocalStorage, experiment_prefix
from service_helpers import free_port, http_ready, wait_for

PROBLEM_KEYS = {"type", "title", "status", "code", "message", "detail", "details"}
ROOT = Path(__file__).resolve().parents[1]
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
       b"\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND"
       b"\xaeB`\x82")
WEIGHTS = bytes(range(256)) * 4  # 1024 known bytes
SPEC = {"models": ["ff", "bp"], "datasets": ["mnist"], "seeds": [0], "unseen_class": None,
        "network": {"layers": 2, "width": 16}}


@dataclass
class Server:
    url: str
    settings: Settings
    keys: dict[str, str]
    finished: str  # a succeeded experiment of alice's, built by hand
    thread: threading.Thread
    server: uvicorn.Server

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def start(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    from api.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(http_ready(f"{url}/healthz"), 30, "the API")
    return server, thread, url


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)


def build_finished_experiment(settings: Settings, owner_name: str) -> str:
    """A succeeded experiment with two runs (FF with 2 layers, BP), their metrics,
    ensembles (Method 1 at the default quantiles), a figure, weights and a result."""
    storage = LocalStorage(settings.resolved_artifacts_dir)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        owner = session.scalar(accounts.select(accounts.User).where(accounts.User.name == owner_name))
        spec = build_spec("quick", {**SPEC, "name": "finished"})
        experiment = jobs.create_experiment(session, settings, owner, spec, "private")
        experiment.status = "succeeded"
        analysis = AnalysisSpec().model_dump(mode="json")
        for run in experiment.runs:
            run.status = "succeeded"
            history = [[0.9, 0.6, 0.4], [0.8, 0.5]] if run.model == "ff" else [[2.3, 1.1, 0.7, 0.5]]
            identity = {"schema_version": "1.0", "run_id": run.run_id, "model": run.model, "dataset": "mnist",
                        "seed": 0, "unseen_class": None}
            run.metrics = {**identity, "accuracy": 0.75, "per_class_accuracy": [0.75] * 10, "n_train": 400,
                           "n_test": 200, "loss_history": history, "device": "cpu",
                           "timings": {"train_seconds": 1.5, "evaluate_seconds": 0.1, "analyse_seconds": 0.1}}
            run.ensemble_summary = {**identity, "analysis": analysis, "n_units": 16, "sparseness": []}
            for layer in (1, 2):
                for class_index in range(10):
                    for quantile in analysis["quantiles"]:
                        session.add(Ensemble(
                            experiment_id=experiment.id, run_id=run.run_id, model=run.model, dataset="mnist",
                            seed=0, unseen_class=None, layer=layer, class_index=class_index,
                            class_name=str(class_index), method="method1", quantile=quantile, threshold=0.5,
                            n_images=20, size=2, units=[class_index, class_index + 1]))
        session.add(Result(experiment_id=experiment.id, tables={
            "table1": {"csv": "model,dataset,accuracy\nff,mnist,0.75\nbp,mnist,0.75\n", "md": "| a |"},
            "table2": {"csv": "model,size\nff,2\n", "md": "| b |"},
            "table3": {"csv": "model,fraction\nff,0.5\n", "md": "| c |"},
        }, results={}))
        for name, content, recorded_type in (
            ("figures/figure1a.png", PNG, "image/png"),
            ("figures/training_curves.png", PNG, "image/png"),
            ("runs/ff-mnist-seed0/weights.pt", WEIGHTS, "application/vnd.snesdev-page-table"),
        ):
            source = Path(settings.var_dir) / "upload.tmp"
            source.write_bytes(content)
            stored = storage.put_file(f"{experiment_prefix(experiment.id)}/{name}", source)
            session.add(Artifact(experiment_id=experiment.id, name=name, key=stored.key, size=stored.size,
                                 sha256=stored.sha256, content_type=recorded_type))
        session.commit()
        return experiment.id


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    var = tmp_path_factory.mktemp("contract")
    settings = Settings(var_dir=var, max_active_runs_per_user=1000, max_body_bytes=20_000)
    from fflab.db.migrate import upgrade_database

    upgrade_database(settings.resolved_database_url)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        keys = {name: accounts.issue_key(session, accounts.create_user(session, name, role))
                for name, role in (("root", "admin"), ("alice", "member"), ("bob", "member"))}
        session.commit()
    finished = build_finished_experiment(settings, "alice")
    server, thread, url = start(settings)
    try:
        yield Server(url, settings, keys, finished, thread, server)
    finally:
        stop(server, thread)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert PROBLEM_KEYS <= set(body), body
    assert (body["status"], body["code"], body["type"]) == (status, code, "about:blank"), body
    assert body["message"] == body["detail"] and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    return body


def field_of(body: dict, field: str) -> dict:
    matching = [d for d in body["details"] if d["field"] == field]
    assert matching, (field, body)
    return matching[0]


# --------------------------------------------------------------------------- schema and docs


def test_the_submission_schema_is_typed_and_documented(api: Server) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    submit = schemas["ExperimentSubmit"]
    assert submit["additionalProperties"] is False
    assert {"preset", "visibility", "tags", "network", "data", "ff", "seeds"} <= set(submit["properties"])
    assert submit["properties"]["preset"]["anyOf"][0]["enum"] == ["paper", "quick"]

    def resolve(schema: dict) -> dict:
        ref = schema.get("$ref") or next((s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s), None)
        return schemas[ref.rsplit("/", 1)[-1]] if ref else schema

    subset = resolve(submit["properties"]["data"])["properties"]["train_subset"]
    assert "stratified subset" in subset["description"] and "paper: null, quick: null" in subset["description"]
    factors = resolve(submit["properties"]["ff"])["properties"]["layer_learning_rate_factors"]
    assert "quick: [0.6, 1.0]" in factors["description"]
    assert [s.get("minimum") for s in subset["anyOf"]][0] == 20
    threshold = resolve(submit["properties"]["network"])["properties"]["threshold"]
    assert (threshold["exclusiveMinimum"], threshold["maximum"]) == (0, 100)
    assert "quick: 0.3" in threshold["description"] and "paper: 0.5" in threshold["description"]
    activation = resolve(submit["properties"]["network"])["properties"]["activation"]
    assert activation["enum"] == ["sigmoid", "relu"]
    examples = document["paths"]["/v1/experiments"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert {"quick", "paper"} <= set(examples)
    # no colliding names (api__schemas__X), no FastAPI default error schema
    assert not [name for name in schemas if "__" in name], sorted(schemas)
    assert "HTTPValidationError" not in schemas and "Problem" in schemas
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert {"401", "422"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path.startswith("/v1/"):
                    assert "application/problem+json" in response["content"], (method, path, status)
    assert {"404", "409"} <= set(document["paths"]["/v1/experiments/{experiment_id}/results"]["get"]["responses"])
    assert "429" in document["paths"]["/v1/experiments"]["post"]["responses"]
    assert "403" in document["paths"]["/v1/experiments/{experiment_id}"]["patch"]["responses"]


def vendored_hashes() -> dict[str, str]:
    text = (ROOT / "api" / "static" / "VENDORED.md").read_text()
    return dict(re.findall(r"^\| (\S+) \| [^|]+ \| ([0-9a-f]{64}) \|$", text, re.MULTILINE))


def test_docs_load_everything_from_the_server(api: Server) -> None:
    hashes = vendored_hashes()
    assert len(hashes) >= 5
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{api.url}{page}").text
        assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html)
        assets += re.findall(r"""(?:url|openapi_url|spec-url)\s*:\s*['"]([^'"]+)['"]""", html)
        assert len(assets) >= 2, html
        assert not re.search(r"https?://", html), f"{page} names an outside URL:\n{html}"
        for asset in assets:
            assert asset.startswith("/"), (page, asset)
            response = httpx.get(f"{api.url}{asset}")
            assert response.status_code == 200, (page, asset)
            name = asset.removeprefix("/static/")
            if name in hashes:
                assert hashlib.sha256(response.content).hexdigest() == hashes[name], name
    for name, digest in hashes.items():
        assert hashlib.sha256((ROOT / "api" / "static" / name).read_bytes()).hexdigest() == digest, name


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own background traffic (updates, sync, hints) off, so its network log holds the page's requests only.
BROWSER_QUIET = ("--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--disable-features=OptimizationHints,MediaRouter")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_docs_render_in_a_browser_with_no_network(api: Server, tmp_path: Path) -> None:
    """Headless Chromium with every host but 127.0.0.1 unresolvable: Swagger UI and
    ReDoc still draw the operations (a CDN asset would leave the pages blank), and
    the browser's network log holds no request to any other host (ReDoc's footer
    logo from cdn.redoc.ly is stopped by the pages' Content-Security-Policy)."""
    for page, marker in (("docs", 'class="opblock'), ("redoc", "Submit Experiment")):
        net_log = tmp_path / f"{page}-netlog.json"
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", f"--log-net-log={net_log}",
             *BROWSER_QUIET,
             "--dump-dom", f"{api.url}/{page}"],
            capture_output=True, text=True, timeout=120)
        assert marker in done.stdout and "Submit Experiment" in done.stdout, (page, done.stdout[:2000])
        requested = requests_made_by(api.url, json.loads(net_log.read_text()))
        assert len(requested) >= 2 and all(url.startswith(f"{api.url}/") for url in requested), (page, requested)


def requests_made_by(origin: str, net_log: dict) -> set[str]:
    """The URLs a page of ``origin`` asked for, from Chromium's --log-net-log file
    (requests whose initiator is that origin; the browser's own have none)."""
    return {event["params"]["url"] for event in net_log["events"]
            if event.get("params", {}).get("initiator") == origin and "url" in event["params"]}


def test_docs_pages_allow_only_the_apps_own_origin(api: Server) -> None:
    for page in ("/docs", "/redoc"):
        policy = httpx.get(f"{api.url}{page}").headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["default-src"] == "'self'" and directives["img-src"] == "'self' data:", policy
        sources = {source for value in directives.values() for source in value.split()}
        assert sources <= {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}, policy


# --------------------------------------------------------------------------- errors


def test_every_error_has_one_problem_shape(api: Server) -> None:
    with api.client("alice") as alice, api.client(None) as anonymous, api.client("bob") as bob:
        assert_problem(anonymous.get("/v1/experiments"), 401, "unauthorized")
        assert_problem(alice.get("/v1/experiments/nope"), 404, "not_found")
        assert_problem(bob.get(f"/v1/experiments/{api.finished}"), 404, "not_found")
        assert_problem(alice.get("/v1/experiments", params={"scope": "all"}), 403, "forbidden")
        body = assert_problem(alice.get("/v1/experiments", params={"limit": 0}), 422, "validation_error")
        assert field_of(body, "query.limit")["allowed"] == ">= 1"
        refused = alice.post("/v1/experiments", content=b'{"preset": "quick", "ff": {"learning_rate": NaN}}',
                             headers={"content-type": "application/json"})
        body = assert_problem(refused, 422, "validation_error")
        problem = field_of(body, "ff.learning_rate")
        assert problem["given"] == "NaN" and "finite" in problem["allowed"]
        misspelt = assert_problem(alice.post("/v1/experiments", json={
            "preset": "quick", "network": {"widht": 64}, "ff": {"epochs": 0}}), 422, "validation_error")
        assert "did you mean width?" in field_of(misspelt, "network.widht")["message"]
        assert field_of(misspelt, "ff.epochs")["allowed"] == ">= 1"  # the other problems keep what is allowed
        assert body["message"].startswith("ff.learning_rate:")
        body = assert_problem(alice.post("/v1/experiments", json={"preset": "quick", "network": {"width": 2}}),
                              422, "validation_error")
        assert (field_of(body, "network.width")["given"], field_of(body, "network.width")["allowed"]) == (2, ">= 4")
        body = assert_problem(alice.post("/v1/experiments", json={"preset": "quick", "netwerk": {}}),
                              422, "validation_error")
        assert field_of(body, "netwerk")["type"] == "extra_forbidden"
        assert_problem(alice.post("/v1/experiments", content=b"x" * 30_000), 413, "payload_too_large")
        assert_problem(alice.get(f"/v1/experiments/{api.finished}/runs/ff-mnist-seed9"), 404, "not_found")
        assert_problem(alice.request("PUT", "/v1/experiments"), 405, "method_not_allowed")


# --------------------------------------------------------------------------- lists


def submit(client: httpx.Client, **fields) -> dict:
    response = client.post("/v1/experiments", json={"preset": "quick", **SPEC, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def test_experiments_page_filter_sort_and_default_names(api: Server) -> None:
    with api.client("bob") as bob:
        made = [submit(bob, tags=["sweep", f"n{i}"]) for i in range(4)]
        made.append(submit(bob, name="zeta-run", tags=["other"]))
        names = [bob.get(e["url"]).json()["name"] for e in made]
        assert len(set(names)) == 5 and all(n.startswith("quick-ff.bp-mnist-s1-") for n in names[:4]), names
        assert made[0]["name"] == names[0]
        ids, token, pages = [], None, 0
        while True:
            page = bob.get("/v1/experiments", params={"limit": 2, **({"page_token": token} if token else {})}).json()
            ids += [item["id"] for item in page["items"]]
            pages, token = pages + 1, page["next_page_token"]
            if token is None:
                break
        assert (pages, sorted(ids), page["total"]) == (3, sorted(e["id"] for e in made), 5)
        assert ids == [e["id"] for e in reversed(made)]  # newest first
        first = bob.get("/v1/experiments", params={"limit": 2}).json()
        body = assert_problem(bob.get("/v1/experiments", params={"limit": 2, "tag": "sweep",
                                                                  "page_token": first["next_page_token"]}),
                              422, "validation_error")
        assert field_of(body, "query.page_token")
        assert_problem(bob.get("/v1/experiments", params={"page_token": "garbage!"}), 422, "validation_error")

        def listed(**params) -> list[str]:
            return [item["id"] for item in bob.get("/v1/experiments", params=params).json()["items"]]

        assert set(listed(tag="sweep")) == {e["id"] for e in made[:4]}
        assert listed(tag=["sweep", "n2"]) == [made[2]["id"]]
        assert listed(name="zeta") == [made[4]["id"]]
        assert set(listed(name="quick")) == {e["id"] for e in made[:4]}
        assert listed(sort="-name")[0] == made[4]["id"]
        assert listed(status="queued", limit=100) == listed(limit=100)
        assert listed(status=["succeeded", "failed"]) == []
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert listed(created_after=future) == [] and len(listed(created_before=future)) == 5
        assert_problem(bob.get("/v1/experiments", params={"created_after": "2026-01-01T00:00:00"}), 422,
                       "validation_error")  # no time zone
        tagged = bob.get(made[0]["url"]).json()
        assert tagged["tags"] == ["n0", "sweep"]


def test_every_list_pages_and_the_admin_list_is_an_object(api: Server) -> None:
    with api.client("root") as root, api.client("alice") as alice:
        users = root.get("/v1/admin/users", params={"limit": 2}).json()
        assert len(users["items"]) == 2 and users["next_page_token"]
        rest = root.get("/v1/admin/users", params={"limit": 2, "page_token": users["next_page_token"]}).json()
        assert [u["name"] for u in users["items"] + rest["items"]][:3] == ["root", "alice", "bob"]
        base = f"/v1/experiments/{api.finished}"
        for path, per_page in (("/runs", 1), ("/artifacts", 2), ("/figures", 1), ("/analyses", 1)):
            page = alice.get(base + path, params={"limit": per_page}).json()
            assert set(page) >= {"items", "next_page_token"}, path
        runs = alice.get(base + "/runs", params={"limit": 1}).json()
        assert len(runs["items"]) == 1 and runs["next_page_token"] and runs["experiment_status"] == "succeeded"
        # ensembles: 2 runs x 2 layers x 10 classes x 3 quantiles = 120, paged
        page = alice.get(base + "/ensembles", params={"limit": 50}).json()
        assert sum(len(r["ensembles"]) for r in page["runs"]) == 50 and page["next_page_token"]
        small = alice.get(base + "/ensembles", params={"class_index": 3, "layer": 2, "quantile": 0.95,
                                                       "model": "ff"}).json()
        (run,) = small["runs"]
        assert [(e["class_index"], e["layer"], e["quantile"]) for e in run["ensembles"]] == [(3, 2, 0.95)]
        assert len(json.dumps(small)) < 2000
        body = assert_problem(alice.get(base + "/ensembles", params={"class": 3}), 422, "validation_error")
        assert "class_index" in field_of(body, "query.class")["message"]


def test_lab_listing_patch_and_scope_all(api: Server) -> None:
    with api.client("alice") as alice, api.client("bob") as bob, api.client("root") as root:
        shared = submit(alice, visibility="lab", name="shared-one")
        assert shared["id"] in [e["id"] for e in bob.get("/v1/experiments", params={"scope": "lab"}).json()["items"]]
        assert shared["id"] not in [e["id"] for e in bob.get("/v1/experiments").json()["items"]]
        assert_problem(bob.patch(shared["url"], json={"name": "mine-now"}), 403, "forbidden")
        changed = alice.patch(shared["url"], json={"name": "renamed", "tags": ["keep"], "visibility": "private"})
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert (body["name"], body["tags"], body["visibility"], body["spec"]["name"]) == (
            "renamed", ["keep"], "private", "renamed")
        assert shared["id"] not in [e["id"] for e in bob.get("/v1/experiments", params={"scope": "lab"}).json()["items"]]
        assert_problem(bob.get(shared["url"]), 404, "not_found")
        assert_problem(alice.patch(shared["url"], json={"name": None}), 422, "validation_error")
        assert_problem(alice.patch(shared["url"], json={"spec": {}}), 422, "validation_error")
        assert_problem(alice.patch(shared["url"], json={"tags": ["bad tag"]}), 422, "validation_error")
        everyone = root.get("/v1/experiments", params={"scope": "all", "owner": "alice", "limit": 1000}).json()
        assert shared["id"] in [e["id"] for e in everyone["items"]]
        assert {e["owner"] for e in everyone["items"]} == {"alice"}


def test_users_list_and_rotate_their_own_keys(api: Server) -> None:
    with api.client("root") as root:
        key = root.post("/v1/admin/users", json={"name": "carol"}).json()["api_key"]
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as carol:
        (listed,) = carol.get("/v1/users/me/keys").json()["items"]
        assert listed == {**listed, "prefix": key[:14], "current": True, "revoked_at": None}
        assert key not in carol.get("/v1/users/me/keys").text
        kept = carol.post("/v1/users/me/keys", json={"revoke_current": False}).json()["api_key"]
        assert carol.get("/v1/users/me").status_code == 200
        rotated = carol.post("/v1/users/me/keys").json()["api_key"]
        assert_problem(carol.get("/v1/users/me"), 401, "unauthorized")
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {rotated}"}) as carol:
        keys = carol.get("/v1/users/me/keys").json()["items"]
        assert [k["prefix"] for k in keys] == [rotated[:14], kept[:14], key[:14]]
        assert [k["revoked_at"] is None for k in keys] == [True, True, False]
        assert [k["current"] for k in keys] == [True, False, False]


# --------------------------------------------------------------------------- files


def test_files_have_head_etag_ranges_and_content_types(api: Server) -> None:
    base = f"/v1/experiments/{api.finished}"
    with api.client("alice") as alice:
        artifacts = {a["name"]: a for a in alice.get(base + "/artifacts").json()["items"]}
        weights = artifacts["runs/ff-mnist-seed0/weights.pt"]
        assert weights["content_type"] == "application/octet-stream"
        etag = f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
        head = alice.head(weights["url"])
        assert head.status_code == 200 and head.content == b""
        assert (head.headers["etag"], head.headers["content-length"], head.headers["accept-ranges"]) == (
            etag, "1024", "bytes")
        assert head.headers["content-type"] == "application/octet-stream"
        whole = alice.get(weights["url"])
        assert whole.content == WEIGHTS and whole.headers["etag"] == etag
        cached = alice.get(weights["url"], headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""
        assert alice.get(weights["url"], headers={"If-None-Match": '"other"'}).status_code == 200
        for header, expected, content_range in (("bytes=2-5", WEIGHTS[2:6], "bytes 2-5/1024"),
                                                ("bytes=1000-", WEIGHTS[1000:], "bytes 1000-1023/1024"),
                                                ("bytes=-3", WEIGHTS[-3:], "bytes 1021-1023/1024"),
                                                ("bytes=1020-5000", WEIGHTS[1020:], "bytes 1020-1023/1024")):
            part = alice.get(weights["url"], headers={"Range": header})
            assert (part.status_code, part.content, part.headers["content-range"]) == (206, expected, content_range)
        stale = alice.get(weights["url"], headers={"Range": "bytes=0-9", "If-Range": '"changed"'})
        assert stale.status_code == 200 and stale.content == WEIGHTS
        beyond = alice.get(weights["url"], headers={"Range": "bytes=5000-"})
        assert_problem(beyond, 416, "range_not_satisfiable")
        assert beyond.headers["content-range"] == "bytes */1024"
        # figure names round-trip: the list's name is what /figures/{name} takes
        figures = alice.get(base + "/figures").json()["items"]
        assert {f["name"] for f in figures} == {"figure1a.png", "training_curves.png"}
        for figure in figures:
            by_name = alice.get(f"{base}/figures/{figure['name']}")
            assert by_name.content == PNG and by_name.headers["content-type"] == "image/png"
            assert alice.get(figure["url"]).content == PNG
            assert alice.head(figure["url"]).headers["etag"] == f'"{figure["sha256"]}"'
        assert alice.get(f"{base}/artifacts/figures/figure1a.png").content == PNG


# --------------------------------------------------------------------------- results, metrics


def test_readiness_rule_csv_tables_and_the_quantile_hint(api: Server) -> None:
    with api.client("alice") as alice:
        queued = submit(alice)
        assert_problem(alice.get(f"{queued['url']}/results"), 409, "conflict")
        assert_problem(alice.get(f"{queued['url']}/paper-comparison"), 409, "conflict")
        for path in ("/ensembles", "/figures", "/artifacts", "/runs"):
            body = alice.get(f"{queued['url']}{path}").json()
            assert body["experiment_status"] == "queued", path
        base = f"/v1/experiments/{api.finished}"
        body = assert_problem(alice.get(base + "/results", params={"format": "csv"}), 422, "validation_error")
        assert "table1" in field_of(body, "query.table")["message"]
        table = alice.get(base + "/results", params={"format": "csv", "table": "table1"})
        assert table.headers["content-type"].startswith("text/csv")
        assert list(csv.reader(io.StringIO(table.text))) == [["model", "dataset", "accuracy"],
                                                              ["ff", "mnist", "0.75"], ["bp", "mnist", "0.75"]]
        hint = assert_problem(alice.get(base + "/ensembles", params={"quantile": 0.5}), 422, "validation_error")
        problem = field_of(hint, "query.quantile")
        assert "0.9, 0.95, 0.99" in problem["message"] and f"{base}/analyses" in problem["message"]
        assert problem["given"] == 0.5
        assert alice.get(base + "/ensembles", params={"limit": 1}).json()["quantiles"] == [0.9, 0.95, 0.99]


def test_run_metrics_give_the_loss_history_per_layer(api: Server) -> None:
    base = f"/v1/experiments/{api.finished}/runs"
    with api.client("alice") as alice:
        ff = alice.get(f"{base}/ff-mnist-seed0/metrics").json()
        assert [(s["layer"], s["epochs"], s["loss"]) for s in ff["loss"]] == [
            (1, [1, 2, 3], [0.9, 0.6, 0.4]), (2, [1, 2], [0.8, 0.5])]
        assert (ff["accuracy"], ff["n_test"]) == (0.75, 200)
        bp = alice.get(f"{base}/bp-mnist-seed0/metrics").json()
        assert [(s["layer"], s["loss"]) for s in bp["loss"]] == [(None, [2.3, 1.1, 0.7, 0.5])]
        queued = submit(alice)
        waiting = alice.get(f"{queued['url']}/runs/ff-mnist-seed0/metrics")  # before it trains: nothing yet
        assert waiting.status_code == 200 and waiting.json()["loss"] == [] and waiting.json()["accuracy"] is None
        assert (waiting.json()["next_since"], waiting.json()["final"]) == (0, False)
        assert ff["final"] and ff["next_since"] == 5  # 3 + 2 epochs
        assert alice.get(f"{base}/ff-mnist-seed0/metrics", params={"since": 3}).json()["loss"] == [
            {"layer": 2, "epochs": [1, 2], "loss": [0.8, 0.5], "recorded_at": None}]
        assert_problem(alice.get(f"{queued['url']}/runs/ff-mnist-seed0/documents/metrics"), 409, "conflict")
        assert_problem(alice.get(f"{queued['url']}/runs/ff-mnist-seed7/documents/metrics"), 404, "not_found")


# --------------------------------------------------------------------------- URLs


def test_urls_come_from_the_public_url_and_forwarded_headers_from_trusted_proxies(api: Server) -> None:
    with api.client("alice") as alice:
        spoofed = alice.get(f"/v1/experiments/{api.finished}",
                            headers={"Host": "evil.example", "X-Forwarded-Proto": "https"}).json()
        assert spoofed["url"].startswith("http://evil.example/")  # no public URL: the Host it came to
    for extra, expected in (({"public_url": "https://fflab.lab.example/api"}, "https://fflab.lab.example/api/v1/"),
                            ({"trusted_proxies": "127.0.0.1"}, "https://")):
        server, thread, url = start(api.settings.model_copy(update=extra))
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api.keys['alice']}"}) as alice:
                spoofing = {"Host": "evil.example", "X-Forwarded-Proto": "https"}
                body = alice.get(f"/v1/experiments/{api.finished}", headers=spoofing).json()
                assert body["url"].startswith(expected), (extra, body["url"])
                figures = alice.get(f"/v1/experiments/{api.finished}/figures", headers=spoofing).json()["items"]
                assert all(f["url"].startswith(expected) for f in figures)
        finally:
            stop(server, thread)
    with api.client("alice") as alice:  # 127.0.0.1 is no trusted proxy of the module's server
        url = alice.get(f"/v1/experiments/{api.finished}", headers={"X-Forwarded-Proto": "https"}).json()["url"]
    assert url.startswith("http://127.0.0.1"), url


# --------------------------------------------------------------------------- client and CLI


def test_the_client_iterates_pages_and_raises_the_problem(api: Server) -> None:
    with Client(api.url, api.keys["alice"]) as client:
        everything = list(client.experiments(page_size=1))
        assert len(everything) == len({e["id"] for e in everything}) >= 3
        assert [e["id"] for e in client.experiments(name="finished")] == [api.finished]
        ensembles = client.ensembles(api.finished, model="ff", layer=1)
        assert sum(len(r["ensembles"]) for r in ensembles["runs"]) == 30 and "next_page_token" not in ensembles
        assert [f["name"] for f in client.figures(api.finished)] == ["figure1a.png", "training_curves.png"]
        assert client.figure(api.finished, "figure1a.png") == PNG
        assert client.run_metrics(api.finished, "ff-mnist-seed0")["loss"][0]["layer"] == 1
        renamed = client.update(api.finished, tags=["client"])
        assert renamed["tags"] == ["client"] and renamed["name"] == "finished"
        with pytest.raises(ApiError) as raised:
            client.results(api.finished, "csv")
        assert (raised.value.status_code, raised.value.code) == (422, "validation_error")
        assert raised.value.details[0]["field"] == "query.table"


def test_download_resumes_with_a_range(api: Server, tmp_path: Path) -> None:
    target = tmp_path / "weights.pt"
    target.write_bytes(WEIGHTS[:300])
    with Client(api.url, api.keys["alice"]) as client:
        client.download(api.finished, "runs/ff-mnist-seed0/weights.pt", target, resume=True)
        assert target.read_bytes() == WEIGHTS
        client.download(api.finished, "runs/ff-mnist-seed0/weights.pt", target, resume=True)  # complete: 416
        assert target.read_bytes() == WEIGHTS


def test_the_cli_covers_the_new_endpoints_and_prints_errors(api: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from fflab.cli import main
    from fflab.settings import get_settings

    monkeypatch.setenv("FFLAB_API_URL", api.url)
    monkeypatch.setenv("FFLAB_API_KEY", api.keys["alice"])
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        done = runner.invoke(main, ["edit", api.finished, "--tag", "cli", "--tag", "x"])
        assert done.exit_code == 0 and "tags: cli, x" in done.output, done.output
        done = runner.invoke(main, ["status", "--tag", "cli"])
        assert done.exit_code == 0 and api.finished in done.output, done.output
        done = runner.invoke(main, ["metrics", api.finished, "ff-mnist-seed0"])
        assert done.exit_code == 0 and "layer 2: 2 epochs, loss 0.8 -> 0.5" in done.output, done.output
        done = runner.invoke(main, ["keys"])
        assert done.exit_code == 0 and "(this one)" in done.output
        done = runner.invoke(main, ["status", "no-such-experiment"])
        assert done.exit_code == 1 and "HTTP 404 not_found: no experiment no-such-experiment" in done.output
        assert "Traceback" not in done.output
    finally:
        get_settings.cache_clear()


def test_a_status_served_again_follows_this_process_writes_and_who_may_read(tmp_path: Path) -> None:
    """A status body is served again within status_cache_ttl_s (here 60 s): a change
    no request made (a worker's) does not show in that time, and the body goes only to
    users who may read the experiment. Every write through the API shows at once."""
    from sqlalchemy import update

    from fflab.db import Run
    from fflab.db.migrate import upgrade_database

    settings = Settings(var_dir=tmp_path, status_cache_ttl_s=60)
    upgrade_database(settings.resolved_database_url)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        keys = {name: accounts.issue_key(session, accounts.create_user(session, name, role))
                for name, role in (("root", "admin"), ("alice", "member"), ("bob", "member"))}
        session.commit()
    server, thread, url = start(settings)
    alice, bob, root = (httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[name]}"}, timeout=30)
                        for name in ("alice", "bob", "root"))
    try:
        created = alice.post("/v1/experiments", json={**SPEC, "preset": "quick", "models": ["bp"]})
        assert created.status_code == 202, created.text
        path = f"/v1/experiments/{created.json()['id']}"
        first = alice.get(path).json()
        assert first["status"] == "queued" and first["progress"]["runs_by_status"] == {"queued": 1}
        with get_sessionmaker(settings.resolved_database_url)() as session:  # as a worker would
            session.execute(update(Run).values(status="running", progress={"epoch": 1, "epochs": 3}))
            session.commit()
        assert alice.get(path).json() == first  # served again: the worker's change is not read yet
        assert bob.get(path).status_code == 404  # private: never served to another member
        assert root.get(path).json() == first  # an admin may read it

        renamed = alice.patch(path, json={"name": "renamed", "visibility": "lab"})
        assert renamed.status_code == 200, renamed.text
        seen = bob.get(path)  # rendered again after the write, with the worker's change
        assert seen.status_code == 200 and seen.json()["name"] == "renamed"
        assert seen.json()["progress"]["runs_by_status"] == {"running": 1}
        assert alice.patch(path, json={"visibility": "private"}).status_code == 200
        assert bob.get(path).status_code == 404
        assert alice.post(f"{path}/cancel").status_code == 200
        assert alice.get(path).json()["status"] == "cancelling"  # its run is still running
        assert alice.delete(path).status_code == 204
        assert alice.get(path).status_code == 404
    finally:
        for client in (alice, bob, root):
            client.close()
        stop(server, thread)
