"""Backups: sciplat_hub.backup (retention, times, state and metrics, bucket creation),
`sciplat backup`/`sciplat restore` input handling, the spec rendered for roles/backup."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.commands import backup as backup_cmd
from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat_hub import backup
from tests.conftest import REPO


def settings(
    tmp_path: Path, whats: list[str] | None = None, endpoint: str = "https://s3.example.org"
) -> backup.Settings:
    return backup.Settings.from_dict(
        {
            "hostname": "data",
            "whats": whats if whats is not None else ["db", "directory"],
            "s3": {
                "endpoint": endpoint,
                "bucket": "sciplat-backup",
                "prefix": "site",
                "region": "default",
                "access_key": "AK",
                "secret_key": "SK",
            },
            "restic_password": "pw",
            "retention": {"daily": 2, "weekly": 1, "monthly": 0},
            "textfile_directory": str(tmp_path / "textfile"),
            "state_directory": str(tmp_path / "state"),
            "directory": {"suffix": "dc=example,dc=org"},
        }
    )


# ------------------------------------------------------------------ retention


def test_restic_retention_applies_every_nonzero_count() -> None:
    assert backup.Retention(daily=7, weekly=4, monthly=6).restic_args() == [
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "6",
    ]
    assert backup.Retention(daily=1, weekly=0, monthly=0).restic_args() == ["--keep-daily", "1"]


def test_a_retention_of_nothing_is_refused_rather_than_deleting_every_backup() -> None:
    with pytest.raises(backup.BackupError, match="keeps nothing"):
        backup.Retention(daily=0, weekly=0, monthly=0).restic_args()


def test_pgbackrest_keeps_weekly_fulls_and_daily_differentials_at_least_one() -> None:
    assert backup.Retention(daily=7, weekly=4, monthly=6).pgbackrest_args() == [
        "--repo1-retention-full=4",
        "--repo1-retention-diff=7",
    ]
    assert backup.Retention(daily=0, weekly=0, monthly=3).pgbackrest_args() == [
        "--repo1-retention-full=1",
        "--repo1-retention-diff=1",
    ]


def test_run_overrides_retention_for_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    config = tmp_path / "config.json"
    s = settings(tmp_path, whats=["homes"])
    config.write_text(json.dumps({"whats": ["homes"], "s3": s.s3.__dict__, "state_directory": s.state_directory}))

    def fake_homes(current: backup.Settings) -> dict[str, Any]:
        seen.append(current.retention.restic_args())
        return {"snapshot": "abc", "size_bytes": 10, "added_bytes": 1, "backups": 1}

    monkeypatch.setattr(backup, "_backup_homes", fake_homes)
    assert backup.main(["--config", str(config), "run", "homes", "--keep-daily", "1", "--keep-weekly", "0"]) == 0
    assert seen == [["--keep-daily", "1", "--keep-monthly", "6"]]


# ------------------------------------------------------------------ times


def test_times_without_zone_are_local_and_all_come_back_in_utc() -> None:
    assert backup.parse_time("2026-12-04T18:30:00Z") == dt.datetime(2026, 12, 4, 18, 30, tzinfo=dt.UTC)
    assert backup.parse_time("2026-12-04 19:30:00+01:00") == dt.datetime(2026, 12, 4, 18, 30, tzinfo=dt.UTC)
    naive = backup.parse_time("2026-12-04 18:30:00")
    assert naive.tzinfo == dt.UTC
    with pytest.raises(backup.BackupError, match="is not a time"):
        backup.parse_time("yesterday")


def test_restic_snapshot_times_with_nanoseconds_parse() -> None:
    parsed = backup._restic_time("2026-12-04T18:30:01.123456789+00:00")
    assert parsed == dt.datetime(2026, 12, 4, 18, 30, 1, 123456, tzinfo=dt.UTC)
    assert backup._restic_time("2026-12-04T18:30:01Z") == dt.datetime(2026, 12, 4, 18, 30, 1, tzinfo=dt.UTC)


def test_restore_takes_the_last_snapshot_before_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, whats=["homes"])
    snaps = [
        {"id": "a" * 64, "short_id": "aaaa", "time": "2026-12-04T10:00:00.5+00:00", "paths": ["/home"]},
        {"id": "b" * 64, "short_id": "bbbb", "time": "2026-12-04T12:00:00.5+00:00", "paths": ["/home"]},
        {"id": "c" * 64, "short_id": "cccc", "time": "2026-12-04T14:00:00.5+00:00", "paths": ["/home"]},
    ]
    monkeypatch.setattr(backup, "restic_snapshots", lambda _s, _w: snaps)
    assert backup.snapshot_before(s, "homes", None)["short_id"] == "cccc"
    assert backup.snapshot_before(s, "homes", backup.parse_time("2026-12-04T13:00:00Z"))["short_id"] == "bbbb"
    with pytest.raises(backup.BackupError, match="no homes backup taken before"):
        backup.snapshot_before(s, "homes", backup.parse_time("2026-12-04T09:00:00Z"))


def test_pitr_target_is_an_explicit_utc_time_with_promotion() -> None:
    target = backup._pgbackrest_target(backup.parse_time("2026-12-04T18:30:00.25Z"))
    assert target == ["--type=time", "--target=2026-12-04 18:30:00.250000+00", "--target-action=promote"]
    assert backup._pgbackrest_target(None) == ["--type=default"]


# ------------------------------------------------------------------ repositories


def test_repositories_live_under_the_prefix_of_one_bucket(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.restic_repository("homes") == "s3:https://s3.example.org/sciplat-backup/site/restic/homes"
    s.s3.prefix = ""
    assert s.restic_repository("slurm") == "s3:https://s3.example.org/sciplat-backup/restic/slurm"


def test_unknown_kinds_in_the_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError, match="unknown backup kind"):
        settings(tmp_path, whats=["db", "mail"])


def test_a_kind_this_host_does_not_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(backup.BackupError, match="does not back up 'homes'"):
        backup.backup(settings(tmp_path), "homes")
    with pytest.raises(backup.BackupError, match="--path applies to homes only"):
        backup.restore(settings(tmp_path), "db", paths=["/home/x"])


def test_homes_are_not_backed_up_when_the_shared_filesystem_is_not_mounted(tmp_path: Path) -> None:
    empty = tmp_path / "home"
    empty.mkdir()
    with pytest.raises(backup.BackupError, match="is not mounted"):
        backup._require_mounts([str(empty)])


# ------------------------------------------------------------------ state and metrics


def test_success_writes_the_metrics_the_alert_rules_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path)
    (tmp_path / "textfile").mkdir()
    monkeypatch.setattr(
        backup, "_backup_directory", lambda _s: {"snapshot": "x", "size_bytes": 2048, "added_bytes": 5, "backups": 3}
    )
    state = backup.backup(s, "directory")
    text = (tmp_path / "textfile" / "sciplat_backup_directory.prom").read_text()
    rules = yaml.safe_load((REPO / "roles/monitor/files/rules/backup.yml").read_text())
    metric = "sciplat_backup_last_success_timestamp_seconds"
    assert all(metric in rule["expr"] for group in rules["groups"] for rule in group["rules"])
    assert f'{metric}{{what="directory"}} {state["last_success"]:.3f}' in text
    assert 'sciplat_backup_last_run_success{what="directory"} 1.000' in text
    assert 'sciplat_backup_backups{what="directory"} 3.000' in text
    assert 'sciplat_backup_last_size_bytes{what="directory"} 2048.000' in text


def test_a_failed_run_keeps_the_last_success_and_says_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings(tmp_path)
    (tmp_path / "textfile").mkdir()
    monkeypatch.setattr(backup, "_backup_directory", lambda _s: {"snapshot": "x", "size_bytes": 1, "backups": 1})
    first = backup.backup(s, "directory")

    def broken(_s: backup.Settings) -> dict[str, Any]:
        raise backup.BackupError("slapcat failed")

    monkeypatch.setattr(backup, "_backup_directory", broken)
    with pytest.raises(backup.BackupError, match="directory: slapcat failed"):
        backup.backup(s, "directory")
    state = backup.read_state(s, "directory")
    assert state["last_success"] == first["last_success"]
    assert state["ok"] is False and "slapcat failed" in state["error"]
    text = (tmp_path / "textfile" / "sciplat_backup_directory.prom").read_text()
    assert f'sciplat_backup_last_success_timestamp_seconds{{what="directory"}} {first["last_success"]:.3f}' in text
    assert 'sciplat_backup_last_run_success{what="directory"} 0.000' in text


def test_a_kind_that_never_succeeded_exports_no_success_time(tmp_path: Path) -> None:
    text = backup.metrics_text({"what": "db", "ok": False, "last_run": 5.0})
    assert "last_success_timestamp_seconds" not in text
    assert 'sciplat_backup_last_run_success{what="db"} 0.000' in text


def test_status_reports_age_and_kinds_without_a_run(tmp_path: Path) -> None:
    s = settings(tmp_path)
    state_dir = Path(s.state_directory)
    state_dir.mkdir(parents=True)
    (state_dir / "db.json").write_text(json.dumps({"what": "db", "last_success": 1000.0, "ok": True}))
    rows = {r["what"]: r for r in backup.status(s, now=1600.0)}
    assert rows["db"]["age_seconds"] == 600.0
    assert rows["directory"]["age_seconds"] is None


def test_scratch_stop_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    other = tmp_path / "pgdata"
    other.mkdir()
    (other / "postgresql.conf").write_text("port = 5432\n")
    with pytest.raises(backup.BackupError, match="not a scratch copy"):
        backup.scratch_stop(settings(tmp_path), other)
    assert other.exists()


def test_scratch_restore_refuses_the_live_data_directory(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.db["data_dir"] = str(tmp_path / "main")
    with pytest.raises(backup.BackupError, match="overlaps the live data directory"):
        backup.restore(s, "db", into=tmp_path / "main" / "copy")


# ------------------------------------------------------------------ the bucket


class _FakeS3(http.server.BaseHTTPRequestHandler):
    buckets: ClassVar[set[str]] = set()
    requests: ClassVar[list[tuple[str, str, str]]] = []

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.requests.append(("HEAD", self.path, self.headers.get("Authorization", "")))
        self._answer(200 if self.path.strip("/") in self.buckets else 404)

    def do_PUT(self) -> None:
        self.requests.append(("PUT", self.path, self.headers.get("Authorization", "")))
        self.buckets.add(self.path.strip("/"))
        self._answer(200)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_platform_bucket_is_created_once_with_signed_requests(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s = settings(tmp_path, endpoint=f"http://127.0.0.1:{server.server_port}")
        s.s3.create_bucket = True
        assert backup.ensure_bucket(s.s3) is True
        assert backup.ensure_bucket(s.s3) is False
        methods = [(m, p) for m, p, _ in _FakeS3.requests]
        assert methods == [("HEAD", "/sciplat-backup"), ("PUT", "/sciplat-backup"), ("HEAD", "/sciplat-backup")]
        assert all(a.startswith("AWS4-HMAC-SHA256 Credential=AK/") for _, _, a in _FakeS3.requests)
        s.s3.bucket, s.s3.create_bucket = "someone-elses", False
        with pytest.raises(backup.BackupError, match="create it"):
            backup.ensure_bucket(s.s3)
    finally:
        server.shutdown()


# ------------------------------------------------------------------ sciplat backup / restore


def test_what_takes_repeatable_and_comma_separated_kinds() -> None:
    assert backup_cmd.parse_kinds(None) == ["all"]
    assert backup_cmd.parse_kinds(["db,homes", "db"]) == ["db", "homes"]
    assert backup_cmd.parse_kinds(["homes", "all"]) == ["all"]
    with pytest.raises(backup_cmd.BackupCommandError, match="--what mail"):
        backup_cmd.parse_kinds(["mail"])


def test_to_is_sent_to_the_hosts_as_utc_and_never_in_the_future() -> None:
    now = dt.datetime(2026, 12, 4, 19, 0, tzinfo=dt.UTC)
    assert backup_cmd.parse_to("2026-12-04T19:30:00+01:00", now=now) == "2026-12-04T18:30:00+00:00"
    assert backup_cmd.parse_to(None) == ""
    with pytest.raises(backup_cmd.BackupCommandError, match="in the future"):
        backup_cmd.parse_to("2026-12-04T20:00:00Z", now=now)
    with pytest.raises(backup_cmd.BackupCommandError, match="is not a time"):
        backup_cmd.parse_to("last tuesday", now=now)


def test_each_kind_runs_on_the_first_host_of_its_group() -> None:
    groups = {
        "db": ["data"],
        "hub": ["gw", "gw2"],
        "directory": ["data"],
        "slurm_controller": [],
        "all": ["data", "gw"],
    }
    assert backup_cmd.backup_hosts(groups) == {"db": "data", "homes": "gw", "directory": "data", "buckets": "gw"}


def test_restore_refuses_path_for_other_kinds_before_touching_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["restore", "-i", str(tmp_path), "--what", "db", "--path", "/home/x", "--yes"])
    assert result.exit_code == 2
    assert "--path applies to --what homes only" in result.output


def test_upgrade_finds_the_backup_it_takes_first() -> None:
    import inspect

    from sciplat.commands import upgrade

    assert "what" in inspect.signature(backup_cmd.run_backup_now).parameters
    assert "run_backup_now" in inspect.getsource(upgrade.run_backup)


# ------------------------------------------------------------------ the spec and the role


def test_the_backup_section_reaches_the_role(tmp_path: Path) -> None:
    spec = PlatformSpec.model_validate(
        {
            "platform": {"name": "lab", "domain": "lab.example.org"},
            "backup": {"schedule": "*-*-* 03:00:00", "target": "s3://site-backups/lab", "retention": {"daily": 3}},
        }
    )
    values = role_vars(spec, tmp_path)
    assert values["backup_enabled"] is True
    assert values["backup_schedule"] == "*-*-* 03:00:00"
    assert values["backup_target"] == "s3://site-backups/lab"
    assert values["backup_retention"] == {"daily": 3, "weekly": 4, "monthly": 6}


def test_role_retention_defaults_are_the_specs() -> None:
    defaults = yaml.safe_load((REPO / "roles/backup/defaults/main.yml").read_text())
    assert (
        defaults["backup_retention"]
        == PlatformSpec.model_validate(
            {"platform": {"name": "lab", "domain": "lab.example.org"}}
        ).backup.retention.model_dump()
    )
    assert defaults["backup_schedule"] == "*-*-* 02:30:00"


def test_site_playbook_applies_the_role_after_the_services_it_backs_up() -> None:
    plays = yaml.safe_load((REPO / "playbooks/site.yml").read_text())
    names = [[r["role"] if isinstance(r, dict) else r for r in p.get("roles", [])] for p in plays]
    index = {role: i for i, roles in enumerate(names) for role in roles}
    assert index["backup"] > max(index["postgresql"], index["directory"], index["ceph"], index["slurm_controller"])
    assert "backup" in plays[index["backup"]]["tags"]
