"""The hub's JupyterHub configuration (sciplat_hub.hub_config) and its spec/render side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat_hub import hub_config

SETTINGS: dict[str, Any] = {
    "prefix": "/opt/jupyterhub",
    "idle_timeout": 3600,
    "cull_every": 300,
    "max_age": 0,
    "admin_token": "t0k",
    "authenticators": [{"type": "native"}],
}


def test_db_url_quotes_the_password_and_verifies_tls() -> None:
    url = hub_config.db_url(
        {
            "user": "jupyterhub",
            "password": "p@ss/w:rd%",
            "host": "10.0.0.2",
            "port": 5432,
            "name": "jupyterhub",
            "sslrootcert": "/etc/sciplat/pki/ca.crt",
        }
    )
    assert url.startswith("postgresql+psycopg2://jupyterhub:p%40ss%2Fw%3Ard%25@10.0.0.2:5432/jupyterhub?")
    assert "sslmode=verify-full" in url and "sslrootcert=/etc/sciplat/pki/ca.crt" in url


def test_culler_and_admin_service_have_only_their_scopes() -> None:
    services, roles = hub_config.services(SETTINGS)
    names = [s["name"] for s in services]
    assert names == ["idle-culler", "sciplat-admin"]
    assert "--timeout=3600" in services[0]["command"] and "--cull-every=300" in services[0]["command"]
    culler = next(r for r in roles if r["name"] == "idle-culler")
    assert "admin:users" not in culler["scopes"]
    services, roles = hub_config.services(
        {**SETTINGS, "max_age": 7200, "authenticators": [{"type": "anonymous", "lifetime": 900}]}
    )
    assert "--max-age=7200" in services[0]["command"]
    assert any(s["name"] == "tutorial-reaper" and "--lifetime=900" in s["command"] for s in services)


def _spec(identity: dict[str, Any]) -> PlatformSpec:
    return PlatformSpec.model_validate(
        {"platform": {"name": "hubtest", "domain": "t.example.org"}, "identity": identity}
    )


def test_identity_renders_into_hub_variables(tmp_path: Path) -> None:
    spec = _spec(
        {
            "admin_users": ["admin"],
            "authenticators": [
                {"type": "native", "approval": "open"},
                {"type": "oidc", "name": "CILogon", "issuer": "https://cilogon.org", "client_id": "cid"},
                {"type": "anonymous", "lifetime": "30m"},
            ],
        }
    )
    values = role_vars(spec, tmp_path)
    assert values["hub_admin_users"] == ["admin"]
    kinds = [a["type"] for a in values["hub_authenticators"]]
    assert kinds == ["native", "oidc", "anonymous"]
    assert values["hub_authenticators"][2]["lifetime"] == 1800
    assert values["hub_profiles"][0]["name"] == "small" and values["hub_profiles"][0]["memory"] == 2 * 1024**3
    assert values["hub_provision_settings"]["home_quota"] == 50 * 1024**3


@pytest.mark.parametrize(
    ("authenticators", "fragment"),
    [
        ([{"type": "native"}, {"type": "native"}], "type native 2 times"),
        ([], "at least one sign-in method"),
        (
            [
                {"type": "oidc", "name": "A", "issuer": "https://a.example", "client_id": "x"},
                {"type": "oidc", "name": "a", "issuer": "https://b.example", "client_id": "y"},
            ],
            "names must be unique",
        ),
        ([{"type": "github", "client_id": "x", "username_prefix": "GH_"}], "not a valid user name prefix"),
    ],
)
def test_bad_identity_is_refused_with_a_fix(authenticators: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        _spec({"authenticators": authenticators})
