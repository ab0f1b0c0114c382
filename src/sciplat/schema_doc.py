"""The platform.yaml JSON Schema and the Markdown reference generated from the model."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sciplat.spec import PlatformSpec


def json_schema() -> dict[str, Any]:
    schema = PlatformSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sciplat platform.yaml"
    return schema


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found += _models_in(arg)
    for meta in getattr(annotation, "__metadata__", ()):
        found += _models_in(meta) if isinstance(meta, type) else []
    return found


def _type_name(info: FieldInfo) -> str:
    for meta in info.metadata:
        func = getattr(getattr(meta, "func", None), "__name__", "")
        if func in ("parse_size", "parse_duration"):
            return func.removeprefix("parse_")
    text = str(info.annotation).replace("typing.", "").replace("sciplat.spec.", "")
    text = text.replace("<class '", "").replace("'>", "")
    if "Annotated[int, BeforeValidator(func=<function parse_size" in text:
        return "size"
    if "Annotated[int, BeforeValidator(func=<function parse_duration" in text:
        return "duration"
    text = re.sub(r"Annotated\[(.*?), FieldInfo\(.*?\)\]", r"\1", text)
    text = re.sub(r"Annotated\[int, BeforeValidator\(func=<function parse_(\w+).*?\]", r"\1", text)
    return text.replace(" | ", " or ")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(mode="json", exclude_defaults=True) for v in value]
    return "`" + json.dumps(value) + "`"


def markdown_reference() -> str:
    lines = [
        "# platform.yaml reference",
        "",
        "Generated from the spec model (`sciplat schema --markdown`); do not edit by hand.",
        "The JSON Schema is in [platform.schema.json](platform.schema.json).",
        "",
        "Sizes are written like `500MiB`, `10GiB`, `2TB`; durations like `90s`, `30m`, `12h`, `15d`, `4w`, `1y`.",
        "Unknown keys are errors. The smallest valid spec:",
        "",
        "```yaml",
        "platform:",
        "  name: mylab",
        "  domain: science.example.org",
        "```",
        "",
    ]

    def section(model: type[BaseModel], path: str) -> None:
        lines.append(f"## `{path or '(top level)'}`")
        lines.append("")
        if model.__doc__ and model is PlatformSpec:
            lines.extend([model.__doc__.strip(), ""])
        lines.append("| key | type | default | description |")
        lines.append("|---|---|---|---|")
        nested: list[tuple[type[BaseModel], str]] = []
        for name, info in model.model_fields.items():
            description = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(info)} | {_default(info)} | {description} |")
            for sub in _models_in(info.annotation):
                nested.append(
                    (
                        sub,
                        f"{path}.{name}".lstrip(".") + (f" (type: {_tag(sub)})" if _tag(sub) else ""),
                    )
                )
        lines.append("")
        for sub, sub_path in nested:
            section(sub, sub_path)

    section(PlatformSpec, "")
    return "\n".join(lines) + "\n"


def _tag(model: type[BaseModel]) -> str:
    field = model.model_fields.get("type")
    if field is None:
        return ""
    args = getattr(field.annotation, "__args__", ())
    return str(args[0]) if args else ""
