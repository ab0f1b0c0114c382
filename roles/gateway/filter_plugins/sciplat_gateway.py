"""Filters that check and complete the route declarations of sciplat.

A declaration (docs/development.md, "Declarations") is a list of items
``{name, path, upstream, websocket, max_body, admin_only}`` kept in variables
named ``gateway_routes_<component>``. The role checks every item with
``sciplat_gateway_route_errors`` in its preflight and renders the completed
items of ``sciplat_gateway_routes``.

A component that needs a whole virtual server of its own (S3 signs the request
path, so it cannot live under a path prefix that the proxy strips) declares it
in ``gateway_servers_<component>``: items ``{name, server_name, upstreams,
max_body, buffering}``; every request for ``server_name`` goes to the
``upstreams`` (``http://host:port`` URLs, balanced). The pki role adds each
``server_name`` to the gateway certificate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_REQUIRED = ("name", "path", "upstream")
_OPTIONAL = ("websocket", "max_body", "admin_only", "buffering")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# A location prefix: no whitespace, quotes, braces, semicolons or regex syntax.
_PATH = re.compile(r"^/[A-Za-z0-9._~/%@+-]*$")
# http(s)://host[:port][/path] with a DNS name, IPv4 or [IPv6] host, or an nginx
# unix socket (http://unix:/run/x.sock:/path).
_UPSTREAM = re.compile(
    r"^https?://("
    r"unix:/[A-Za-z0-9._/@+-]+:?"
    r"|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?"
    r")(/[A-Za-z0-9._~/%@+-]*)?$"
)
_SIZE = re.compile(r"^\d+[kKmMgG]?$")


def _checked_items(
    kind: str, items: Any, required: tuple[str, ...], optional: tuple[str, ...], errors: list[str]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (label, item) for each mapping of a declaration list, recording in `errors`
    the problems every declaration kind shares: not a list, not a mapping, missing or
    unknown keys, a bad or repeated name."""
    if not isinstance(items, list):
        errors.append(f"gateway {kind}s must be a list of mappings, got {type(items).__name__}")
        return
    names: set[str] = set()
    for index, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("name"):
            label = f"gateway {kind} {item['name']!r}"
        else:
            label = f"gateway {kind} #{index + 1} (it has no name)"
        if not isinstance(item, Mapping):
            errors.append(f"{label}: must be a mapping, got {item!r}")
            continue
        for key in required:
            if key not in item:
                errors.append(f"{label}: '{key}' is missing")
        unknown = sorted(set(item) - set(required) - set(optional))
        if unknown:
            errors.append(f"{label}: unknown keys {unknown}; allowed are {sorted(required + optional)}")
        name = item.get("name")
        if name is not None:
            if not isinstance(name, str) or not _NAME.match(name):
                errors.append(f"{label}: 'name' must be letters, digits, '_', '.' or '-'")
            elif name in names:
                errors.append(f"{label}: the name is declared twice")
            else:
                names.add(name)
        yield label, item


def _value_errors(label: str, item: Mapping[str, Any], flags: tuple[str, ...], size_hint: str) -> list[str]:
    """Problems with the true/false keys and the nginx body size of one item."""
    errors = [
        f"{label}: '{key}' must be true or false, got {item[key]!r}"
        for key in flags
        if key in item and not isinstance(item[key], bool)
    ]
    size = item.get("max_body")
    if "max_body" in item and not (
        isinstance(size, (str, int)) and not isinstance(size, bool) and _SIZE.match(str(size))
    ):
        errors.append(f"{label}: 'max_body' {size!r} must be an nginx size {size_hint}")
    return errors


def route_errors(routes: Any, reserved_paths: Iterable[str] = ()) -> list[str]:
    """Every problem with the declared routes, one message per problem."""
    if routes is None:
        return []
    reserved = set(reserved_paths)
    errors: list[str] = []
    paths: dict[str, str] = {}
    for label, route in _checked_items("route", routes, _REQUIRED, _OPTIONAL, errors):
        path = route.get("path")
        if path is not None:
            if not isinstance(path, str) or not _PATH.match(path):
                errors.append(
                    f"{label}: 'path' {path!r} must start with '/' and hold only letters, digits and . _ ~ / % @ + -"
                )
            elif path in reserved or path.rstrip("/") in reserved:
                errors.append(
                    f"{label}: 'path' {path!r} is served by the gateway itself ({', '.join(sorted(reserved))})"
                )
            elif path in paths:
                errors.append(f"{label}: 'path' {path!r} is already routed by {paths[path]!r}")
            else:
                paths[path] = str(route.get("name"))
        upstream = route.get("upstream")
        if upstream is not None and (not isinstance(upstream, str) or not _UPSTREAM.match(upstream)):
            errors.append(
                f"{label}: 'upstream' {upstream!r} must be a URL like http://10.0.0.5:8000 "
                "or https://hub.internal:8081/hub/"
            )
        errors.extend(_value_errors(label, route, ("websocket", "admin_only", "buffering"), "like 10m or 1g"))
    return errors


def routes(declared: Iterable[Mapping[str, Any]], max_body: str) -> list[dict[str, Any]]:
    """The declared routes with every optional key filled in, sorted by path."""
    completed = []
    for route in declared or []:
        websocket = bool(route.get("websocket", False))
        completed.append(
            {
                "name": route["name"],
                "path": route["path"],
                "upstream": route["upstream"],
                "websocket": websocket,
                "max_body": str(route.get("max_body", max_body)),
                "admin_only": bool(route.get("admin_only", False)),
                # streaming routes (websockets) must not be buffered by the proxy
                "buffering": bool(route.get("buffering", not websocket)),
                "tls_upstream": str(route["upstream"]).startswith("https://"),
            }
        )
    return sorted(completed, key=lambda r: (r["path"], r["name"]))


_SERVER_REQUIRED = ("name", "server_name", "upstreams")
_SERVER_OPTIONAL = ("max_body", "buffering")
_SERVER_NAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_SERVER_UPSTREAM = re.compile(r"^http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):\d{1,5}$")


def server_errors(servers: Any, main_server_name: str = "") -> list[str]:
    """Every problem with the declared virtual servers, one message per problem."""
    if servers is None:
        return []
    errors: list[str] = []
    server_names: set[str] = {main_server_name} if main_server_name else set()
    for label, server in _checked_items("server", servers, _SERVER_REQUIRED, _SERVER_OPTIONAL, errors):
        server_name = server.get("server_name")
        if server_name is not None:
            if not isinstance(server_name, str) or not _SERVER_NAME.match(server_name):
                errors.append(f"{label}: 'server_name' {server_name!r} must be a DNS name such as s3.example.org")
            elif server_name in server_names:
                errors.append(f"{label}: 'server_name' {server_name!r} is already served")
            else:
                server_names.add(server_name)
        upstreams = server.get("upstreams")
        if upstreams is not None and (
            not isinstance(upstreams, list)
            or not upstreams
            or not all(isinstance(u, str) and _SERVER_UPSTREAM.match(u) for u in upstreams)
        ):
            errors.append(f"{label}: 'upstreams' must be a non-empty list of URLs like http://10.0.0.5:7480")
        errors.extend(_value_errors(label, server, ("buffering",), "like 10m, or 0 (no limit)"))
    return errors


def servers(declared: Iterable[Mapping[str, Any]], max_body: str) -> list[dict[str, Any]]:
    """The declared virtual servers with every optional key filled in, sorted by server name."""
    completed = []
    for server in declared or []:
        completed.append(
            {
                "name": server["name"],
                "server_name": server["server_name"],
                "upstream_id": "sciplat_" + re.sub(r"[^A-Za-z0-9_]", "_", str(server["name"])),
                "upstreams": [str(u).removeprefix("http://") for u in server["upstreams"]],
                "max_body": str(server.get("max_body", max_body)),
                "buffering": bool(server.get("buffering", True)),
            }
        )
    return sorted(completed, key=lambda s: (s["server_name"], s["name"]))


class FilterModule:
    """sciplat gateway filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "sciplat_gateway_route_errors": route_errors,
            "sciplat_gateway_routes": routes,
            "sciplat_gateway_server_errors": server_errors,
            "sciplat_gateway_servers": servers,
        }
