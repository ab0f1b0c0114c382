"""``python -m sciplat_hub.api --config /etc/sciplat/api/api.json``: serve the platform API.

The hub role writes the settings file (0600, root) and the unit
``sciplat-api.service`` that runs this:

    {"hub_api_url": "http://127.0.0.1:8081/hub/api",   # the hub's REST API on this host
     "api_token": "...",                                # the service's hub token (OAuth client secret)
     "listen_host": "127.0.0.1", "listen_port": 8090,
     "public_url": "https://platform.example.org",
     "cache_seconds": 60, "log_level": "INFO"}

``--openapi`` prints the OpenAPI document instead (docs/api/openapi.json is made with it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sciplat_hub.api import SERVICE_NAME
from sciplat_hub.api.app import Backends, create_app
from sciplat_hub.api.auth import HubAuth, Identity
from sciplat_hub.api.jobs import Jobs
from sciplat_hub.api.platform import Platform

DEFAULT_CONFIG = Path("/etc/sciplat/api/api.json")
log = logging.getLogger("sciplat_hub.api")


def _library(name: str) -> Any | None:
    try:
        return importlib.import_module(f"sciplat_hub.{name}")
    except ImportError as exc:
        log.warning("sciplat_hub.%s is not available (%s): its endpoints answer 503", name, exc)
        return None


def collaborations_factory(auth: HubAuth) -> Callable[[Identity], Any] | None:
    collab = _library("collab")
    if collab is None:
        return None

    def make(identity: Identity) -> Any:
        # operators are the hub's admins; no collaboration takes the name of a hub user
        return collab.Collaborations.from_host_config(
            operators={identity.name} if identity.admin else set(), user_exists=auth.user_exists
        )

    return make


def sharing_factory() -> Callable[[Identity], Any] | None:
    sharing = _library("sharing")
    if sharing is None:
        return None

    def make(identity: Identity) -> Any:
        return sharing.Sharing.from_host_config(operators={identity.name} if identity.admin else set())

    return make


def build(settings: dict[str, Any]) -> Any:
    auth = HubAuth(
        str(settings.get("hub_api_url", "http://127.0.0.1:8081/hub/api")),
        service_token=str(settings.get("api_token", "")),
        client_id=f"service-{SERVICE_NAME}",
        redirect_uri=str(settings.get("oauth_redirect_uri", "/api/oauth_callback")),
        cache_seconds=float(settings.get("cache_seconds", 60)),
    )
    backends = Backends(
        auth=auth,
        platform=Platform(),
        jobs=Jobs(),
        collaborations=collaborations_factory(auth),
        sharing=sharing_factory(),
    )
    return create_app(backends, public_url=str(settings.get("public_url", "")))


def openapi_document(public_url: str = "") -> dict[str, Any]:
    """The OpenAPI document of the app (the same on every host: no component is touched)."""
    app = create_app(Backends(auth=HubAuth("http://127.0.0.1:8081/hub/api"), platform=Platform(), jobs=Jobs()))
    document: dict[str, Any] = app.openapi()
    if public_url:
        document["servers"] = [{"url": public_url}]
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-api", description="The sciplat platform API (a JupyterHub service).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    args = parser.parse_args(argv)
    if args.openapi:
        print(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return 0
    try:
        settings = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        print(f"sciplat-api: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    level = str(settings.get("log_level", "INFO")).upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    uvicorn.run(
        build(settings),
        host=str(settings.get("listen_host", "127.0.0.1")),
        port=int(settings.get("listen_port", 8090)),
        proxy_headers=True,
        forwarded_allow_ips="*",
        log_level=level.lower(),
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
