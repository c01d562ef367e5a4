"""Access control and input validation of the API, against the real stack."""

from __future__ import annotations

import httpx
import pytest

from fflab.models import MODELS
from fflab.spec import build_spec
from service_helpers import TINY, Stack, poll_experiment

pytest_plugins = ["service_support"]


@pytest.fixture(scope="module")
def clients(stack: Stack) -> dict[str, httpx.Client]:
    clients = {
        "admin": stack.client(stack.admin_key),
        "alice": stack.client(stack.member_key),
        "bob": stack.client(stack.other_key),
        "anonymous": stack.client(None),
        "wrong": stack.client("fflab_not-a-real-key-000000000000000000000000000"),
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def alices_experiment(clients: dict[str, httpx.Client]) -> dict:
    created = clients["alice"].post("/v1/experiments", json={**TINY, "models": ["bp"]}).json()
    return poll_experiment(clients["alice"], created["id"], ("succeeded", "failed"))


def test_missing_or_wrong_key_is_401(clients: dict[str, httpx.Client], alices_experiment: dict) -> None:
    for name in ("anonymous", "wrong"):
        for path in ("/v1/experiments", f"/v1/experiments/{alices_experiment['id']}", "/v1/users/me"):
            response = clients[name].get(path)
            assert response.status_code == 401, (name, path)
            assert response.headers["www-authenticate"] == "Bearer"
    assert clients["anonymous"].post("/v1/experiments", json={"preset": "quick"}).status_code == 401


def test_another_member_gets_404_on_private_experiments(clients: dict[str, httpx.Client],
                                                        alices_experiment: dict) -> None:
    bob, base = clients["bob"], f"/v1/experiments/{alices_experiment['id']}"
    for path in ("", "/runs", "/runs/bp-mnist-seed0", "/results", "/ensembles", "/figures",
                 "/figures/figure2", "/artifacts", "/artifacts/runs/bp-mnist-seed0/weights.pt"):
        assert bob.get(base + path).status_code == 404, path
    assert bob.post(f"{base}/cancel").status_code == 404
    assert bob.delete(base).status_code == 404
    assert alices_experiment["id"] not in [e["id"] for e in bob.get("/v1/experiments").json()["items"]]
    assert clients["admin"].get(base).status_code == 200


def test_lab_visibility_gives_read_access_only(clients: dict[str, httpx.Client]) -> None:
    alice, bob = clients["alice"], clients["bob"]
    created = alice.post("/v1/experiments", json={**TINY, "models": ["bp"], "visibility": "lab"}).json()
    experiment = bob.get(created["url"])
    assert experiment.status_code == 200 and experiment.json()["visibility"] == "lab"
    assert experiment.json()["owner"] == "alice"
    assert bob.post(f"{created['url']}/cancel").status_code == 403
    assert bob.delete(created["url"]).status_code == 403
    assert alice.delete(created["url"]).status_code == 204


def test_admin_operations_need_the_admin_role(clients: dict[str, httpx.Client]) -> None:
    assert clients["alice"].get("/v1/admin/users").status_code == 403
    assert clients["alice"].post("/v1/admin/users", json={"name": "mallory"}).status_code == 403
    created = clients["admin"].post("/v1/admin/users", json={"name": "carol"})
    assert created.status_code == 201
    key = created.json()["api_key"]
    with httpx.Client(base_url=str(clients["admin"].base_url), headers={"Authorization": f"Bearer {key}"}) as carol:
        assert carol.get("/v1/users/me").json()["name"] == "carol"
        assert clients["admin"].delete(f"/v1/admin/keys/{key[:14]}").status_code == 204
        assert carol.get("/v1/users/me").status_code == 401
    assert clients["admin"].post("/v1/admin/users", json={"name": "carol"}).status_code == 409


def test_a_preset_alone_is_a_valid_submission(clients: dict[str, httpx.Client]) -> None:
    response = clients["bob"].post("/v1/experiments", json={"preset": "quick"})
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["runs_total"] == len(build_spec("quick").runs())
    spec = clients["bob"].get(created["url"]).json()["spec"]
    assert spec["name"].startswith("quick-") and spec["ff"] == build_spec("quick").ff.model_dump()
    assert clients["bob"].delete(created["url"]).status_code == 204  # not worth minutes of training


def _problem(response: httpx.Response, field: str) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    problems = response.json()["details"]
    matching = [p for p in problems if field in p["field"].split(".")]
    assert matching, problems
    return matching[0]


def test_bad_input_is_422_naming_the_field(clients: dict[str, httpx.Client], alices_experiment: dict) -> None:
    alice, base = clients["alice"], f"/v1/experiments/{alices_experiment['id']}"
    unknown = _problem(alice.post("/v1/experiments", json={"preset": "quick", "epochz": 3}), "epochz")
    assert unknown["field"] == "epochz" and "not permitted" in unknown["message"]
    wrong_type = _problem(alice.post("/v1/experiments", json={"preset": "quick", "ff": {"epochs": "many"}}),
                          "epochs")
    assert wrong_type["field"] == "ff.epochs" and "integer" in wrong_type["message"]
    assert wrong_type["given"] == "many"
    out_of_range = _problem(alice.post("/v1/experiments", json={"preset": "quick", "network": {"width": 1}}),
                            "width")
    assert "greater than or equal to 4" in out_of_range["message"] and out_of_range["allowed"] == ">= 4"
    choice = _problem(alice.post("/v1/experiments", json={"preset": "quick", "models": ["ff", "cnn"]}), "1")
    assert all(f"'{name}'" in choice["message"] for name in MODELS)  # names every registered model type
    assert choice["field"] == "models.1"
    preset = _problem(alice.post("/v1/experiments", json={"preset": "huge"}), "preset")
    assert "quick" in preset["message"] and "paper" in preset["message"]
    visibility = _problem(alice.post("/v1/experiments", json={"preset": "quick", "visibility": "public"}),
                          "visibility")
    assert "'private' or 'lab'" in visibility["message"]
    analysis = _problem(alice.post(f"{base}/analyses", json={"quantiles": [1.5]}), "quantiles")
    assert "between 0 and 1" in analysis["message"]
    filters = _problem(alice.get(f"{base}/ensembles", params={"method": "method3"}), "method")
    assert "'method1' or 'method2'" in filters["message"] and filters["field"] == "query.method"


def test_oversize_bodies_are_413(stack: Stack, clients: dict[str, httpx.Client]) -> None:
    limit = stack.settings.max_body_bytes
    padding = {"preset": "quick", "name": "x" * (limit + 10)}
    response = clients["alice"].post("/v1/experiments", json=padding)
    assert response.status_code == 413 and str(limit) in response.json()["message"]
    assert response.json()["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"preset": "quick", "name": "'
        for _ in range(limit // 1000 + 2):
            yield b"x" * 1000
        yield b'"}'

    response = clients["alice"].post("/v1/experiments", content=chunks(),
                                     headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_ids_are_404(clients: dict[str, httpx.Client], alices_experiment: dict) -> None:
    alice, base = clients["alice"], f"/v1/experiments/{alices_experiment['id']}"
    assert alice.get("/v1/experiments/0123456789abcdef").status_code == 404
    assert alice.get(f"{base}/runs/ff-mnist-seed9").status_code == 404
    assert alice.get(f"{base}/analyses/nope").status_code == 404
    assert alice.get(f"{base}/figures/figure99").status_code == 404
    assert alice.get(f"{base}/artifacts/runs/bp-mnist-seed0/nothing.pt").status_code == 404


def test_artifact_names_cannot_escape(clients: dict[str, httpx.Client], alices_experiment: dict) -> None:
    alice, base = clients["alice"], f"/v1/experiments/{alices_experiment['id']}"
    for name in ("runs/%2E%2E/%2E%2E/secret", "runs%2Fbp-mnist-seed0%2Fweights.pt", "%2Fetc/passwd",
                 "runs/bp-mnist-seed0/.%2E/weights.pt", "runs\\bp-mnist-seed0"):
        response = alice.get(f"{base}/artifacts/{name}")
        assert response.status_code == 422, (name, response.text)
        assert response.json()["details"][0]["field"] == "path.name"
    assert alice.get(f"{base}/artifacts/runs/bp-mnist-seed0/weights.pt").status_code == 200


def test_per_user_cap_on_waiting_runs(stack: Stack, clients: dict[str, httpx.Client]) -> None:
    cap = stack.settings.max_queued_runs_per_user
    response = clients["alice"].post("/v1/experiments", json={**TINY, "seeds": list(range(cap + 1))})
    assert response.status_code == 429
    assert f"the limit is {cap}" in response.json()["message"]
    assert response.json()["code"] == "quota_exceeded" and response.headers["retry-after"]


def test_a_trained_run_has_metrics_and_the_experiment_training_curves(clients: dict[str, httpx.Client],
                                                                      alices_experiment: dict) -> None:
    alice, base = clients["alice"], f"/v1/experiments/{alices_experiment['id']}"
    assert alices_experiment["status"] == "succeeded"
    metrics = alice.get(f"{base}/runs/bp-mnist-seed0/metrics").json()
    (series,) = metrics["loss"]
    assert series["layer"] is None and series["epochs"] == [1] and len(series["loss"]) == TINY["bp"]["epochs"]
    assert 0 <= metrics["accuracy"] <= 1 and metrics["n_test"] == TINY["data"]["test_subset"]
    figures = {figure["name"]: figure for figure in alice.get(f"{base}/figures").json()["items"]}
    curves = alice.get(figures["training_curves.png"]["url"])
    assert curves.content.startswith(b"\x89PNG\r\n\x1a\n") and curves.headers["content-type"] == "image/png"


def test_every_registered_run_document_is_served(clients: dict[str, httpx.Client], alices_experiment: dict) -> None:
    import jsonschema

    from fflab.pipeline.documents import DOCUMENTS, RUN_DOCUMENTS

    alice, bob = clients["alice"], clients["bob"]
    base = f"/v1/experiments/{alices_experiment['id']}/runs/bp-mnist-seed0/documents"
    listed = alice.get(base).json()["items"]
    assert [item["name"] for item in listed] == list(RUN_DOCUMENTS)
    assert all(item["available"] for item in listed)
    for item in listed:
        response = alice.get(item["url"])
        assert response.status_code == 200, item
        document = response.json()
        jsonschema.validate(document, DOCUMENTS[item["name"]].model_json_schema())
        assert document["run_id"] == "bp-mnist-seed0"
    unknown = alice.get(f"{base}/no_such_document")
    assert unknown.status_code == 422 and "metrics" in unknown.text  # names what is allowed
    assert alice.get(f"/v1/experiments/{alices_experiment['id']}/runs/bp-mnist-seed9/documents/metrics").status_code == 404
    assert bob.get(f"{base}/metrics").status_code == 404
