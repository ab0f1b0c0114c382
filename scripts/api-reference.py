#!/usr/bin/env python3
"""Write docs/reference/api.md from the platform API's OpenAPI document (docs/api/openapi.json).

    .venv/bin/python scripts/api-reference.py            # rewrite docs/reference/api.md
    .venv/bin/python scripts/api-reference.py --check    # exit 1 when the page is stale

The OpenAPI document itself comes from the API's code (``python -m sciplat_hub.api
--openapi``); tests/unit/test_client.py fails when the page does not match it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "docs" / "api" / "openapi.json"
TARGET = REPO / "docs" / "reference" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
TAG_TITLES = {
    "platform": "Platform",
    "me": "Me: profile, quotas, credentials, allocations",
    "groups": "Groups (collaborations)",
    "shares": "Sharing",
    "jobs": "Batch jobs",
}


def _anchor(name: str) -> str:
    # the anchor mkdocs (Python-Markdown's toc) gives a heading made of this name
    return re.sub(r"[^\w-]", "", name.lower().replace(" ", "-"))


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def type_of(schema: dict[str, Any] | None) -> str:
    """A schema as a short Markdown type: `string`, [Share](#share), list of …, … or null."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema or "oneOf" in schema:
        parts = [type_of(s) for s in schema.get("anyOf") or schema.get("oneOf") or []]
        non_null = [p for p in parts if p != "null"]
        return " or ".join(non_null) + (" or null" if len(non_null) < len(parts) else "")
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema.get('items'))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {type_of(schema['additionalProperties'])}"
    return f"{kind}" + (f" ({schema['format']})" if schema.get("format") else "")


def _body_schema(content: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    for kind, media in (content or {}).items():
        return kind, media.get("schema")
    return "", None


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### {method.upper()} {path}", "", op.get("summary", "").strip() + ".", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    scopes = op.get("x-scopes") or ([op["x-scope"]] if op.get("x-scope") else [])
    if op.get("security") == [] or ("security" not in op):
        lines += ["No token needed.", ""]
    elif scopes:
        lines += ["Scope: " + ", ".join(f"`{s}`" for s in scopes) + ".", ""]
    params = op.get("parameters") or []
    if params:
        lines += ["| Parameter | In | Type | Required | Description |", "|---|---|---|---|---|"]
        for p in params:
            desc = p.get("description") or (p.get("schema") or {}).get("description", "")
            required = "yes" if p.get("required") else "no"
            lines.append(f"| `{p['name']}` | {p['in']} | {type_of(p.get('schema'))} | {required} | {_cell(desc)} |")
        lines.append("")
    body = op.get("requestBody")
    if body:
        kinds = list((body.get("content") or {}).keys())
        _kind, schema = _body_schema(body.get("content"))
        lines += [f"Body ({', '.join(f'`{k}`' for k in kinds)}): {type_of(schema)}", ""]
    lines += ["| Status | Meaning | Body |", "|---|---|---|"]
    for status, response in sorted((op.get("responses") or {}).items()):
        kind, schema = _body_schema(response.get("content"))
        shown = type_of(schema) if schema else ""
        if kind and kind != "application/json":
            shown = f"`{kind}` {shown}".strip()
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {shown} |")
    lines.append("")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    props = schema.get("properties") or {}
    if not props:
        return [*lines, f"Type: {type_of(schema)}", ""]
    required = set(schema.get("required") or [])
    lines += ["| Field | Type | Required | Description |", "|---|---|---|---|"]
    for field, spec in props.items():
        default = f" Default: `{json.dumps(spec['default'])}`." if "default" in spec else ""
        desc = _cell((spec.get("description") or "") + default)
        lines.append(f"| `{field}` | {type_of(spec)} | {'yes' if field in required else 'no'} | {desc} |")
    lines.append("")
    return lines


def render(document: dict[str, Any]) -> str:
    """The Markdown reference of an OpenAPI 3 document (deterministic: sorted by tag and path)."""
    info = document.get("info") or {}
    out = [
        f"# {info.get('title', 'API')} reference",
        "",
        "<!-- Generated from docs/api/openapi.json by scripts/api-reference.py: do not edit by hand. -->",
        "",
        f"Version {info.get('version', '?')}, OpenAPI {document.get('openapi', '3')}. "
        "The platform serves the same document at `/api/openapi.json`. "
        "How to use it from the web, a notebook, the command line and HTTP: [Collaborations and sharing]"
        "(../collaborations.md).",
        "",
    ]
    if info.get("description"):
        out += [info["description"].strip(), ""]
    schemes = (document.get("components") or {}).get("securitySchemes") or {}
    if schemes:
        out += ["## Authentication", ""]
        for name, scheme in sorted(schemes.items()):
            where = f"the `{scheme.get('name')}` {scheme.get('in')}" if scheme.get("in") else scheme.get("type", "")
            out.append(f"- **{name}**: {where}. {scheme.get('description', '')}".rstrip())
        out.append("")

    operations: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in sorted((document.get("paths") or {}).items()):
        for method in METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                operations.setdefault(tag, []).append((method, path, op))
    order = [t for t in TAG_TITLES if t in operations] + sorted(t for t in operations if t not in TAG_TITLES)

    out += ["## Endpoints", "", "| Method | Path | What |", "|---|---|---|"]
    for tag in order:
        for method, path, op in operations[tag]:
            out.append(f"| {method.upper()} | `{path}` | {_cell(op.get('summary', ''))} |")
    out.append("")
    for tag in order:
        out += [f"## {TAG_TITLES.get(tag, tag.capitalize())}", ""]
        for method, path, op in operations[tag]:
            out += _operation(method, path, op)

    schemas = (document.get("components") or {}).get("schemas") or {}
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in sorted(schemas.items()):
            out += _schema(name, schema)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=TARGET)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is not current")
    args = parser.parse_args(argv)
    text = render(json.loads(args.source.read_text()))
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/api-reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
