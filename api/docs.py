"""The API's documentation pages, served whole by the API: /docs (Swagger UI) and
/redoc (ReDoc) load their scripts, styles and icon from /static (files vendored from
npm in api/static/, VENDORED.md), never from a CDN, so that they work on a lab
server with no Internet access. Swagger UI's validator badge (which calls
validator.swagger.io) is off, and ReDoc is told not to load Google Fonts. Both are
served with a Content-Security-Policy that allows only the app's own origin (and
data:/blob: for images, fonts and ReDoc's search worker): what a vendored bundle
would still fetch from elsewhere (ReDoc's footer draws Redocly's logo from
cdn.redoc.ly) is blocked by the browser, and the pages do not wait on it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_UI_VERSION, REDOC_VERSION = "5.35.0", "2.5.4"
DOCS_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install(app: FastAPI) -> None:
    """/docs, /docs/oauth2-redirect, /redoc and /static on ``app`` (created with
    ``docs_url=None, redoc_url=None``)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def static(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}/static/{path}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return with_docs_headers(get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=static(request, "swagger-ui/swagger-ui-bundle.js"),
            swagger_css_url=static(request, "swagger-ui/swagger-ui.css"),
            swagger_favicon_url=static(request, "swagger-ui/favicon-32x32.png"),
            oauth2_redirect_url=f"{request.scope.get('root_path', '')}/docs/oauth2-redirect",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        ))

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return with_docs_headers(get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=static(request, "redoc/redoc.standalone.js"),
            redoc_favicon_url=static(request, "swagger-ui/favicon-32x32.png"),
            with_google_fonts=False,
        ))


def with_docs_headers(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(DOCS_PAGE_HEADERS)
    return response
