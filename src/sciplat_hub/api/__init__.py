"""The platform API: a JupyterHub service at ``/api/`` (FastAPI under uvicorn).

It runs on the hub host(s) as root, in the platform_code venv, as the systemd
unit ``sciplat-api.service`` that the hub role writes; the gateway publishes it
at ``https://HOST/api/``. Every request carries a JupyterHub API token
(``Authorization: token …`` or ``Bearer …``) or the service's OAuth cookie
(browsers, after ``/api/oauth_login``); the hub says whose token it is and which
scopes it holds (`sciplat_hub.api.auth`). What the endpoints do is in
`sciplat_hub.api.app`; the OpenAPI document is ``GET /api/openapi.json`` and
``docs/api/openapi.json`` in the repository.

Blocking work (radosgw admin, PostgreSQL, LDAP, Slurm commands) runs in a thread
pool, so one user's slow request never holds up another's.
"""

from __future__ import annotations

SERVICE_NAME = "sciplat-api"
SCOPE_READ = "custom:platform:read"
SCOPE_CREDENTIALS = "custom:platform:credentials"
SCOPE_GROUPS = "custom:platform:groups"
SCOPE_SHARES = "custom:platform:shares"
SCOPE_JOBS = "custom:platform:jobs"

# JupyterHub custom scopes (c.JupyterHub.custom_scopes); every user holds them
# through the default `user` role (sciplat_hub.hub_config).
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    SCOPE_READ: {
        "description": "Read your profile, quotas, usage, groups, shares and allocations in the platform API."
    },
    SCOPE_CREDENTIALS: {"description": "Read your S3 and MyDB credentials from the platform API."},
    SCOPE_GROUPS: {"description": "Create, change and delete collaborations (groups) and their members."},
    SCOPE_SHARES: {"description": "Share files, bucket prefixes and tables, and stop sharing them."},
    SCOPE_JOBS: {"description": "Submit, list, read and cancel your batch jobs through the platform API."},
}
