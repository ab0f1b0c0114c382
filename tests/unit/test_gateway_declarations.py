"""The gateway's declaration checks: one sentence per problem, naming the item."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_storage import gateway_filters

gw = gateway_filters()

HUB = {"name": "hub", "path": "/", "upstream": "http://10.0.0.5:8000", "websocket": True}
S3 = {"name": "s3", "server_name": "s3.lab.example.org", "upstreams": ["http://10.0.0.6:7480"]}


def test_valid_declarations_have_no_problems() -> None:
    assert gw.route_errors([HUB, {**HUB, "name": "api", "path": "/api/", "max_body": "1g"}]) == []
    assert gw.server_errors([S3], "lab.example.org") == []
    assert gw.route_errors(None) == [] and gw.server_errors(None) == []


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ({"a": 1}, "gateway routes must be a list of mappings, got dict"),
        (["x"], "gateway route #1 (it has no name): must be a mapping, got 'x'"),
        ([{"name": "hub", "path": "/"}], "gateway route 'hub': 'upstream' is missing"),
        ([{**HUB, "colour": 1}], "gateway route 'hub': unknown keys ['colour']"),
        ([HUB, {**HUB, "path": "/x"}], "gateway route 'hub': the name is declared twice"),
        ([HUB, {**HUB, "name": "two"}], "gateway route 'two': 'path' '/' is already routed by 'hub'"),
        ([{**HUB, "path": "/a b"}], "'path' '/a b' must start with '/'"),
        ([{**HUB, "upstream": "ftp://x"}], "'upstream' 'ftp://x' must be a URL"),
        ([{**HUB, "websocket": "yes"}], "gateway route 'hub': 'websocket' must be true or false, got 'yes'"),
        ([{**HUB, "max_body": "lots"}], "'max_body' 'lots' must be an nginx size like 10m or 1g"),
    ],
)
def test_route_problems_are_named(routes: Any, expected: str) -> None:
    assert any(expected in e for e in gw.route_errors(routes)), gw.route_errors(routes)


def test_reserved_paths_are_refused() -> None:
    errors = gw.route_errors([{**HUB, "path": "/nginx_status"}], ["/nginx_status"])
    assert errors == ["gateway route 'hub': 'path' '/nginx_status' is served by the gateway itself (/nginx_status)"]


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ("s3", "gateway servers must be a list of mappings, got str"),
        ([{"name": "s3"}], "gateway server 's3': 'server_name' is missing"),
        ([{**S3, "server_name": "lab.example.org"}], "'server_name' 'lab.example.org' is already served"),
        ([{**S3, "upstreams": []}], "'upstreams' must be a non-empty list"),
        ([{**S3, "buffering": 1}], "gateway server 's3': 'buffering' must be true or false, got 1"),
        ([{**S3, "max_body": True}], "'max_body' True must be an nginx size like 10m, or 0 (no limit)"),
        ([S3, S3], "gateway server 's3': the name is declared twice"),
    ],
)
def test_server_problems_are_named(servers: Any, expected: str) -> None:
    errors = gw.server_errors(servers, "lab.example.org")
    assert any(expected in e for e in errors), errors
