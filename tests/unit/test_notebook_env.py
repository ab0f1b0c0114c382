"""The users' notebook environment (roles/notebook_env): pins, requirements, user site, the hub's cmd."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from sciplat.commands.upgrade import load_versions
from sciplat_hub import hub_config
from tests.conftest import REPO

ROLE = REPO / "roles" / "notebook_env"
# what issue 4 asks users to find in their environment, by pip distribution name
SCIENCE_STACK = [
    "numpy",
    "scipy",
    "pandas",
    "astropy",
    "matplotlib",
    "pyvo",
    "astroquery",
    "boto3",
    "minio",
    "psycopg",
    "psycopg-binary",
]
# what user servers and batch notebooks need besides
RUNTIME = ["jupyterhub", "jupyterlab", "ipykernel", "sqlalchemy", "papermill"]


def render_requirements(packages: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """templates/requirements.txt.j2 as Ansible renders it (trim_blocks), from the role's inputs."""
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string((ROLE / "templates" / "requirements.txt.j2").read_text())
    return template.render(ansible_managed="managed", __notebook_env_all_packages={**packages, **(extra or {})})


def test_the_notebook_section_pins_every_package_exactly() -> None:
    notebook = load_versions(REPO)["notebook"]
    assert set(SCIENCE_STACK + RUNTIME) <= set(notebook), sorted(set(SCIENCE_STACK + RUNTIME) - set(notebook))
    for name, version in notebook.items():
        assert re.fullmatch(r"\d+(\.\d+)+", str(version)), f"notebook.{name}: {version!r} is not an exact version"


def test_the_notebook_shares_the_pins_of_the_hub_and_the_platform_code() -> None:
    """jupyterhub-singleuser must match the hub; boto3 must stay the one Ceph 16 accepts."""
    versions = load_versions(REPO)
    notebook = versions["notebook"]
    assert notebook["jupyterhub"] == versions["hub"]["jupyterhub"]
    assert notebook["jupyterlab"] == versions["hub"]["jupyterlab"]
    for name in ("boto3", "minio", "papermill", "ipykernel", "psycopg"):
        assert notebook[name] == versions["platform_code"][name], name
    assert notebook["psycopg-binary"] == notebook["psycopg"]


def test_rendered_requirements_hold_the_whole_science_stack() -> None:
    notebook = load_versions(REPO)["notebook"]
    lines = [line for line in render_requirements(notebook).splitlines() if line and not line.startswith("#")]
    pins = dict(line.split("==", 1) for line in lines)
    assert len(pins) == len(lines), f"every line is NAME==VERSION: {lines}"
    for name in SCIENCE_STACK + RUNTIME:
        assert pins.get(name) == notebook[name], f"{name} is not pinned in the rendered requirements"
    # sorted: the file, and so the install, changes only when a pin does
    assert list(pins) == sorted(pins, key=str.lower)


def test_a_sites_extra_packages_join_the_same_resolution() -> None:
    text = render_requirements({"numpy": "2.4.6"}, {"healpy": "1.18.1", "numpy": "2.4.5"})
    assert "healpy==1.18.1\n" in text and "numpy==2.4.5\n" in text and "numpy==2.4.6" not in text


def test_the_role_reads_the_versions_file_and_the_hub_points_at_the_venv() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert "sciplat_versions.notebook" in defaults["notebook_env_packages"]
    hub = yaml.safe_load((REPO / "roles" / "hub" / "defaults" / "main.yml").read_text())
    assert hub["hub_notebook_prefix"] == defaults["notebook_env_prefix"] == hub_config.NOTEBOOK_PREFIX


def test_site_playbook_installs_the_environment_before_the_hub_where_servers_run() -> None:
    plays = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    names = [[r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])] for play in plays]
    env_play = next(i for i, roles in enumerate(names) if "notebook_env" in roles)
    hub_play = next(i for i, roles in enumerate(names) if "hub" in roles)
    assert env_play < hub_play
    assert set(plays[env_play]["hosts"].split(":")) == {"hub", "compute"}
    assert {"notebook_env", "hub"} <= set(plays[env_play]["tags"]), "--tags hub brings the environment too"


class _Config(dict):  # type: ignore[type-arg]
    """Enough of traitlets' Config: sections appear on first use, values are attributes."""

    def __getattr__(self, name: str) -> Any:
        return self.setdefault(name, _Config())

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _configure(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> _Config:
    # the spawner module needs JupyterHub; only its pre-spawn hook is referenced here
    monkeypatch.setitem(sys.modules, "sciplat_hub.hub_spawner", types.SimpleNamespace(provision_hook=object()))
    settings = {
        "prefix": "/opt/jupyterhub",
        "state_dir": "/var/lib/jupyterhub",
        "spawner": "systemd",
        "hub_port": 8081,
        "proxy_port": 8000,
        "proxy_api_port": 8001,
        "db": {"user": "u", "password": "p", "host": "h", "port": 5432, "name": "n", "sslrootcert": "/ca.crt"},
        "admin_users": [],
        "admin_token": "t",
        "authenticators": [{"type": "native"}],
        "public_url": "https://example.org",
        "profiles": [{"name": "small", "cpus": 1, "memory": 1, "default": True}],
        "named_server_limit": 3,
        "start_timeout": 120,
        "idle_timeout": 3600,
        "cull_every": 300,
        **extra,
    }
    c = _Config()
    hub_config.configure(c, settings)
    return c


def test_user_servers_run_the_notebook_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _configure(monkeypatch, notebook_prefix="/srv/nb")
    assert c.Spawner.cmd == ["/srv/nb/bin/jupyterhub-singleuser"]
    assert c.SystemdSpawner.extra_paths == ["/srv/nb/bin"], "pip and python in a terminal are the environment's"
    c = _configure(monkeypatch)
    assert c.Spawner.cmd == [f"{hub_config.NOTEBOOK_PREFIX}/bin/jupyterhub-singleuser"]
    assert not any("/opt/jupyterhub" in part for part in c.Spawner.cmd)


# ------------------------------------------------- the user site of the venv

DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv laid out as the role lays it out (without the packages)."""
    if not DEBIAN_PYTHON.is_file():
        pytest.skip("needs Debian's /usr/bin/python3")
    prefix = tmp_path_factory.mktemp("notebook") / "venv"
    subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(prefix)], check=True)
    version = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site_packages = prefix / "lib" / f"python{version}" / "site-packages"
    for name in ("_sciplat_user_site.py", "sciplat-user-site.pth"):
        shutil.copy(ROLE / "files" / name, site_packages / name)
    cfg = prefix / "pyvenv.cfg"
    cfg.write_text(
        re.sub(r"(?m)^include-system-site-packages\s*=.*$", "include-system-site-packages = true", cfg.read_text())
    )
    return prefix


def _sys_path(venv: Path, home: Path, *flags: str) -> list[str]:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin")}
    out = subprocess.run(
        [str(venv / "bin" / "python"), *flags, "-c", "import json, sys; print(json.dumps(sys.path))"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
    ).stdout
    return list(yaml.safe_load(out))


def test_debian_packages_stay_out_and_the_users_own_come_after_the_venvs(venv: Path, tmp_path: Path) -> None:
    user_site = next((venv / "lib").glob("python3.*")).name
    own = tmp_path / ".local" / "lib" / user_site / "site-packages"
    own.mkdir(parents=True)
    path = _sys_path(venv, tmp_path)
    assert not [p for p in path if "dist-packages" in p], f"Debian's packages leak into the environment: {path}"
    venv_site = next(i for i, p in enumerate(path) if p.startswith(str(venv)) and p.endswith("site-packages"))
    assert str(own) in path, "the user's site directory is on sys.path"
    assert path.index(str(own)) > venv_site, "the environment's pinned packages win over the user's"
    assert str(own) not in _sys_path(venv, tmp_path, "-s"), "python -s leaves the user's packages out"


def test_without_the_hook_the_venv_would_see_debians_packages(venv: Path, tmp_path: Path) -> None:
    """The hook is what keeps dist-packages out (include-system-site-packages is true)."""
    if not any(Path("/usr/lib/python3/dist-packages").glob("*")):
        pytest.skip("this machine has no Debian Python packages")
    bare = tmp_path / "bare"
    shutil.copytree(venv, bare, symlinks=True)
    for pth in bare.glob("lib/python3.*/site-packages/sciplat-user-site.pth"):
        pth.unlink()
    assert any("dist-packages" in p for p in _sys_path(bare, tmp_path))
