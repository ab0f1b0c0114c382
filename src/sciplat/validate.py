"""Check platform.yaml and hosts.yml together, and report every problem at once.

Each problem names the file, the line when known, the field path, the bad value
and how to fix it. Nothing here touches a host.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sciplat.spec import KNOWN_GROUPS, SINGLETON_GROUPS, PlatformSpec

SPEC_FILE = "platform.yaml"
HOSTS_FILE = "hosts.yml"


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    message: str
    value: Any = None
    line: int | None = None
    fix: str = ""
    severity: str = "error"  # or "warning"

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "value": self.value,
            "message": self.message,
            "fix": self.fix,
        }

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        value = "" if self.value is None else f" = {self.value!r}"
        fix = f"\n    fix: {self.fix}" if self.fix else ""
        return f"{where}: {self.path}{value}: {self.message}{fix}"


@dataclass
class Inventory:
    """The parts of an Ansible YAML inventory that validation and rendering need."""

    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> hosts (children resolved)
    hostvars: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return sorted(self.hostvars)


@dataclass
class Result:
    spec: PlatformSpec | None
    inventory: Inventory | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


# ------------------------------------------------------------------ YAML with line numbers


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map every key/index path of a YAML document to its 1-based line."""
    index: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, key_node.value)
                index[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def load_yaml(path: Path, problems: list[Problem]) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse a YAML file; a syntax error becomes a Problem (and None is returned)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.append(
            Problem(
                file=path.name,
                path="(file)",
                line=mark.line + 1 if mark else None,
                message=f"is not valid YAML: {getattr(exc, 'problem', None) or exc}",
                fix="correct the YAML syntax at that line (indentation, a missing ':' or quote)",
            )
        )
        return None, {}
    return data, _line_index(text)


# ------------------------------------------------------------------ spec


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at loc's parent (for 'did you mean')."""
    model: Any = PlatformSpec
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return None
        annotation = info.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:  # a list of models, or a union: look one level deeper
            for cand in candidates:
                for arg in getattr(cand, "__args__", ()):
                    if isinstance(arg, type) and issubclass(arg, BaseModel):
                        model = arg
    return model if isinstance(model, type) else None


def _fix_for(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_for(loc)
        names = list(getattr(model, "model_fields", {})) if model else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        allowed = f"allowed keys here: {', '.join(names)}" if names else "remove it"
        return f"{hint}{allowed}"
    if kind == "missing":
        return f"add '{loc[-1]}' (see docs/reference/spec.md)"
    if kind in ("literal_error", "enum"):
        expected = error.get("ctx", {}).get("expected", "")
        return f"use one of: {expected}"
    if kind == "union_tag_invalid":
        return f"set 'type' to one of: {error.get('ctx', {}).get('expected_tags', '')}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"write a value of the right type ({error['msg'].lower()})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"choose a value that is {error['msg'].lower().replace('input should be ', '')}"
    return ""


def _spec_problems(data: Any, lines: dict[tuple[Any, ...], int]) -> tuple[PlatformSpec | None, list[Problem]]:
    if not isinstance(data, dict):
        return None, [
            Problem(
                file=SPEC_FILE,
                path="(file)",
                message="must be a mapping with at least a 'platform' section",
                fix="start from: platform: {name: mylab, domain: science.example.org}",
            )
        ]
    try:
        return PlatformSpec.model_validate(data), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            clean = _drop_union_tags(data, loc)
            path = ".".join(str(p) for p in clean) or "(top)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "is not a known key"
            problems.append(
                Problem(
                    file=SPEC_FILE,
                    path=path,
                    value=_shorten(error.get("input")) if error["type"] != "missing" else None,
                    line=_nearest_line(lines, clean),
                    message=message,
                    fix=_fix_for(error, clean),
                )
            )
        return None, problems


def _drop_union_tags(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts a tagged union's tag into the location ("...0.native.approval"); humans
    wrote no such key, so drop every part that is the 'type' of the item the path is in."""
    clean: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        clean.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(clean)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _shorten(value: Any) -> Any:
    if isinstance(value, dict | list):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return value


# ------------------------------------------------------------------ inventory


def parse_inventory(data: Any, problems: list[Problem]) -> Inventory:
    """Read an Ansible YAML inventory (all/children/hosts/vars), resolving child groups."""
    inventory = Inventory()
    if not isinstance(data, dict) or not isinstance(data.get("all", data), dict):
        problems.append(
            Problem(
                file=HOSTS_FILE,
                path="(file)",
                message="must be an Ansible YAML inventory",
                fix="see inventories/example-site/hosts.yml for the layout (all: children: GROUP: hosts: ...)",
            )
        )
        return inventory
    direct: dict[str, set[str]] = {}
    children: dict[str, set[str]] = {}

    def visit(name: str, body: Any, path: str) -> None:
        direct.setdefault(name, set())
        children.setdefault(name, set())
        if body is None:
            return
        if not isinstance(body, dict):
            problems.append(
                Problem(
                    HOSTS_FILE,
                    path,
                    "must be a mapping with hosts:, children: or vars:",
                    _shorten(body),
                )
            )
            return
        unknown = set(body) - {"hosts", "children", "vars"}
        for key in sorted(unknown):
            problems.append(
                Problem(
                    HOSTS_FILE,
                    f"{path}.{key}",
                    "is not an inventory keyword",
                    fix="a group holds only hosts:, children: and vars:; put host names under hosts:",
                )
            )
        for host, hvars in (body.get("hosts") or {}).items():
            direct[name].add(str(host))
            merged = inventory.hostvars.setdefault(str(host), {})
            if isinstance(hvars, dict):
                merged.update(hvars)
        for child, child_body in (body.get("children") or {}).items():
            children[name].add(str(child))
            visit(str(child), child_body, f"{path}.children.{child}")

    if "all" in data:
        visit("all", data["all"], "all")
    else:
        for name, body in data.items():
            visit(str(name), body, str(name))

    def members(group: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if group in seen:
            return set()
        result = set(direct.get(group, set()))
        for child in children.get(group, set()):
            result |= members(child, seen | {group})
        return result

    for group in direct:
        inventory.groups[group] = sorted(members(group))
    return inventory


def _defaults_from(raw: Any) -> PlatformSpec:
    """A best guess at the spec when it is invalid, so group checks still run: every
    section that validates on its own is used, the others fall back to defaults."""
    sections: dict[str, Any] = {}
    raw = raw if isinstance(raw, dict) else {}
    for name, info in PlatformSpec.model_fields.items():
        model = info.annotation
        if name in ("storage", "monitoring", "compute") and isinstance(model, type):
            try:
                sections[name] = model.model_validate(raw.get(name) or {})
            except ValidationError:
                sections[name] = model()
    return PlatformSpec.model_construct(**sections)


def _inventory_problems(spec: PlatformSpec | None, inventory: Inventory, raw_spec: Any = None) -> list[Problem]:
    problems: list[Problem] = []
    if not inventory.hostvars:
        problems.append(
            Problem(
                HOSTS_FILE,
                "all",
                "lists no hosts",
                fix="add your hosts under the groups they serve",
            )
        )
        return problems
    required = (spec or _defaults_from(raw_spec)).required_groups()
    for group, reason in required.items():
        if not inventory.groups.get(group):
            problems.append(
                Problem(
                    HOSTS_FILE,
                    f"all.children.{group}",
                    f"has no hosts, but the platform needs it for {reason}",
                    fix=f"add a '{group}' group with at least one host (hosts may serve several groups)",
                )
            )
    for group, why in SINGLETON_GROUPS.items():
        hosts = inventory.groups.get(group, [])
        if len(hosts) > 1:
            problems.append(
                Problem(
                    HOSTS_FILE,
                    f"all.children.{group}",
                    f"has {len(hosts)} hosts ({', '.join(hosts)}); {why}",
                    value=hosts,
                    fix=f"keep exactly one host in '{group}'",
                )
            )
    for group in sorted(set(inventory.groups) - {"all", "ungrouped", *KNOWN_GROUPS}):
        close = difflib.get_close_matches(group, KNOWN_GROUPS, n=1, cutoff=0.75)
        if close:
            problems.append(
                Problem(
                    HOSTS_FILE,
                    f"all.children.{group}",
                    f"is not a sciplat host group, and is very like '{close[0]}'",
                    fix=f"rename it to '{close[0]}' (sciplat groups: {', '.join(KNOWN_GROUPS)})",
                )
            )
    for host, hvars in inventory.hostvars.items():
        address = hvars.get("ansible_host")
        if address is not None and not _valid_address(str(address)):
            problems.append(
                Problem(
                    HOSTS_FILE,
                    f"hosts.{host}.ansible_host",
                    "is neither an IP address nor a host name",
                    value=address,
                    fix="write the address SSH should connect to, e.g. 192.0.2.10 or node1.example.org",
                )
            )
    if spec and spec.storage.redundancy == 1 and "redundancy" in spec.storage.model_fields_set:
        problems.append(
            Problem(
                SPEC_FILE,
                "storage.redundancy",
                "keeps a single copy of every object: losing one disk loses data",
                value=1,
                fix="fine for a test bed; use 3 on real hardware",
                severity="warning",
            )
        )
    return problems


def _valid_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        labels = value.rstrip(".").split(".")
        return all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)


# ------------------------------------------------------------------ entry point


def validate_inventory_dir(inventory_dir: Path) -> Result:
    """Validate <dir>/platform.yaml and <dir>/hosts.yml; never raises for bad input."""
    problems: list[Problem] = []
    spec: PlatformSpec | None = None
    inventory: Inventory | None = None
    spec_path, hosts_path = inventory_dir / SPEC_FILE, inventory_dir / HOSTS_FILE
    raw_spec: Any = None
    if not inventory_dir.is_dir():
        problems.append(
            Problem(
                str(inventory_dir),
                "(directory)",
                "does not exist",
                fix="pass -i with an inventory directory",
            )
        )
        return Result(None, None, problems)
    if spec_path.is_file():
        raw_spec, lines = load_yaml(spec_path, problems)
        if raw_spec is not None or not problems:
            spec, spec_errors = _spec_problems(raw_spec, lines)
            problems.extend(spec_errors)
    else:
        problems.append(
            Problem(
                SPEC_FILE,
                "(file)",
                f"not found in {inventory_dir}",
                fix="create it; three lines are enough: platform: / name: mylab / domain: science.example.org",
            )
        )
    if hosts_path.is_file():
        before = len(problems)
        data, _ = load_yaml(hosts_path, problems)
        if len(problems) == before:
            inventory = parse_inventory(data, problems)
            problems.extend(_inventory_problems(spec, inventory, raw_spec))
    else:
        fix = (
            "run `sciplat testbed up` to create the test bed's hosts"
            if inventory_dir.name
            in (
                "local",
                "single-node",
            )
            else "create it: an Ansible YAML inventory with your hosts in sciplat's groups"
        )
        problems.append(Problem(HOSTS_FILE, "(file)", f"not found in {inventory_dir}", fix=fix))
    return Result(spec, inventory, problems)
