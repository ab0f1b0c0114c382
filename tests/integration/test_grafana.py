"""The grafana role on the test bed, without Grafana's real repository (which
these machines cannot reach): a stand-in `grafana` package in a signed apt
repository made here (gpg, dpkg-deb) and served from a file:// URL on the
monitor host. The role must install it through its apt source and signing
key, write its settings, provision the datasource and every dashboard, start
grafana-server.service, and change nothing on a second run. Everything is
removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import INVENTORY, sciplat
from tests.unit.test_dashboards import DASHBOARDS

MONITOR = "gw"
REPO_DIR = "/srv/sciplat-test-grafana"

CONTROL = """Package: grafana
Version: 11.0.0
Architecture: all
Maintainer: sciplat tests <tests@example.org>
Depends: python3, adduser
Description: stand-in for Grafana in the grafana role's test
"""
POSTINST = """#!/bin/sh
set -e
getent group grafana >/dev/null || addgroup --system grafana
getent passwd grafana >/dev/null || adduser --system --ingroup grafana --home /var/lib/grafana grafana
mkdir -p /var/lib/grafana && chown grafana:grafana /var/lib/grafana
"""
# Listens where grafana.ini says and answers with the provisioned files it can read.
SERVER = """#!/usr/bin/python3
import configparser, http.server, json, os
cfg = configparser.ConfigParser(interpolation=None)
cfg.read("/etc/grafana/grafana.ini")
addr, port = cfg.get("server", "http_addr"), cfg.getint("server", "http_port")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = {}
        for top in ("/etc/grafana/provisioning", "/var/lib/grafana/dashboards"):
            for d, _, names in os.walk(top):
                for n in names:
                    with open(os.path.join(d, n)) as f:
                        found[os.path.join(d, n)] = f.read()
        body = json.dumps(found).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((addr, port), H).serve_forever()
"""
UNIT = """[Unit]
Description=stand-in Grafana
[Service]
User=grafana
ExecStart=/usr/sbin/grafana-server
[Install]
WantedBy=multi-user.target
"""


def build_repository(work: Path) -> tuple[Path, Path]:
    """A flat apt repository with the stand-in package, signed; returns (repo dir, key file)."""
    pkg, repo = work / "pkg", work / "repo"
    for sub, name, text, mode in (
        ("DEBIAN", "control", CONTROL, 0o644),
        ("DEBIAN", "postinst", POSTINST, 0o755),
        ("usr/sbin", "grafana-server", SERVER, 0o755),
        ("lib/systemd/system", "grafana-server.service", UNIT, 0o644),
    ):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / name).write_text(text)
        (pkg / sub / name).chmod(mode)
    repo.mkdir()
    deb = repo / "grafana_11.0.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    data = deb.read_bytes()
    packages = CONTROL + f"Filename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
    (repo / "Packages").write_text(packages)
    digest = hashlib.sha256(packages.encode()).hexdigest()
    (repo / "Release").write_text(f"Suite: ./\nSHA256:\n {digest} {len(packages.encode())} Packages\n")
    env = {**os.environ, "GNUPGHOME": str(work / "gnupg")}
    (work / "gnupg").mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--quick-gen-key", "sciplat test <tests@example.org>", "ed25519", "sign", "never"],
        env=env,
        check=True,
        capture_output=True,
    )
    key = work / "key.asc"
    key.write_bytes(subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    subprocess.run(
        [*gpg, "--yes", "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")],
        env=env,
        check=True,
        capture_output=True,
    )
    return repo, key


@pytest.fixture
def grafana_repository(tmp_path: Path, host_of: Callable[[str], Any]) -> Iterator[Path]:
    if not (shutil.which("gpg") and shutil.which("dpkg-deb")):
        pytest.skip("needs gpg and dpkg-deb on this machine")
    repo, key = build_repository(tmp_path)
    ssh_config = INVENTORY / ".sciplat" / "ssh_config"
    monitor = host_of(MONITOR)
    monitor.run(f"rm -rf {REPO_DIR}")
    subprocess.run(["scp", "-q", "-r", "-F", str(ssh_config), str(repo), f"{MONITOR}:{REPO_DIR}"], check=True)
    try:
        yield key
    finally:
        monitor.run(
            "systemctl stop grafana-server; apt-get purge -y -q grafana >/dev/null; "
            f"rm -rf {REPO_DIR} /etc/apt/sources.list.d/sciplat-grafana.list /etc/apt/keyrings/sciplat-grafana.asc "
            "/etc/grafana /var/lib/grafana /var/lib/apt/lists/_srv_sciplat-test-grafana_*"
        )


@pytest.mark.destructive
def test_grafana_role_installs_from_the_configured_repository(
    host_of: Callable[[str], Any], grafana_repository: Path
) -> None:
    settings = json.dumps(
        {
            "grafana_enabled": True,
            "grafana_apt_repository": f"file://{REPO_DIR} ./",
            "grafana_apt_key_file": str(grafana_repository),
        }
    )
    sciplat("up", "-i", str(INVENTORY), "--tags", "grafana", "--extra-vars", settings)
    monitor = host_of(MONITOR)
    assert monitor.package("grafana").is_installed
    assert monitor.service("grafana-server.service").is_running
    assert monitor.service("grafana-server.service").is_enabled
    source = monitor.file("/etc/apt/sources.list.d/sciplat-grafana.list").content_string
    assert source.strip() == f"deb [signed-by=/etc/apt/keyrings/sciplat-grafana.asc] file://{REPO_DIR} ./"
    ini = monitor.file("/etc/grafana/grafana.ini")
    assert ini.mode == 0o640 and ini.group == "grafana"
    assert "allow_sign_up = false" in ini.content_string
    # Grafana (here its stand-in) reads what the role provisioned
    assert monitor.socket("tcp://127.0.0.1:3000").is_listening
    assert not monitor.socket("tcp://0.0.0.0:3000").is_listening
    served = json.loads(monitor.check_output("curl -fsS --max-time 5 http://127.0.0.1:3000/"))
    datasource = served["/etc/grafana/provisioning/datasources/sciplat.yml"]
    assert "uid: sciplat-prometheus" in datasource and "http://127.0.0.1:9090" in datasource
    shipped = {p.name: json.loads(p.read_text()) for p in DASHBOARDS}
    provisioned = {
        Path(path).name: json.loads(text) for path, text in served.items() if path.startswith("/var/lib/grafana/")
    }
    assert provisioned == shipped
    # a second run changes nothing
    sciplat("up", "-i", str(INVENTORY), "--tags", "grafana", "--extra-vars", settings)
    last = json.loads((INVENTORY / ".sciplat" / "last-run.json").read_text())
    assert last["ok"] and not last["changed_tasks"], last["changed_tasks"]
