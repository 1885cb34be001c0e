"""The published OpenAPI document declares the errors the API really sends."""

from __future__ import annotations

from typing import Any

import httpx

from tesai.errors import PROBLEM_JSON

METHODS = {"get", "put", "post", "delete", "patch"}


def _ref(response: dict[str, Any]) -> str:
    schema: dict[str, str] = response["content"][PROBLEM_JSON]["schema"]
    return schema["$ref"]


async def test_every_operation_declares_problem_json_errors(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/openapi.json")).json()
    operations = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(operations) > 20
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert _ref(responses["default"]) == "#/components/schemas/Problem", where
        if op.get("security"):
            assert _ref(responses["401"]).endswith("/Problem"), where
            assert _ref(responses["403"]).endswith("/Problem"), where
        if op.get("parameters") or op.get("requestBody"):
            assert _ref(responses["422"]).endswith("/ValidationProblem"), where
        if "{" in path:
            assert "404" in responses, where
        for status, response in responses.items():
            if status[0] in "45" or status == "default":
                assert list(response["content"]) == [PROBLEM_JSON], (where, status)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "code", "detail"}


async def test_a_real_422_has_the_declared_shape(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api/openapi.json")).json()
    problem = doc["components"]["schemas"]["Problem"]
    r = await client.post("/api/v1/auth/login", json={"email": "x"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    body = r.json()
    assert set(problem["required"]) <= set(body)
    assert set(body) <= set(problem["properties"]) | {"errors"}
    assert {"loc", "msg", "type"} <= set(body["errors"][0])
