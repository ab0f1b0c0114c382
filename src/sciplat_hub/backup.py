"""sciplat-backup: backups of one host's share of the platform, their metrics, and restores.

What is backed up, and with what (each on the first host of its group):

| what        | host group        | tool                                                              |
|-------------|-------------------|-------------------------------------------------------------------|
| `db`        | db                | pgBackRest: full + differential backups, WAL archive (PITR)       |
| `homes`     | hub               | restic: /home and /groups (the CephFS mounts)                     |
| `directory` | directory         | restic: slapcat of cn=config and of the accounts database         |
| `slurm`     | slurm_controller  | restic: mariadb-dump of Slurm's accounting database               |
| `buckets`   | hub               | restic: a local mirror of every RGW bucket, with users' keys,      |
|             |                   | policies and quotas in a manifest (sciplat_hub.backup_buckets)    |

Every repository is in one S3 bucket (the platform's radosgw or an external S3),
`<prefix>/pgbackrest` and `<prefix>/restic/<what>`; both tools encrypt before
anything leaves the host. The settings (`/etc/sciplat/backup/config.json`, 0600)
are written by the `backup` role; pgBackRest's own settings are in
`/etc/pgbackrest/pgbackrest.conf` (PostgreSQL's archive_command reads them too).

After every run the state (`/var/lib/sciplat/backup/<what>.json`) and
node_exporter's textfile metrics (`sciplat_backup_<what>.prom`) are written:
`sciplat_backup_last_success_timestamp_seconds{what}` and friends (the alert rules
in roles/monitor/files/rules/backup.yml read them).

A host rebuilt onto a repository that already holds backups (its state file is
gone, or PostgreSQL is a new cluster) does not back up into it until the data is
restored (`restore WHAT`) or the operator says so (`resume WHAT`): a backup of the
empty new services would otherwise become the "latest" one.

Commands (all print JSON with --json): `init`, `run WHAT...`, `status`,
`snapshots WHAT`, `restore WHAT [--to TIME]`, `resume WHAT`, `scratch-stop DIR`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from sciplat_hub.probe import write_metrics

CONFIG_FILE = Path("/etc/sciplat/backup/config.json")
WHATS = ("db", "homes", "directory", "slurm", "buckets")
RESTIC_WHATS = ("homes", "directory", "slurm", "buckets")
RESTORE_FIRST = "restore first: sciplat restore -i DIR --what all (or this kind)"
METRIC_PREFIX = "sciplat_backup"


class BackupError(Exception):
    """A backup or restore step failed; the message says which and why."""


# ------------------------------------------------------------------ settings


@dataclass
class S3Target:
    endpoint: str  # https://host[:port]
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    ca_file: str = ""
    create_bucket: bool = False

    def path(self, *parts: str) -> str:
        """`prefix/part/...` without empty pieces or doubled slashes."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


@dataclass
class Retention:
    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    def restic_args(self) -> list[str]:
        args = []
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            if value > 0:
                args += [f"--keep-{name}", str(value)]
        if not args:
            raise BackupError(
                "retention keeps nothing (daily, weekly and monthly are 0): refusing to delete every backup"
            )
        return args

    def pgbackrest_args(self) -> list[str]:
        """Full backups are weekly: keep `weekly` of them (at least one), and `daily` differentials."""
        return [f"--repo1-retention-full={max(1, self.weekly)}", f"--repo1-retention-diff={max(1, self.daily)}"]


@dataclass
class Settings:
    s3: S3Target
    whats: list[str] = field(default_factory=list)
    hostname: str = field(default_factory=socket.gethostname)
    restic_password: str = field(default="", repr=False)
    retention: Retention = field(default_factory=Retention)
    textfile_directory: str = "/var/lib/prometheus/node-exporter"
    state_directory: str = "/var/lib/sciplat/backup"
    cache_directory: str = "/var/cache/sciplat-backup"
    db: dict[str, Any] = field(default_factory=dict)
    homes: dict[str, Any] = field(default_factory=dict)
    directory: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    buckets: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["s3"] = S3Target(**data["s3"])
        known["retention"] = Retention(**{k: int(v) for k, v in data.get("retention", {}).items()})
        unknown = set(known.get("whats", [])) - set(WHATS)
        if unknown:
            raise BackupError(f"unknown backup kind(s) {sorted(unknown)} in the settings; known: {', '.join(WHATS)}")
        return cls(**known)

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> Settings:
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise BackupError(f"{path} is missing: this host runs no backups (deploy the backup role)") from None

    # db (pgBackRest)
    @property
    def stanza(self) -> str:
        return str(self.db.get("stanza", "sciplat"))

    @property
    def pg_service(self) -> str:
        return str(self.db.get("service", "postgresql@15-main"))

    @property
    def pg_bin_dir(self) -> str:
        return str(self.db.get("bin_dir", "/usr/lib/postgresql/15/bin"))

    @property
    def pg_data_dir(self) -> str:
        return str(self.db.get("data_dir", "/var/lib/postgresql/15/main"))

    def restic_repository(self, what: str) -> str:
        return f"s3:{self.s3.endpoint.rstrip('/')}/{self.s3.bucket}/{self.s3.path('restic', what)}"

    def dump_directory(self, what: str) -> Path:
        return Path(self.state_directory) / "dump" / what


# ------------------------------------------------------------------ time


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is this host's local time. Returns an aware UTC time."""
    value = text.strip().replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BackupError(
            f"--to {text!r} is not a time: write e.g. 2026-12-04T18:30:00Z or '2026-12-04 18:30:00+01:00'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.astimezone(dt.UTC)


def _restic_time(text: str) -> dt.datetime:
    """restic's snapshot times carry nanoseconds, which fromisoformat (3.11) refuses."""
    head, _, rest = text.partition(".")
    zone = ""
    if rest:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        head += "." + digits[:6]
    elif "+" in head[10:] or head.endswith("Z"):
        return parse_time(head)
    return parse_time(head + zone)


# ------------------------------------------------------------------ processes


def _run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout: float | None = None,
    stdout: Any = subprocess.PIPE,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    command = list(argv)
    if user:
        command = ["runuser", "-u", user, "--", *command]
    process = subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )
    if check and process.returncode != 0:
        tail = (process.stderr or "").strip().splitlines()[-5:]
        raise BackupError(f"{' '.join(argv[:3])} … failed (exit {process.returncode}): {' / '.join(tail)}")
    return process


@contextlib.contextmanager
def _lock(settings: Settings, what: str) -> Iterator[None]:
    """One run per what at a time (the timer and `sciplat backup --now` may meet)."""
    directory = Path(settings.state_directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / f".{what}.lock", "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ------------------------------------------------------------------ S3 (bucket only)


def _sign(target: S3Target, method: str, path: str, host: str, now: dt.datetime) -> dict[str, str]:
    """SigV4 headers for a request without a body or query."""
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    digest = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": digest, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, digest])
    scope = f"{day}/{target.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + target.secret_key).encode()
    for part in (day, target.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={target.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def _bucket_request(target: S3Target, method: str) -> int:
    url = urlsplit(target.endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    netloc = host if port in (80, 443) else f"{host}:{port}"
    path = "/" + quote(target.bucket)
    headers = _sign(target, method, path, netloc, dt.datetime.now(dt.UTC))
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=target.ca_file or None)
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as exc:
        raise BackupError(
            f"S3 endpoint {target.endpoint} did not answer ({exc}); is the name resolvable here?"
        ) from None
    finally:
        connection.close()


def ensure_bucket(target: S3Target) -> bool:
    """Create the bucket when it is missing and ours to create; True when it was created."""
    status = _bucket_request(target, "HEAD")
    if status == 200:
        return False
    if status == 404 and target.create_bucket:
        created = _bucket_request(target, "PUT")
        if created >= 300 and created != 409:
            raise BackupError(f"creating bucket {target.bucket} at {target.endpoint} answered HTTP {created}")
        return True
    if status in (401, 403):
        raise BackupError(f"S3 {target.endpoint} refused the backup keys for bucket {target.bucket} (HTTP {status})")
    raise BackupError(
        f"bucket {target.bucket} at {target.endpoint}: HTTP {status}"
        + ("; create it (an external target's bucket is the operator's)" if status == 404 else "")
    )


# ------------------------------------------------------------------ restic


def _restic(settings: Settings, what: str, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    s3 = settings.s3
    argv = ["restic", "-r", settings.restic_repository(what), "-o", "s3.bucket-lookup=path"]
    argv += ["-o", f"s3.region={s3.region}", "--cache-dir", str(Path(settings.cache_directory) / "restic")]
    if s3.ca_file and s3.endpoint.startswith("https"):
        argv += ["--cacert", s3.ca_file]
    env = {
        "RESTIC_PASSWORD": settings.restic_password,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    return _run([*argv, *args], env=env, **kwargs)


def restic_snapshots(settings: Settings, what: str) -> list[dict[str, Any]]:
    done = _restic(settings, what, ["snapshots", "--json", "--tag", what])
    snapshots = json.loads(done.stdout or "[]") or []
    return sorted(snapshots, key=lambda s: _restic_time(s["time"]))


def restic_init(settings: Settings, what: str) -> bool:
    probe = _restic(settings, what, ["cat", "config"], check=False)
    if probe.returncode == 0:
        return False
    if "does not exist" not in probe.stderr and "Is there a repository" not in probe.stderr:
        raise BackupError(f"restic repository {settings.restic_repository(what)}: {probe.stderr.strip()[-300:]}")
    _restic(settings, what, ["init"])
    return True


def _restic_backup(settings: Settings, what: str, paths: list[str], excludes: Sequence[str] = ()) -> dict[str, Any]:
    args = ["backup", "--json", "--tag", what, "--host", settings.hostname]
    for pattern in excludes:
        args += ["--exclude", pattern]
    done = _restic(settings, what, [*args, *paths])
    summary: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if event.get("message_type") == "summary":
                summary = event
    _restic(settings, what, ["forget", "--tag", what, "--prune", *settings.retention.restic_args()])
    return {
        "snapshot": summary.get("snapshot_id", ""),
        "size_bytes": int(summary.get("total_bytes_processed", 0)),
        "added_bytes": int(summary.get("data_added", 0)),
        "backups": len(restic_snapshots(settings, what)),
    }


def snapshot_before(settings: Settings, what: str, to: dt.datetime | None) -> dict[str, Any]:
    snapshots = restic_snapshots(settings, what)
    if to is not None:
        snapshots = [s for s in snapshots if _restic_time(s["time"]) <= to]
    if not snapshots:
        when = f" taken before {to.isoformat()}" if to else ""
        raise BackupError(f"no {what} backup{when} in {settings.restic_repository(what)}")
    return snapshots[-1]


# ------------------------------------------------------------------ pgBackRest


def _pgbackrest(settings: Settings, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return _run(["pgbackrest", f"--stanza={settings.stanza}", *args], user="postgres", **kwargs)


def pgbackrest_info(settings: Settings) -> dict[str, Any]:
    done = _pgbackrest(settings, ["info", "--output=json"])
    stanzas = json.loads(done.stdout or "[]")
    return stanzas[0] if stanzas else {}


def pgbackrest_backups(settings: Settings) -> list[dict[str, Any]]:
    info = pgbackrest_info(settings)
    return [
        {
            "id": b["label"],
            "type": b["type"],
            "time": dt.datetime.fromtimestamp(b["timestamp"]["stop"], dt.UTC).isoformat(),
            "size_bytes": int(b.get("info", {}).get("size", 0)),
            "repository_bytes": int(b.get("info", {}).get("repository", {}).get("delta", 0)),
        }
        for b in info.get("backup", [])
    ]


def pgbackrest_init(settings: Settings) -> bool:
    info = pgbackrest_info(settings)
    if info.get("status", {}).get("code") == 0 or info.get("db"):
        return False
    _pgbackrest(settings, ["stanza-create"], timeout=300)
    return True


def parse_system_id(controldata: str) -> int | None:
    """The "Database system identifier" in pg_controldata's output."""
    for line in controldata.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Database system identifier" and value.strip().isdigit():
            return int(value.strip())
    return None


def stanza_system_id(info: dict[str, Any]) -> int | None:
    """The system identifier of the cluster the repository's stanza belongs to (its newest db entry)."""
    dbs = [d for d in info.get("db") or [] if isinstance(d, dict) and d.get("system-id")]
    if not dbs:
        return None
    return int(max(dbs, key=lambda d: int(d.get("id", 0)))["system-id"])


def pg_system_id(settings: Settings) -> int | None:
    done = _run(
        [f"{settings.pg_bin_dir}/pg_controldata", settings.pg_data_dir],
        user="postgres",
        env={"LC_ALL": "C"},
        check=False,
        timeout=60,
    )
    return parse_system_id(done.stdout)


def other_cluster(settings: Settings) -> str:
    """Why the pgBackRest repository belongs to another PostgreSQL cluster than this host's ("": it does not)."""
    theirs = stanza_system_id(pgbackrest_info(settings))
    ours = pg_system_id(settings)
    if theirs is None or ours is None or theirs == ours:
        return ""
    return (
        f"the pgBackRest repository holds the backups of another PostgreSQL cluster (system identifier {theirs}; "
        f"this host's cluster is {ours}, a new one): WAL archiving and backups fail until "
        "`sciplat restore -i DIR --what db` (or --what all) puts that cluster back here"
    )


def _backup_type(settings: Settings, requested: str) -> str:
    if requested in ("full", "diff"):
        return requested
    backups = pgbackrest_backups(settings)
    fulls = [b for b in backups if b["type"] == "full"]
    if not fulls:
        return "full"
    every = dt.timedelta(days=int(settings.db.get("full_every_days", 7)))
    last = dt.datetime.fromisoformat(fulls[-1]["time"])
    return "full" if dt.datetime.now(dt.UTC) - last >= every else "diff"


def _backup_db(settings: Settings, kind: str) -> dict[str, Any]:
    kind = _backup_type(settings, kind)
    _pgbackrest(settings, ["backup", f"--type={kind}", *settings.retention.pgbackrest_args()], timeout=None)
    backups = pgbackrest_backups(settings)
    last = backups[-1] if backups else {}
    return {
        "snapshot": last.get("id", ""),
        "type": kind,
        "size_bytes": last.get("size_bytes", 0),
        "added_bytes": last.get("repository_bytes", 0),
        "backups": len(backups),
    }


def archive_check(settings: Settings) -> None:
    """Switch to a new WAL file and wait until it is in the repository (pgbackrest check)."""
    _pgbackrest(settings, ["check"], timeout=300)


# ------------------------------------------------------------------ the kinds


def _require_mounts(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.ismount(path):
            raise BackupError(
                f"{path} is not mounted: refusing to back up an empty directory in place of the shared one "
                "(check its mount unit, e.g. systemctl status 'home.mount')"
            )


def _homes_paths(settings: Settings) -> list[str]:
    paths = [str(p) for p in settings.homes.get("paths", ["/home", "/groups"])]
    if settings.homes.get("require_mount", True):
        _require_mounts(paths)
    return paths


def _backup_homes(settings: Settings) -> dict[str, Any]:
    return _restic_backup(settings, "homes", _homes_paths(settings), settings.homes.get("excludes", []))


def _bucket_settings(settings: Settings) -> Any:
    from sciplat_hub.backup_buckets import BucketSettings

    return BucketSettings.from_dict(settings.buckets, settings.cache_directory)


def _backup_buckets(settings: Settings) -> dict[str, Any]:
    """Sync the local mirror of every bucket with the object store, then back the mirror up."""
    from sciplat_hub.backup_buckets import BucketBackupError, mirror

    config = _bucket_settings(settings)
    try:
        counts = mirror(config)
    except BucketBackupError as exc:
        raise BackupError(str(exc)) from None
    result = _restic_backup(settings, "buckets", [str(config.mirror)])
    return {**result, "buckets": counts["buckets"], "objects": counts["objects"], "downloaded": counts["downloaded"]}


def _dump_and_backup(settings: Settings, what: str, dumps: dict[str, list[str]]) -> dict[str, Any]:
    """Run each dump command into a file of a private directory, back the directory up, remove the dumps."""
    directory = settings.dump_directory(what)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    try:
        for name, argv in dumps.items():
            with open(directory / name, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o600)
                _run(argv, stdout=handle, timeout=3600)
        return _restic_backup(settings, what, [str(directory)])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _directory_suffix(settings: Settings) -> str:
    """The accounts database's suffix: from the settings, else the first one slapd's configuration has."""
    if settings.directory.get("suffix"):
        return str(settings.directory["suffix"])
    done = _run(["slapcat", "-n", "0", "-a", "(olcSuffix=*)"], timeout=60)
    for line in done.stdout.splitlines():
        if line.lower().startswith("olcsuffix:"):
            return line.split(":", 1)[1].strip()
    raise BackupError("slapd's configuration has no database with a suffix (olcSuffix) to back up")


def _backup_directory(settings: Settings) -> dict[str, Any]:
    suffix = _directory_suffix(settings)
    return _dump_and_backup(
        settings,
        "directory",
        {"config.ldif": ["slapcat", "-n", "0"], "data.ldif": ["slapcat", "-b", suffix]},
    )


def _backup_slurm(settings: Settings) -> dict[str, Any]:
    database = str(settings.slurm.get("database", "slurm_acct_db"))
    dump = ["mariadb-dump", "--single-transaction", "--routines", "--triggers", "--databases", database]
    return _dump_and_backup(settings, "slurm", {f"{database}.sql": dump})


# ------------------------------------------------------------------ state and metrics


def _state_file(settings: Settings, what: str) -> Path:
    return Path(settings.state_directory) / f"{what}.json"


def read_state(settings: Settings, what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(_state_file(settings, what).read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def metrics_text(state: dict[str, Any]) -> str:
    what = state["what"]
    label = f'{{what="{what}"}}'
    series = [
        (
            "last_success_timestamp_seconds",
            "When the last successful backup finished (Unix time).",
            state.get("last_success"),
        ),
        ("last_run_timestamp_seconds", "When the last backup run finished, successful or not.", state.get("last_run")),
        ("last_run_success", "1 if the last backup run succeeded, else 0.", 1 if state.get("ok") else 0),
        ("last_duration_seconds", "Seconds the last successful backup took.", state.get("duration_seconds")),
        (
            "last_size_bytes",
            "Bytes the last successful backup covered (before deduplication).",
            state.get("size_bytes"),
        ),
        ("last_added_bytes", "Bytes the last successful backup added to the repository.", state.get("added_bytes")),
        ("backups", "Backups of this kind the repository keeps (after retention).", state.get("backups")),
    ]
    lines = []
    for name, help_text, value in series:
        if value is None:
            continue
        lines += [
            f"# HELP {METRIC_PREFIX}_{name} {help_text}",
            f"# TYPE {METRIC_PREFIX}_{name} gauge",
            f"{METRIC_PREFIX}_{name}{label} {float(value):.3f}",
        ]
    return "\n".join(lines) + "\n"


def _record(settings: Settings, what: str, result: dict[str, Any] | None, error: str, started: float) -> dict[str, Any]:
    now = time.time()
    state = read_state(settings, what)
    state.update({"what": what, "host": settings.hostname, "last_run": now, "ok": result is not None, "error": error})
    if result is not None:
        state.update(result)
        state["last_success"] = now
        state["duration_seconds"] = round(now - started, 3)
    path = _state_file(settings, what)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    textfiles = Path(settings.textfile_directory)
    if textfiles.is_dir():
        write_metrics(textfiles / f"{METRIC_PREFIX}_{what}.prom", metrics_text(state))
    return state


def backup(settings: Settings, what: str, *, kind: str = "auto", force: bool = False) -> dict[str, Any]:
    """One backup of `what`, with retention applied after it; records state and metrics either way."""
    if what not in settings.whats:
        raise BackupError(
            f"{settings.hostname} does not back up {what!r}; it backs up {', '.join(settings.whats) or 'nothing'}"
        )
    pending = read_state(settings, what).get("restore_pending")
    if pending and not force:
        refused = (
            f"{pending.get('reason', 'the repository holds backups this host has not restored')}. "
            f"Not backing up the new, empty {what} over them: {RESTORE_FIRST}; or, to keep this host's "
            f"data and back it up into that repository, sciplat-backup resume {what}"
        )
        # a failed run in the state and the metrics (last_run_success 0), the last success kept
        _record(settings, what, None, refused, time.time())
        raise BackupError(f"{what}: {refused}")
    started = time.time()
    with _lock(settings, what):
        try:
            if what == "db":
                result = _backup_db(settings, kind)
            elif what == "homes":
                result = _backup_homes(settings)
            elif what == "directory":
                result = _backup_directory(settings)
            elif what == "buckets":
                result = _backup_buckets(settings)
            else:
                result = _backup_slurm(settings)
        except (BackupError, subprocess.TimeoutExpired, OSError) as exc:
            _record(settings, what, None, str(exc), started)
            raise BackupError(f"{what}: {exc}") from None
        return _record(settings, what, result, "", started)


def repository_state(backups: int, history: bool, pending: bool, foreign: str) -> str:
    """How this host stands to a kind's repository.

    - "other-cluster": db only, the repository belongs to another PostgreSQL cluster;
    - "empty": it holds no backup yet: back up (the first backup of a new platform);
    - "ours": this host has backed up into it or restored from it (or, db, it is
      the same cluster);
    - "restore-first": it holds backups this host has never seen: the host was
      rebuilt (or the kind moved here); its services are new and empty, so backing
      them up would make an empty backup the latest one.
    """
    if foreign:
        return "other-cluster"
    if pending:
        return "restore-first"
    if backups == 0:
        return "empty"
    return "ours" if history else "restore-first"


def _has_history(state: dict[str, Any]) -> bool:
    return any(state.get(k) for k in ("last_success", "last_restore", "resumed"))


def _write_state(settings: Settings, what: str, state: dict[str, Any]) -> None:
    path = _state_file(settings, what)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def init(settings: Settings) -> dict[str, Any]:
    """Bucket and repositories for the kinds of this host (idempotent), and how this host stands to each.

    `first_backup`: kinds whose repository holds no backup (the deploy starts one);
    `restore_first`: kinds whose repository holds backups this host has not restored
    (marked in the state: `run` refuses them until `restore` or `resume`).
    """
    changed: list[str] = []
    if ensure_bucket(settings.s3):
        changed.append(f"bucket {settings.s3.bucket}")
    kinds: dict[str, dict[str, Any]] = {}
    for what in settings.whats:
        with _lock(settings, what):
            created = pgbackrest_init(settings) if what == "db" else restic_init(settings, what)
            if created:
                changed.append(f"repository {what}")
            backups = len(pgbackrest_backups(settings)) if what == "db" else len(restic_snapshots(settings, what))
            foreign = other_cluster(settings) if what == "db" and not created else ""
            state = read_state(settings, what)
            history = _has_history(state) or (what == "db" and not foreign)
            standing = repository_state(backups, history, bool(state.get("restore_pending")), foreign)
            reason = foreign or (
                f"the {what} repository holds backups from before this host was (re)built"
                if standing == "restore-first"
                else ""
            )
            if reason and state.get("restore_pending", {}).get("reason") != reason:
                state.update({"what": what, "host": settings.hostname})
                state["restore_pending"] = {"since": time.time(), "reason": reason}
                _write_state(settings, what, state)
                changed.append(f"{what} waits for a restore")
            kinds[what] = {"repository": standing, "backups": backups, "reason": reason}
    waiting = [w for w, k in kinds.items() if k["repository"] in ("restore-first", "other-cluster")]
    return {
        "changed": bool(changed),
        "created": changed,
        "kinds": kinds,
        "first_backup": [w for w, k in kinds.items() if k["repository"] == "empty"],
        "restore_first": waiting,
        "message": (
            f"{', '.join(waiting)}: the repository holds backups this host has not restored; no backup runs "
            f"until then ({RESTORE_FIRST}, or sciplat-backup resume KIND on this host to start afresh)"
            if waiting
            else ""
        ),
    }


def resume(settings: Settings, what: str) -> dict[str, Any]:
    """Back up this host's (new) data into a repository that holds older backups, without restoring them."""
    if what not in settings.whats:
        raise BackupError(f"{settings.hostname} does not back up {what!r}")
    with _lock(settings, what):
        if what == "db" and (foreign := other_cluster(settings)):
            raise BackupError(
                f"{foreign}. To start afresh instead, move the old repository aside by hand "
                f"(pgbackrest --stanza={settings.stanza} stop; stanza-delete), then deploy again"
            )
        state = read_state(settings, what) or {"what": what, "host": settings.hostname}
        was = state.pop("restore_pending", None)
        state["resumed"] = time.time()
        _write_state(settings, what, state)
    return {"what": what, "resumed": True, "was_waiting": bool(was)}


def status(settings: Settings, *, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    out = []
    for what in settings.whats:
        state = read_state(settings, what) or {"what": what, "host": settings.hostname}
        success = state.get("last_success")
        state["age_seconds"] = round(now - success, 1) if success else None
        pending = state.get("restore_pending")
        if pending:
            state["ok"] = False
            state["error"] = f"{pending.get('reason', 'waits for a restore')}; {RESTORE_FIRST}"
        out.append(state)
    return out


def snapshots(settings: Settings, what: str) -> list[dict[str, Any]]:
    if what == "db":
        return pgbackrest_backups(settings)
    return [
        {"id": s["short_id"], "type": "snapshot", "time": s["time"], "paths": s.get("paths", [])}
        for s in restic_snapshots(settings, what)
    ]


# ------------------------------------------------------------------ restore


def _systemctl(action: str, unit: str) -> None:
    _run(["systemctl", action, unit], timeout=300)


def _wait_postgres(settings: Settings, *, socket_dir: str = "/var/run/postgresql", port: int | None = None) -> None:
    port = port or int(settings.db.get("port", 5432))
    deadline = time.monotonic() + float(settings.db.get("ready_timeout", 300))
    query = "SELECT pg_is_in_recovery()"
    scratch = socket_dir != "/var/run/postgresql"
    began, seen_running = time.monotonic(), False
    while time.monotonic() < deadline:
        if scratch:
            # a scratch copy is started without waiting (pg_ctl -W): its pid file appears a moment later
            running = (Path(socket_dir) / "postmaster.pid").exists()
            seen_running = seen_running or running
            if not running and (seen_running or time.monotonic() - began > 30):
                raise BackupError(f"PostgreSQL (port {port}) stopped during recovery")
        done = _run(
            ["psql", "-XAtq", "-h", socket_dir, "-p", str(port), "-d", "postgres", "-c", query],
            user="postgres",
            check=False,
            timeout=30,
        )
        if done.returncode == 0 and done.stdout.strip() == "f":
            return
        time.sleep(1)
    raise BackupError(f"PostgreSQL (port {port}) did not finish recovery within the timeout; see its log")


def _restore_db_in_place(settings: Settings, to: dt.datetime | None) -> dict[str, Any]:
    target = _pgbackrest_target(to)
    _systemctl("stop", settings.pg_service)
    try:
        _pgbackrest(settings, ["--delta", RESTORE_PROCESSES, *target, "restore"], timeout=None)
    finally:
        # started in every case: after a failed restore the old files are still there (--delta)
        _systemctl("start", settings.pg_service)
    _wait_postgres(settings)
    return {"restored": "db", "into": settings.pg_data_dir, "to": to.isoformat() if to else "latest"}


# restores fetch many files: in parallel, most of the time is waiting for S3
RESTORE_PROCESSES = "--process-max=4"


def _pgbackrest_target(to: dt.datetime | None) -> list[str]:
    if to is None:
        return ["--type=default"]
    return ["--type=time", f"--target={to.strftime('%Y-%m-%d %H:%M:%S.%f+00')}", "--target-action=promote"]


SCRATCH_CONF = """\
# A restored copy of the platform's PostgreSQL for checks (sciplat-backup restore db --into).
listen_addresses = ''
port = {port}
unix_socket_directories = '{socket_dir}'
hba_file = '{data_dir}/pg_hba.conf'
ident_file = '{data_dir}/pg_ident.conf'
max_connections = 20
# no connections before recovery ends: also lifts hot standby's rule that
# max_connections and friends be at least the primary's
hot_standby = off
shared_buffers = 32MB
archive_mode = off
ssl = off
shared_preload_libraries = 'pg_stat_statements'
"""


def _restore_db_scratch(settings: Settings, to: dt.datetime | None, into: Path, port: int) -> dict[str, Any]:
    """Restore into a directory of its own and start it on `port` (socket in the directory only).

    The live cluster is not touched; archiving is off in the copy, so its new timeline
    never reaches the repository.
    """
    live = Path(settings.pg_data_dir).resolve()
    into = into.resolve()
    if into == live or live in into.parents or into in live.parents:
        raise BackupError(f"--into {into} overlaps the live data directory {live}")
    if into.exists() and any(into.iterdir()):
        raise BackupError(f"--into {into} is not empty; choose a new directory (or sciplat-backup scratch-stop it)")
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.chown(into, "postgres", "postgres")
    target = _pgbackrest_target(to)
    _pgbackrest(
        settings, [f"--pg1-path={into}", "--archive-mode=off", RESTORE_PROCESSES, *target, "restore"], timeout=None
    )
    (into / "postgresql.conf").write_text(SCRATCH_CONF.format(port=port, socket_dir=into, data_dir=into))
    (into / "pg_hba.conf").write_text("local all all peer\n")
    (into / "pg_ident.conf").write_text("")
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.chown(into / name, "postgres", "postgres")
    log = into.parent / f"{into.name}.log"
    log.touch()
    shutil.chown(log, "postgres", "postgres")
    # -W: recovery may take longer than pg_ctl waits; _wait_postgres waits for its end
    _run([f"{settings.pg_bin_dir}/pg_ctl", "-D", str(into), "-l", str(log), "-W", "start"], user="postgres")
    try:
        _wait_postgres(settings, socket_dir=str(into), port=port)
    except BackupError as exc:
        tail = " / ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        raise BackupError(f"{exc}: {tail}") from None
    return {
        "restored": "db",
        "into": str(into),
        "port": port,
        "socket_dir": str(into),
        "to": to.isoformat() if to else "latest",
        "stop": f"sciplat-backup scratch-stop {into}",
    }


def scratch_stop(settings: Settings, into: Path) -> dict[str, Any]:
    into = into.resolve()
    if into == Path(settings.pg_data_dir).resolve():
        raise BackupError(f"{into} is the live data directory")
    if (
        not (into / "postgresql.conf").is_file()
        or "sciplat-backup restore db --into" not in (into / "postgresql.conf").read_text()
    ):
        raise BackupError(f"{into} is not a scratch copy made by sciplat-backup restore db --into")
    if (into / "postmaster.pid").exists():
        _run(
            [f"{settings.pg_bin_dir}/pg_ctl", "-D", str(into), "-m", "fast", "-w", "stop"], user="postgres", check=False
        )
    shutil.rmtree(into)
    (into.parent / f"{into.name}.log").unlink(missing_ok=True)
    return {"removed": str(into)}


def _restore_homes(settings: Settings, to: dt.datetime | None, paths: Sequence[str]) -> dict[str, Any]:
    # into the shared filesystem, never into the empty directories under an absent mount
    _homes_paths(settings)
    snapshot = snapshot_before(settings, "homes", to)
    args = ["restore", snapshot["id"], "--target", "/"]
    for path in paths:
        args += ["--include", path]
    _restic(settings, "homes", args, timeout=None)
    return {
        "restored": "homes",
        "snapshot": snapshot["short_id"],
        "time": snapshot["time"],
        "paths": list(paths) or snapshot["paths"],
    }


def _restore_buckets(settings: Settings, to: dt.datetime | None) -> dict[str, Any]:
    """The snapshot's mirror into a scratch directory, then users, buckets and objects back into RGW."""
    from sciplat_hub.backup_buckets import BucketBackupError, restore_from

    config = _bucket_settings(settings)
    snapshot = snapshot_before(settings, "buckets", to)
    Path(settings.cache_directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = Path(tempfile.mkdtemp(prefix="restore-buckets-", dir=settings.cache_directory))
    try:
        _restic(settings, "buckets", ["restore", snapshot["id"], "--target", str(scratch)], timeout=None)
        root = scratch / str(config.mirror).lstrip("/")
        try:
            counts = restore_from(root, config)
        except BucketBackupError as exc:
            raise BackupError(str(exc)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"restored": "buckets", "snapshot": snapshot["short_id"], "time": snapshot["time"], **counts}


def _restore_from_dump(
    settings: Settings, what: str, to: dt.datetime | None, name: str, tmp: Path
) -> tuple[dict[str, Any], Path]:
    snapshot = snapshot_before(settings, what, to)
    source = settings.dump_directory(what) / name
    _restic(settings, what, ["restore", snapshot["id"], "--target", str(tmp), "--include", str(source)], timeout=None)
    restored = tmp / str(source).lstrip("/")
    if not restored.is_file():
        raise BackupError(f"snapshot {snapshot['short_id']} of {what} has no {source}")
    return snapshot, restored


def _ldap_db_directory(settings: Settings, suffix: str) -> Path:
    done = _run(["slapcat", "-n", "0", "-a", f"(olcSuffix={suffix})"], check=False, timeout=60)
    for line in done.stdout.splitlines():
        if line.lower().startswith("olcdbdirectory:"):
            return Path(line.split(":", 1)[1].strip())
    return Path(str(settings.directory.get("db_dir", "/var/lib/ldap")))


def _restore_directory(settings: Settings, to: dt.datetime | None) -> dict[str, Any]:
    suffix = _directory_suffix(settings)
    service = str(settings.directory.get("service", "slapd"))
    with tempfile.TemporaryDirectory(prefix="sciplat-restore-") as tmp:
        snapshot, ldif = _restore_from_dump(settings, "directory", to, "data.ldif", Path(tmp))
        db_dir = _ldap_db_directory(settings, suffix)
        aside = db_dir.with_name(f"{db_dir.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
        _systemctl("stop", service)
        try:
            db_dir.rename(aside)
            db_dir.mkdir(mode=0o700)
            shutil.copystat(aside, db_dir)
            _run(["slapadd", "-q", "-b", suffix, "-l", str(ldif)], timeout=3600)
            _run(["chown", "-R", "--reference", str(aside), str(db_dir)])
        except BackupError:
            shutil.rmtree(db_dir, ignore_errors=True)
            aside.rename(db_dir)
            raise
        finally:
            _systemctl("start", service)
    return {"restored": "directory", "snapshot": snapshot["short_id"], "time": snapshot["time"], "previous": str(aside)}


def _restore_slurm(settings: Settings, to: dt.datetime | None) -> dict[str, Any]:
    database = str(settings.slurm.get("database", "slurm_acct_db"))
    service = str(settings.slurm.get("service", "slurmdbd"))
    with tempfile.TemporaryDirectory(prefix="sciplat-restore-") as tmp:
        snapshot, dump = _restore_from_dump(settings, "slurm", to, f"{database}.sql", Path(tmp))
        _systemctl("stop", service)
        try:
            with open(dump, encoding="utf-8") as handle:
                process = subprocess.run(["mariadb"], stdin=handle, capture_output=True, text=True, check=False)
            if process.returncode != 0:
                raise BackupError(f"mariadb refused the dump: {process.stderr.strip()[-300:]}")
        finally:
            _systemctl("start", service)
    reloaded = _reload_slurm_associations(settings)
    return {"restored": "slurm", "snapshot": snapshot["short_id"], "time": snapshot["time"], **reloaded}


def _reload_slurm_associations(settings: Settings) -> dict[str, Any]:
    """slurmctld reads the restored associations, with every user mapped to their uid.

    The restore replaced slurmdbd's tables behind slurmctld's back: slurmctld
    still enforces the associations it had cached, so a restored user's jobs
    were refused ("Invalid account or account/partition combination") until
    it restarted. It maps each association's user name to a uid when it loads
    them, and a name the host cannot resolve then (SSSD offline while slapd
    was being restored, or a negative cache entry) leaves that user without a
    default account until the next restart: so SSSD goes online and forgets
    what it cached, the users are waited for, and then slurmctld restarts.
    Running jobs carry on.
    """
    controller = str(settings.slurm.get("controller_service", "slurmctld"))
    if subprocess.run(["systemctl", "is-active", "--quiet", controller], check=False).returncode != 0:
        return {}  # no controller on this host, or it is stopped on purpose: it reads them when it starts
    timeout = float(settings.slurm.get("ready_timeout", 120))
    _wait_until(lambda: _answers(["sacctmgr", "--noheader", "show", "cluster"]) is not None, timeout,
                "slurmdbd did not answer after the restore; restart slurmctld once it does")  # fmt: skip
    users = [u for u in (_answers(["sacctmgr", "-nP", "show", "user", "format=user"]) or "").split() if u != "root"]
    if subprocess.run(["systemctl", "is-active", "--quiet", "sssd"], check=False).returncode == 0:
        subprocess.run(["systemctl", "kill", "--signal=SIGUSR2", "sssd"], capture_output=True, check=False)
        subprocess.run(["sss_cache", "-E"], capture_output=True, check=False)
    unresolved = _unresolved(users, float(settings.slurm.get("users_timeout", 60)))
    _systemctl("restart", controller)
    _wait_until(lambda: "is UP" in (_answers(["scontrol", "ping"]) or ""), timeout,
                "slurmctld did not answer after its restart; see `journalctl -u slurmctld`")  # fmt: skip
    # users the directory does not know (deleted since): their associations wait for them
    return {"users": len(users), "unresolved_users": unresolved[:20]}


def _unresolved(users: list[str], timeout: float) -> list[str]:
    """The users that still have no account on this host after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    missing = list(users)
    while True:
        missing = [user for user in missing if not _resolves(user)]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(2)


def _resolves(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _answers(argv: list[str]) -> str | None:
    """The command's output when it succeeds, None when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def _wait_until(ready: Callable[[], object], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise BackupError(failure)
        time.sleep(2)


def restore(
    settings: Settings,
    what: str,
    *,
    to: dt.datetime | None = None,
    paths: Sequence[str] = (),
    into: Path | None = None,
    port: int = 5499,
) -> dict[str, Any]:
    if what not in settings.whats:
        raise BackupError(
            f"{settings.hostname} does not back up {what!r}; it backs up {', '.join(settings.whats) or 'nothing'}"
        )
    if paths and what != "homes":
        raise BackupError("--path applies to homes only")
    if into is not None and what != "db":
        raise BackupError("--into applies to db only")
    with _lock(settings, what):
        if what == "db":
            result = _restore_db_scratch(settings, to, into, port) if into else _restore_db_in_place(settings, to)
        elif what == "homes":
            result = _restore_homes(settings, to, paths)
        elif what == "directory":
            result = _restore_directory(settings, to)
        elif what == "buckets":
            result = _restore_buckets(settings, to)
        else:
            result = _restore_slurm(settings, to)
        if into is None:
            state = read_state(settings, what) or {"what": what, "host": settings.hostname}
            state["last_restore"] = {**result, "finished": time.time()}
            # restored: the repository's backups are this host's now, backups may run again
            state.pop("restore_pending", None)
            _write_state(settings, what, state)
        return result


# ------------------------------------------------------------------ command line


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=2, sort_keys=True, default=str))
        return
    rows = value if isinstance(value, list) else [value]
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in sorted(row.items()) if not isinstance(v, (dict, list))))


def _whats(settings: Settings, names: Sequence[str]) -> list[str]:
    if not names or "all" in names:
        return list(settings.whats)
    return list(names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-backup", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the bucket and this host's repositories (idempotent)")
    run = sub.add_parser("run", help="back up now (WHAT: db, homes, directory, slurm, buckets or all of this host)")
    run.add_argument("what", nargs="*", default=["all"])
    run.add_argument("--type", choices=["auto", "full", "diff"], default="auto", help="db: backup type")
    for name in ("daily", "weekly", "monthly"):
        run.add_argument(f"--keep-{name}", type=int, help=f"this run only: keep {name} backups (default: settings)")
    sub.add_parser("status", help="last backup of every kind on this host, and its age")
    snaps = sub.add_parser("snapshots", help="the backups a repository holds")
    snaps.add_argument("what", choices=WHATS)
    rest = sub.add_parser("restore", help="restore from the last backup (before --to)")
    rest.add_argument("what", choices=WHATS)
    rest.add_argument("--to", help="ISO 8601 time; db: point in time, others: the last backup before it")
    rest.add_argument("--path", action="append", default=[], help="homes: only this path (repeatable)")
    rest.add_argument("--into", type=Path, help="db: restore into this new directory and start it on --port")
    rest.add_argument("--port", type=int, default=5499)
    res = sub.add_parser(
        "resume", help="back up again into a repository whose older backups were not restored here (keeps them)"
    )
    res.add_argument("what", choices=WHATS)
    stop = sub.add_parser("scratch-stop", help="stop and remove a copy made by restore db --into")
    stop.add_argument("into", type=Path)
    sub.add_parser("archive-check", help="db: switch WAL and wait until it is archived")
    sub.add_parser(
        "slurm-reload", help="slurm: slurmctld reloads its associations once their users resolve on this host"
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.load(args.config)
        if args.command == "init":
            _print(init(settings), args.json)
        elif args.command == "run":
            overrides = {n: getattr(args, f"keep_{n}") for n in ("daily", "weekly", "monthly")}
            for name, value in overrides.items():
                if value is not None:
                    setattr(settings.retention, name, value)
            results, failed = [], []
            for what in _whats(settings, args.what):
                try:
                    results.append(backup(settings, what, kind=args.type))
                except BackupError as exc:
                    failed.append(str(exc))
                    results.append(read_state(settings, what) or {"what": what, "ok": False, "error": str(exc)})
            _print(results, args.json)
            if failed:
                print("sciplat-backup: " + "; ".join(failed), file=sys.stderr)
                return 1
        elif args.command == "status":
            _print(status(settings), args.json)
        elif args.command == "snapshots":
            _print(snapshots(settings, args.what), args.json)
        elif args.command == "restore":
            to = parse_time(args.to) if args.to else None
            _print(restore(settings, args.what, to=to, paths=args.path, into=args.into, port=args.port), args.json)
        elif args.command == "resume":
            _print(resume(settings, args.what), args.json)
        elif args.command == "scratch-stop":
            _print(scratch_stop(settings, args.into), args.json)
        elif args.command == "slurm-reload":
            _print(_reload_slurm_associations(settings), args.json)
        elif args.command == "archive-check":
            archive_check(settings)
            _print({"archived": True}, args.json)
    except (BackupError, subprocess.TimeoutExpired) as exc:
        print(f"sciplat-backup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
