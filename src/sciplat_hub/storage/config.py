"""Pick the object-storage backend this host is configured for.

The storage role of the chosen backend writes `/etc/sciplat/storage/client.json`
(0600, root) on the hosts that administer object storage (group hub):
`{"backend": "rgw" | "minio" | "aws", ...backend settings}`. `from_host_config()`
reads it and hands the settings to `sciplat_hub.storage.<backend>.from_config`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from sciplat_hub.storage.base import ObjectStore, StorageError

CONFIG_FILE = Path("/etc/sciplat/storage/client.json")
BACKENDS = ("rgw", "minio", "aws")


def load_config(path: Path = CONFIG_FILE) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise StorageError(
            f"{path} is missing: this host has no object-storage settings. They are written on the hosts of "
            "group hub by the storage backend's role; run `sciplat up` (or use a hub host)."
        ) from None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    backend = config.get("backend") if isinstance(config, dict) else config
    if backend not in BACKENDS:
        raise StorageError(f"{path}: 'backend' must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return dict(config)


def from_config(config: dict[str, Any]) -> ObjectStore:
    """The ObjectStore of config['backend'], built from the rest of config."""
    backend = config.get("backend")
    if backend not in BACKENDS:
        raise StorageError(f"unknown object-storage backend {backend!r}; use one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"sciplat_hub.storage.{backend}")
    store: ObjectStore = module.from_config(config)
    return store


def from_host_config(path: Path = CONFIG_FILE) -> ObjectStore:
    """The object store this host administers, from its client.json."""
    return from_config(load_config(path))
