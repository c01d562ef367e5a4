"""The service layer: every rule of what the API and the web UI do, one module per
resource, called by both.

Layout: ``experiments`` (who may read and change one, submission: the spec, this
server's limits, the default name, Idempotency-Key, creation and dispatch; renaming,
tags and visibility; cancellation; deletion; the listings), ``analyses``
(re-analyses), ``results`` (results, the paper comparison, ensembles, stored files
by name), ``users`` (users, keys, fair shares, the web UI's sessions), ``workers``
(what readiness reads of them), ``comparisons`` (experiments and runs side by
side), ``search`` (the experiments' search), and ``errors`` (what a service
refuses).

This is the shape of Netflix Dispatch (a ``service.py`` of plain functions per
resource, next to its routes, taking the session and pydantic inputs) and of
FastAPI's full-stack template (``crud.py``: functions over a session that routes
call): a rule lives in one function that has no HTTP in it, so the JSON routes
(``api.routes``) and the pages (``api.ui.routes``) cannot drift apart, and a
function's signature is an internal API that a type checker and a test can hold,
unlike a route handler's dependency list. Kept as one package beside ``api.routes``
rather than a module inside each route package, since the routes of one resource
are spread over several modules here (``experiments``, ``results``, ``runs``,
``run_analyses``) and the UI reaches all of them.

What a service takes and gives:

- plain arguments: a SQLAlchemy ``Session`` (the function runs inside one unit of
  ``api.deps.Database``, opened by its caller, which authenticates in the same
  unit), or, for work over several units (a submission retried against a
  concurrent twin, a deletion with the storage between two units), the
  ``Database`` and ``Files`` helpers themselves, so that no connection is held
  while anything else is waited for; the current ``User``; ``Settings``; the
  dispatcher and the status cache; the API's pydantic inputs (``api.schemas``);
- plain results: rows (``Experiment``, ``User``, ...), dataclasses or pydantic
  documents. Rendering them (absolute URLs, the pages) is the caller's
  (``api.views``, the templates);
- refusals as ``errors.ServiceError`` (NotFound, Forbidden, Conflict, LimitReached,
  Invalid), never an HTTP exception: ``api.errors.service_error`` turns each into
  its problem+json in one place, ``api.ui.html.HTMLRoute`` into a page.

A service never imports FastAPI, Starlette, a route module or the web UI
(tests/test_architecture.py checks it, and that route modules reach the jobs,
accounts and dispatch only through here).
"""
