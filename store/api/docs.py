"""The registry's interactive API documentation, served by the registry itself.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from ``/docs/assets/``,
files shipped in the ``fastapi-offline`` package: no CDN, so the pages work air-gapped.
``document_examples`` puts each success answer's example (from its response model's
``examples``) on the answer itself, where Swagger UI shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"


def _asset_dir() -> str:
    return str(files("fastapi_offline") / "static")


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets on ``app`` (built with ``docs_url=None,
    redoc_url=None``), and give its schema's success answers their examples."""
    app.mount(ASSETS_URL, StaticFiles(directory=_asset_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    document_examples(app)


def _promote_examples(schema: dict[str, Any]) -> None:
    components = schema.get("components", {}).get("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                # FastAPI adds an untyped JSON answer beside a declared non-JSON one (a file
                # download): it documents nothing, so it goes.
                if len(content) > 1 and content.get("application/json") == {"schema": {}}:
                    del content["application/json"]
                media = content.get("application/json")
                if not status.startswith("2") or media is None:
                    continue
                if "example" in media or "examples" in media:
                    continue
                model = media.get("schema", {})
                refs = [model.get("$ref", "")] + [m.get("$ref", "") for m in model.get("anyOf", [])]
                for ref in filter(None, refs):  # a union shows its first variant's example
                    examples = components.get(ref.rsplit("/", 1)[-1], {}).get("examples")
                    if examples:
                        media["example"] = examples[0]
                        break


def add_schema_step(app: FastAPI, step: Callable[[dict[str, Any]], None]) -> None:
    """Run ``step`` on ``app``'s OpenAPI schema once, when it is first built (steps added
    later run after those added earlier)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            step(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def document_examples(app: FastAPI) -> None:
    """Give every JSON success answer in ``app``'s schema the example of its model."""
    add_schema_step(app, _promote_examples)
