"""A client of the fflab service API, for scripts and other tools.

    from fflab.client import Client
    with Client("http://127.0.0.1:8000", api_key) as client:
        experiment = client.submit({"preset": "quick"})
        client.wait(experiment["id"])
        tables = client.results(experiment["id"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
# The per-run analyses beyond the paper, as their endpoints name them (/v1/experiments/{id}/<name>).
RUN_ANALYSES = ("layer-accuracy", "dynamics", "lesions", "selectivity", "intrinsic-dimension", "subensembles")


class ApiError(RuntimeError):
    """A non-2xx answer; ``detail`` is the API's explanation."""

    def __init__(self, status_code: int, detail: Any):
        self.status_code, self.detail = status_code, detail
        super().__init__(f"HTTP {status_code}: {format_detail(detail)}")


def format_detail(detail: Any) -> str:
    """FastAPI's validation details as 'field: message' lines, anything else as is."""
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', ()) if p != 'body')}: {item.get('msg')}"
            if isinstance(item, dict) else str(item)
            for item in detail
        )
    return str(detail)


class Client:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.is_error:
            response.read()
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._check(self.http.request(method, path, **kwargs))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @staticmethod
    def _params(**filters: Any) -> dict[str, Any]:
        return {key.rstrip("_"): value for key, value in filters.items() if value is not None}

    # experiments
    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body``: a full spec, or {"preset": ...} plus overrides, plus "visibility"
        and "priority"."""
        return self._json("POST", "/v1/experiments", json=body)

    def experiments(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._json("GET", "/v1/experiments", params=self._params(status=status, limit=limit, offset=offset))

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}")

    def wait(self, experiment_id: str, timeout: float | None = None, interval: float = 1.0,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the experiment is succeeded, failed or cancelled; returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            experiment = self.experiment(experiment_id)
            if on_update is not None:
                on_update(experiment)
            if experiment["status"] in FINAL_STATUSES:
                return experiment
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"experiment {experiment_id} is still {experiment['status']} after {timeout} s")
            time.sleep(interval)

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/experiments/{experiment_id}/cancel")

    def delete(self, experiment_id: str) -> None:
        self.request("DELETE", f"/v1/experiments/{experiment_id}")

    # runs and results
    def runs(self, experiment_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/runs")["items"]

    def run(self, experiment_id: str, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/runs/{run_id}")

    def results(self, experiment_id: str, format: str = "json", table: str | None = None) -> Any:
        """results.json as a dict, or the tables as CSV or markdown text."""
        response = self.request("GET", f"/v1/experiments/{experiment_id}/results",
                                params=self._params(format=format, table=table))
        return response.json() if format == "json" else response.text

    def paper_comparison(self, experiment_id: str, format: str = "json") -> Any:
        """The comparison with the paper: a dict (json), or markdown or CSV text."""
        response = self.request("GET", f"/v1/experiments/{experiment_id}/paper-comparison",
                                params=self._params(format=format))
        return response.json() if format == "json" else response.text

    def ensembles(self, experiment_id: str, *, model: str | None = None, dataset: str | None = None,
                  layer: int | None = None, class_: int | None = None, method: str | None = None,
                  quantile: float | None = None, run_id: str | None = None) -> dict[str, Any]:
        params = self._params(model=model, dataset=dataset, layer=layer, class_=class_, method=method,
                              quantile=quantile, run_id=run_id)
        return self._json("GET", f"/v1/experiments/{experiment_id}/ensembles", params=params)

    def shared_units(self, experiment_id: str, **filters: Any) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/shared-units", params=self._params(**filters))

    def weights(self, experiment_id: str, **filters: Any) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/weights", params=self._params(**filters))

    def run_analysis(self, experiment_id: str, analysis: str, *, model: str | None = None,
                     dataset: str | None = None, layer: int | None = None,
                     run_id: str | None = None) -> dict[str, Any]:
        """One per-run analysis beyond the paper (``RUN_ANALYSES``) of every finished
        run matching the filters: {"experiment_id", "runs": [document, ...]}."""
        if analysis not in RUN_ANALYSES:
            raise ValueError(f"analysis must be one of {', '.join(RUN_ANALYSES)}; got {analysis!r}")
        params = self._params(model=model, dataset=dataset, layer=layer, run_id=run_id)
        return self._json("GET", f"/v1/experiments/{experiment_id}/{analysis}", params=params)

    def figures(self, experiment_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/figures")["items"]

    def figure(self, experiment_id: str, name: str) -> bytes:
        return self.request("GET", f"/v1/experiments/{experiment_id}/figures/{name}").content

    def artifacts(self, experiment_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/artifacts")["items"]

    def download(self, experiment_id: str, name: str, target: Path) -> Path:
        """Stream an artifact (runs/<run_id>/weights.pt, figures/figure1a.png, ...) to a file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", f"/v1/experiments/{experiment_id}/artifacts/{name}") as response:
            self._check(response)
            with target.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        return target

    # analyses
    def analyse(self, experiment_id: str, analysis: dict[str, Any]) -> dict[str, Any]:
        """Queue a re-analysis with an AnalysisSpec (quantiles, epsilon, ...)."""
        return self._json("POST", f"/v1/experiments/{experiment_id}/analyses", json=analysis)

    def analysis(self, experiment_id: str, analysis_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/analyses/{analysis_id}")

    def wait_analysis(self, experiment_id: str, analysis_id: str, timeout: float | None = None,
                      interval: float = 1.0) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (analysis := self.analysis(experiment_id, analysis_id))["status"] not in FINAL_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"analysis {analysis_id} is still {analysis['status']} after {timeout} s")
            time.sleep(interval)
        return analysis

    # users
    def me(self) -> dict[str, Any]:
        return self._json("GET", "/v1/users/me")

    def create_user(self, name: str, role: str = "member") -> dict[str, Any]:
        return self._json("POST", "/v1/admin/users", json={"name": name, "role": role})

    def set_share(self, name: str, share_weight: float | None = None,
                  max_priority: str | None = None) -> dict[str, Any]:
        """An admin sets a user's fair-share weight and highest allowed priority."""
        body = {k: v for k, v in {"share_weight": share_weight, "max_priority": max_priority}.items()
                if v is not None}
        return self._json("PATCH", f"/v1/admin/users/{name}", json=body)

    def queue(self) -> dict[str, Any]:
        """The admin view of the queues: slots, users' usage and shares, experiments in order."""
        return self._json("GET", "/v1/admin/queue")
