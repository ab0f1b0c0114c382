"""Collaborations: groups any user can form, reflected in every component of the platform.

A collaboration is a group in the platform's directory and everything that follows from
it, kept equal to the directory's member list by this module:

- the LDAP posixGroup ``cn=<name>,ou=groups,<base>`` (gid from the gid range, never reused),
  members in ``memberUid``; its owners in the same entry as ``owner`` (DNs of their user
  entries) and the marker ``businessCategory: sciplat:collaboration`` (or
  ``sciplat:deleted``), through the auxiliary class ``extensibleObject`` - so a slapcat
  backup and its restore keep owners and state with the members, and SSSD (which reads
  ``memberUid``) gives the members the group on every host;
- the group directory ``<group_root>/<name>`` on the shared filesystem: root-owned, group
  the collaboration's gid, setgid 2770, with the group quota provisioning uses
  (``group_dir_quota`` in /etc/sciplat/hub/provision.json);
- the group bucket ``group-<name>`` whose policy lets exactly the members read and write
  (quota ``group_quota_bytes`` of /etc/sciplat/storage/client.json);
- the MyDB database ``g_<name>``: members are granted the role ``g_<name>``;
- the Slurm account ``<name>`` with one association per member.

Who may do what (``by`` is the acting user name):
- anyone with a platform account creates a collaboration and becomes its first owner;
- owners and operators add members, make members owners and back, remove members and
  delete the collaboration; a member may leave; the last owner cannot leave;
- only operators purge a deleted collaboration (its directory, bucket, database and
  account go, and the name becomes free again; the gid is never reused);
- operators are the hub's admins (``admin_users`` of /etc/jupyterhub/sciplat.json, plus the
  ``operators=`` the caller passes, e.g. the platform API from the hub's user model) and
  ``OPERATOR`` (``operator``, a reserved name no user can have), which the on-host command
  acts as unless told ``--as USER``.
A user who is neither a member nor an operator is told the collaboration does not exist.

Removing a member revokes everything at once: the directory entry first (provisioning
reads the groups from it, so a later sign-in never adds the member back), then the
bucket policy (which also denies everyone else explicitly: an object stays owned by its
uploader), the database role (and its open sessions), the Slurm association (and the
member's queued and running jobs charged to it), SSSD's cache on this host, and a
no-access ACL entry for them on the group directory: SSSD on other hosts trusts a cached
membership for minutes and running processes keep their groups, but a named-user ACL
entry is checked first, on every host.
Deleting revokes every member the same way and keeps the data; purging removes it.

Every operation is idempotent: it sets the directory as asked and then makes every
component match the directory; when a component fails, the others are still done and
``ComponentError`` names what failed: repeating the operation (or ``sciplat-groups sync
NAME``) finishes it.

Command line on a hub host, as root (``sciplat-groups`` = ``python -m sciplat_hub.collab``)::

    sciplat-groups list [--member USER] [--json]
    sciplat-groups show NAME [--json]
    sciplat-groups create NAME --owner USER [--description TEXT]
    sciplat-groups add NAME USER [--role owner|member]
    sciplat-groups remove NAME USER
    sciplat-groups delete NAME
    sciplat-groups purge NAME --yes
    sciplat-groups sync NAME
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import json
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sciplat_hub.directory import RESERVED_NAMES, USERNAME_RE, Directory, DirectoryError, GroupRecord

CONFIG_ROOT = Path("/etc/sciplat")
HUB_SETTINGS = Path("/etc/jupyterhub/sciplat.json")
LOCK_DIR = Path("/run/lock/sciplat-collab")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
ACTIVE = "sciplat:collaboration"
DELETED = "sciplat:deleted"
OPERATOR = "operator"  # in directory.RESERVED_NAMES: no platform user has this name
ROLES = ("owner", "member")
# Names that mean something on the platform or in its components (beyond system accounts).
EXTRA_RESERVED = frozenset(
    ["default", "root", "public", "shared", "groups", "group", "home", "all", "api", "platform", "everyone",
     "members", "owners", "operators", "admins", "tutorial", "probe", "mydb", "slurm", "scratch", "tmp"]
)  # fmt: skip
MAX_DESCRIPTION = 200


class CollabError(Exception):
    """A collaboration operation was refused or failed; str(exc) is the sentence for the user."""


class NotFound(CollabError):
    """No such collaboration or user (or not one the acting user may see)."""


class Forbidden(CollabError):
    """The acting user may see the collaboration but not do this."""


class Conflict(CollabError):
    """The name is taken."""


class Invalid(CollabError):
    """A bad name, role or description, or an operation that makes no sense in this state."""


class ComponentError(CollabError):
    """The directory was changed but a component could not follow; repeating the operation finishes it."""


@dataclass
class Collaboration:
    name: str
    gid: int
    description: str
    owners: list[str]
    members: list[str]
    directory: str | None
    bucket: str | None
    database: str | None
    slurm_account: str | None
    deleted: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: str) -> str:
    """A valid name for a new collaboration, else Invalid with the rule."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(
            f"{name!r} is not a valid collaboration name: use 2 to 31 lower-case letters, digits and '-', "
            "starting with a letter."
        )
    if name in RESERVED_NAMES or name in EXTRA_RESERVED:
        raise Invalid(f"{name!r} is reserved on this platform; choose another collaboration name.")
    return name


def _check_description(description: str) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise Invalid(f"A description is text of at most {MAX_DESCRIPTION} characters.")
    if any(not ch.isprintable() for ch in description):
        raise Invalid("A description is one line of printable text (no tabs or line breaks).")
    return description.strip()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Collaborations:
    """Collaborations in the directory and their reflection in the components given."""

    def __init__(
        self,
        directory: Directory,
        *,
        posix: Any = None,
        store: Any = None,
        mydb: Any = None,
        slurm: Any = None,
        operators: Iterable[str] = (),
        group_dir_quota: int | None = None,
        bucket_quota: int | None = None,
        user_exists: Callable[[str], bool] | None = None,
        lock_dir: Path = LOCK_DIR,
        flush_cache: Callable[[str, Sequence[str]], None] | None = None,
        acl: Any = None,
    ) -> None:
        """`posix`, `store`, `mydb`, `slurm`: the component clients (None: not on this platform).

        `user_exists(name)`: whether a name belongs to a user outside the directory (e.g. the hub's
        users who never started a server), so no collaboration takes it. `flush_cache(group, users)`:
        forget cached memberships on this host after a change (default: `sss_cache`).
        """
        self.directory = directory
        self.posix = posix
        self.store = store
        self.mydb = mydb
        self.slurm = slurm
        self.operators = frozenset(operators) | {OPERATOR}
        self.group_dir_quota = group_dir_quota or None
        self.bucket_quota = bucket_quota or None
        self.user_exists = user_exists
        self.lock_dir = lock_dir
        self.flush_cache = flush_cache if flush_cache is not None else _sss_cache
        self.acl = acl if acl is not None else PosixAcl()

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_host_config(
        cls, *, operators: Iterable[str] = (), config_root: Path = CONFIG_ROOT, **kwargs: Any
    ) -> Collaborations:
        """The components deployed for this host (each one's /etc/sciplat/<component>/client.json)."""
        try:
            directory = Directory.from_host_config(config_root / "directory" / "client.json")
        except DirectoryError as exc:
            raise CollabError(f"Collaborations need the platform's directory on this host: {exc}") from None
        settings = _read_json(config_root / "hub" / "provision.json")
        components: dict[str, Any] = {}
        try:
            if (config_root / "posix" / "client.json").is_file():
                from sciplat_hub.posix import Posix

                components["posix"] = Posix.from_host_config(config_root / "posix" / "client.json")
                components["group_dir_quota"] = int(settings.get("group_dir_quota") or 0) or None
            if (config_root / "storage" / "client.json").is_file():
                from sciplat_hub.storage import config as storage_config

                store_cfg = storage_config.load_config(config_root / "storage" / "client.json")
                components["store"] = storage_config.from_config(store_cfg)
                components["bucket_quota"] = int(store_cfg.get("group_quota_bytes") or 0) or None
            if (config_root / "mydb" / "client.json").is_file():
                from sciplat_hub.mydb import MyDB

                components["mydb"] = MyDB.from_host_config(config_root / "mydb" / "client.json")
            if (config_root / "slurm" / "client.json").is_file():
                from sciplat_hub.slurm_accounts import SlurmAccounts

                components["slurm"] = SlurmAccounts.from_host_config(config_root / "slurm" / "client.json")
        except Exception as exc:  # a component's settings are broken: say which
            raise CollabError(f"A component's settings on this host cannot be used: {exc}") from None
        admins = _read_json(HUB_SETTINGS).get("admin_users") or []
        return cls(directory, operators={*operators, *map(str, admins)}, **components, **kwargs)

    # ---------------------------------------------------------------- reading

    def is_operator(self, username: str) -> bool:
        return username in self.operators

    def _collab(self, record: GroupRecord) -> Collaboration:
        deleted = record.category == DELETED
        name = record.name
        return Collaboration(
            name=name,
            gid=record.gid,
            description=record.description,
            owners=sorted(record.owners),
            members=[] if deleted else sorted(set(record.members) | set(record.owners)),
            directory=str(Path(self.posix.group_root) / name) if self.posix is not None else None,
            bucket=f"group-{name}" if self.store is not None else None,
            database=f"g_{name}" if self.mydb is not None else None,
            slurm_account=name if self.slurm is not None else None,
            deleted=deleted,
        )

    def _record(self, name: str) -> GroupRecord:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise NotFound(f"There is no collaboration named {name!r}.")
        try:
            record = self.directory.group_record(name)
        except (DirectoryError, ValueError) as exc:
            raise CollabError(f"The directory cannot be read now: {exc}") from None
        if record is None or record.category not in (ACTIVE, DELETED):
            raise NotFound(f"There is no collaboration named {name!r}.")
        return record

    def _visible(self, record: GroupRecord, by: str) -> bool:
        if self.is_operator(by):
            return True
        if record.category == DELETED:
            return by in record.owners
        return by in record.members or by in record.owners

    def _visible_record(self, name: str, by: str) -> GroupRecord:
        record = self._record(name)
        if not self._visible(record, by):
            raise NotFound(f"There is no collaboration named {name!r}.")
        return record

    def list(self, member: str | None = None) -> list[Collaboration]:
        """The collaborations `member` belongs to; with None every one, deleted ones too (operators)."""
        try:
            if member is None:
                records = self.directory.group_records(category=ACTIVE) + self.directory.group_records(category=DELETED)
            else:
                if not isinstance(member, str) or not USERNAME_RE.match(member):
                    return []
                records = self.directory.group_records(category=ACTIVE, member=member)
        except (DirectoryError, ValueError) as exc:
            raise CollabError(f"The directory cannot be read now: {exc}") from None
        return sorted((self._collab(r) for r in records), key=lambda c: c.name)

    def get(self, name: str, *, by: str | None = None) -> Collaboration:
        """The collaboration (NotFound); with `by`, only if that user is a member, an owner or an operator."""
        record = self._record(name) if by is None else self._visible_record(name, by)
        return self._collab(record)

    # ---------------------------------------------------------------- changing

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One change of a collaboration at a time on this host (threads and processes)."""
        lock_dir = self.lock_dir
        try:
            lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            lock_dir = Path(tempfile.gettempdir())
        with open(lock_dir / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _require_account(self, username: str) -> None:
        try:
            account = self.directory.get_user(username) if USERNAME_RE.match(username) else None
        except (DirectoryError, ValueError):
            account = None
        if account is None:
            raise NotFound(
                f"{username!r} has no account on the platform yet: a user gets one when they first start a "
                "server. Ask them to start one, then try again."
            )

    def _name_is_free(self, name: str) -> None:
        try:
            record = self.directory.group_record(name)
            user = self.directory.get_user(name)
        except (DirectoryError, ValueError) as exc:
            raise CollabError(f"The directory cannot be read now: {exc}") from None
        if user is not None or (self.user_exists is not None and self.user_exists(name)):
            raise Conflict(f"{name!r} is a user's name; choose another collaboration name.")
        if record is not None:
            if record.category == DELETED:
                raise Conflict(
                    f"A deleted collaboration named {name!r} still holds its data; choose another name "
                    "(an operator can purge the old one)."
                )
            if record.category == ACTIVE:
                raise Conflict(f"A collaboration named {name!r} exists already; choose another name.")
            raise Conflict(f"{name!r} is the name of an existing group; choose another name.")
        for lookup in (pwd.getpwnam, grp.getgrnam):
            try:
                lookup(name)
            except KeyError:
                continue
            raise Conflict(f"{name!r} is the name of an account or group on the platform's hosts; choose another.")

    def create(self, name: str, owner: str, description: str = "") -> Collaboration:
        """A new collaboration with `owner` as its first owner and member."""
        check_name(name)
        description = _check_description(description)
        with self._locked(name):
            self._name_is_free(name)
            self._require_account(owner)
            try:
                self.directory.ensure_group(name, description=description)
                self.directory.set_group_record(name, owners=[owner], category=ACTIVE)
                self.directory.add_member(name, owner)
            except (DirectoryError, ValueError) as exc:
                raise CollabError(f"The collaboration {name!r} could not be made in the directory: {exc}") from None
            record = self._record(name)
            self._reconcile(record, changed=[owner])
        return self._collab(record)

    def _authorize_change(self, record: GroupRecord, by: str, what: str) -> None:
        if self.is_operator(by) or by in record.owners:
            return
        if self._visible(record, by):
            raise Forbidden(f"Only the owners of {record.name!r} and operators can {what}.")
        raise NotFound(f"There is no collaboration named {record.name!r}.")

    def add_member(self, name: str, username: str, *, role: str = "member", by: str) -> Collaboration:
        """Add `username` (or change their role) as owner or member; owners and operators only."""
        if role not in ROLES:
            raise Invalid(f"A member's role is 'owner' or 'member', not {role!r}.")
        with self._locked(name):
            record = self._visible_record(name, by)
            self._authorize_change(record, by, "add members or change their roles")
            if record.category == DELETED:
                raise Invalid(f"The collaboration {name!r} was deleted; its members cannot change.")
            self._require_account(username)
            owners = set(record.owners)
            if role == "owner":
                owners.add(username)
            else:
                owners.discard(username)
            if not owners:
                raise Invalid(f"{username!r} is the last owner of {name!r}; make another member an owner first.")
            try:
                self.directory.add_member(name, username)
                self.directory.set_group_record(name, owners=sorted(owners))
            except (DirectoryError, ValueError) as exc:
                raise CollabError(f"The directory refused the change: {exc}") from None
            record = self._record(name)
            self._reconcile(record, changed=[username])
        return self._collab(record)

    def remove_member(self, name: str, username: str, *, by: str) -> Collaboration:
        """Remove a member (owners, operators), or leave (by == username); revokes every access at once."""
        with self._locked(name):
            record = self._visible_record(name, by)
            if by != username:
                self._authorize_change(record, by, "remove members")
            if record.category == DELETED:
                raise Invalid(f"The collaboration {name!r} was deleted; it has no members any more.")
            if username in record.owners and set(record.owners) == {username}:
                raise Invalid(
                    f"{username!r} is the last owner of {name!r}: make another member an owner first, "
                    "or delete the collaboration."
                )
            try:
                if username in record.owners:
                    self.directory.set_group_record(name, owners=[o for o in record.owners if o != username])
                if username in record.members:
                    self.directory.remove_member(name, username)
            except (DirectoryError, ValueError) as exc:
                raise CollabError(f"The directory refused the change: {exc}") from None
            record = self._record(name)
            self._reconcile(record, changed=[username])
        return self._collab(record)

    def delete(self, name: str, *, by: str) -> Collaboration:
        """Revoke every member's access and keep the data until an operator purges it (owners, operators)."""
        with self._locked(name):
            record = self._visible_record(name, by)
            self._authorize_change(record, by, "delete the collaboration")
            revoked = sorted(set(record.members) | set(record.owners))
            try:
                if record.category != DELETED:
                    self.directory.set_group_record(name, category=DELETED)
                for member in record.members:
                    self.directory.remove_member(name, member)
            except (DirectoryError, ValueError) as exc:
                raise CollabError(f"The directory refused the change: {exc}") from None
            record = self._record(name)
            self._reconcile(record, changed=revoked)
        return self._collab(record)

    def purge(self, name: str, *, by: str) -> None:
        """Remove a deleted collaboration's directory, bucket, database, account and group (operators)."""
        with self._locked(name):
            record = self._visible_record(name, by)
            if not self.is_operator(by):
                raise Forbidden(f"Only operators can purge {name!r} and its data.")
            if record.category != DELETED:
                raise Invalid(f"{name!r} is not deleted: delete it first (its members lose access), then purge it.")
            failures: list[str] = []
            steps: list[tuple[str, Callable[[], Any]]] = []
            if self.posix is not None:
                steps.append(("group directory", lambda: self._remove_tree(Path(self.posix.group_root) / name)))
            if self.store is not None:
                steps.append(("group bucket", lambda: self.store.delete_group_bucket(name)))
            if self.mydb is not None:
                steps.append(("group database", lambda: self.mydb.drop_group_database(name)))
            if self.slurm is not None:
                steps.append(("Slurm account", lambda: self.slurm.delete_account(name)))
            for label, step in steps:
                try:
                    step()
                except Exception as exc:
                    failures.append(f"the {label} ({exc})")
            if failures:
                raise ComponentError(
                    f"Purging {name!r} is not finished: {'; '.join(failures)} could not be removed. "
                    "The collaboration stays deleted; purge it again to finish."
                )
            try:
                self.directory.delete_group(name)
            except (DirectoryError, ValueError) as exc:
                raise CollabError(f"The directory refused to remove the group {name!r}: {exc}") from None
            with contextlib.suppress(Exception):
                self.flush_cache(name, [])

    def sync(self, name: str) -> Collaboration:
        """Make every component match the directory again (after a ComponentError)."""
        with self._locked(name):
            record = self._record(name)
            self._reconcile(record, changed=list(record.members))
        return self._collab(record)

    # ---------------------------------------------------------------- components

    def _remove_tree(self, path: Path) -> None:
        if path.is_symlink() or path.is_file():
            raise CollabError(f"{path} is not a directory; an operator must look at it")
        if path.exists():
            shutil.rmtree(path)

    def _reconcile(self, record: GroupRecord, *, changed: Sequence[str]) -> None:
        """Every component as the directory says; ComponentError naming those that failed."""
        name = record.name
        members = [] if record.category == DELETED else sorted(record.members)
        failures: list[str] = []

        def attempt(label: str, step: Callable[[], Any]) -> None:
            try:
                step()
            except Exception as exc:
                failures.append(f"the {label} ({exc})")

        if self.posix is not None:
            posix = self.posix
            attempt("group directory", lambda: self._reconcile_dir(posix, record, members, changed))
        if self.store is not None:
            store = self.store
            attempt("group bucket", lambda: store.ensure_group_bucket(name, members, self.bucket_quota))
        if self.mydb is not None:
            mydb = self.mydb
            attempt("group database", lambda: mydb.ensure_group_database(name, members))
        if self.slurm is not None:
            attempt("Slurm account", lambda: self._reconcile_slurm(name, members))
        with contextlib.suppress(Exception):
            self.flush_cache(name, changed)
        if failures:
            raise ComponentError(
                f"The collaboration {name!r} was changed in the directory, but {'; '.join(failures)} could not "
                "follow yet. Repeat the change (or an operator runs `sciplat-groups sync "
                f"{name}`) to finish it."
            )

    def _reconcile_dir(self, posix: Any, record: GroupRecord, members: Sequence[str], changed: Sequence[str]) -> None:
        """The group directory, and a no-access ACL entry for each user who left (none for members).

        Other hosts trust a cached group membership for minutes (SSSD), and a running process keeps
        the groups it started with; a named-user ACL entry is checked before the group's, so it
        shuts a removed member out of the directory on every host at once.
        """
        path = posix.ensure_group_dir(record.name, record.gid, self.group_dir_quota)
        denied = self.acl.denied(path)
        if denied is None:  # no ACLs on this filesystem: the directory's group alone decides
            return
        for username in sorted(set(changed) - set(members) - denied):
            self.acl.deny(path, username)
        for username in sorted(denied & set(members)):
            self.acl.undeny(path, username)

    def _reconcile_slurm(self, name: str, members: Sequence[str]) -> None:
        slurm = self.slurm
        slurm.ensure_account(name, description=f"collaboration {name}")
        current = set(slurm.account_users(name))
        for username in members:
            if username not in current:
                slurm.ensure_user(username, name)
        for username in sorted(current - set(members)):
            slurm.cancel_jobs(username, name)
            slurm.remove_user(username, name)


class PosixAcl:
    """Named-user ACL entries without permissions on a directory (getfacl/setfacl)."""

    def denied(self, path: str) -> set[str] | None:
        """Users with a `user:NAME:---` entry; None when the filesystem or host has no ACLs."""
        if shutil.which("getfacl") is None or shutil.which("setfacl") is None:
            return None
        done = subprocess.run(["getfacl", "-cp", "--", path], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            if "not supported" in done.stderr.lower():
                return None
            raise CollabError(f"getfacl {path} failed: {done.stderr.strip()}")
        found = set()
        for line in done.stdout.splitlines():
            parts = line.split("#", 1)[0].strip().split(":")
            if len(parts) == 3 and parts[0] == "user" and parts[1] and parts[2] == "---":
                found.add(parts[1])
        return found

    def _setfacl(self, *args: str) -> None:
        done = subprocess.run(["setfacl", *args], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise CollabError(f"setfacl {' '.join(args)} failed: {done.stderr.strip()}")

    def deny(self, path: str, username: str) -> None:
        self._setfacl("-m", f"u:{username}:---", "--", path)

    def undeny(self, path: str, username: str) -> None:
        self._setfacl("-x", f"u:{username}", "--", path)


def _sss_cache(group: str, users: Sequence[str]) -> None:
    """Make SSSD on this host ask the directory again for the group and these users."""
    if shutil.which("sss_cache") is None:
        return
    # one object per call: -g one group, -u one user (their list of groups)
    for argv in (["sss_cache", "-g", group], *(["sss_cache", "-u", user] for user in users)):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)


# -------------------------------------------------------------------- command line


def _print_table(collabs: list[Collaboration]) -> None:
    print(f"{'name':<24} {'gid':>6}  {'owners':<24} {'members':>7}  state")
    for c in collabs:
        state = "deleted" if c.deleted else "active"
        print(f"{c.name:<24} {c.gid:>6}  {','.join(c.owners):<24} {len(c.members):>7}  {state}")


def _print_one(c: Collaboration) -> None:
    for key, value in c.to_json().items():
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else value)
        print(f"{key:<14} {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sciplat-groups", description="Collaborations (groups) on the platform; run as root on a hub host."
    )
    parser.add_argument(
        "--as",
        dest="by",
        default=OPERATOR,
        metavar="USER",
        help="act as this user, with their rights (default: as an operator)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="collaborations (all, or a user's)")
    p.add_argument("--member", default=None)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("show", help="one collaboration")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("create", help="a new collaboration")
    p.add_argument("name")
    p.add_argument("--owner", default=None, help="its first owner (default: the --as user)")
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("add", help="add a member, or change a member's role")
    p.add_argument("name")
    p.add_argument("username")
    p.add_argument("--role", choices=ROLES, default="member")
    p.add_argument("--json", action="store_true")
    for command, text in (("remove", "remove a member (revokes all access)"),):
        p = sub.add_parser(command, help=text)
        p.add_argument("name")
        p.add_argument("username")
        p.add_argument("--json", action="store_true")
    for command, text in (
        ("delete", "revoke every member, keep the data"),
        ("sync", "make every component match the directory"),
    ):
        p = sub.add_parser(command, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
    p = sub.add_parser("purge", help="remove a deleted collaboration's data (operators)")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="really remove its directory, bucket, database and account")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        collabs = Collaborations.from_host_config()
        by = args.by
        result: Collaboration | list[Collaboration] | None = None
        if args.command == "list":
            if not collabs.is_operator(by) and args.member not in (None, by):
                raise Forbidden("Only operators can list other users' collaborations.")
            member = args.member if args.member is not None else (None if collabs.is_operator(by) else by)
            result = collabs.list(member=member)
        elif args.command == "show":
            result = collabs.get(args.name, by=by)
        elif args.command == "create":
            owner = args.owner or (None if by == OPERATOR else by)
            if owner is None:
                raise Invalid("Say who owns the new collaboration: --owner USER.")
            if owner != by and not collabs.is_operator(by):
                raise Forbidden("Only operators can create a collaboration for someone else.")
            result = collabs.create(args.name, owner, args.description)
        elif args.command == "add":
            result = collabs.add_member(args.name, args.username, role=args.role, by=by)
        elif args.command == "remove":
            result = collabs.remove_member(args.name, args.username, by=by)
        elif args.command == "delete":
            result = collabs.delete(args.name, by=by)
        elif args.command == "sync":
            if not collabs.is_operator(by):
                raise Forbidden("Only operators can sync a collaboration.")
            result = collabs.sync(args.name)
        elif args.command == "purge":
            if not args.yes:
                raise Invalid(f"Purging removes the data of {args.name!r} for good; add --yes to do it.")
            collabs.purge(args.name, by=by)
    except CollabError as exc:
        if as_json:
            print(json.dumps({"error": type(exc).__name__, "detail": str(exc)}))
        print(f"sciplat-groups: {exc}", file=sys.stderr)
        return 1
    if as_json:
        if isinstance(result, list):
            print(json.dumps([c.to_json() for c in result], indent=2))
        else:
            print(json.dumps(result.to_json() if result is not None else None, indent=2))
    elif isinstance(result, list):
        _print_table(result)
    elif result is not None:
        _print_one(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
