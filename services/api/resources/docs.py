"""``/docs``: Swagger UI over ``/openapi.json``, from the pinned ``swagger-ui-bundle-v2`` package (not hand-copied).

A person pastes a key into "Authorize" (the document's ``bearer`` scheme) and tries requests from
the page; the key stays in the browser (``persistAuthorization``), never in a cookie the API reads.
"""

from __future__ import annotations

from pathlib import Path

import falcon
from swagger_ui_bundle import swagger_ui_path

ASSETS = Path(swagger_ui_path)

_PAGE = b"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>jobrelay API</title>
    <link rel="stylesheet" type="text/css" href="/docs/static/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/docs/static/index.css">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/static/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/static/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/docs/init.js" charset="UTF-8"></script>
  </body>
</html>
"""

# NOTE: a script file of our own instead of an inline one, so the page works under a strict CSP.
_INIT = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
"""

_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


class DocsPageResource:
    public = True
    #: A page for people, not an operation of the API's contract (the OpenAPI test skips it).
    docs_page = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.set_header("Content-Security-Policy", _CSP)
        resp.data = _PAGE


class DocsInitResource:
    public = True
    docs_page = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JS
        resp.data = _INIT


def add_docs(app: falcon.App) -> None:
    app.add_route("/docs", DocsPageResource())
    app.add_route("/docs/init.js", DocsInitResource())
    app.add_static_route("/docs/static", str(ASSETS))
