"""Account provisioning (sciplat_hub.provision) with fake steps: order, skips, failures, retries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import pytest

from sciplat_hub import provision
from sciplat_hub.provision import Context, run_steps


@dataclass
class FakeStep:
    name: str
    skip: str | None = None
    fail: Exception | None = None
    env: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    made: set[str] = field(default_factory=set)

    def available(self) -> str | None:
        return self.skip

    def run(self, ctx: Context) -> None:
        self.calls.append(ctx.username)
        if self.fail is not None:
            raise self.fail
        self.made.add(ctx.username)  # idempotent: a set
        if self.name == "account":
            ctx.uid, ctx.gid, ctx.home = 20001, 20001, f"/home/{ctx.username}"
        ctx.env.update(self.env)


def test_steps_run_in_order_and_their_environment_is_returned() -> None:
    order: list[str] = []

    class Recording(FakeStep):
        def run(self, ctx: Context) -> None:
            order.append(self.name)
            super().run(ctx)

    steps = [
        Recording("account"),
        Recording("storage", env={"AWS_ACCESS_KEY_ID": "AK", "SCIPLAT_HOME_BUCKET": "home-alice"}),
        Recording("mydb", env={"PGUSER": "alice", "PGDATABASE": "alice"}),
    ]
    result = run_steps(Context("alice"), steps)
    assert result.ok
    assert order == ["account", "storage", "mydb"]
    assert result.env == {
        "AWS_ACCESS_KEY_ID": "AK",
        "SCIPLAT_HOME_BUCKET": "home-alice",
        "PGUSER": "alice",
        "PGDATABASE": "alice",
    }
    assert [s.status for s in result.steps] == ["done", "done", "done"]


def test_unavailable_steps_are_skipped_with_their_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    slurm = FakeStep("slurm", skip="/etc/sciplat/slurm/client.json does not exist")
    result = run_steps(Context("bob"), [FakeStep("account"), slurm])
    assert result.ok
    assert slurm.calls == []
    assert result.steps[1].status == "skipped"
    assert "client.json does not exist" in result.steps[1].detail
    assert "step slurm skipped" in caplog.text


def test_a_failure_stops_later_steps_and_says_what_failed() -> None:
    mydb = FakeStep("mydb")
    result = run_steps(
        Context("carol"), [FakeStep("account"), FakeStep("storage", fail=RuntimeError("RGW is down")), mydb]
    )
    assert not result.ok
    assert result.env == {}, "nothing from a failed run reaches the server"
    assert mydb.calls == []
    assert [s.status for s in result.steps] == ["done", "failed"]
    assert "storage step failed (RGW is down)" in result.message
    assert "tried again" in result.message


def test_a_retry_after_a_failure_completes_and_repeats_nothing_harmful() -> None:
    account, storage = FakeStep("account"), FakeStep("storage", fail=RuntimeError("timeout"))
    assert not run_steps(Context("dave"), [account, storage]).ok
    storage.fail = None
    storage.env = {"AWS_ACCESS_KEY_ID": "AK"}
    again = run_steps(Context("dave"), [account, storage])
    assert again.ok and again.env == {"AWS_ACCESS_KEY_ID": "AK"}
    assert account.calls == ["dave", "dave"] and account.made == {"dave"}


def test_invalid_user_names_are_refused_before_any_step() -> None:
    step = FakeStep("account")
    result = provision.provision("Bad Name", steps=[step])
    assert not result.ok and step.calls == []
    assert "cannot be an account" in result.message


def test_component_steps_are_skipped_without_their_client_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provision, "CONFIG_ROOT", tmp_path)
    assert "does not exist" in (provision.MyDBStep().available() or "")
    assert provision.LocalAccountStep().available() is None, "no directory: local accounts"
    (tmp_path / "directory").mkdir()
    (tmp_path / "directory" / "client.json").write_text("{}")
    assert provision.LocalAccountStep().available() is not None
    # the directory module is another engineer's: until it exists the step says so
    reason = provision.DirectoryStep().available()
    assert reason is None or "not installed" in reason


def test_the_command_prints_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(provision, "default_steps", lambda: [FakeStep("account", env={"X": "1"})])
    assert provision.main(["--json", "erin"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["env"] == {"X": "1"} and out["username"] == "erin"


def test_local_home_is_private_and_owned_by_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(provision, "CONFIG_ROOT", tmp_path)
    step = provision.LocalHomeStep()
    assert step.available() is None
    home = tmp_path / "home" / "frank"
    ctx = Context("frank", uid=os.getuid(), gid=os.getgid(), home=str(home))
    step.run(ctx)
    step.run(ctx)  # idempotent
    assert home.is_dir() and (home.stat().st_mode & 0o777) == 0o700
    assert home.stat().st_uid == os.getuid()
    (tmp_path / "posix").mkdir()
    (tmp_path / "posix" / "client.json").write_text("{}")
    assert step.available() is not None, "the shared filesystem makes homes when it is deployed"


def test_tutorial_users_expire_after_their_lifetime() -> None:
    from datetime import datetime

    from sciplat_hub.hub_tutorial import expired

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    users = [
        {"name": "tutorial-0a1b2c3d", "created": "2026-01-01T10:59:00Z"},
        {"name": "tutorial-99999999", "created": "2026-01-01T11:59:00.000000Z"},
        {"name": "alice", "created": "2020-01-01T00:00:00Z"},
    ]
    assert expired(users, 3600, now) == ["tutorial-0a1b2c3d"]


# ------------------------------------------------------------------ steps that run at the same time


@dataclass
class SlowStep(FakeStep):
    """A fake step that takes a while (a call to radosgw, PostgreSQL or slurmdbd)."""

    seconds: float = 0.3
    started: list[float] = field(default_factory=list)

    def run(self, ctx: Context) -> None:
        import time

        self.started.append(time.monotonic())
        time.sleep(self.seconds)
        super().run(ctx)


def test_independent_steps_run_at_the_same_time_after_the_account() -> None:
    import time

    from sciplat_hub.provision import Concurrently

    seen_uid: list[int | None] = []

    class NeedsAccount(SlowStep):
        def run(self, ctx: Context) -> None:
            seen_uid.append(ctx.uid)
            super().run(ctx)

    storage = NeedsAccount("storage", env={"AWS_ACCESS_KEY_ID": "AK"})
    mydb = NeedsAccount("mydb", env={"PGUSER": "gina"})
    slurm = NeedsAccount("slurm", env={"SCIPLAT_SLURM_ACCOUNT": "default"})
    began = time.monotonic()
    result = run_steps(Context("gina"), [FakeStep("account"), Concurrently(storage, mydb, slurm)])
    took = time.monotonic() - began
    assert result.ok, result.message
    assert took < 0.8, f"three 0.3 s steps took {took:.2f} s: they ran one after another"
    assert seen_uid == [20001, 20001, 20001], "every step saw what the account step made"
    assert result.env == {"AWS_ACCESS_KEY_ID": "AK", "PGUSER": "gina", "SCIPLAT_SLURM_ACCOUNT": "default"}
    assert [s.name for s in result.steps] == ["account", "storage", "mydb", "slurm"]
    assert [s.status for s in result.steps] == ["done"] * 4


def test_a_failing_concurrent_step_is_named_and_nothing_of_the_others_is_used() -> None:
    from sciplat_hub.provision import Concurrently

    storage = SlowStep("storage", env={"AWS_SECRET_ACCESS_KEY": "half-made"}, seconds=0.05)
    mydb = FakeStep("mydb", fail=RuntimeError("PostgreSQL refused the connection"))
    slurm = SlowStep("slurm", env={"SCIPLAT_SLURM_ACCOUNT": "default"}, seconds=0.05)
    after = FakeStep("later")
    result = run_steps(Context("hank"), [FakeStep("account"), Concurrently(storage, mydb, slurm), after])
    assert not result.ok
    assert result.env == {}, "nothing of a failed run reaches the server"
    assert after.calls == [], "a failure stops the steps after the group"
    assert storage.calls == ["hank"] and slurm.calls == ["hank"], "the group's other steps finish"
    assert [(s.name, s.status) for s in result.steps] == [
        ("account", "done"),
        ("storage", "done"),
        ("mydb", "failed"),
        ("slurm", "done"),
    ]
    assert "the mydb step failed (PostgreSQL refused the connection)" in result.message
    assert "tried again" in result.message


def test_several_failures_in_a_group_are_all_reported() -> None:
    from sciplat_hub.provision import Concurrently

    group = Concurrently(
        FakeStep("storage", fail=RuntimeError("RGW is down")),
        FakeStep("mydb"),
        FakeStep("slurm", fail=RuntimeError("slurmdbd is down")),
    )
    result = run_steps(Context("ivy"), [FakeStep("account"), group])
    assert not result.ok and result.env == {}
    assert "the storage and slurm steps failed (storage: RGW is down; slurm: slurmdbd is down)" in result.message


def test_a_skipped_or_broken_check_in_a_group() -> None:
    from sciplat_hub.provision import Concurrently

    class BrokenCheck(FakeStep):
        def available(self) -> str | None:
            raise OSError("permission denied: client.json")

    skipped = FakeStep("slurm", skip="no slurm here")
    result = run_steps(Context("jo"), [Concurrently(FakeStep("storage", env={"A": "1"}), skipped)])
    assert result.ok and result.env == {"A": "1"} and skipped.calls == []
    assert [s.status for s in result.steps] == ["done", "skipped"]
    broken = run_steps(Context("jo"), [Concurrently(FakeStep("storage"), BrokenCheck("mydb"))])
    assert not broken.ok and "the mydb step failed (permission denied: client.json)" in broken.message


def test_the_real_plan_runs_the_account_and_home_first_then_the_rest_together() -> None:
    from sciplat_hub.provision import Concurrently

    plan = provision.default_steps()
    names = [[s.name for s in item.steps] if isinstance(item, Concurrently) else item.name for item in plan]
    assert names == ["directory", "local_account", "posix", "local_home", ["storage", "mydb", "slurm", "sharing"]]


def test_the_slurm_step_makes_the_default_association_first_with_no_repeated_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sciplat_hub import slurm_accounts
    from tests.unit.test_slurm_accounts import FakeSlurm

    fake = FakeSlurm()
    fake.accounts["default"] = {"description": "group default"}  # made by the first user ever
    accounts = slurm_accounts.SlurmAccounts(cluster="bed", default_limits={"cpus": 4}, runner=fake)
    monkeypatch.setattr(slurm_accounts.SlurmAccounts, "from_host_config", classmethod(lambda cls: accounts))
    ctx = Context("kim", groups=["astro"], settings={"slurm_default_account": "default"})
    provision.SlurmStep().run(ctx)
    assert ctx.env["SCIPLAT_SLURM_ACCOUNT"] == "default"
    assert set(fake.accounts) == {"default", "astro"}
    # the default account's association first: Slurm makes a user's first association their default
    assert list(fake.assocs) == [("default", "kim"), ("astro", "kim")]
    default_calls = fake.calls[: next(i for i, call in enumerate(fake.calls) if "name=astro" in call)]
    verbs = [call[3] if call[3] == "show" else call[2] for call in default_calls]
    # a first start under an existing account: is there an account, an association; add; set limits
    assert verbs == ["show", "show", "add", "modify"], default_calls
    fake.calls.clear()
    provision.SlurmStep().run(ctx)  # a returning user: queries only
    assert not [call for call in fake.calls if "add" in call or "modify" in call]
    assert len(fake.calls) == 4, fake.calls  # per account: the account, the association
