"""The users' notebook environment (roles/notebook_env) where servers run: gw (hub), c1 and c2 (compute).

The science stack imports as an unprivileged user on every host; no user can
change the environment; a user adds a package in their home with
`pip install --user` and finds it on every host; a server the hub starts runs
the environment, and its default kernel is the environment's Python.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sciplat.commands.upgrade import load_versions
from tests.conftest import REPO
from tests.integration.conftest import INVENTORY, sciplat
from tests.integration.test_hub import (
    _anonymous_configured,
    api,
    new_approved_user,
    run_code,
    start_server,
    tutorial_sign_in,
)

PREFIX = "/opt/sciplat/notebook"
HOSTS = ["gw", "c1", "c2"]
# import names of the science stack (issue 4) and of batch notebooks
IMPORTS = ["numpy", "scipy", "pandas", "astropy", "matplotlib", "pyvo", "astroquery", "boto3", "minio", "psycopg"]
IMPORTS += ["sqlalchemy", "papermill"]
# a small pure-Python package that is not part of the environment
USER_PACKAGE = "tabulate"

_REPORT = """
import importlib, importlib.metadata as md, json, sys
for name in {imports!r}:
    importlib.import_module(name)
import psycopg
print(json.dumps({{
    "prefix": sys.prefix,
    "path": sys.path,
    "psycopg_impl": psycopg.pq.__impl__,
    "versions": {{name: md.version(name) for name in {pins!r}}},
}}))
"""


def _as(user: str, command: str, home: str = "/nonexistent") -> str:
    """COMMAND run by USER through runuser, in /tmp, with a plain login-like environment."""
    env = f"env -i HOME={shlex.quote(home)} PATH={PREFIX}/bin:/usr/bin:/bin MPLBACKEND=Agg LANG=C.UTF-8"
    return f"cd /tmp && runuser -u {shlex.quote(user)} -- {env} {command}"


@pytest.mark.parametrize("name", HOSTS)
def test_the_science_stack_imports_for_an_unprivileged_user(
    deployed: dict[str, Any], host_of: Callable[[str], Any], name: str
) -> None:
    pins = load_versions(REPO)["notebook"]
    code = _REPORT.format(imports=IMPORTS, pins=sorted(pins))
    done = host_of(name).run(_as("nobody", f"{PREFIX}/bin/python -c {shlex.quote(code)}"))
    assert done.rc == 0, f"{name}: {done.stderr[-2000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["prefix"] == PREFIX
    assert report["versions"] == {k: str(v) for k, v in pins.items()}, f"{name} does not run the pinned versions"
    assert report["psycopg_impl"] == "binary"
    assert not [p for p in report["path"] if "dist-packages" in p], f"Debian's packages leak in on {name}"


@pytest.mark.parametrize("name", HOSTS)
def test_no_user_can_change_the_environment(deployed: dict[str, Any], host_of: Callable[[str], Any], name: str) -> None:
    host = host_of(name)
    assert host.run(f"find {PREFIX} ! -user root -print -quit").stdout == "", "a file of the venv is not root's"
    assert host.run(f"find {PREFIX} -perm /022 ! -type l -print -quit").stdout == "", "group/world-writable"
    site = host.check_output(f"{PREFIX}/bin/python -c 'import numpy, os; print(os.path.dirname(numpy.__path__[0]))'")
    assert site.startswith(f"{PREFIX}/lib/")
    write = host.run(_as("nobody", f"touch {site}/numpy/__init__.py"))
    assert write.rc != 0 and "Permission denied" in write.stderr
    uninstall = host.run(_as("nobody", f"{PREFIX}/bin/pip uninstall --yes numpy"))
    assert uninstall.rc != 0, "a user removed a package of the environment"
    assert host.run(_as("nobody", f"{PREFIX}/bin/python -c 'import numpy'")).rc == 0


@pytest.mark.parametrize("name", HOSTS)
def test_the_default_kernel_is_the_environments_python(
    deployed: dict[str, Any], host_of: Callable[[str], Any], name: str
) -> None:
    host = host_of(name)
    home = host.check_output("mktemp -d /tmp/nbhome.XXXXXX")  # jupyter wants a data directory in HOME
    try:
        host.check_output(f"chown nobody {home}")
        out = host.check_output(_as("nobody", f"{PREFIX}/bin/jupyter kernelspec list --json", home=home))
    finally:
        host.run(f"rm -rf {home}")
    specs = json.loads(out)["kernelspecs"]
    assert specs["python3"]["resource_dir"] == f"{PREFIX}/share/jupyter/kernels/python3"
    assert specs["python3"]["spec"]["argv"][0] == f"{PREFIX}/bin/python"


# ------------------------------------------------------- as a signed-in user


@pytest.fixture(scope="module")
def user(deployed: dict[str, Any], ca_cert: Path) -> Iterator[dict[str, str]]:
    """A user who signed up, was approved and signed in, with an API token and a running server."""
    made = new_approved_user("nb", ca_cert)
    name, token = made["name"], made["token"]
    start_server(token, name, ca_cert, timeout=180)
    yield {"name": name, "token": token}
    api(token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)


def test_a_users_server_runs_the_environment(user: dict[str, str], ca_cert: Path) -> None:
    code = (
        "import os, sys, astropy, pandas\n"
        "print(sys.prefix)\n"
        "print(astropy.__version__, pandas.__version__)\n"
        "print(open(f'/proc/{os.getppid()}/cmdline').read().replace(chr(0), ' '))\n"
    )
    prefix, versions, server = run_code(user["token"], user["name"], code, ca_cert).strip().split("\n")
    pins = load_versions(REPO)["notebook"]
    assert prefix == PREFIX, "the kernel is not the notebook environment's Python"
    assert versions == f"{pins['astropy']} {pins['pandas']}"
    assert f"{PREFIX}/bin/jupyterhub-singleuser" in server, f"the server is not the environment's: {server}"
    specs = api(user["token"], "GET", f"/user/{user['name']}/api/kernelspecs", ca_cert).json()
    assert specs["default"] == "python3"
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == f"{PREFIX}/bin/python"


@pytest.mark.skipif(not _anonymous_configured(), reason="the bed's platform.yaml has no anonymous sign-in method")
def test_a_tutorial_users_server_runs_the_environment(deployed: dict[str, Any], ca_cert: Path) -> None:
    """Tutorial servers stay on the hub host (systemd) whatever the spawner: they run the environment too."""
    name, tutorial_token = tutorial_sign_in(ca_cert)
    try:
        start_server(tutorial_token, name, ca_cert)
        out = run_code(tutorial_token, name, "import sys, numpy\nprint(sys.prefix)\n", ca_cert)
        assert out.strip() == PREFIX
    finally:
        api(tutorial_token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)


def test_a_user_adds_a_package_in_their_home_and_finds_it_everywhere(
    user: dict[str, str], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    code = (
        "import json, subprocess, sys\n"
        f"pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '--user', '{USER_PACKAGE}'],"
        " capture_output=True, text=True)\n"
        f"where = subprocess.run([sys.executable, '-c', 'import {USER_PACKAGE}; print({USER_PACKAGE}.__file__)'],"
        " capture_output=True, text=True)\n"
        "print(json.dumps({'pip': pip.returncode, 'pip_err': pip.stderr[-800:], 'where': where.stdout.strip(),"
        " 'err': where.stderr[-800:]}))\n"
    )
    result = json.loads(run_code(user["token"], user["name"], code, ca_cert).strip().splitlines()[-1])
    assert result["pip"] == 0, result["pip_err"]
    home = host_of("gw").check_output(f"getent passwd {user['name']} | cut -d: -f6")
    assert result["where"].startswith(f"{home}/.local/lib/python3"), result
    # the home is shared: the package is there on the compute hosts, where Slurm servers run, too
    for name in HOSTS:
        command = f"{PREFIX}/bin/python -c 'import {USER_PACKAGE}; print({USER_PACKAGE}.__file__)'"
        found = host_of(name).run(_as(user["name"], command, home=home))
        assert found.rc == 0 and found.stdout.strip() == result["where"], f"{name}: {found.stderr[-500:]}"
        # ... and never inside the environment itself
        plain = host_of(name).run(f"{PREFIX}/bin/python -s -c 'import {USER_PACKAGE}'")
        assert plain.rc != 0, f"{USER_PACKAGE} landed in the environment on {name}"


def test_a_second_run_changes_nothing(deployed: dict[str, Any]) -> None:
    args = ["up", "-i", str(INVENTORY), "--tags", "notebook_env", "--limit", ",".join(HOSTS), "--json"]
    summary = json.loads(sciplat(*args).stdout)
    assert summary["ok"]
    changed = {host: stats["changed"] for host, stats in summary["hosts"].items()}
    assert changed == dict.fromkeys(HOSTS, 0), f"not idempotent: {summary['changed_tasks']}"
    check = json.loads(sciplat(*args, "--check").stdout)
    assert check["ok"] and check["changed_tasks"] == [], check["changed_tasks"]
