"""JupyterHub's configuration, from the settings the hub role renders.

``/etc/jupyterhub/jupyterhub_config.py`` reads ``/etc/jupyterhub/sciplat.json``
(0600) and calls `configure`. Secrets that JupyterHub reads from its
environment (JPY_COOKIE_SECRET, JUPYTERHUB_CRYPT_KEY, CONFIGPROXY_AUTH_TOKEN)
come from the unit's EnvironmentFile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from sciplat_hub.api import CUSTOM_SCOPES
from sciplat_hub.api import SERVICE_NAME as API_SERVICE

TEMPLATES = Path(__file__).with_name("hub_templates")
ADMIN_SERVICE = "sciplat-admin"
# the synthetic user (sciplat_hub.probe): a hub service that may only create the
# bot user of that name and issue tokens for it
PROBE_SERVICE = PROBE_USER = "sciplat-probe"
# the users' notebook environment (roles/notebook_env, hub_notebook_prefix):
# every user server runs its jupyterhub-singleuser and its python3 kernel
NOTEBOOK_PREFIX = "/opt/sciplat/notebook"
# hub_spawner: where users' servers run (sciplat_hub.hub_spawner)
SPAWNERS = {
    "systemd": "sciplat_hub.hub_spawner.SciplatSystemdSpawner",
    "slurm": "sciplat_hub.hub_spawner.SciplatSlurmSpawner",
}


def db_url(db: dict[str, Any]) -> str:
    """SQLAlchemy URL of the hub's database: TLS verified against the platform CA."""
    return (
        f"postgresql+psycopg2://{quote(str(db['user']), safe='')}:{quote(str(db['password']), safe='')}"
        f"@{db['host']}:{int(db['port'])}/{quote(str(db['name']), safe='')}"
        f"?sslmode=verify-full&sslrootcert={quote(str(db['sslrootcert']))}"
    )


def culler_command(settings: dict[str, Any]) -> list[str]:
    command = [
        f"{settings['prefix']}/bin/python",
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={int(settings['idle_timeout'])}",
        f"--cull-every={int(settings['cull_every'])}",
    ]
    if int(settings.get("max_age", 0)) > 0:
        command.append(f"--max-age={int(settings['max_age'])}")
    return command


def services(settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The hub's services and the roles that grant them their scopes."""
    svc: list[dict[str, Any]] = [
        {"name": "idle-culler", "command": culler_command(settings)},
        {"name": ADMIN_SERVICE, "api_token": settings["admin_token"]},
    ]
    roles: list[dict[str, Any]] = [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        },
        {
            "name": ADMIN_SERVICE,
            "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users"],
            "services": [ADMIN_SERVICE],
        },
    ]
    if settings.get("metrics_token"):
        # Prometheus scrapes /hub/metrics with this token (declared by the monitor role)
        svc.append({"name": "sciplat-monitor", "api_token": settings["metrics_token"]})
        roles.append({"name": "sciplat-metrics", "scopes": ["read:metrics"], "services": ["sciplat-monitor"]})
    if settings.get("probe_token"):
        svc.append({"name": PROBE_SERVICE, "api_token": settings["probe_token"]})
        roles.append(
            {
                "name": PROBE_SERVICE,
                "scopes": [f"admin:users!user={PROBE_USER}", f"tokens!user={PROBE_USER}"],
                "services": [PROBE_SERVICE],
            }
        )
    if settings.get("api_token"):
        # the platform API (sciplat_hub.api, its own systemd unit): an external service
        # at /api/ that browsers sign in to with OAuth; it checks callers' tokens with
        # GET /hub/api/user (no scope of its own), and whether a name is a hub user's
        # (no collaboration takes it) with read:users:name
        svc.append(
            {
                "name": API_SERVICE,
                "api_token": settings["api_token"],
                "oauth_redirect_uri": "/api/oauth_callback",
                "oauth_client_allowed_scopes": sorted(CUSTOM_SCOPES),
                "oauth_no_confirm": True,
                "display": False,
            }
        )
        roles.append({"name": API_SERVICE, "scopes": ["read:users:name"], "services": [API_SERVICE]})
    tutorial = next((m for m in settings["authenticators"] if m.get("type") == "anonymous"), None)
    if tutorial is not None:
        svc.append(
            {
                "name": "tutorial-reaper",
                "command": [
                    f"{settings['prefix']}/bin/python",
                    "-m",
                    "sciplat_hub.hub_tutorial",
                    f"--lifetime={int(tutorial.get('lifetime', 3600))}",
                ],
            }
        )
        roles.append(
            {
                "name": "tutorial-reaper",
                "scopes": ["list:users", "read:users", "admin:users", "admin:servers"],
                "services": ["tutorial-reaper"],
            }
        )
    return svc, roles


def configure(c: Any, settings: dict[str, Any]) -> None:
    notebook = str(settings.get("notebook_prefix") or NOTEBOOK_PREFIX)
    hub = c.JupyterHub
    hub.bind_url = f"http://:{int(settings['proxy_port'])}"
    hub.hub_bind_url = f"http://127.0.0.1:{int(settings['hub_port'])}"
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(settings['proxy_api_port'])}"
    hub.db_url = db_url(settings["db"])
    hub.cookie_secret_file = f"{settings['state_dir']}/jupyterhub_cookie_secret"
    hub.pid_file = f"{settings['state_dir']}/jupyterhub.pid"
    # servers outlive a hub restart (a new configuration, an upgrade)
    hub.cleanup_servers = False
    hub.log_level = settings.get("log_level", "INFO")
    hub.template_paths = [str(TEMPLATES)]
    hub.template_vars = {"platform_name": settings.get("platform_name", "sciplat")}
    hub.allow_named_servers = True
    hub.named_server_limit_per_user = int(settings["named_server_limit"])
    hub.redirect_to_server = False
    # the platform page: my quotas, groups and shares (tornado imports the handler by name);
    # it calls the platform API on this host
    api_url = str(settings.get("api_url") or f"http://127.0.0.1:{int(settings.get('api_port', 8090))}")
    hub.extra_handlers = [(r"/platform/?", "sciplat_hub.hub_platform_page.PlatformPageHandler", {"api_url": api_url})]
    hub.services, hub.load_roles = services(settings)
    if settings.get("api_token"):
        # the platform API's scopes; every user holds them (tokens made with fewer are refused there)
        hub.custom_scopes = CUSTOM_SCOPES
        # (access:services!service=...: a browser may sign in to the API through the hub's OAuth)
        hub.load_roles = [
            *hub.load_roles,
            {"name": "user", "scopes": ["self", f"access:services!service={API_SERVICE}", *sorted(CUSTOM_SCOPES)]},
        ]

    hub.authenticator_class = "sciplat_hub.hub_auth.SciplatAuthenticator"
    c.Authenticator.admin_users = set(settings["admin_users"])
    c.Authenticator.enable_auth_state = True
    c.SciplatAuthenticator.methods = settings["authenticators"]
    c.SciplatAuthenticator.oauth_client_secrets = settings.get("oauth_client_secrets", {})
    c.SciplatAuthenticator.public_url = settings["public_url"]

    kind = settings.get("spawner", "systemd")
    if kind not in SPAWNERS:
        raise ValueError(f"spawner {kind!r} is not supported by this hub; use one of: {', '.join(SPAWNERS)}")
    hub.spawner_class = SPAWNERS[kind]
    from sciplat_hub.hub_spawner import provision_hook

    spawner = c.Spawner
    spawner.cmd = [f"{notebook}/bin/jupyterhub-singleuser"]
    spawner.default_url = "/lab"
    spawner.start_timeout = int(settings["start_timeout"])
    spawner.http_timeout = int(settings["start_timeout"])
    spawner.environment = {str(k): str(v) for k, v in (settings.get("user_environment") or {}).items()}
    # sciplat_client and curl in a notebook find the platform API here (docs/collaborations.md)
    spawner.environment.setdefault("SCIPLAT_URL", str(settings["public_url"]).rstrip("/"))
    spawner.pre_spawn_hook = provision_hook
    if settings.get("api_token"):
        # a server's own JUPYTERHUB_API_TOKEN also reaches the platform API (sciplat-client
        # in a notebook): JupyterHub's server role plus the platform scopes the user holds
        spawner.server_token_scopes = ["users:activity!user", "access:servers!server", *sorted(CUSTOM_SCOPES)]
    c.SystemdSpawner.isolate_tmp = True
    c.SystemdSpawner.disable_user_sudo = True
    c.SystemdSpawner.default_shell = "/bin/bash"
    c.SystemdSpawner.extra_paths = [f"{notebook}/bin"]
    c.SciplatSystemdSpawner.profiles = settings["profiles"]
    tutorial = next((m for m in settings["authenticators"] if m.get("type") == "anonymous"), None)
    c.SciplatSystemdSpawner.tutorial = dict(tutorial or {})
    provision = settings.get("provision") or {}
    c.SciplatSystemdSpawner.provision_python = provision.get("python", "/opt/sciplat/venv/bin/python")
    c.SciplatSystemdSpawner.provision_timeout = int(provision.get("timeout", 120))
    if kind == "slurm":
        configure_slurm(c, settings)


def configure_slurm(c: Any, settings: dict[str, Any]) -> None:
    """Servers as Slurm jobs: the compute nodes reach the hub's API, the proxy reaches the nodes.

    The hub listens on every address (the firewall admits the compute hosts
    only); the proxy and the hub's services keep talking to it on loopback.
    """
    slurm = settings["slurm"]
    port = int(settings["hub_port"])
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{port}"
    c.JupyterHub.hub_connect_url = f"http://127.0.0.1:{port}"
    spawner = c.SciplatSlurmSpawner
    spawner.hub_connect_url = f"http://{slurm['hub_address']}:{port}"
    spawner.slurm_partition = str(slurm["partition"])
    spawner.slurm_time_limit = int(slurm["time_limit"])
    spawner.slurm_port_range = str(slurm["port_range"])
    spawner.notebook_prefix = str(settings.get("notebook_prefix") or NOTEBOOK_PREFIX)
