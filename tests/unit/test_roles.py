"""Every role's argument spec, defaults, secrets and prefix agree (DESIGN.md conventions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sciplat.secrets import declarations
from tests.conftest import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").is_file())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def main_options(role: str) -> dict[str, dict[str, Any]]:
    spec = load(REPO / "roles" / role / "meta" / "argument_specs.yml")
    assert spec, f"roles/{role}/meta/argument_specs.yml is missing or empty"
    options: dict[str, dict[str, Any]] = spec["argument_specs"]["main"].get("options", {})
    return options


def test_there_are_roles() -> None:
    assert {"common", "pki", "postgresql", "gateway"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role: str) -> None:
    options = main_options(role)
    defaults = load(REPO / "roles" / role / "defaults" / "main.yml") or {}
    with_default = {name for name, opt in options.items() if "default" in opt}
    required = {name for name, opt in options.items() if opt.get("required")}
    assert set(defaults) == with_default, (
        f"roles/{role}: defaults/main.yml and argument_specs.yml list different options: "
        f"only in defaults {sorted(set(defaults) - with_default)}, "
        f"only in argument_specs {sorted(with_default - set(defaults))}"
    )
    for name in with_default:
        assert options[name]["default"] == defaults[name], f"roles/{role}: {name} default differs"
    assert not (required & set(defaults)), f"roles/{role}: required options must not have defaults"
    for name, opt in options.items():
        assert opt.get("description"), f"roles/{role}: option {name} has no description"
        assert "default" in opt or opt.get("required"), f"roles/{role}: {name} needs a default or required: true"


@pytest.mark.parametrize("role", ROLES)
def test_variables_carry_the_role_prefix(role: str) -> None:
    for name in list(main_options(role)) + list(load(REPO / "roles" / role / "defaults" / "main.yml") or {}):
        assert name.startswith(f"{role}_"), f"roles/{role}: variable {name} lacks the '{role}_' prefix"


@pytest.mark.parametrize("role", ROLES)
def test_role_has_preflight_and_galaxy_metadata(role: str) -> None:
    base = REPO / "roles" / role
    assert (base / "tasks" / "preflight.yml").is_file(), f"roles/{role}/tasks/preflight.yml is missing"
    meta = load(base / "meta" / "main.yml")
    assert meta and meta.get("galaxy_info", {}).get("platforms"), f"roles/{role}/meta/main.yml lacks platforms"


def test_secrets_declared_by_roles_are_required_role_inputs() -> None:
    for name, declared in declarations(REPO).items():
        role_dir = declared.source.parents[1]
        if role_dir.parent.name != "roles":
            continue
        options = main_options(role_dir.name)
        assert options.get(name, {}).get("required"), (
            f"{declared.source.relative_to(REPO)} declares {name}; the role's argument spec must list it "
            "as required (it comes from the vault, never from defaults)"
        )
