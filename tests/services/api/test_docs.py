"""``/docs``: Swagger UI from the pinned package, over ``/openapi.json``, with a place for a key."""

from __future__ import annotations

from falcon import testing


def test_docs_page_loads_swagger_ui_over_the_document_without_a_token(client: testing.TestClient) -> None:
    anonymous = testing.TestClient(client.app)

    page = anonymous.simulate_get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    init = anonymous.simulate_get("/docs/init.js")
    assert init.status_code == 200 and '"/openapi.json"' in init.text and "persistAuthorization: true" in init.text

    # Every asset the page names is served from the package
    for asset in ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/docs/static/{asset}" in page.text
        resp = anonymous.simulate_get(f"/docs/static/{asset}")
        assert resp.status_code == 200 and len(resp.content) > 100, asset


def test_the_document_offers_a_bearer_key_to_enter(client: testing.TestClient) -> None:
    doc = testing.TestClient(client.app).simulate_get("/openapi.json").json
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A key of API_KEYS.",
    }
    submit = doc["paths"]["/v1/jobs"]["post"]
    assert submit["security"] == [{"bearer": ["write"]}]


def test_an_asset_outside_the_package_is_not_served(client: testing.TestClient) -> None:
    resp = testing.TestClient(client.app).simulate_get("/docs/static/../../__init__.py")
    assert resp.status_code == 404
