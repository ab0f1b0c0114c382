"""The spec reference and JSON Schema in docs/ are what the model generates today."""

from __future__ import annotations

import json

from sciplat.schema_doc import json_schema, markdown_reference
from tests.conftest import REPO

FIX = "regenerate with `make docs` (sciplat schema --markdown -o docs/reference/spec.md; sciplat schema -o ...)"


def test_markdown_reference_is_current() -> None:
    assert (REPO / "docs" / "reference" / "spec.md").read_text() == markdown_reference(), FIX


def test_json_schema_is_current() -> None:
    on_disk = json.loads((REPO / "docs" / "reference" / "platform.schema.json").read_text())
    assert on_disk == json_schema(), FIX


def test_schema_rejects_unknown_keys_and_requires_platform() -> None:
    schema = json_schema()
    assert schema["required"] == ["platform"]
    assert schema["additionalProperties"] is False
