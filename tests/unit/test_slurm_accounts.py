"""sciplat_hub.slurm_accounts drives sacctmgr idempotently (a fake sacctmgr records the calls)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from sciplat_hub.slurm_accounts import SlurmAccounts, SlurmAccountsError


class FakeSlurm:
    """Just enough of sacctmgr/sshare: accounts, associations, GrpTRESMins, usage."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, str]] = {}
        self.assocs: dict[tuple[str, str], dict[str, str]] = {}
        self.usage: dict[tuple[str, str], int] = {}
        self.calls: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> str:
        args = list(command)
        self.calls.append(args)
        kv = {a.split("=", 1)[0].lower(): a.split("=", 1)[1] for a in args if "=" in a}
        if args[0] == "sshare":
            lines = []
            for name, acc in self.accounts.items():
                used = sum(v for (a, _), v in self.usage.items() if a == name)
                lines.append(f"{name}||{acc.get('grptresmins', '')}|cpu={used},mem=0")
                for (a, user), _ in self.assocs.items():
                    if a == name:
                        lines.append(f"{name}|{user}||cpu={self.usage.get((a, user), 0)}")
            return "root||cpu=0|cpu=0\n" + "\n".join(lines) + "\n"
        if "show" in args:
            what = args[args.index("show") + 1]
            if what == "account" and "format=account,description" in args:
                return "".join(f"{n}|{a.get('description', '')}\n" for n, a in self.accounts.items())
            if what == "account":
                return f"{kv['name']}\n" if kv["name"] in self.accounts else ""
            if what == "association":
                return f"{kv['user']}\n" if (kv["account"], kv["user"]) in self.assocs else ""
        if args[2:4] == ["add", "account"]:
            self.accounts[args[4]] = {"description": kv.get("description", "")}
            return ""
        if args[2:4] == ["add", "user"]:
            self.assocs[(kv["account"], args[4])] = {}
            return ""
        if args[2:4] == ["modify", "user"]:
            self.assocs[(kv["account"], kv["name"])].update(
                {k: v for k, v in kv.items() if k not in ("name", "account", "cluster")}
            )
            return ""
        if args[2:4] == ["modify", "account"]:
            self.accounts[kv["name"]].update({k: v for k, v in kv.items() if k not in ("name", "cluster")})
            return ""
        if args[2:4] == ["delete", "user"]:
            del self.assocs[(kv["account"], kv["name"])]
            return ""
        raise AssertionError(f"unexpected command {args}")


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def accounts(slurm: FakeSlurm) -> SlurmAccounts:
    limits = {"cpus": 8, "memory_mb": 32768, "max_jobs": 100, "max_wall_minutes": 2880}
    return SlurmAccounts(cluster="lab", default_limits=limits, runner=slurm)


def test_from_host_config(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"cluster": "lab", "default_limits": {"cpus": 2}}))
    loaded = SlurmAccounts.from_host_config(path)
    assert loaded.cluster == "lab" and loaded.default_limits == {"cpus": 2}
    with pytest.raises(SlurmAccountsError, match="slurm_controller role writes it"):
        SlurmAccounts.from_host_config(tmp_path / "missing.json")


def test_user_gets_association_with_default_limits_once(accounts: SlurmAccounts, slurm: FakeSlurm) -> None:
    assert accounts.ensure_user("alice", "astro") is True
    assert "astro" in slurm.accounts
    assert slurm.assocs[("astro", "alice")] == {"grptres": "cpu=8,mem=32768", "maxjobs": "100", "maxwall": "2880"}
    # an operator's change survives the next sign-in
    slurm.assocs[("astro", "alice")]["grptres"] = "cpu=2"
    calls = len(slurm.calls)
    assert accounts.ensure_user("alice", "astro") is False
    assert accounts.ensure_account("astro") is False
    assert slurm.assocs[("astro", "alice")]["grptres"] == "cpu=2"
    assert all("show" in c for c in slurm.calls[calls:])  # nothing modified


def test_remove_user_is_idempotent(accounts: SlurmAccounts, slurm: FakeSlurm) -> None:
    accounts.ensure_user("alice", "astro")
    assert accounts.remove_user("alice", "astro") is True
    assert accounts.remove_user("alice", "astro") is False
    assert ("astro", "alice") not in slurm.assocs


def test_invalid_names_are_refused_before_sacctmgr(accounts: SlurmAccounts, slurm: FakeSlurm) -> None:
    with pytest.raises(SlurmAccountsError, match="not a valid user name"):
        accounts.ensure_user("Alice Smith", "astro")
    assert slurm.calls == []


def test_allocation_awarded_used_remaining(accounts: SlurmAccounts, slurm: FakeSlurm) -> None:
    accounts.ensure_user("alice", "astro")
    accounts.ensure_user("bob", "astro")
    slurm.usage[("astro", "alice")] = 90  # core-minutes
    slurm.usage[("astro", "bob")] = 30
    allocation = accounts.set_allocation("astro", 10, until=dt.date(2030, 1, 31))
    assert slurm.accounts["astro"]["grptresmins"] == "cpu=600"
    assert allocation.as_dict() == {
        "account": "astro",
        "awarded_core_hours": 10.0,
        "used_core_hours": 2.0,
        "remaining_core_hours": 8.0,
        "until": "2030-01-31",
        "users": {"alice": 1.5, "bob": 0.5},
    }


def test_allocation_for_unknown_group_says_how(accounts: SlurmAccounts) -> None:
    with pytest.raises(SlurmAccountsError, match="accounts are made when a member of the group signs in"):
        accounts.set_allocation("nobody", 5)


def test_expired_allocations_are_closed(accounts: SlurmAccounts, slurm: FakeSlurm) -> None:
    accounts.ensure_account("astro")
    accounts.ensure_account("geo")
    accounts.set_allocation("astro", 10, until=dt.date(2026, 1, 1))
    accounts.set_allocation("geo", 10, until=dt.date(2026, 6, 1))
    assert accounts.expire(today=dt.date(2026, 3, 1)) == ["astro"]
    assert slurm.accounts["astro"]["grptresmins"] == "cpu=0"
    assert slurm.accounts["geo"]["grptresmins"] == "cpu=600"
