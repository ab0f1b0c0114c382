"""Slurm accounts, associations, limits and awarded allocations (sacctmgr).

The hub's account provisioning calls `SlurmAccounts.from_host_config()` and then
`ensure_account(group)` and `ensure_user(username, account)` at every sign-in
(idempotent). A group is a Slurm account; a user gets an association under each
of their groups' accounts with the default limits of the spec
(compute.default_limits: GrpTRES cpu and mem, MaxJobs, MaxWall), set when the
association is created, so an operator's later change is kept.

An *awarded allocation* (a committee grants core-hours to a proposal) is the
account's GrpTRESMins=cpu=<minutes>. Usage never decays on sciplat
(PriorityDecayHalfLife=0), so used = every core-minute the account's jobs ran;
with AccountingStorageEnforce=safe a job starts only if it can finish within
what remains. An end date (`--until`) is kept in the account's description; the
daily `sciplat-slurm-accounts expire` (a timer on the controller) closes
allocations whose date has passed (GrpTRESMins=cpu=0).

Settings: /etc/sciplat/slurm/client.json (0600 root) written by the
slurm_controller role on hub and controller hosts:
`{"cluster": ..., "default_limits": {cpus, memory_mb, max_jobs, max_wall_minutes}}`.

Command line (on the controller; `sciplat allocations` calls it over SSH):
`sciplat-slurm-accounts show [--json]`,
`sciplat-slurm-accounts set-allocation GROUP --core-hours N [--until YYYY-MM-DD]`,
`sciplat-slurm-accounts ensure-account GROUP`, `ensure-user USER ACCOUNT`,
`remove-user USER ACCOUNT`, `expire`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_PATH = Path("/etc/sciplat/slurm/client.json")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,63}$")
_UNTIL = re.compile(r"until (\d{4}-\d{2}-\d{2})")
Runner = Callable[[Sequence[str]], str]


class SlurmAccountsError(Exception):
    """A sacctmgr operation failed; the message says what and what to do."""


def _run(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise SlurmAccountsError(f"{command[0]} could not run ({exc}); is slurm-client installed here?") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise SlurmAccountsError(f"{' '.join(command[:4])} failed: {message}")
    return done.stdout


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise SlurmAccountsError(
            f"{value!r} is not a valid {kind} name for Slurm: use lowercase letters, digits, '_' and '-', "
            "starting with a letter"
        )
    return value


def parse_tres(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key and value:
            try:
                values[key.strip()] = float(value)
            except ValueError:
                continue
    return values


@dataclass(frozen=True)
class Allocation:
    """An account's awarded core-hours and what its users used."""

    account: str
    awarded_core_hours: float | None  # None: no allocation (unlimited)
    used_core_hours: float
    until: str | None
    users: dict[str, float] = field(default_factory=dict)  # user -> core-hours used

    @property
    def remaining_core_hours(self) -> float | None:
        if self.awarded_core_hours is None:
            return None
        return max(0.0, self.awarded_core_hours - self.used_core_hours)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "awarded_core_hours": self.awarded_core_hours,
            "used_core_hours": round(self.used_core_hours, 3),
            "remaining_core_hours": None if self.remaining_core_hours is None else round(self.remaining_core_hours, 3),
            "until": self.until,
            "users": {user: round(hours, 3) for user, hours in sorted(self.users.items())},
        }


@dataclass
class SlurmAccounts:
    cluster: str
    default_limits: dict[str, int]
    sacctmgr: str = "sacctmgr"
    sshare: str = "sshare"
    scancel: str = "scancel"
    runner: Runner = _run

    @classmethod
    def from_host_config(cls, path: Path = CONFIG_PATH) -> SlurmAccounts:
        try:
            config = json.loads(path.read_text())
        except OSError as exc:
            raise SlurmAccountsError(
                f"cannot read {path} ({exc.strerror}); the slurm_controller role writes it on hub and "
                "controller hosts (run as root there)"
            ) from None
        return cls(
            cluster=config["cluster"],
            default_limits=dict(config.get("default_limits", {})),
            sacctmgr=config.get("sacctmgr", "sacctmgr"),
        )

    # -------------------------------------------------------------- helpers

    def _show(self, *args: str) -> list[list[str]]:
        text = self.runner([self.sacctmgr, "--noheader", "--parsable2", "show", *args])
        return [line.split("|") for line in text.splitlines() if line.strip()]

    def _modify(self, *args: str) -> None:
        self.runner([self.sacctmgr, "--immediate", *args])

    def account_exists(self, group: str) -> bool:
        return bool(self._show("account", f"name={group}", "format=account"))

    def association_exists(self, username: str, account: str) -> bool:
        rows = self._show(
            "association", f"cluster={self.cluster}", f"account={account}", f"user={username}", "format=user"
        )
        return any(row and row[0] == username for row in rows)

    def _limit_args(self) -> list[str]:
        limits = self.default_limits
        tres = []
        if limits.get("cpus"):
            tres.append(f"cpu={int(limits['cpus'])}")
        if limits.get("memory_mb"):
            tres.append(f"mem={int(limits['memory_mb'])}")
        args = [f"GrpTRES={','.join(tres)}"] if tres else []
        if limits.get("max_jobs"):
            args.append(f"MaxJobs={int(limits['max_jobs'])}")
        if limits.get("max_wall_minutes"):
            args.append(f"MaxWall={int(limits['max_wall_minutes'])}")
        return args

    # -------------------------------------------------------------- interface

    def ensure_account(self, group: str, *, description: str = "") -> bool:
        """A Slurm account for the group; True when it was created."""
        _check_name("group", group)
        if self.account_exists(group):
            return False
        self._modify(
            "add",
            "account",
            group,
            f"cluster={self.cluster}",
            f"description={description or f'group {group}'}",
            "organization=sciplat",
        )
        return True

    def ensure_user(self, username: str, account: str) -> bool:
        """The user's association under the account, with the default limits; True when created."""
        _check_name("user", username)
        _check_name("group", account)
        if not self.account_exists(account):
            self.ensure_account(account)
        if self.association_exists(username, account):
            return False
        self._modify("add", "user", username, f"account={account}", f"cluster={self.cluster}")
        limits = self._limit_args()
        if limits:
            self._modify(
                "modify",
                "user",
                "where",
                f"name={username}",
                f"account={account}",
                f"cluster={self.cluster}",
                "set",
                *limits,
            )
        return True

    def remove_user(self, username: str, account: str) -> bool:
        """Remove the user's association under the account; True when one was removed."""
        _check_name("user", username)
        _check_name("group", account)
        if not self.association_exists(username, account):
            return False
        self._modify("delete", "user", "where", f"name={username}", f"account={account}", f"cluster={self.cluster}")
        return True

    def account_users(self, account: str) -> list[str]:
        """The users with an association under the account (sorted)."""
        _check_name("group", account)
        rows = self._show("association", f"cluster={self.cluster}", f"account={account}", "format=user")
        return sorted({row[0] for row in rows if row and row[0]})

    def cancel_jobs(self, username: str, account: str) -> None:
        """Cancel the user's pending and running jobs charged to the account (before its association goes)."""
        _check_name("user", username)
        _check_name("group", account)
        self.runner([self.scancel, f"--user={username}", f"--account={account}", "--quiet"])

    def delete_account(self, account: str) -> bool:
        """Remove the account with every association under it; True when one was removed."""
        _check_name("group", account)
        if not self.account_exists(account):
            return False
        for username in self.account_users(account):
            self.cancel_jobs(username, account)
        # without cluster=: with it, sacctmgr removes only the account's associations there
        self._modify("delete", "account", "where", f"name={account}")
        return True

    def set_user_limits(
        self,
        username: str,
        account: str,
        *,
        cpus: int | None = None,
        memory_mb: int | None = None,
        max_jobs: int | None = None,
        max_wall_minutes: int | None = None,
    ) -> None:
        """Change one association's limits (-1 clears a limit)."""
        tres = [f"cpu={cpus}" if cpus is not None else "", f"mem={memory_mb}" if memory_mb is not None else ""]
        args = [f"GrpTRES={','.join(t for t in tres if t)}"] if any(tres) else []
        if max_jobs is not None:
            args.append(f"MaxJobs={max_jobs}")
        if max_wall_minutes is not None:
            args.append(f"MaxWall={max_wall_minutes}")
        if args:
            self._modify(
                "modify",
                "user",
                "where",
                f"name={username}",
                f"account={account}",
                f"cluster={self.cluster}",
                "set",
                *args,
            )

    def set_allocation(self, group: str, core_hours: float, *, until: dt.date | None = None) -> Allocation:
        """Award the account `core_hours` (GrpTRESMins cpu), optionally until a date."""
        _check_name("group", group)
        if core_hours < 0:
            raise SlurmAccountsError(f"--core-hours must be 0 or more, not {core_hours}")
        if not self.account_exists(group):
            raise SlurmAccountsError(
                f"no Slurm account {group!r}: accounts are made when a member of the group signs in "
                "(or with `sciplat-slurm-accounts ensure-account GROUP` on the controller)"
            )
        minutes = round(core_hours * 60)
        text = f"allocation {core_hours:g} core-hours" + (f" until {until.isoformat()}" if until else "")
        self._modify(
            "modify",
            "account",
            "where",
            f"name={group}",
            f"cluster={self.cluster}",
            "set",
            f"GrpTRESMins=cpu={minutes}",
            f"description={text}",
        )
        return next(a for a in self.allocations() if a.account == group)

    def clear_allocation(self, group: str) -> None:
        _check_name("group", group)
        self._modify(
            "modify",
            "account",
            "where",
            f"name={group}",
            f"cluster={self.cluster}",
            "set",
            "GrpTRESMins=cpu=-1",
            f"description=group {group}",
        )

    def allocations(self) -> list[Allocation]:
        """Every account (but root) with its awarded, used and remaining core-hours, per user too."""
        descriptions = {row[0]: row[1] for row in self._show("account", "format=account,description") if len(row) > 1}
        text = self.runner(
            [self.sshare, "--noheader", "--parsable2", "--all", "--format=Account,User,GrpTRESMins,GrpTRESRaw"]
        )
        accounts: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) < 4:
                continue
            account, user, limit, raw = (part.strip() for part in parts[:4])
            if not account or account == "root":
                continue
            entry = accounts.setdefault(account, {"awarded": None, "used": 0.0, "users": {}})
            used = parse_tres(raw).get("cpu", 0.0) / 60
            if user:
                entry["users"][user] = used
            else:
                cpu_limit = parse_tres(limit).get("cpu")
                entry["awarded"] = None if cpu_limit is None else cpu_limit / 60
                entry["used"] = used
        result = []
        for account, entry in sorted(accounts.items()):
            match = _UNTIL.search(descriptions.get(account, ""))
            result.append(
                Allocation(
                    account=account,
                    awarded_core_hours=entry["awarded"],
                    used_core_hours=entry["used"],
                    until=match.group(1) if match else None,
                    users=entry["users"],
                )
            )
        return result

    def expire(self, today: dt.date | None = None) -> list[str]:
        """Close allocations whose end date has passed (GrpTRESMins=cpu=0); returns the accounts closed."""
        today = today or dt.date.today()
        closed = []
        for allocation in self.allocations():
            if allocation.until and dt.date.fromisoformat(allocation.until) < today and allocation.awarded_core_hours:
                self._modify(
                    "modify",
                    "account",
                    "where",
                    f"name={allocation.account}",
                    f"cluster={self.cluster}",
                    "set",
                    "GrpTRESMins=cpu=0",
                    f"description=allocation ended {allocation.until}",
                )
                closed.append(allocation.account)
        return closed


# ------------------------------------------------------------------ command line


def _format_hours(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:,.1f}"


def render_table(allocations: list[Allocation]) -> str:
    lines = [f"{'account':<20} {'user':<16} {'awarded':>12} {'used':>12} {'remaining':>12}  until"]
    for a in allocations:
        lines.append(
            f"{a.account:<20} {'':<16} {_format_hours(a.awarded_core_hours):>12} {a.used_core_hours:>12,.1f} "
            f"{_format_hours(a.remaining_core_hours):>12}  {a.until or ''}"
        )
        for user, used in sorted(a.users.items()):
            lines.append(f"{'':<20} {user:<16} {'':>12} {used:>12,.1f}")
    lines.append("(core-hours)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-slurm-accounts", description="Slurm accounts and allocations.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="awarded, used and remaining core-hours per account and user")
    show.add_argument("--json", action="store_true")
    alloc = sub.add_parser("set-allocation", help="award core-hours to a group (GrpTRESMins)")
    alloc.add_argument("group")
    alloc.add_argument("--core-hours", type=float, required=True)
    alloc.add_argument("--until", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD")
    alloc.add_argument("--json", action="store_true")
    clear = sub.add_parser("clear-allocation", help="remove a group's allocation (no core-hour limit)")
    clear.add_argument("group")
    account = sub.add_parser("ensure-account")
    account.add_argument("group")
    user = sub.add_parser("ensure-user")
    user.add_argument("username")
    user.add_argument("account")
    remove = sub.add_parser("remove-user")
    remove.add_argument("username")
    remove.add_argument("account")
    sub.add_parser("expire", help="close allocations whose end date has passed")
    args = parser.parse_args(argv)
    try:
        accounts = SlurmAccounts.from_host_config()
        if args.command == "show":
            found = accounts.allocations()
            print(json.dumps([a.as_dict() for a in found], indent=2) if args.json else render_table(found))
        elif args.command == "set-allocation":
            allocation = accounts.set_allocation(args.group, args.core_hours, until=args.until)
            print(json.dumps(allocation.as_dict(), indent=2) if args.json else render_table([allocation]))
        elif args.command == "clear-allocation":
            accounts.clear_allocation(args.group)
        elif args.command == "ensure-account":
            print("created" if accounts.ensure_account(args.group) else "exists")
        elif args.command == "ensure-user":
            print("created" if accounts.ensure_user(args.username, args.account) else "exists")
        elif args.command == "remove-user":
            print("removed" if accounts.remove_user(args.username, args.account) else "absent")
        elif args.command == "expire":
            for name in accounts.expire():
                print(f"closed the allocation of {name}")
    except SlurmAccountsError as exc:
        print(f"sciplat-slurm-accounts: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
