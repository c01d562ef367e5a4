"""The web UI: experiments, progress, tables, figures and ensembles in a browser,
served by the API's own FastAPI app under ``/ui`` (``/`` redirects there).

Design
------
Server-rendered Jinja2 pages with htmx (vendored under ``static/``, see
``static/VENDORED.md``) for the parts that update in place: the progress of
running experiments, the spec preview of the submit form and the ensemble
explorer's selections. Every page works without JavaScript too (plain links and
form posts); htmx only saves reloads. There is no build step and no CDN: the app
serves every asset itself, so the UI works on an offline server.

The pages call what the JSON API's routes call: the service layer
(``api.services``: submit, cancel, delete, re-analyse, sign in and out, results,
figures, ensembles, paper comparison, who may read and change an experiment),
``api.deps`` (``authenticated_user``) and ``api.views``; never a route handler
(tests/test_architecture.py checks that nothing here imports ``api.routes``). A
page never makes an HTTP request to the app. Authorisation is therefore the API's:
another user's private experiment is a 404 page, changing an experiment needs its
owner or an admin.

Authentication (``security``): the sign-in form takes an API key and opens a
server-side session with it; the browser keeps only the session's id, in an
HttpOnly, SameSite=Strict cookie scoped to ``/ui`` (``__Host-`` and Secure over
HTTPS); the key never appears in a cookie or a URL. Only the UI's routes read that
cookie: the JSON API keeps its ``Authorization: Bearer`` header and does not accept
cookies, so it needs no CSRF protection. Every POST of the UI carries a CSRF token
bound to the session (an HMAC of its id with the server's secret, in the form or
in the ``X-CSRF-Token`` header htmx sends) and must come from the app's own origin
(Origin / Sec-Fetch-Site); otherwise it is a 403 page.

Errors (``html``): the UI's routes use ``HTMLRoute``, which turns the API's
exceptions and the services' refusals into pages: 401 redirects to the sign-in
page, other errors are an error page with the API's message, and a form's
validation errors are shown next to its fields (``forms.field_errors`` reads the API's error bodies).

Modules: ``security`` (cookies, CSRF, the current user), ``html`` (templates,
the route class, ``render``), ``forms`` (form fields <-> API bodies and errors),
``explorer`` and ``charts`` (pure functions behind the ensemble grid and the loss
curves), ``queries`` (the lists the API does not serve), ``routes`` (the pages),
``compare`` (the list's search, sort and accuracy columns; the compare page).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Add the UI's pages, its static files and the redirect from ``/``."""
    from api.ui.compare import router as compare_router
    from api.ui.routes import router

    app.include_router(router)
    app.include_router(compare_router)  # the compare page
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
