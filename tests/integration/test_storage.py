"""Object storage (Ceph RGW) and CephFS homes on the deployed test bed, as users see them.

Users and buckets are made the way account provisioning makes them: with
sciplat_hub.storage and sciplat_hub.posix on the hub host (gw), which hold the
admin settings. Everything S3 goes from this machine through the gateway over
TLS, verified against the platform CA, to https://s3.<domain>:<port>; the test
resolves s3.<domain> to 127.0.0.1 (where the gateway's port is published),
exactly as a DNS record would point it at the gateway.
"""

from __future__ import annotations

import io
import json
import secrets
import shlex
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import urllib3
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError
from minio import Minio
from minio.error import S3Error

from tests.integration.conftest import INVENTORY, sciplat

HUB, STORAGE = "gw", "data"
MiB = 1024 * 1024
USER_QUOTA = 4 * MiB
GROUP_QUOTA = 8 * MiB
HOME_QUOTA = 4 * MiB
RUN = secrets.token_hex(3)  # fresh names on every run: quotas start empty
ALICE, BOB, CAROL, GROUP = f"t{RUN}-alice", f"t{RUN}-bob", f"t{RUN}-carol", f"t{RUN}-grp"
UID = 40000 + int(RUN, 16) % 9000  # a uid nobody on the hosts has


def hosts_of(group: str) -> list[str]:
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return sorted((inventory["all"]["children"].get(group) or {}).get("hosts") or {})


def hub_python(host: Any, code: str) -> Any:
    """Run code with sciplat_hub on the hub host; return what it printed as JSON."""
    done = host.run(f"/opt/sciplat/venv/bin/python -c {shlex.quote(code)}")
    assert done.rc == 0, done.stderr
    return json.loads(done.stdout)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def endpoint(host_of: Callable[[str], Any]) -> Iterator[str]:
    """The public S3 endpoint users are given, resolved to the gateway on this machine."""
    config = json.loads(host_of(HUB).check_output("cat /etc/sciplat/storage/client.json"))
    url = str(config["public_endpoint"])
    name = urlsplit(url).hostname
    original = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return original("127.0.0.1" if host == name else host, *args, **kwargs)

    socket.getaddrinfo = resolve  # type: ignore[assignment]
    try:
        yield url
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]


@pytest.fixture(scope="module")
def creds(host_of: Callable[[str], Any], endpoint: str) -> dict[str, dict[str, str]]:
    """Keys of three users (alice has a quota) and a group bucket for alice and carol."""
    code = f"""
import json
from sciplat_hub.storage.config import from_host_config
s = from_host_config()
out = {{}}
for user, quota in (({ALICE!r}, {USER_QUOTA}), ({BOB!r}, None), ({CAROL!r}, None)):
    c = s.ensure_user(user, quota)
    s.ensure_home_bucket(user)
    out[user] = {{"access_key": c.access_key, "secret_key": c.secret_key, "endpoint": c.endpoint}}
out["bucket"] = s.ensure_group_bucket({GROUP!r}, [{ALICE!r}, {CAROL!r}], {GROUP_QUOTA})
# idempotent: a second provisioning run changes nothing and returns the same keys
again = s.ensure_user({ALICE!r}, {USER_QUOTA})
assert (again.access_key, again.secret_key) == (out[{ALICE!r}]["access_key"], out[{ALICE!r}]["secret_key"])
assert s.ensure_group_bucket({GROUP!r}, [{CAROL!r}, {ALICE!r}], {GROUP_QUOTA}) == out["bucket"]
print(json.dumps(out))
"""
    found: dict[str, dict[str, str]] = hub_python(host_of(HUB), code)
    assert found[ALICE]["endpoint"] == endpoint
    return found


@pytest.fixture(scope="module")
def ca(ca_cert: Path) -> str:
    return str(ca_cert)


def s3(creds: dict[str, Any], user: str, ca: str) -> Any:
    keys = creds[user]
    return boto3.client(
        "s3",
        endpoint_url=keys["endpoint"],
        aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"],
        region_name="default",
        verify=ca,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1}),
    )


def minio(creds: dict[str, Any], user: str, ca: str) -> Minio:
    keys = creds[user]
    url = urlsplit(keys["endpoint"])
    return Minio(
        url.netloc,
        access_key=keys["access_key"],
        secret_key=keys["secret_key"],
        secure=True,
        region="default",
        http_client=urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca, retries=False),
    )


def error_code(call: Callable[[], Any]) -> str:
    """The S3 error code a call fails with (boto3 or minio)."""
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    except S3Error as exc:
        return str(exc.code)
    raise AssertionError("the request succeeded, but should have been refused")


# ------------------------------------------------------------------ S3


def test_user_keys_put_and_get_with_boto3_and_minio(creds: dict[str, Any], ca: str) -> None:
    bucket = f"home-{ALICE}"
    s3(creds, ALICE, ca).put_object(Bucket=bucket, Key="from-boto3.txt", Body=b"hello from boto3")
    client = minio(creds, ALICE, ca)
    assert client.get_object(bucket, "from-boto3.txt").read() == b"hello from boto3"
    client.put_object(bucket, "from-minio.txt", io.BytesIO(b"hello from minio"), length=16)
    body = s3(creds, ALICE, ca).get_object(Bucket=bucket, Key="from-minio.txt")["Body"].read()
    assert body == b"hello from minio"


def test_another_users_keys_are_denied(creds: dict[str, Any], ca: str) -> None:
    bucket = f"home-{ALICE}"
    s3(creds, ALICE, ca).put_object(Bucket=bucket, Key="private.txt", Body=b"alice only")
    bob = s3(creds, BOB, ca)
    assert error_code(lambda: bob.get_object(Bucket=bucket, Key="private.txt")) == "AccessDenied"
    assert error_code(lambda: bob.list_objects_v2(Bucket=bucket)) == "AccessDenied"
    assert error_code(lambda: bob.put_object(Bucket=bucket, Key="x", Body=b"x")) == "AccessDenied"
    assert error_code(lambda: minio(creds, BOB, ca).get_object(bucket, "private.txt")) == "AccessDenied"


def test_anonymous_requests_get_403(creds: dict[str, Any], endpoint: str, ca: str) -> None:
    s3(creds, ALICE, ca).put_object(Bucket=f"home-{ALICE}", Key="anon.txt", Body=b"not public")
    context = ssl.create_default_context(cafile=ca)
    for path in (f"/home-{ALICE}/anon.txt", f"/home-{ALICE}", f"/group-{GROUP}/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(endpoint + path, context=context, timeout=10)
        assert refused.value.code == 403, path


def test_put_beyond_the_user_quota_is_refused(creds: dict[str, Any], ca: str) -> None:
    bucket = f"home-{ALICE}"
    client = s3(creds, ALICE, ca)
    client.put_object(Bucket=bucket, Key="big-1", Body=b"a" * (3 * MiB))
    code = error_code(lambda: client.put_object(Bucket=bucket, Key="big-2", Body=b"b" * (3 * MiB)))
    assert code == "QuotaExceeded"
    data = io.BytesIO(b"c" * (3 * MiB))
    assert error_code(lambda: minio(creds, ALICE, ca).put_object(bucket, "big-3", data, length=3 * MiB)) == (
        "QuotaExceeded"
    )
    client.delete_object(Bucket=bucket, Key="big-1")


def test_group_bucket_admits_members_and_nobody_else(creds: dict[str, Any], endpoint: str, ca: str) -> None:
    bucket = creds["bucket"]
    s3(creds, ALICE, ca).put_object(Bucket=bucket, Key="shared.txt", Body=b"from alice")
    carol = s3(creds, CAROL, ca)
    assert carol.get_object(Bucket=bucket, Key="shared.txt")["Body"].read() == b"from alice"
    carol.put_object(Bucket=bucket, Key="reply.txt", Body=b"from carol")
    keys = {o["Key"] for o in s3(creds, ALICE, ca).list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"shared.txt", "reply.txt"}
    assert minio(creds, CAROL, ca).get_object(bucket, "reply.txt").read() == b"from carol"
    bob = s3(creds, BOB, ca)
    assert error_code(lambda: bob.get_object(Bucket=bucket, Key="shared.txt")) == "AccessDenied"
    assert error_code(lambda: bob.put_object(Bucket=bucket, Key="intruder", Body=b"x")) == "AccessDenied"
    assert error_code(lambda: bob.list_objects_v2(Bucket=bucket)) == "AccessDenied"
    # members use the bucket; they cannot hand it to others
    assert error_code(lambda: carol.put_bucket_policy(Bucket=bucket, Policy='{"Statement": []}')) == "AccessDenied"


def test_usage_is_reported(host_of: Callable[[str], Any], creds: dict[str, Any], ca: str) -> None:
    s3(creds, BOB, ca).put_object(Bucket=f"home-{BOB}", Key="one-mib", Body=b"u" * MiB)
    code = f"""
import json
from sciplat_hub.storage.config import from_host_config
u = from_host_config().usage({BOB!r})
print(json.dumps({{"bytes": u.bytes_used, "objects": u.objects, "quota": u.quota_bytes}}))
"""
    deadline = time.monotonic() + 60
    while True:  # RGW updates bucket stats as it writes; give it a moment at most
        usage = hub_python(host_of(HUB), code)
        if usage["bytes"] >= MiB or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert usage == {"bytes": MiB, "objects": 1, "quota": None}


def storage_address() -> str:
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return str(inventory["all"]["hosts"][STORAGE]["ansible_host"])


def test_radosgw_and_metrics_are_open_only_to_who_needs_them(host_of: Callable[[str], Any]) -> None:
    address = storage_address()
    probe = "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:{}/{}"
    # the monitor host scrapes the manager; the hub and the gateway reach radosgw
    assert host_of("gw").check_output(probe.format(address, 9283, "metrics")) == "200"
    assert host_of("gw").check_output(probe.format(address, 7480, "")) == "200"
    # a compute host mounts CephFS but reaches neither radosgw nor the metrics directly
    compute = host_of(hosts_of("compute")[0])
    for port in (7480, 9283):
        assert compute.run(probe.format(address, port, "")).stdout in ("000", ""), port


# ------------------------------------------------------------------ CephFS homes


@pytest.fixture(scope="module")
def home(host_of: Callable[[str], Any]) -> str:
    code = f"""
import json
from sciplat_hub.posix import Posix
p = Posix.from_host_config()
home = p.ensure_home({ALICE!r}, {UID}, {UID}, {HOME_QUOTA})
assert p.ensure_home({ALICE!r}, {UID}, {UID}, {HOME_QUOTA}) == home
print(json.dumps(home))
"""
    path: str = hub_python(host_of(HUB), code)
    return path


def as_user(command: str) -> str:
    return f"setpriv --reuid={UID} --regid={UID} --clear-groups sh -c {shlex.quote(command)}"


def test_home_is_the_same_on_hub_and_compute_hosts(host_of: Callable[[str], Any], home: str) -> None:
    clients = [HUB, *hosts_of("compute")]
    assert len(clients) >= 2
    note = f"written on {HUB} {RUN}"
    assert host_of(HUB).run(as_user(f"echo '{note}' > {home}/note.txt")).rc == 0
    for name in clients:
        host = host_of(name)
        info = host.file(home)
        assert (info.uid, info.gid, info.mode) == (UID, UID, 0o700), name
        # the user reads it everywhere; another uid cannot even list the home
        assert host.check_output(as_user(f"cat {home}/note.txt")) == note, name
        other = host.run(f"setpriv --reuid={UID + 1} --regid={UID + 1} --clear-groups ls {home}")
        assert other.rc != 0 and "Permission denied" in other.stderr, name


def test_writing_beyond_the_home_quota_fails(host_of: Callable[[str], Any], home: str) -> None:
    host = host_of(hosts_of("compute")[0])
    done = host.run(as_user(f"dd if=/dev/zero of={home}/fill bs=1M count=16 conv=fsync"))
    assert done.rc != 0
    assert "Disk quota exceeded" in done.stderr
    host.run(f"rm -f {home}/fill")


def test_home_usage_and_quota_are_reported(host_of: Callable[[str], Any], home: str) -> None:
    host = host_of(HUB)
    assert host.run(as_user(f"dd if=/dev/zero of={home}/one bs=1M count=1 conv=fsync")).rc == 0
    code = f"""
import json
from sciplat_hub.posix import Posix
print(json.dumps(Posix.from_host_config().usage({home!r})))
"""
    deadline = time.monotonic() + 60
    while True:  # CephFS propagates recursive byte counts lazily (seconds)
        used, quota = hub_python(host, code)
        if used >= MiB or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert used >= MiB and quota == HOME_QUOTA
    host.run(f"rm -f {home}/one")


# ------------------------------------------------------------------ operations


def ceph_health(host: Any) -> str:
    return str(host.run("timeout 20 ceph --connect-timeout 10 health").stdout.strip())


def wait_healthy(host: Any, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    health = ceph_health(host)
    while not health.startswith("HEALTH_OK") and time.monotonic() < deadline:
        time.sleep(3)
        health = ceph_health(host)
    return health


def reachable(host: Any) -> bool:
    try:
        return bool(host.run("true").rc == 0)
    except RuntimeError:  # testinfra: ssh could not connect
        return False


def ceph_status_of(report: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in report["hosts"][STORAGE]["services"] if s["name"] == "ceph")


@pytest.mark.destructive
def test_status_reports_ceph_health_and_the_reason(host_of: Callable[[str], Any]) -> None:
    data = host_of(STORAGE)
    assert wait_healthy(data, 120).startswith("HEALTH_OK")
    report = json.loads(sciplat("status", "-i", str(INVENTORY), "--json", check=False).stdout)
    ceph = ceph_status_of(report)
    assert ceph["healthy"] and ceph["detail"].startswith("HEALTH_OK"), ceph
    data.check_output("ceph osd set noout")
    try:
        done = sciplat("status", "-i", str(INVENTORY), "--json", check=False)
        assert done.returncode != 0
        ceph = ceph_status_of(json.loads(done.stdout))
        assert not ceph["healthy"]
        assert "HEALTH_WARN" in ceph["detail"] and "noout" in ceph["detail"], ceph
    finally:
        data.check_output("ceph osd unset noout")
    assert wait_healthy(data, 120).startswith("HEALTH_OK")


@pytest.mark.destructive
def test_restarting_the_storage_host_keeps_the_data(
    host_of: Callable[[str], Any], creds: dict[str, Any], home: str, ca: str
) -> None:
    from sciplat.testbed import load_spec

    payload = secrets.token_bytes(2 * MiB)
    s3(creds, CAROL, ca).put_object(Bucket=f"home-{CAROL}", Key="survivor", Body=payload)
    marker = f"before restart {RUN}"
    assert host_of(HUB).run(as_user(f"echo '{marker}' > {home}/survivor.txt && sync")).rc == 0

    container = load_spec(INVENTORY).container(STORAGE)
    subprocess.run(["podman", "restart", "--time", "30", container], check=True, capture_output=True, timeout=180)

    data = host_of(STORAGE)
    deadline = time.monotonic() + 300
    while not reachable(data) and time.monotonic() < deadline:  # sshd back
        time.sleep(2)
    health = wait_healthy(data, max(30.0, deadline - time.monotonic()))
    assert health.startswith("HEALTH_OK"), health

    client = s3(creds, CAROL, ca)
    body = b""
    while time.monotonic() < deadline:  # radosgw and the gateway's upstream come back
        try:
            body = client.get_object(Bucket=f"home-{CAROL}", Key="survivor")["Body"].read()
            break
        except (ClientError, OSError):
            time.sleep(2)
    assert body == payload
    for name in [HUB, *hosts_of("compute")]:
        # the ceph-fuse mounts reconnect by themselves
        read = host_of(name).run(f"timeout 60 {as_user(f'cat {home}/survivor.txt')}")
        assert read.rc == 0 and read.stdout.strip() == marker, (name, read.stderr)


DAEMON_PIDS = "echo $(pgrep -x ceph-mon) $(pgrep -x radosgw)"
THREADS = "awk '$1 == \"rgw_thread_pool_size\" {print $3}' /etc/ceph/ceph.conf"


@pytest.mark.destructive
def test_a_ceph_conf_change_restarts_the_storage_hosts_one_by_one_and_settles(
    host_of: Callable[[str], Any], creds: dict[str, Any], ca: str
) -> None:
    """An operator changes a Ceph setting and redeploys: the daemons restart (one storage
    host at a time, each waiting for the cluster to settle), the run ends healthy, and
    the data is still there. The default is deployed again afterwards."""
    data = host_of(STORAGE)
    payload = secrets.token_bytes(MiB)
    s3(creds, CAROL, ca).put_object(Bucket=f"home-{CAROL}", Key="conf-change", Body=payload)
    default = int(data.check_output(THREADS))
    daemons = data.check_output(DAEMON_PIDS)
    try:
        done = sciplat(
            "up",
            "-i",
            str(INVENTORY),
            "--tags",
            "ceph",
            "--limit",
            "storage",
            "--extra-vars",
            json.dumps({"ceph_rgw_thread_pool_size": default + 1}),
        )
        assert done.returncode == 0
        assert data.check_output(DAEMON_PIDS) != daemons, "the monitor and radosgw were not restarted"
        conf = data.check_output(
            "ceph-conf -c /etc/ceph/ceph.conf --name client.rgw.$(hostname -s) rgw_thread_pool_size"
        )
        assert int(conf) == default + 1
        assert ceph_health(data).startswith("HEALTH_OK")
    finally:
        sciplat("up", "-i", str(INVENTORY), "--tags", "ceph", "--limit", "storage")
    assert wait_healthy(data, 120).startswith("HEALTH_OK")
    client = s3(creds, CAROL, ca)
    deadline = time.monotonic() + 120
    while True:  # radosgw restarted; the gateway's upstream comes back within seconds
        try:
            assert client.get_object(Bucket=f"home-{CAROL}", Key="conf-change")["Body"].read() == payload
            break
        except (ClientError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
