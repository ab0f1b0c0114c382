"""Unit tests of the pure parts of the test bed (no podman, no network)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from sciplat import testbed

REPO = Path(__file__).resolve().parents[2]
MIRROR = "http://mirror.example.test/debian"
SECURITY = "http://mirror.example.test/debian-security"

LOCAL = """
name: demo
network: {name: sciplat-demo, subnet: 10.213.99.0/24}
hosts:
  gw:
    ip: 10.213.99.10
    groups: [gateway, hub, monitor]
    publish: ["127.0.0.1:8443:443"]
    cap_add: [net_admin]
  data:
    ip: 10.213.99.11
    groups: [directory, db, storage, slurm_controller]
    devices: [/dev/fuse]
    cap_add: [CAP_SYS_ADMIN, NET_ADMIN]
  c1: {ip: 10.213.99.12, groups: [compute]}
  spare: {ip: 10.213.99.20}
"""


def spec_from(text: str) -> testbed.TestbedSpec:
    return testbed.parse_spec(text, source=Path("testbed.yml"), default_name="dirname")


# --------------------------------------------------------------------------- testbed.yml


@pytest.mark.parametrize("inventory", ["local", "single-node"])
def test_committed_testbed_files_are_valid(inventory: str) -> None:
    spec = testbed.load_spec(REPO / "inventories" / inventory)
    assert spec.hosts
    for host in spec.hosts.values():
        assert "NET_ADMIN" in host.cap_add
        for item in host.publish:
            assert item.startswith("127.0.0.1:")


def test_local_bed_matches_the_development_contract() -> None:
    spec = testbed.load_spec(REPO / "inventories" / "local")
    assert spec.name == "local"
    assert spec.network.name == "sciplat-local"
    assert str(spec.network.subnet) == "10.213.42.0/24"
    assert {name: str(h.ip) for name, h in spec.hosts.items()} == {
        "gw": "10.213.42.10",
        "data": "10.213.42.11",
        "c1": "10.213.42.12",
        "c2": "10.213.42.13",
    }
    assert spec.groups() == {
        "gateway": ["gw"],
        "hub": ["gw"],
        "monitor": ["gw"],
        "directory": ["data"],
        "db": ["data"],
        "storage": ["data"],
        "slurm_controller": ["data"],
        "compute": ["c1", "c2"],
    }
    assert spec.hosts["gw"].publish == ["127.0.0.1:8443:443", "127.0.0.1:8080:80"]
    assert spec.container("gw") == "sciplat-local-gw"


def test_single_node_has_every_group_on_one_host() -> None:
    spec = testbed.load_spec(REPO / "inventories" / "single-node")
    assert list(spec.hosts) == ["node"]
    assert set(spec.hosts["node"].groups) == {
        "gateway",
        "hub",
        "directory",
        "db",
        "storage",
        "monitor",
        "slurm_controller",
        "compute",
    }
    assert str(spec.network.subnet) == "10.213.43.0/24"
    assert spec.network.name == "sciplat-single"
    assert spec.hosts["node"].publish == ["127.0.0.1:9443:443"]


def test_parse_normalises_capabilities_and_defaults() -> None:
    spec = spec_from(LOCAL)
    assert spec.hosts["gw"].cap_add == ["NET_ADMIN"]
    assert spec.hosts["data"].cap_add == ["SYS_ADMIN", "NET_ADMIN"]
    assert spec.hosts["data"].devices == ["/dev/fuse"]
    assert spec.hosts["spare"].groups == []
    assert spec.hosts["c1"].shm_size == "512m"


def test_name_defaults_to_directory_name() -> None:
    text = "network: {name: n, subnet: 10.1.2.0/24}\nhosts: {h: {ip: 10.1.2.5}}\n"
    assert spec_from(text).name == "dirname"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("gw", "ip", "10.213.98.10"), "not in the subnet"),
        (("gw", "ip", "10.213.99.1"), "reserved"),
        (("gw", "ip", "10.213.99.11"), "already the address of host data"),
        (("gw", "ip", "not-an-ip"), "hosts.gw.ip"),
        (("gw", "publish", ["0.0.0.0:8443:443"]), "loopback only"),
        (("gw", "publish", ["8443:443"]), "HOST_IP:HOST_PORT:CONTAINER_PORT"),
        (("gw", "publish", ["127.0.0.1:70000:443"]), "between 1 and 65535"),
        (("gw", "devices", ["fuse"]), "under /dev"),
        (("gw", "cap_add", ["net admin"]), "capability"),
        (("gw", "groups", ["Gateway"]), "not a valid Ansible group name"),
        (("gw", "shm_size", "lots"), "shm_size"),
        (("gw", "colour", "blue"), "hosts.gw.colour"),
    ],
)
def test_invalid_host_fields_are_named(change: tuple[str, str, object], expected: str) -> None:
    data = yaml.safe_load(LOCAL)
    host, key, value = change
    data["hosts"][host][key] = value
    with pytest.raises(testbed.TestbedError) as err:
        spec_from(yaml.safe_dump(data))
    assert expected in str(err.value)
    assert "testbed.yml" in str(err.value)


def test_duplicate_published_port_is_refused() -> None:
    data = yaml.safe_load(LOCAL)
    data["hosts"]["c1"]["publish"] = ["127.0.0.1:8443:8443"]
    with pytest.raises(testbed.TestbedError, match="already publishes"):
        spec_from(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "expected a mapping"),
        ("hosts: {}\nnetwork: {name: n, subnet: 10.1.2.0/24}", "hosts"),
        ("hosts: {a: {ip: 10.1.2.5}}\nnetwork: {name: n, subnet: 10.1.2.0/30}", "too small"),
        ("hosts: {a: {ip: 8.8.8.10}}\nnetwork: {name: n, subnet: 8.8.8.0/24}", "private"),
        ("hosts: {A_1: {ip: 10.1.2.5}}\nnetwork: {name: n, subnet: 10.1.2.0/24}", "host name"),
        ("hosts: {a: {ip: 10.1.2.5}}\nnetwork: {name: n, subnet: 10.1.2.0/24}\nname: X", "name"),
        ("hosts: {a: {ip: 10.1.2.5}}\n", "network"),
        ("hosts: [a\n", "not valid YAML"),
    ],
)
def test_invalid_bed_is_refused(text: str, expected: str) -> None:
    with pytest.raises(testbed.TestbedError, match=expected):
        spec_from(text)


def test_missing_testbed_yml(tmp_path: Path) -> None:
    with pytest.raises(testbed.TestbedError, match=r"testbed\.yml"):
        testbed.load_spec(tmp_path)


# --------------------------------------------------------------------------- rendering


def test_hosts_yml_is_an_ansible_inventory(tmp_path: Path) -> None:
    spec = spec_from(LOCAL)
    key = tmp_path / ".sciplat" / "ssh" / "id_ed25519"
    known = tmp_path / ".sciplat" / "ssh" / "known_hosts"
    text = testbed.render_hosts_yml(spec, key, known)
    assert text.startswith("# Generated by `sciplat testbed up`")
    data = yaml.safe_load(text)
    hosts = data["all"]["hosts"]
    assert list(hosts) == ["gw", "data", "c1", "spare"]
    gw = hosts["gw"]
    assert gw["ansible_host"] == "10.213.99.10"
    assert gw["ansible_user"] == "root"
    assert gw["ansible_ssh_private_key_file"] == str(key)
    assert Path(gw["ansible_ssh_private_key_file"]).is_absolute()
    assert f"UserKnownHostsFile={known}" in gw["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in gw["ansible_ssh_common_args"]
    children = data["all"]["children"]
    assert list(children["compute"]["hosts"]) == ["c1"]
    assert list(children["gateway"]["hosts"]) == ["gw"]
    assert set(children) == {
        "gateway",
        "hub",
        "monitor",
        "directory",
        "db",
        "storage",
        "slurm_controller",
        "compute",
    }


def test_hosts_yml_parses_with_ansible(tmp_path: Path) -> None:
    pytest.importorskip("ansible")
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    spec = spec_from(LOCAL)
    path = tmp_path / "hosts.yml"
    path.write_text(testbed.render_hosts_yml(spec, tmp_path / "k", tmp_path / "kh"))
    inventory = InventoryManager(loader=DataLoader(), sources=[str(path)])
    assert sorted(h.name for h in inventory.get_hosts("compute")) == ["c1"]
    assert sorted(h.name for h in inventory.get_hosts("storage")) == ["data"]
    assert inventory.get_host("gw").vars["ansible_host"] == "10.213.99.10"
    assert len(inventory.get_hosts("all")) == 4


def test_ssh_config_has_an_alias_per_host(tmp_path: Path) -> None:
    spec = spec_from(LOCAL)
    key = tmp_path / "with space" / "id_ed25519"
    known = tmp_path / "with space" / "known_hosts"
    text = testbed.render_ssh_config(spec, key, known)
    blocks = {b.splitlines()[0]: b for b in text.split("\n\n") if b.startswith("Host ")}
    assert set(blocks) == {"Host gw", "Host data", "Host c1", "Host spare"}
    gw = blocks["Host gw"]
    assert "HostName 10.213.99.10" in gw
    assert "User root" in gw
    assert f'IdentityFile "{key}"' in gw
    assert f'UserKnownHostsFile "{known}"' in gw
    assert "StrictHostKeyChecking yes" in gw


def test_run_args_carry_address_labels_caps_devices_and_caches() -> None:
    spec = spec_from(LOCAL)
    args = testbed._run_args(spec, "data", "localhost/sciplat-testbed:bookworm-abc")
    joined = " ".join(args)
    assert args[-2:] == ["localhost/sciplat-testbed:bookworm-abc", "/sbin/init"]
    assert "--name sciplat-demo-data" in joined
    assert "--hostname data" in joined
    assert "--ip 10.213.99.11" in joined
    assert "--network sciplat-demo" in joined
    assert "--label io.sciplat.testbed=demo" in joined
    assert "--systemd=always" in args
    assert "--ulimit nofile=16384:16384" in joined
    assert "--cap-add SYS_ADMIN" in joined
    assert "--device /dev/fuse" in joined
    assert "/var/cache/sciplat-testbed/demo-data/apt:/var/cache/apt/archives" in joined
    assert "/var/cache/sciplat-testbed/demo-data/pip:/root/.cache/pip" in joined
    assert "--add-host gw:10.213.99.10" in joined
    assert "--add-host data:" not in joined
    gw = testbed._run_args(spec, "gw", "img")
    assert "--publish 127.0.0.1:8443:443" in " ".join(gw)


def test_config_digest_changes_with_the_configuration() -> None:
    spec = spec_from(LOCAL)
    a = testbed._config_digest(testbed._run_args(spec, "gw", "img:1"))
    assert a == testbed._config_digest(testbed._run_args(spec, "gw", "img:1"))
    assert a != testbed._config_digest(testbed._run_args(spec, "gw", "img:2"))
    data = yaml.safe_load(LOCAL)
    data["hosts"]["gw"]["cap_add"].append("SYS_ADMIN")
    other = spec_from(yaml.safe_dump(data))
    assert a != testbed._config_digest(testbed._run_args(other, "gw", "img:1"))


def test_ssh_key_is_created_once(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    first = testbed.ensure_ssh_key(key, "sciplat-testbed-demo")
    assert first.startswith("ssh-ed25519 ") and first.endswith(" sciplat-testbed-demo")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert testbed.ensure_ssh_key(key, "other") == first


def test_known_hosts_keeps_lines_of_hosts_not_rescanned(tmp_path: Path) -> None:
    spec = spec_from(LOCAL)
    path = tmp_path / "known_hosts"
    path.write_text("gw,10.213.99.10 ssh-ed25519 OLD\nc1,10.213.99.12 ssh-ed25519 C1\ngone,1 x y\n")
    testbed._update_known_hosts(path, spec, {"gw": ["gw,10.213.99.10 ssh-ed25519 NEW"]})
    assert path.read_text().splitlines() == [
        "gw,10.213.99.10 ssh-ed25519 NEW",
        "c1,10.213.99.12 ssh-ed25519 C1",
    ]


# --------------------------------------------------------------------------- apt sources

DEB822 = f"""\
Types: deb
# a comment inside the stanza
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://apt.example.test/pg
Suites: bookworm-pgdg
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
Enabled: no
URIs: http://disabled.example.test/debian
Suites: bookworm
Components: main
"""

ONE_LINE = f"""\
# comment
deb [arch=amd64 signed-by=/usr/share/keyrings/docker.gpg] http://docker.example.test/linux/debian bookworm stable
deb {MIRROR} bookworm main non-free-firmware  # trailing comment
deb-src {MIRROR} bookworm main
deb {SECURITY} bookworm-security main
deb http://third.example.test/repo bookworm main
"""


def test_parse_deb822() -> None:
    sources = testbed.parse_deb822_sources(DEB822, "x.sources")
    assert len(sources) == 4
    first = sources[0]
    assert first.types == ("deb",)
    assert first.uris == (MIRROR,)
    assert first.suites == ("bookworm", "bookworm-updates")
    assert first.components == ("main", "contrib")
    assert first.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert first.origin == "x.sources"
    assert sources[2].signed_by is not None and "BEGIN PGP" in sources[2].signed_by
    assert sources[3].enabled is False


def test_parse_one_line() -> None:
    sources = testbed.parse_one_line_sources(ONE_LINE)
    assert [s.types[0] for s in sources] == ["deb", "deb", "deb-src", "deb", "deb"]
    docker = sources[0]
    assert docker.signed_by == "/usr/share/keyrings/docker.gpg"
    assert docker.suites == ("bookworm",) and docker.components == ("stable",)
    assert sources[1].uris == (MIRROR,)
    assert sources[1].components == ("main", "non-free-firmware")


@pytest.mark.parametrize("text", [DEB822, ONE_LINE])
def test_find_debian_mirror(text: str) -> None:
    parse = testbed.parse_deb822_sources if "Types:" in text else testbed.parse_one_line_sources
    sources = [s for s in parse(text) if s.enabled]
    mirror, entry = testbed.find_debian_mirror(sources)
    assert mirror == MIRROR
    assert "bookworm" in entry.suites


def test_find_debian_mirror_without_debian_entry() -> None:
    sources = testbed.parse_one_line_sources(
        f"deb http://docker.example.test/linux/debian bookworm stable\ndeb {SECURITY} bookworm-security main\n"
    )
    with pytest.raises(testbed.TestbedError, match="no Debian 'bookworm' archive"):
        testbed.find_debian_mirror(sources)


def test_read_apt_sources_reads_both_formats_and_skips_other_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://third.example.test/repo bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "extra.list").write_text(f"deb {MIRROR} bookworm main\n")
    (tmp_path / "sources.list.d" / "old.list.disabled-by-farm").write_text(
        "deb http://off.example.test/debian bookworm main\n"
    )
    sources = testbed.read_apt_sources(tmp_path)
    uris = [s.uris[0] for s in sources]
    assert "http://off.example.test/debian" not in uris
    assert "http://disabled.example.test/debian" not in uris
    assert uris.count(MIRROR) == 2
    assert testbed.find_debian_mirror(sources)[0] == MIRROR


def test_image_sources_cover_main_updates_and_security() -> None:
    sources = testbed.parse_deb822_sources(DEB822) + testbed.parse_one_line_sources(ONE_LINE)
    image = testbed.debian_sources_for_image([s for s in sources if s.enabled])
    suites = {suite for s in image for suite in s.suites}
    assert suites == {"bookworm", "bookworm-updates", "bookworm-security"}
    uris = {uri for s in image for uri in s.uris}
    assert uris == {MIRROR, SECURITY}
    text = testbed.render_deb822(image)
    parsed = testbed.parse_deb822_sources(text)
    assert all(s.signed_by for s in parsed)
    assert "pgdg" not in text and "docker" not in text and "third" not in text


# --------------------------------------------------------------------------- apt.conf


def test_parse_apt_conf_flattens_blocks_lists_and_comments() -> None:
    text = """
// comment
# another comment
/* block
   comment */
Acquire::Check-Valid-Until "false";
Acquire::IndexTargets::deb::DEP-11 { DefaultEnabled "false"; };
Acquire { http { Proxy "http://proxy.example.test:3128"; }; Retries "3"; };
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };
Dir::Cache::pkgcache "";
"""
    pairs = testbed.parse_apt_conf(text)
    assert ("Acquire::Check-Valid-Until", "false") in pairs
    assert ("Acquire::IndexTargets::deb::DEP-11::DefaultEnabled", "false") in pairs
    assert ("Acquire::http::Proxy", "http://proxy.example.test:3128") in pairs
    assert ("Acquire::Retries", "3") in pairs
    assert ("DPkg::Post-Invoke::", "rm -f /var/cache/apt/archives/*.deb || true") in pairs
    assert ("Dir::Cache::pkgcache", "") in pairs


def test_machine_acquire_settings_keep_only_acquire(tmp_path: Path) -> None:
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    (parts / "99registry").write_text('Acquire::Check-Valid-Until "false";\n')
    (parts / "docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb"; };\nDir::Cache::pkgcache "";\n'
    )
    (parts / "docker-no-languages").write_text('Acquire::Languages "none";\n')
    (parts / "ignored.disabled").write_text('Acquire::Ignored "1";\n')
    (parts / "50x.conf").write_text('Acquire::http::Timeout "30";\n')
    settings = testbed.machine_acquire_settings(tmp_path)
    assert settings == [
        ("Acquire::http::Timeout", "30"),
        ("Acquire::Check-Valid-Until", "false"),
        ("Acquire::Languages", "none"),
    ]
    text = testbed.render_apt_conf(settings)
    assert 'Acquire::Check-Valid-Until "false";' in text
    assert testbed.parse_apt_conf(text) == settings


# --------------------------------------------------------------------------- recipe


def fake_machine(tmp_path: Path) -> tuple[Path, Path]:
    etc_apt = tmp_path / "apt"
    (etc_apt / "sources.list.d").mkdir(parents=True)
    (etc_apt / "apt.conf.d").mkdir()
    (etc_apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    (etc_apt / "apt.conf.d" / "99registry").write_text('Acquire::Check-Valid-Until "false";\n')
    (etc_apt / "apt.conf.d" / "docker-clean").write_text('Dir::Cache::pkgcache "";\n')
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "site.crt").write_text("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n")
    return etc_apt, ca_dir


def test_recipe_files_and_stable_digest(tmp_path: Path) -> None:
    etc_apt, ca_dir = fake_machine(tmp_path)
    recipe = testbed.build_recipe(etc_apt, ca_dir)
    assert recipe.mirror == MIRROR
    assert recipe.image == f"localhost/sciplat-testbed:bookworm-{recipe.digest}"
    files = recipe.files
    assert b"cert = /etc/ssl/certs/ca-certificates.crt" in files["/etc/pip.conf"].content
    assert files["/usr/local/share/ca-certificates/site.crt"].content.startswith(b"-----BEGIN")
    assert b"Check-Valid-Until" in files["/etc/apt/apt.conf.d/90sciplat-machine"].content
    assert b"pkgcache" not in files["/etc/apt/apt.conf.d/90sciplat-machine"].content
    assert b"bookworm-security" in files["/etc/apt/sources.list.d/debian.sources"].content
    assert files["/etc/apt/sources.list"].content == b""
    assert b"Keep-Downloaded-Packages" in files["/etc/apt/apt.conf.d/10sciplat-keep-debs"].content
    assert b"ssh-keygen -A" in files["/etc/systemd/system/sciplat-ssh-hostkeys.service"].content
    assert ("sciplat-ssh-hostkeys.service", "ssh.service") in recipe.enables
    assert "openssh-server" in recipe.packages and "systemd-sysv" in recipe.packages
    assert testbed.build_recipe(etc_apt, ca_dir).digest == recipe.digest


def test_recipe_digest_follows_the_machine(tmp_path: Path) -> None:
    etc_apt, ca_dir = fake_machine(tmp_path)
    before = testbed.build_recipe(etc_apt, ca_dir).digest
    (ca_dir / "another.crt").write_text("x")
    after_ca = testbed.build_recipe(etc_apt, ca_dir).digest
    assert after_ca != before
    (etc_apt / "apt.conf.d" / "99registry").write_text('Acquire::Retries "5";\n')
    assert testbed.build_recipe(etc_apt, ca_dir).digest != after_ca


def test_image_files_are_written_into_a_root(tmp_path: Path) -> None:
    etc_apt, ca_dir = fake_machine(tmp_path)
    recipe = testbed.build_recipe(etc_apt, ca_dir)
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/hostname").write_text("the-build-machine\n")
    testbed._slim_and_clean(root)
    testbed._write_image_files(root, recipe)
    assert not (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "etc/hostname").read_text() == "localhost\n"
    link = root / "etc/systemd/system/ssh.service.wants/sciplat-ssh-hostkeys.service"
    assert link.is_symlink()
    assert str(link.readlink()) == "/etc/systemd/system/sciplat-ssh-hostkeys.service"
    assert (root / "etc/machine-id").read_bytes() == b""
