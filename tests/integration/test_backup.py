"""Backups on the test bed: every kind backs up, its age reaches Prometheus and `sciplat
backup`, retention removes the oldest backups, PITR (into a scratch copy beside the
live cluster), a deleted file in a home, a deleted directory entry and a deleted
object-storage user with its bucket and objects come back, a restored Slurm
association takes jobs at once; a host that lost its
backup state does not back up over the repository's backups.

Kinds and hosts on this bed: db, directory, slurm on `data`; homes, buckets on `gw`.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.integration.conftest import INVENTORY, sciplat
from tests.integration.test_slurm import as_user, slurm_user
from tests.integration.test_storage import endpoint, hub_python, s3

__all__ = ["endpoint", "slurm_user"]  # fixtures of test_storage and test_slurm used here

DATA, GW = "data", "gw"
KINDS = {"db", "homes", "directory", "slurm", "buckets"}
PROMETHEUS = "http://127.0.0.1:9090"
SCRATCH = "/var/lib/postgresql/sciplat-pitr-test"
PITR_DB = "sciplat_backup_pitr_test"


def on_host(host: Any, *args: str, timeout: int = 600) -> Any:
    """`sciplat-backup --json ARGS` on a host, parsed."""
    command = shlex.join(["timeout", str(timeout), "sciplat-backup", "--json", *args])
    done = host.run(command)
    assert done.rc == 0, f"{command} on {host}: exit {done.rc}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return json.loads(done.stdout)


def psql(host: Any, sql: str, *, database: str = "postgres", extra: str = "") -> str:
    command = f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 {extra} -d {database} -c {shlex.quote(sql)}"
    return str(host.check_output(command))


@pytest.fixture(scope="module")
def backed_up(host_of: Callable[[str], Any]) -> dict[str, Any]:
    """`sciplat backup --now` once for the module: every kind, through the playbook."""
    started = time.time()
    done = sciplat("backup", "-i", str(INVENTORY), "--now", "--json", timeout=1200)
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["took"] = time.time() - started
    return summary


def test_backup_now_succeeds_for_every_kind(backed_up: dict[str, Any]) -> None:
    assert backed_up["ok"], backed_up
    rows = {row["what"]: row for row in backed_up["backups"]}
    assert set(rows) == KINDS
    for what, row in rows.items():
        assert row["ok"], f"{what}: {row.get('error')}"
        assert row["age_seconds"] < backed_up["took"] + 60, f"{what} was not backed up by this run: {row}"
    assert rows["db"]["host"] == DATA and rows["homes"]["host"] == GW and rows["buckets"]["host"] == GW


def test_sciplat_backup_lists_every_kind_and_its_age(backed_up: dict[str, Any]) -> None:
    listing = json.loads(sciplat("backup", "-i", str(INVENTORY), "--json").stdout)
    rows = {row["what"]: row for row in listing["backups"]}
    assert set(rows) == KINDS
    assert all(row["ok"] and 0 <= row["age_seconds"] < 3600 for row in rows.values()), rows
    assert all(row["backups"] >= 1 for row in rows.values()), rows


def test_backup_age_metrics_reach_prometheus(backed_up: dict[str, Any], host_of: Callable[[str], Any]) -> None:
    monitor = host_of(GW)
    query = "query=sciplat_backup_last_success_timestamp_seconds"
    found: dict[str, float] = {}
    deadline = time.monotonic() + 150  # a scrape interval or two
    while time.monotonic() < deadline:
        answer = json.loads(
            monitor.check_output(f"curl -fsS --max-time 10 {PROMETHEUS}/api/v1/query --data-urlencode {query!r}")
        )
        found = {r["metric"]["what"]: float(r["value"][1]) for r in answer["data"]["result"]}
        if set(found) == KINDS and all(time.time() - v < 3600 for v in found.values()):
            break
        time.sleep(5)
    assert set(found) == KINDS, f"Prometheus has {found}"
    assert all(time.time() - v < 3600 for v in found.values()), found


def test_timers_run_every_kind_on_the_spec_schedule(host_of: Callable[[str], Any]) -> None:
    for host, kinds in ((DATA, ("db", "directory", "slurm")), (GW, ("homes", "buckets"))):
        for kind in kinds:
            unit = host_of(host).service(f"sciplat-backup@{kind}.timer")
            assert unit.is_enabled and unit.is_running, f"sciplat-backup@{kind}.timer on {host}"
            cat = host_of(host).check_output(f"systemctl cat sciplat-backup@{kind}.timer")
            assert "OnCalendar=*-*-* 02:30:00" in cat


def test_a_second_deploy_of_the_backups_changes_nothing(backed_up: dict[str, Any]) -> None:
    done = sciplat("up", "-i", str(INVENTORY), "--tags", "backup", "--limit", f"{DATA},{GW}", "--json", timeout=900)
    summary = json.loads(done.stdout)
    assert summary["ok"], summary["failures"]
    assert summary["changed_tasks"] == [], summary["changed_tasks"]


def test_postgresql_archives_its_wal_into_the_repository(host_of: Callable[[str], Any]) -> None:
    data = host_of(DATA)
    assert psql(data, "SHOW archive_mode") == "on"
    on_host(data, "archive-check", timeout=300)
    failed = psql(data, "SELECT failed_count FROM pg_stat_archiver")
    archived = psql(data, "SELECT archived_count FROM pg_stat_archiver")
    assert int(archived) > 0, f"archived {archived}, failed {failed}"


def test_pitr_restores_the_rows_of_t1_and_not_those_of_t2(host_of: Callable[[str], Any]) -> None:
    """Into a scratch copy on another port: the live cluster is not rewound."""
    data = host_of(DATA)
    data.run(f"sciplat-backup scratch-stop {SCRATCH}")
    psql(data, f"DROP DATABASE IF EXISTS {PITR_DB}")
    psql(data, f"CREATE DATABASE {PITR_DB}")
    try:
        psql(data, "CREATE TABLE t (id serial, at text)", database=PITR_DB)
        psql(data, "INSERT INTO t (at) SELECT 'T1' FROM generate_series(1, 3)", database=PITR_DB)
        t1 = psql(data, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        time.sleep(1.5)
        psql(data, "INSERT INTO t (at) SELECT 'T2' FROM generate_series(1, 5)", database=PITR_DB)
        on_host(data, "archive-check", timeout=300)

        started = time.monotonic()
        restored = on_host(data, "restore", "db", "--to", t1, "--into", SCRATCH, "--port", "5499", timeout=900)
        took = time.monotonic() - started
        assert restored["port"] == 5499
        rows = psql(
            data,
            "SELECT at || '=' || count(*) FROM t GROUP BY at ORDER BY at",
            database=PITR_DB,
            extra=f"-h {SCRATCH} -p 5499",
        )
        assert rows.splitlines() == ["T1=3"], f"restored to {t1}: {rows!r} (took {took:.0f}s)"
        # the live cluster still has both
        live = psql(data, "SELECT count(*) FROM t", database=PITR_DB)
        assert live == "8"
        print(f"PITR into a scratch copy took {took:.1f}s")
    finally:
        data.run(f"sciplat-backup scratch-stop {SCRATCH}")
        psql(data, f"DROP DATABASE IF EXISTS {PITR_DB}")
    assert not data.file(SCRATCH).exists


def _home_dir(gw: Any) -> tuple[str, str]:
    """A user's home on the shared /home (and its owner), else a test directory of our own."""
    for line in gw.check_output("stat -c '%U %n' /home/* 2>/dev/null || true").splitlines():
        owner, _, path = line.partition(" ")
        if owner not in ("root", "UNKNOWN") and gw.file(path).is_directory:
            return path, owner
    gw.check_output("install -d -o nobody -m 0700 /home/sciplat-backup-test")
    return "/home/sciplat-backup-test", "nobody"


def test_a_deleted_file_in_a_home_comes_back_with_the_same_checksum(host_of: Callable[[str], Any]) -> None:
    gw = host_of(GW)
    home, owner = _home_dir(gw)
    path = f"{home}/backup-test-{secrets.token_hex(4)}.bin"
    gw.check_output(f"head -c 262144 /dev/urandom > {path} && chown {owner} {path} && chmod 0640 {path}")
    digest = gw.check_output(f"sha256sum {path}").split()[0]
    assert len(digest) == 64
    try:
        sciplat("backup", "-i", str(INVENTORY), "--now", "--what", "homes", "--json", timeout=900)
        gw.check_output(f"rm -f {path}")
        assert not gw.file(path).exists
        result = json.loads(
            sciplat("restore", "-i", str(INVENTORY), "--what", "homes", "--path", path, "--yes", "--json").stdout
        )
        assert result["ok"], result
        assert gw.file(path).exists, f"{path} did not come back: {result}"
        assert gw.check_output(f"sha256sum {path}").split()[0] == digest
        assert gw.file(path).user == owner and gw.file(path).mode == 0o640
    finally:
        gw.run(f"rm -f {path}")


def test_retention_removes_the_oldest_backups(host_of: Callable[[str], Any]) -> None:
    """More backups than a lowered retention keeps: the oldest are gone from the repositories."""
    data = host_of(DATA)
    # restic (directory): retention keeps one snapshot per day (the newest) for `daily`
    # days; two more backups today leave only the newest of today's
    first = on_host(data, "run", "directory")[0]["snapshot"]
    second = on_host(data, "run", "directory", "--keep-daily", "1", "--keep-weekly", "0", "--keep-monthly", "0")
    after = [s["id"] for s in on_host(data, "snapshots", "directory")]
    assert after == [second[0]["snapshot"]], f"first {first}, kept {after}"
    assert first not in after

    # pgBackRest (db): a new full backup while keeping one: every older backup is expired
    old = [b["id"] for b in on_host(data, "snapshots", "db")]
    assert len(old) >= 2, old
    on_host(data, "run", "db", "--type", "full", "--keep-weekly", "1", "--keep-daily", "1", timeout=900)
    kept = on_host(data, "snapshots", "db")
    assert [b["type"] for b in kept] == ["full"] and kept[0]["id"] not in old, f"old {old}, kept {kept}"
    status = {row["what"]: row for row in on_host(data, "status")}
    assert status["db"]["backups"] == 1 and status["directory"]["backups"] == 1


LDAP_GROUP = "sciplat-backup-test"


@pytest.mark.destructive
def test_a_deleted_directory_entry_comes_back(host_of: Callable[[str], Any]) -> None:
    """Replaces the directory's database with the backup: slapd stops for a few seconds."""
    data = host_of(DATA)
    base = data.check_output("slapcat -n 0 -a '(olcSuffix=*)' | sed -n 's/^olcSuffix: //p' | head -1").strip()
    dn = f"cn={LDAP_GROUP},ou=groups,{base}"
    ldif = f"dn: {dn}\nobjectClass: posixGroup\ncn: {LDAP_GROUP}\ngidNumber: 3999999\n"
    search = f"ldapsearch -Q -LLL -Y EXTERNAL -H ldapi:/// -b {shlex.quote(dn)} -s base dn"
    data.run(f"ldapdelete -Q -Y EXTERNAL -H ldapi:/// {shlex.quote(dn)}")
    data.check_output(f"printf %s {shlex.quote(ldif)} | ldapadd -Q -Y EXTERNAL -H ldapi:///")
    try:
        on_host(data, "run", "directory")
        data.check_output(f"ldapdelete -Q -Y EXTERNAL -H ldapi:/// {shlex.quote(dn)}")
        assert data.run(search).rc == 32  # no such object
        result = json.loads(sciplat("restore", "-i", str(INVENTORY), "--what", "directory", "--yes", "--json").stdout)
        assert result["ok"], result
        assert data.service("slapd").is_running
        assert dn.lower() in data.check_output(search).lower()
        # the restore sent SSSD (offline while slapd was stopped) back online
        assert "Online status: Online" in data.check_output("sssctl domain-status sciplat")
        previous = [r.get("previous") for r in result["restored"] if r["what"] == "directory"]
        assert previous and previous[0] and data.file(previous[0]).is_directory
        data.check_output(f"rm -rf {shlex.quote(previous[0])}")  # the database it replaced
    finally:
        data.run(f"ldapdelete -Q -Y EXTERNAL -H ldapi:/// {shlex.quote(dn)}")


SLURM_ACCOUNT = "sciplat-backup-test"


@pytest.mark.destructive
def test_a_restored_slurm_association_takes_jobs_at_once(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    """Replaces Slurm's accounting database with the backup: slurmdbd stops and slurmctld restarts.

    As after a rebuild, the restored database has an association slurmctld has not
    seen: the user's jobs under it must be accepted right after the restore.
    """
    data, gw = host_of(DATA), host_of(GW)
    association = f"user where name={slurm_user} account={SLURM_ACCOUNT}"
    job = f"sbatch --parsable --wait --account={SLURM_ACCOUNT} --time=1 --mem=50M --wrap=true"
    data.check_output(f"sciplat-slurm-accounts ensure-user {slurm_user} {SLURM_ACCOUNT}")
    try:
        assert as_user(gw, job).rc == 0
        on_host(data, "run", "slurm")
        data.check_output(f"sacctmgr --immediate delete {association}")
        refused = as_user(gw, job)
        assert refused.rc != 0 and "account" in refused.stderr.lower(), refused.stderr
        result = json.loads(sciplat("restore", "-i", str(INVENTORY), "--what", "slurm", "--yes", "--json").stdout)
        assert result["ok"], result
        accepted = as_user(gw, job)
        assert accepted.rc == 0, f"the restored association was refused: {accepted.stderr}"
    finally:
        data.run(f"sacctmgr --immediate delete {association}; sacctmgr --immediate delete account {SLURM_ACCOUNT}")


# ------------------------------------------------------------------ buckets

MiB = 1024 * 1024
RGW_ADMIN = """
import json, sys
from sciplat_hub.storage.config import from_host_config
s = from_host_config()
"""


def _sha256_and_type(client: Any, bucket: str) -> dict[str, tuple[str, str, int]]:
    found = {}
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        answer = client.get_object(Bucket=bucket, Key=item["Key"])
        body = answer["Body"].read()
        found[item["Key"]] = (hashlib.sha256(body).hexdigest(), answer["ContentType"], len(body))
    return found


def test_a_deleted_object_storage_user_comes_back_with_the_same_keys_and_objects(
    host_of: Callable[[str], Any], endpoint: str, ca_cert: Path
) -> None:
    """A user with objects (one of 9 MiB, uploaded in parts) and a bucket policy; back up;
    delete the objects, the bucket and the RGW user; restore: the same keys read the same bytes."""
    gw = host_of(GW)
    name = f"bkt-{secrets.token_hex(3)}"
    keys = hub_python(
        gw,
        RGW_ADMIN
        + f"""
c = s.ensure_user({name!r}, {256 * MiB})
s.ensure_home_bucket({name!r})
print(json.dumps({{"access_key": c.access_key, "secret_key": c.secret_key, "endpoint": c.endpoint}}))
""",
    )
    client, bucket = s3({name: keys}, name, str(ca_cert)), f"home-{name}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "share-with-the-probe",
                "Effect": "Allow",
                "Principal": {"AWS": ["arn:aws:iam:::user/sciplat-probe"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    try:
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        for key, size, content_type in (
            ("empty", 0, "application/octet-stream"),
            ("notes/readme.txt", 1000, "text/plain"),
            ("data/cube 1.fits", 3 * MiB + 17, "application/fits"),
        ):
            client.put_object(Bucket=bucket, Key=key, Body=secrets.token_bytes(size), ContentType=content_type)
        # above boto3's 8 MiB threshold: a multipart upload (its ETag is not an MD5)
        client.upload_fileobj(
            io.BytesIO(secrets.token_bytes(9 * MiB)),
            bucket,
            "data/large.bin",
            ExtraArgs={"ContentType": "application/x-large"},
            Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB),
        )
        before = _sha256_and_type(client, bucket)
        assert len(before) == 4

        started = time.monotonic()
        done = json.loads(sciplat("backup", "-i", str(INVENTORY), "--now", "--what", "buckets", "--json").stdout)
        took_backup = time.monotonic() - started
        assert done["ok"], done
        [row] = [r for r in done["backups"] if r["what"] == "buckets"]
        assert row["ok"] and row["objects"] >= 4 and row["downloaded"] >= 4, row

        for key in before:
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)
        hub_python(gw, RGW_ADMIN + f"s._admin('DELETE', 'user', {{'uid': {name!r}}}); print('{{}}')")
        with pytest.raises(ClientError) as gone:
            client.list_objects_v2(Bucket=bucket)
        assert gone.value.response["Error"]["Code"] == "InvalidAccessKeyId"

        started = time.monotonic()
        result = json.loads(sciplat("restore", "-i", str(INVENTORY), "--what", "buckets", "--yes", "--json").stdout)
        took_restore = time.monotonic() - started
        assert result["ok"], result
        [restored] = [r for r in result["restored"] if r["what"] == "buckets"]
        assert restored["users_created"] >= 1 and restored["buckets_created"] >= 1, restored
        assert restored["uploaded"] >= 4, restored

        # the same keys (a user's scripts and laptop keep working), the same bytes and types
        assert _sha256_and_type(client, bucket) == before
        assert json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"]) == policy
        quota = hub_python(gw, RGW_ADMIN + f"print(json.dumps(s.user_record({name!r})['quota']))")
        assert quota["max_size"] == 256 * MiB
        print(f"buckets: backup {took_backup:.0f}s, restore {took_restore:.0f}s")
    finally:
        hub_python(
            gw, RGW_ADMIN + f"s._admin('DELETE', 'user', {{'uid': {name!r}, 'purge-data': 'true'}}); print('{{}}')"
        )


def test_a_host_that_lost_its_backup_state_does_not_back_up_over_the_repository(
    host_of: Callable[[str], Any],
) -> None:
    """As on a rebuilt host: the repository holds backups this host has not restored."""
    gw = host_of(GW)
    state = "/var/lib/sciplat/backup/buckets.json"
    gw.check_output(f"cp -p {state} {state}.test-saved && rm -f {state}")
    try:
        found = on_host(gw, "init")
        assert found["kinds"]["buckets"]["repository"] == "restore-first", found
        assert "buckets" in found["restore_first"] and "sciplat restore" in found["message"]
        refused = gw.run("sciplat-backup run buckets")
        assert refused.rc != 0 and "restore first" in refused.stderr, refused.stderr
        metrics = gw.check_output("cat /var/lib/prometheus/node-exporter/sciplat_backup_buckets.prom")
        assert 'sciplat_backup_last_run_success{what="buckets"} 0' in metrics
        [row] = [r for r in on_host(gw, "status") if r["what"] == "buckets"]
        assert row["ok"] is False and "restore" in row["error"]
        assert on_host(gw, "resume", "buckets")["was_waiting"] is True
        assert on_host(gw, "init")["restore_first"] == []
    finally:
        gw.check_output(f"mv -f {state}.test-saved {state}")
    # the refused run is in the metrics (last_run_success 0): a real run puts them right again
    assert on_host(gw, "run", "buckets")[0]["ok"]
