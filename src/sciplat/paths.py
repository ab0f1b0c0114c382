"""Where things are: the repository the playbooks and roles ship in."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The sciplat checkout (playbooks/, roles/). SCIPLAT_REPO overrides it."""
    if env := os.environ.get("SCIPLAT_REPO"):
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "playbooks" / "site.yml").is_file() and (parent / "roles").is_dir():
            return parent
    raise RuntimeError(
        "cannot find the sciplat repository (playbooks/site.yml); install sciplat from a "
        "checkout with `pip install -e .` or set SCIPLAT_REPO"
    )
