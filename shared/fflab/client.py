"""A client of the fflab service API, for scripts and other tools.

    from fflab.client import Client
    with Client() as client:  # $FFLAB_API_URL and $FFLAB_API_KEY, as the fflab verbs read them
        experiment = client.submit({"preset": "quick"})
        client.wait(experiment["id"])
        tables = client.results(experiment["id"])

``Client(url, key)`` names them instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
UPLOAD_CHUNK = 1 << 20  # bytes of an upload sent at a time


def run_analysis_names() -> tuple[str, ...]:
    """The per-run analyses beyond the paper, as their endpoints name them
    (/v1/experiments/{id}/<name>): those registered in
    ``fflab.pipeline.documents.RUN_DOCUMENTS`` (imported on first use; the client
    itself needs only httpx)."""
    from fflab.pipeline.documents import run_analyses

    return tuple(analysis.path for analysis in run_analyses().values())


def service_connection(base_url: str | None = None, api_key: str | None = None) -> tuple[str, str | None]:
    """The service's URL and API key, each as given or else as the ``fflab`` verbs find
    it: $FFLAB_API_URL (default ``http://$FFLAB_API_HOST:$FFLAB_API_PORT``, that is
    http://127.0.0.1:8000), and $FFLAB_API_KEY, else the admin key ``fflab serve``
    wrote (``$FFLAB_ADMIN_KEY_FILE``, default ``$FFLAB_VAR_DIR/admin.key``) where
    that file exists; None when there is no key."""
    from fflab.settings import get_settings

    settings = get_settings()
    if api_key is None:
        api_key = settings.api_key
    if api_key is None:
        key_file = settings.resolved_admin_key_file
        api_key = key_file.read_text().strip() if key_file.is_file() else None
    return (base_url or settings.resolved_api_url).rstrip("/"), api_key or None


def __getattr__(name: str) -> Any:
    # RUN_ANALYSES: the registered analyses' names when read (run_analysis_names).
    if name == "RUN_ANALYSES":
        return run_analysis_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ApiError(RuntimeError):
    """A non-2xx answer, from the API's problem document (RFC 9457): ``code`` is
    stable (not_found, validation_error, conflict, quota_exceeded, ...), ``message``
    one human sentence, ``details`` the problems with single fields."""

    def __init__(self, status_code: int, message: str, code: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        self.status_code, self.message, self.code, self.details = status_code, message, code, details or []
        super().__init__(f"HTTP {status_code}{f' {code}' if code else ''}: {message}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict) or "message" not in document:
            return cls(response.status_code, response.text.strip()[:500] or response.reason_phrase)
        return cls(response.status_code, str(document["message"]), document.get("code"), document.get("details"))


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0):
        """``base_url`` and ``api_key`` left out are read as the ``fflab`` verbs read
        them (``service_connection``)."""
        base_url, api_key = service_connection(base_url, api_key)
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def web_page(self, experiment_id: str) -> str:
        """The experiment's page in the web UI, where a person looks (not the API's URL)."""
        return f"{self.base_url}/ui/experiments/{experiment_id}"

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
            raise ApiError.from_response(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._check(self.http.request(method, path, **kwargs))

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The response's JSON object (every endpoint the client calls answers one)."""
        body: dict[str, Any] = self.request(method, path, **kwargs).json()
        return body

    @staticmethod
    def _params(**filters: Any) -> dict[str, Any]:
        return {key.rstrip("_"): value for key, value in filters.items() if value is not None}

    def pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a list, following next_page_token."""
        params = dict(params or {})
        while True:
            page = self._json("GET", path, params=params)
            yield page
            if not page.get("next_page_token"):
                return
            params["page_token"] = page["next_page_token"]

    def items(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list, page after page."""
        for page in self.pages(path, params):
            yield from page["items"]

    # experiments
    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body``: a full spec, or {"preset": ...} plus overrides, plus "visibility"
        and "priority"."""
        return self._json("POST", "/v1/experiments", json=body)

    def upload_representations(self, path: str | Path, *, name: str | None = None, tags: list[str] | None = None,
                               visibility: str | None = None,
                               on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload a representations file (docs/representations.md) to be analysed as an
        experiment of kind ``representations`` (POST /v1/representations): the file is
        streamed as the body, never read whole into memory; ``on_bytes(n)`` is called
        with each chunk's size as it is sent (a progress bar). Returns the created
        experiment (id, url, status); follow it with ``wait`` and read it as any."""
        path = Path(path)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    yield chunk

        return self._json("POST", "/v1/representations", content=chunks(),
                          params=self._params(name=name, tag=list(tags) if tags else None, visibility=visibility),
                          headers={"Content-Type": "application/octet-stream",
                                   "Content-Length": str(path.stat().st_size)},
                          timeout=httpx.Timeout(self.http.timeout.read, write=None))

    def experiments(self, *, scope: str = "mine", status: str | list[str] | None = None, name: str | None = None,
                    tag: str | list[str] | None = None, owner: str | None = None, created_after: str | None = None,
                    created_before: str | None = None, sort: str | None = None,
                    filters: list[str] | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Experiments (summaries), every page: yours (scope mine), the lab's (lab) or
        everyone's (all, admins); filtered by status, name prefix, tags (all of
        them), owner and creation time (ISO 8601 with a time zone), and sorted.
        ``filters``: search expressions that must all hold (fflab.experiment_search),
        e.g. ``["network.threshold=0.3", "accuracy>0.9"]``."""
        return self.items("/v1/experiments", self._params(
            scope=scope, status=status, name=name, tag=tag, owner=owner, created_after=created_after,
            created_before=created_before, sort=sort, filter=filters, limit=page_size))

    def compare(self, experiments: list[str], format: str = "json") -> Any:
        """Experiments (or runs, ``<id>/<run id>``) compared with the first: their
        specs, Tables 1-3 with Welch's t per cell and the Method 1 ensembles'
        overlap; a dict (json), or markdown or CSV text. Against the paper:
        ``paper_comparison``."""
        response = self.request("GET", "/v1/comparisons", params=self._params(experiment=list(experiments),
                                                                                format=format))
        return response.json() if format == "json" else response.text

    def comparison_figure(self, experiments: list[str], name: str) -> bytes:
        """A figure of ``compare`` as PNG: loss_curves or layer_quantities."""
        return self.request("GET", f"/v1/comparisons/figures/{name}",
                            params={"experiment": list(experiments)}).content

    def update(self, experiment_id: str, *, name: str | None = None, tags: list[str] | None = None,
               visibility: str | None = None) -> dict[str, Any]:
        """Rename, retag (replacing the tags) or change the visibility of an experiment."""
        body = self._params(name=name, tags=tags, visibility=visibility)
        return self._json("PATCH", f"/v1/experiments/{experiment_id}", json=body)

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
        return list(self.items(f"/v1/experiments/{experiment_id}/runs"))

    def run(self, experiment_id: str, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/experiments/{experiment_id}/runs/{run_id}")

    def run_metrics(self, experiment_id: str, run_id: str, since: int = 0) -> dict[str, Any]:
        """The run's loss per epoch (per layer for FF), also while it trains, and its
        test accuracy once it has succeeded (null before); with ``since``, only the
        losses from that position on (the ``next_since`` of an earlier answer)."""
        return self._json("GET", f"/v1/experiments/{experiment_id}/runs/{run_id}/metrics",
                          params={"since": since} if since else None)

    def follow_metrics(self, experiment_id: str, run_id: str, interval: float = 1.0,
                       timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Each new loss of the run as it is reported, until the run ends:
        ``{"position", "layer", "epoch", "loss", "recorded_at"}`` (layer null for a
        network trained end to end). ``run_metrics`` then gives the accuracy of a
        run that succeeded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        since = 0
        while True:
            metrics = self.run_metrics(experiment_id, run_id, since)
            position = metrics["since"]
            for series in metrics["loss"]:
                times = series.get("recorded_at") or [None] * len(series["loss"])
                for epoch, loss, at in zip(series["epochs"], series["loss"], times, strict=True):
                    yield {"position": position, "layer": series["layer"], "epoch": epoch, "loss": loss,
                           "recorded_at": at}
                    position += 1
            since = metrics["next_since"]
            if metrics["final"]:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {metrics['status']} after {timeout} s")
            time.sleep(interval)

    def run_log(self, experiment_id: str, run_id: str) -> dict[str, Any]:
        """What the worker logged while it held the run (warnings, a failure's
        traceback), redacted and capped: ``{"text", "dropped_bytes", "final", ...}``."""
        return self._json("GET", f"/v1/experiments/{experiment_id}/runs/{run_id}/log")

    def results(self, experiment_id: str, format: str = "json", table: str | None = None) -> Any:
        """results.json as a dict, one table as CSV (``table`` required), or the
        tables (or one) as markdown."""
        response = self.request("GET", f"/v1/experiments/{experiment_id}/results",
                                params=self._params(format=format, table=table))
        return response.json() if format == "json" else response.text

    def paper_comparison(self, experiment_id: str, format: str = "json") -> Any:
        """The comparison with the paper: a dict (json), or markdown or CSV text."""
        response = self.request("GET", f"/v1/experiments/{experiment_id}/paper-comparison",
                                params=self._params(format=format))
        return response.json() if format == "json" else response.text

    def ensembles(self, experiment_id: str, *, model: str | None = None, dataset: str | None = None,
                  layer: int | None = None, class_index: int | None = None, method: str | None = None,
                  quantile: float | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Every page of the filtered ensembles, merged: one document per run."""
        params = self._params(model=model, dataset=dataset, layer=layer, class_index=class_index, method=method,
                              quantile=quantile, run_id=run_id)
        merged: dict[str, Any] = {}
        runs: dict[str, dict[str, Any]] = {}
        for page in self.pages(f"/v1/experiments/{experiment_id}/ensembles", params):
            merged = {key: value for key, value in page.items() if key not in ("runs", "next_page_token")}
            for document in page["runs"]:
                if document["run_id"] in runs:
                    runs[document["run_id"]]["ensembles"] += document["ensembles"]
                else:
                    runs[document["run_id"]] = document
        return {**merged, "runs": list(runs.values())}

    def runs_of(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every page of a per-run collection ({..., "runs": [...]}), its runs merged."""
        merged: dict[str, Any] = {}
        runs: list[dict[str, Any]] = []
        for page in self.pages(path, params):
            merged = {key: value for key, value in page.items() if key not in ("runs", "next_page_token")}
            runs += page["runs"]
        return {**merged, "runs": runs}

    def shared_units(self, experiment_id: str, **filters: Any) -> dict[str, Any]:
        """Every page of the shared units, merged: one document per run."""
        return self.runs_of(f"/v1/experiments/{experiment_id}/shared-units", self._params(**filters))

    def weights(self, experiment_id: str, **filters: Any) -> dict[str, Any]:
        """Every page of the weight statistics, merged: one document per run."""
        return self.runs_of(f"/v1/experiments/{experiment_id}/weights", self._params(**filters))

    def run_analysis(self, experiment_id: str, analysis: str, *, model: str | None = None,
                     dataset: str | None = None, layer: int | None = None,
                     run_id: str | None = None) -> dict[str, Any]:
        """One per-run analysis beyond the paper (``run_analysis_names()``; dashes or
        underscores) of every finished run matching the filters, every page merged:
        {"experiment_id", "experiment_status", "runs": [document, ...]}."""
        names = run_analysis_names()
        path = str(analysis).replace("_", "-")
        if path not in names:
            raise ValueError(f"analysis must be one of {', '.join(names)}; got {analysis!r}")
        params = self._params(model=model, dataset=dataset, layer=layer, run_id=run_id)
        return self.runs_of(f"/v1/experiments/{experiment_id}/{path}", params)

    def figures(self, experiment_id: str) -> list[dict[str, Any]]:
        """Each figure's ``name`` is what ``figure`` takes (figure1a.png)."""
        return list(self.items(f"/v1/experiments/{experiment_id}/figures"))

    def figure(self, experiment_id: str, name: str) -> bytes:
        return self.request("GET", f"/v1/experiments/{experiment_id}/figures/{name}").content

    def artifacts(self, experiment_id: str) -> list[dict[str, Any]]:
        return list(self.items(f"/v1/experiments/{experiment_id}/artifacts"))

    def download(self, experiment_id: str, name: str, target: Path, resume: bool = False) -> Path:
        """Stream an artifact (runs/<run_id>/weights.pt, figures/figure1a.png, ...) to a
        file. With ``resume``, a partial ``target`` is completed with a Range request
        (If-Range: the artifact's sha256, so a changed file is fetched whole)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        path = f"/v1/experiments/{experiment_id}/artifacts/{name}"
        headers, mode = {}, "wb"
        if resume and target.is_file() and target.stat().st_size:
            etag = self._check(self.http.head(path)).headers.get("etag", "")
            headers, mode = {"Range": f"bytes={target.stat().st_size}-", "If-Range": etag}, "ab"
        with self.http.stream("GET", path, headers=headers) as response:
            if response.status_code == 416:  # already complete
                return target
            self._check(response)
            with target.open(mode if response.status_code == 206 else "wb") as handle:
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

    def analyses(self, experiment_id: str) -> list[dict[str, Any]]:
        return list(self.items(f"/v1/experiments/{experiment_id}/analyses"))

    def analysis_results(self, experiment_id: str, analysis_id: str, format: str = "json",
                         table: str | None = None) -> Any:
        """One re-analysis's results, as ``results`` gives the latest's: kept after later ones."""
        response = self.request("GET", f"/v1/experiments/{experiment_id}/analyses/{analysis_id}/results",
                                params=self._params(format=format, table=table))
        return response.json() if format == "json" else response.text

    # users
    def me(self) -> dict[str, Any]:
        return self._json("GET", "/v1/users/me")

    def usage(self) -> dict[str, Any]:
        """Your stored bytes and estimated run-hours, with the per-user quota and limit (null: none)."""
        return self._json("GET", "/v1/users/me/usage")

    def usage_by_user(self) -> list[dict[str, Any]]:
        """Every user's stored bytes and estimated run-hours (admins)."""
        return list(self.items("/v1/admin/usage"))

    def keys(self) -> list[dict[str, Any]]:
        """Your API keys (public prefixes, creation and revocation times)."""
        return list(self.items("/v1/users/me/keys"))

    def rotate_key(self, revoke_current: bool = True) -> str:
        """A new key for you; the one this client uses is revoked unless told not to.
        The client goes on with the new key."""
        key: str = self._json("POST", "/v1/users/me/keys", json={"revoke_current": revoke_current})["api_key"]
        self.http.headers["Authorization"] = f"Bearer {key}"
        return key

    def users(self) -> list[dict[str, Any]]:
        """Every user (admins)."""
        return list(self.items("/v1/admin/users"))

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
