"""Filters that check and normalise the scrape-target declarations of sciplat.

A declaration (docs/monitoring.md, "Declaring scrape targets") is a list of items
``{job, group, port, scheme, path, bearer_token}`` kept in variables named
``monitor_targets_<component>``. The monitor role collects every item, checks
them with ``sciplat_monitor_target_errors`` in its preflight, fills in the
defaults with ``sciplat_monitor_targets`` and renders one scrape job per item
for the hosts of its group (none when the group has no hosts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {"scheme": "http", "path": "/metrics", "bearer_token": ""}
_KEYS = {"job", "group", "port", *DEFAULTS}
_JOB = re.compile(r"^[a-z][a-z0-9_]*$")
_PATH = re.compile(r"^/[A-Za-z0-9/._~-]*$")
BUILTIN_JOBS = ("prometheus", "alertmanager")


def _label(item: Any, index: int) -> str:
    if isinstance(item, Mapping) and item.get("job"):
        return f"monitor target {item['job']!r}"
    return f"monitor target #{index + 1} (it has no job)"


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    else:
        return None
    return port if 1 <= port <= 65535 else None


def target_errors(items: Any, groups: Mapping[str, Any]) -> list[str]:
    """Every problem with the declared targets, one sentence each (empty: sound)."""
    if items is None:
        return []
    if not isinstance(items, list):
        return [f"monitor targets must be a list of mappings, got {type(items).__name__}"]
    errors: list[str] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        label = _label(item, index)
        if not isinstance(item, Mapping):
            errors.append(f"{label} is {item!r}; it must be a mapping {{job, group, port, scheme, path, bearer_token}}")
            continue
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            errors.append(f"{label} has unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        job = item.get("job")
        if not isinstance(job, str) or not _JOB.match(job):
            errors.append(f"{label}: job must be lowercase letters, digits and '_' starting with a letter, not {job!r}")
        elif job in BUILTIN_JOBS:
            errors.append(f"{label}: job {job!r} is the monitor role's own; pick another name")
        elif job in seen:
            errors.append(f"{label}: job {job!r} is declared twice (items #{seen[job] + 1} and #{index + 1})")
        else:
            seen[job] = index
        group = item.get("group")
        if not isinstance(group, str) or not group:
            errors.append(f"{label}: group must name a host group (or 'all'), not {group!r}")
        if _port(item.get("port")) is None:
            errors.append(f"{label}: port must be a number 1-65535, not {item.get('port')!r}")
        scheme = item.get("scheme", DEFAULTS["scheme"])
        if scheme not in ("http", "https"):
            errors.append(f"{label}: scheme must be http or https, not {scheme!r}")
        path = item.get("path", DEFAULTS["path"])
        if not isinstance(path, str) or not _PATH.match(path):
            errors.append(f"{label}: path must be an absolute URL path such as /metrics, not {path!r}")
        token = item.get("bearer_token", DEFAULTS["bearer_token"])
        if token is not None and not isinstance(token, str):
            errors.append(f"{label}: bearer_token must be a string (empty for none)")
        elif token and (token != token.strip() or "\n" in token):
            errors.append(f"{label}: bearer_token has surrounding white space or a line break")
    return errors


def targets(items: Any) -> list[dict[str, Any]]:
    """The declared targets with defaults filled in and ports as int, sorted by job."""
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        merged = {**DEFAULTS, **{k: v for k, v in item.items() if v is not None}}
        port = _port(merged.get("port"))
        merged["port"] = port if port is not None else merged.get("port")
        merged["bearer_token"] = str(merged.get("bearer_token") or "")
        out.append(merged)
    return sorted(out, key=lambda t: str(t.get("job")))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "sciplat_monitor_targets": targets,
            "sciplat_monitor_target_errors": target_errors,
        }
