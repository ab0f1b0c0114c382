"""roles/minio without MinIO: its preflight and its templates, run by real ansible-playbook on
localhost (connection local; nothing outside a temporary directory is written).

MinIO cannot run here (no binary), so the service itself is not started by any test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sciplat_hub.storage import minio as backend
from tests.conftest import REPO

ROLE = REPO / "roles" / "minio"
RELEASE = "RELEASE.2025-04-22T22-12-26Z"
SECRETS = {"minio_root_password": "a-root-password-for-tests", "minio_user_key_seed": "00" * 32}


def run_play(
    tmp_path: Path, hosts: dict[str, dict[str, Any]], tasks: list[dict[str, Any]] | str, *options: str, **extra: Any
) -> Any:
    """ansible-playbook on localhost: `tasks` for hosts of group storage, or a whole playbook (text)."""
    inventory = {"all": {"children": {"storage": {"hosts": hosts}, "hub": {"hosts": {"hub1": {}}}}}}
    for host in [*hosts, "hub1"]:
        (hosts.get(host) or {}).setdefault("ansible_connection", "local")
    inventory["all"]["children"]["hub"]["hosts"]["hub1"] = {"ansible_connection": "local"}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    if isinstance(tasks, str):
        (tmp_path / "play.yml").write_text(tasks)
    else:
        play = [{"name": "minio role test", "hosts": "storage", "gather_facts": False, "tasks": tasks}]
        (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "vars.json").write_text(json.dumps({**SECRETS, **extra, "out": str(tmp_path)}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
            "-e",
            f"@{tmp_path / 'vars.json'}",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            *options,
            str(tmp_path / "play.yml"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


PREFLIGHT = [{"name": "preflight", "ansible.builtin.include_role": {"name": "minio", "tasks_from": "preflight"}}]


def test_preflight_without_a_binary_source_says_what_to_set(tmp_path: Path) -> None:
    result = run_play(tmp_path, {"s1": {}}, PREFLIGHT)
    assert result.returncode != 0
    out = result.stdout
    assert "No MinIO binary source is configured" in out
    for hint in ("minio_binary_local_path", "minio_binary_url", "minio_binary_sha256", "storage.backend ceph"):
        assert hint in out


def test_preflight_rejects_a_url_without_a_checksum_and_bad_release(tmp_path: Path) -> None:
    result = run_play(
        tmp_path,
        {"s1": {}},
        PREFLIGHT,
        minio_binary_url="https://downloads.example.org/minio",
        minio_binary_sha256="abc",
        minio_binary_release="latest",
    )
    assert result.returncode != 0
    assert "minio_binary_release must be the release the binary reports" in result.stdout
    assert "64 hex digits" in result.stdout


def test_preflight_distributed_needs_the_same_drives_everywhere(tmp_path: Path) -> None:
    binary = tmp_path / "minio"
    binary.write_text("#!/bin/sh\n")
    hosts = {"s1": {"minio_drives": ["/d1", "/d2"]}, "s2": {"minio_drives": ["/d1"]}}
    result = run_play(tmp_path, hosts, PREFLIGHT, minio_binary_local_path=str(binary), minio_binary_release=RELEASE)
    assert result.returncode != 0
    assert "each host needs the same number of drives" in result.stdout
    assert '"s1": 2' in result.stdout and '"s2": 1' in result.stdout


RENDER = [
    {
        "name": "preflight, and the role's defaults and vars into the play",
        "ansible.builtin.include_role": {"name": "minio", "tasks_from": "preflight", "public": True},
    },
    {
        "name": "render",
        "ansible.builtin.template": {
            "src": f"{ROLE}/templates/{{{{ item }}}}.j2",
            "dest": "{{ out }}/{{ inventory_hostname }}-{{ item }}",
            "mode": "0600",
        },
        "loop": ["minio.env", "minio.service"],
    },
    {
        "name": "client settings for the hub",
        "ansible.builtin.include_role": {"name": "minio", "tasks_from": "client"},
        "vars": {"__minio_client_file": "{{ out }}/client/client.json"},
        "run_once": True,
    },
]


def test_templates_distributed_erasure_coded_over_every_drive(tmp_path: Path) -> None:
    binary = tmp_path / "minio"
    binary.write_text("#!/bin/sh\n")
    hosts = {
        f"s{i}": {"ansible_host": f"10.0.0.{i}", "minio_drives": ["/srv/minio/d1", "/srv/minio/d2"]} for i in (1, 2)
    }
    result = run_play(
        tmp_path,
        hosts,
        RENDER,
        minio_binary_local_path=str(binary),
        minio_binary_release=RELEASE,
        minio_public_url="https://s3.example.org",
        minio_extra_env={"MINIO_STORAGE_CLASS_STANDARD": "EC:2"},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    env = (tmp_path / "s1-minio.env").read_text()
    assert env == (tmp_path / "s2-minio.env").read_text()  # every node the same configuration
    volumes = [f"https://10.0.0.{i}:9000/srv/minio/d{d}" for i in (1, 2) for d in (1, 2)]
    assert f'MINIO_VOLUMES="{" ".join(volumes)}"' in env.splitlines()
    assert 'MINIO_OPTS="--address :9000 --console-address :9001 --certs-dir /etc/minio/certs"' in env
    assert 'MINIO_ROOT_PASSWORD="a-root-password-for-tests"' in env
    assert 'MINIO_SERVER_URL="https://s3.example.org"' in env
    assert 'MINIO_STORAGE_CLASS_STANDARD="EC:2"' in env
    unit = (tmp_path / "s1-minio.service").read_text()
    assert "ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES" in unit
    assert "User=minio-user" in unit and "Type=notify" in unit
    assert "ReadWritePaths=/srv/minio/d1" in unit and "ReadWritePaths=/srv/minio/d2" in unit

    # What the role writes for the hub is exactly what the backend module reads.
    client = json.loads((tmp_path / "client" / "client.json").read_text())
    assert (tmp_path / "client" / "client.json").stat().st_mode & 0o777 == 0o600
    assert client["admin_endpoint"] == "https://10.0.0.1:9000"
    assert client["endpoint"] == "https://s3.example.org"
    assert client["ca_file"] == "/etc/sciplat/pki/ca.crt"
    with pytest.raises(backend.StorageError, match="platform CA"):
        backend.from_config({**client, "ca_file": str(tmp_path / "missing.crt")})
    store = backend.from_config({**client, "ca_file": ""})
    assert isinstance(store, backend.MinioObjectStore)
    assert store.credentials("alice").endpoint == "https://s3.example.org"


def test_templates_single_node_multi_drive(tmp_path: Path) -> None:
    binary = tmp_path / "minio"
    binary.write_text("#!/bin/sh\n")
    result = run_play(
        tmp_path,
        {"s1": {"minio_drives": ["/srv/minio/d1", "/srv/minio/d2", "/srv/minio/d3", "/srv/minio/d4"]}},
        RENDER,
        minio_binary_local_path=str(binary),
        minio_binary_release=RELEASE,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    env = (tmp_path / "s1-minio.env").read_text()
    assert 'MINIO_VOLUMES="/srv/minio/d1 /srv/minio/d2 /srv/minio/d3 /srv/minio/d4"' in env.splitlines()
    assert 'MINIO_SERVER_URL="https://s1:9000"' in env  # no public URL: the node itself
    client = json.loads((tmp_path / "client" / "client.json").read_text())
    assert client["admin_endpoint"] == client["endpoint"] == "https://s1:9000"
    assert "ProtectHome=true" in (tmp_path / "s1-minio.service").read_text()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """What the role's validate: runs, on the rendered unit (a stand-in executable as the
    binary, since systemd checks that ExecStart exists; only the unit is rendered)."""
    binary = tmp_path / "minio"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    drive = tmp_path / "d1"
    drive.mkdir()
    tasks = [
        {"name": "vars", "ansible.builtin.include_role": {"name": "minio", "tasks_from": "preflight", "public": True}},
        {
            "name": "render",
            "ansible.builtin.template": {
                "src": f"{ROLE}/templates/minio.service.j2",
                "dest": "{{ out }}/unit/minio.service",
                "mode": "0600",
            },
        },
    ]
    (tmp_path / "unit").mkdir()
    result = run_play(
        tmp_path,
        {"s1": {"minio_drives": [str(drive)]}},
        tasks,
        minio_binary_local_path=str(binary),
        minio_binary_release=RELEASE,
        __minio_binary=str(binary),
        minio_user="root",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    unit = tmp_path / "unit" / "minio.service"
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert f"ExecStart={binary} server" in unit.read_text()


@pytest.mark.parametrize("path", sorted((ROLE / "tasks").glob("*.yml")), ids=lambda p: p.name)
def test_task_files_parse(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), list)


SITE_PLAYS = """
- name: MinIO object storage (storage.backend minio)
  hosts: storage
  gather_facts: false
  roles:
    - role: minio
      when: sciplat_storage_backend | default('ceph') == 'minio'

- name: MinIO admin settings for the hub (storage.backend minio)
  hosts: hub
  gather_facts: false
  tasks:
    - name: /etc/sciplat/storage/client.json
      ansible.builtin.include_role:
        name: minio
        tasks_from: client
      when: sciplat_storage_backend | default('ceph') == 'minio'
"""


@pytest.mark.parametrize("backend", ["ceph", "minio"])
def test_site_plays_in_check_mode(tmp_path: Path, backend: str) -> None:
    """The plays docs/roles/minio.md gives for site.yml, in check mode against this machine
    as a new host (no MinIO, no pki files; check mode changes nothing): with another
    backend they skip everything (no binary needed); with minio the whole role and the
    hub's client settings run without failing."""
    extra: dict[str, Any] = {"sciplat_storage_backend": backend}
    if backend == "minio":
        binary = tmp_path / "minio"
        binary.write_text("#!/bin/sh\n")
        extra |= {"minio_binary_local_path": str(binary), "minio_binary_release": RELEASE}
    result = run_play(tmp_path, {"s1": {"minio_drives": [str(tmp_path / "d1")]}}, SITE_PLAYS, "--check", **extra)
    assert result.returncode == 0, result.stdout[-3000:]
    recap = result.stdout[result.stdout.rindex("PLAY RECAP") :]
    assert "failed=0" in recap
    if backend == "ceph":
        assert "changed=0" in recap and "ok=0" in recap.split("s1")[1].split("\n")[0]
    else:
        assert "Client | Storage admin settings" in result.stdout
        assert not (tmp_path / "d1").exists()  # check mode wrote nothing
        assert "a-root-password-for-tests" not in result.stdout  # no_log on the secrets
