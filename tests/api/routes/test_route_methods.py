"""GET /v1/methods."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_methods_catalogue_is_public_and_complete(client: TestClient) -> None:
    r = client.get("/v1/methods")
    assert r.status_code == 200
    body = r.json()
    methods = {m["name"]: m for m in body["methods"]}
    assert set(methods) == {"pgd", "pgd-l2", "anti-forgery", "dwt-pgd", "retentive", "dwt-chroma", "initiative"}
    for m in methods.values():
        assert m["description"] and 0 < m["eps"]["default"] <= body["eps_max"] <= 0.1
        assert m["core_eps_scale"] > 0 and m["defaults"]["steps"] > 0
    assert {f["name"] for f in body["forgers"]} >= {"stargan", "attgan"}
    assert body["output_formats"] == ["png", "jpeg", "webp"]
