"""Storage (Ceph backend): rendering, the gateway's virtual-server declarations,
and the on-host modules' pure parts (no cluster needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path
from types import ModuleType

import pytest

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat_hub.posix import Posix, PosixError
from sciplat_hub.storage.base import StorageError
from sciplat_hub.storage.config import from_host_config, load_config
from sciplat_hub.storage.rgw import RgwStore
from sciplat_hub.storage.rgw import from_config as rgw_from_config
from tests.conftest import REPO


def spec(**extra: object) -> PlatformSpec:
    return PlatformSpec.model_validate({"platform": {"name": "lab", "domain": "science.example.org"}, **extra})


def gateway_filters() -> ModuleType:
    path = REPO / "roles" / "gateway" / "filter_plugins" / "sciplat_gateway.py"
    loaded = importlib.util.spec_from_file_location("sciplat_gateway", path)
    assert loaded and loaded.loader
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ rendering


def test_storage_section_is_rendered_for_the_ceph_role() -> None:
    values = role_vars(spec(storage={"redundancy": 2, "osd_devices": ["/dev/sdb"], "home_quota": "10GiB"}), Path("/i"))
    assert values["sciplat_storage_backend"] == "ceph"
    assert values["ceph_redundancy"] == 2
    assert values["ceph_osd_devices"] == ["/dev/sdb"]
    assert values["ceph_home_quota"] == 10 * 1024**3
    assert values["ceph_rgw_public_endpoint"] == "https://s3.science.example.org"


def test_s3_endpoint_keeps_the_public_port() -> None:
    values = role_vars(
        spec(platform={"name": "lab", "domain": "lab.test", "public_url": "https://127.0.0.1:9454"}), Path("/i")
    )
    assert values["ceph_rgw_public_endpoint"] == "https://s3.lab.test:9454"


# ------------------------------------------------------------------ gateway virtual servers


def test_a_sound_server_declaration_is_completed() -> None:
    filters = gateway_filters()
    declared = [{"name": "s3", "server_name": "s3.lab.test", "upstreams": ["http://10.0.0.5:7480"], "buffering": False}]
    assert filters.server_errors(declared, "lab.test") == []
    (server,) = filters.servers(declared, "1g")
    assert server["upstreams"] == ["10.0.0.5:7480"] and server["max_body"] == "1g" and not server["buffering"]
    assert server["upstream_id"] == "sciplat_s3"


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"name": "s3", "server_name": "lab.test", "upstreams": ["http://a:1"]}, "already served"),
        ({"name": "s3", "server_name": "s3.lab.test", "upstreams": []}, "non-empty list"),
        ({"name": "s3", "server_name": "s3.lab.test", "upstreams": ["https://a:1/x"]}, "non-empty list"),
        ({"name": "s3", "server_name": "s3 lab", "upstreams": ["http://a:1"]}, "DNS name"),
        ({"name": "s3", "upstreams": ["http://a:1"]}, "'server_name' is missing"),
        ({"name": "s3", "server_name": "s3.lab.test", "upstreams": ["http://a:1"], "path": "/"}, "unknown keys"),
    ],
)
def test_bad_server_declarations_are_named(item: dict[str, object], fragment: str) -> None:
    errors = gateway_filters().server_errors([item], "lab.test")
    assert any(fragment in e for e in errors), errors


# ------------------------------------------------------------------ sciplat_hub.storage


def test_group_policy_admits_exactly_the_members_to_objects() -> None:
    policy = RgwStore.group_policy("group-astro", ["bob", "alice"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"AWS": ["arn:aws:iam:::user/alice", "arn:aws:iam:::user/bob"]}
    assert "s3:PutObject" in statement["Action"] and "s3:PutBucketPolicy" not in statement["Action"]
    assert statement["Resource"] == ["arn:aws:s3:::group-astro", "arn:aws:s3:::group-astro/*"]


def test_backend_config_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"missing.*sciplat up"):
        load_config(tmp_path / "client.json")
    (tmp_path / "client.json").write_text(json.dumps({"backend": "ftp"}))
    with pytest.raises(StorageError, match="rgw, minio, aws"):
        from_host_config(tmp_path / "client.json")
    with pytest.raises(StorageError, match="admin_endpoints"):
        rgw_from_config({"backend": "rgw"})


def test_rgw_backend_is_built_from_its_settings(tmp_path: Path) -> None:
    settings = {
        "backend": "rgw",
        "admin_endpoints": ["http://10.0.0.5:7480/"],
        "access_key": "a",
        "secret_key": "s",
        "public_endpoint": "https://s3.lab.test/",
    }
    (tmp_path / "client.json").write_text(json.dumps(settings))
    store = from_host_config(tmp_path / "client.json")
    assert isinstance(store, RgwStore)
    assert store.admin_endpoints == ["http://10.0.0.5:7480"] and store.public_endpoint == "https://s3.lab.test"
    with pytest.raises(StorageError, match="lowercase"):
        store.ensure_user("Alice", None)


# ------------------------------------------------------------------ sciplat_hub.posix


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_homes_and_group_dirs_are_made_idempotently(tmp_path: Path) -> None:
    posix = Posix(home_root=tmp_path / "home", group_root=tmp_path / "groups", backend="plain")
    (tmp_path / "home").mkdir()
    (tmp_path / "groups").mkdir()
    home = Path(posix.ensure_home("alice", 23456, 23457, None))
    os.chmod(home, 0o755)  # drift is corrected
    assert posix.ensure_home("alice", 23456, 23457, None) == str(home)
    info = home.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (23456, 23457, 0o700)
    group = Path(posix.ensure_group_dir("astro", 60001, None))
    assert stat.S_IMODE(group.stat().st_mode) == 0o2770 and group.stat().st_gid == 60001
    (home / "f").write_bytes(b"x" * 10)
    assert posix.usage(home) == (10, None)
    with pytest.raises(PosixError, match="no directory quotas"):
        posix.ensure_home("alice", 23456, 23457, 1024)
    with pytest.raises(PosixError, match="not valid"):
        posix.ensure_home("../etc", 0, 0, None)


def test_cephfs_homes_need_the_mount(tmp_path: Path) -> None:
    posix = Posix(home_root=tmp_path, group_root=tmp_path, backend="cephfs")
    with pytest.raises(PosixError, match="not mounted"):
        posix.ensure_home("alice", 1, 1, None)
