"""Sharing: files and folders, bucket prefixes and MyDB tables, with a user or a group.

The platform API (and operators, with ``python -m sciplat_hub.sharing``) call this
on a hub host, as root, with the components' admin settings of that host.

- ``kind="path"``: a file or folder under the owner's home (or under a group
  directory the owner is a member of, and owned by them) gets a POSIX ACL entry
  for the grantee (``u:<uid>:rX`` read-only, ``rwX`` read-write), recursively,
  plus the same *default* entry on every folder so that what is created there
  later inherits it. The folders above it (from the home or group directory down)
  get the execute-only entry ``--x``: the grantee may pass through them to reach
  the shared item, not list or read them. Each of those folders is closed to
  "other" first (its other children: chmod o-rwx; itself: default other::---), so
  passing through does not open the files in them that are readable by everyone.
  ceph-fuse enforces these ACLs
  (``client_acl_type = posix_acl``, set by the ceph role).
  JupyterLab's file browser starts at the recipient's home, so the recipient
  gets a symlink ``~/shared/<owner>/<name>`` (every member of a group gets one),
  removed on unshare; the share's ``link`` opens it in JupyterLab
  (``/hub/user-redirect/lab/tree/shared/<owner>/<name>``).
- ``kind="prefix"``: ``home-<owner>/<prefix>/`` in the owner's home bucket: two
  bucket-policy statements (``Sid`` ``share<id>`` for the objects, ``share<id>list``
  for listing under the prefix) next to whatever else the policy holds. A group is
  the set of its members at the time of sharing; ``refresh()`` updates it.
- ``kind="table"``: ``GRANT SELECT`` (ro) or ``SELECT, INSERT, UPDATE, DELETE``
  (rw) on a table of the owner's MyDB database to the grantee's role (``u_<user>``
  or ``g_<group>``), with ``CONNECT`` and schema ``USAGE`` (the grants
  ``sciplat-db share`` makes).

Every share is recorded in the MyDB registry database (``sciplat_mydb``, table
``platform_shares``, made here when missing). Creating is idempotent (the id is
derived from kind, owner, target and grantee; sharing again changes the mode);
deleting revokes the access, then removes the record, and is allowed for the
owner and for operators (hub admins).

The public-datasets area (``/public`` on CephFS, ``~/public`` in every home) is
made by the ceph role and at sign-in (sciplat_hub.posix).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from sciplat_hub.collab import HUB_SETTINGS, OPERATOR, CollabError, Forbidden, Invalid, NotFound

log = logging.getLogger("sciplat_hub.sharing")

KINDS = ("path", "prefix", "table")
MODES = ("ro", "rw")
SHARED_DIR = "shared"  # ~/shared/<owner>/<name> in the recipient's home
LINK_BASE = "/hub/user-redirect/lab/tree/"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_TABLE = re.compile(r"^(?:[a-z_][a-z0-9_$]{0,62}\.)?[a-z_][a-z0-9_$]{0,62}$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9._=+@,-]+$")
OBJECT_ACTIONS = {
    "ro": ["s3:GetObject"],
    "rw": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ],
}

REGISTRY_SQL = """
CREATE TABLE IF NOT EXISTS platform_shares (
    id       text PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('path', 'prefix', 'table')),
    owner    text NOT NULL,
    target   text NOT NULL,
    grantee  text NOT NULL,
    mode     text NOT NULL CHECK (mode IN ('ro', 'rw')),
    created  timestamptz NOT NULL DEFAULT now(),
    link     text,
    detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS platform_shares_owner ON platform_shares (owner);
CREATE INDEX IF NOT EXISTS platform_shares_grantee ON platform_shares (grantee);
"""
_COLUMNS = "id, kind, owner, target, grantee, mode, created, link, detail"


@dataclass
class Share:
    id: str
    kind: str
    owner: str
    target: str
    grantee: str
    mode: str
    created: str
    link: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "owner": self.owner,
            "target": self.target,
            "grantee": self.grantee,
            "mode": self.mode,
            "created": self.created,
            "link": self.link,
        }


# ------------------------------------------------------------------ pure helpers (unit-tested)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise Invalid(f"mode {mode!r} is not valid: use 'ro' (read-only) or 'rw' (read-write)")
    return mode


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise Invalid(f"kind {kind!r} is not valid: share a 'path', a bucket 'prefix' or a MyDB 'table'")
    return kind


def parse_grantee(grantee: str) -> tuple[str, str]:
    """('user' | 'group', name) from 'user:<name>' or 'group:<name>'."""
    kind, sep, name = grantee.partition(":")
    if not sep or kind not in ("user", "group") or not _NAME.match(name):
        raise Invalid(
            f"grantee {grantee!r} is not valid: write user:<name> or group:<name> "
            "(lowercase letters, digits and '-', starting with a letter)"
        )
    return kind, name


def share_id(kind: str, owner: str, target: str, grantee: str) -> str:
    """Stable and URL-safe: the same share made twice has the same id."""
    digest = hashlib.sha256(f"{kind}\0{owner}\0{target}\0{grantee}".encode()).hexdigest()
    return "s" + digest[:15]


def resolve_path(
    target: str, owner: str, home_root: PurePosixPath, group_root: PurePosixPath, owner_groups: Collection[str]
) -> tuple[PurePosixPath, PurePosixPath]:
    """(absolute path, the home or group directory it is in) for a path the owner wants to share.

    A relative target is relative to the owner's home. Refused: '..', empty parts, the home or
    group directory itself, anything outside the owner's home and their groups' directories.
    """
    if not target or "\0" in target:
        raise Invalid("say which file or folder to share (a path in your home or in a group directory)")
    raw = target[2:] if target.startswith("~/") else target
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Invalid(f"{target!r}: '..' is not allowed in a shared path; give the path from your home")
    home = home_root / owner
    path = PurePosixPath("/", *parts) if raw.startswith("/") else home.joinpath(*parts)
    if path.is_relative_to(home):
        root = home
    elif path.is_relative_to(group_root) and len(path.relative_to(group_root).parts) >= 1:
        group = path.relative_to(group_root).parts[0]
        if group not in owner_groups:
            raise Forbidden(f"{path} is in the directory of group {group}, which you are not a member of")
        root = group_root / group
    else:
        raise Forbidden(f"{path} is neither in your home ({home}) nor in a group directory ({group_root}/<group>)")
    if path == root:
        raise Invalid(f"share a file or folder inside {root}, not {root} itself")
    return path, root


def traversal_dirs(path: PurePosixPath, root: PurePosixPath) -> list[PurePosixPath]:
    """The folders a grantee passes through to reach path: root and every folder below it above path."""
    dirs = [root]
    for part in path.relative_to(root).parts[:-1]:
        dirs.append(dirs[-1] / part)
    return dirs


# New files and folders directly in a folder a grantee passes through: as with umask 027, whatever the
# owner's umask (the owner and group bits a 022 umask gives, nothing for others).
CLOSED_DEFAULTS = "u::rwx,g::r-x,o::---"


def closed_modes(children: Iterable[tuple[str, int]], keep: str) -> dict[str, int]:
    """The new modes of the direct children of a folder a grantee passes through: {name: mode}.

    children: (name, st_mode from lstat). Every child but `keep` (the one on the way to the shared
    item) loses its "other" permissions; symlinks are skipped (their mode means nothing and chmod
    would follow them), and so are children that have none.
    """
    return {
        name: stat.S_IMODE(mode) & ~0o007
        for name, mode in children
        if name != keep and not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o007
    }


def closed_default_argv(folder: str, acl_text: str) -> list[str] | None:
    """setfacl giving folder the default entry other::--- (None: it has it), from `getfacl -n -p` output.

    A folder without a default ACL gets CLOSED_DEFAULTS; one that has a default ACL (a shared folder
    with a share inside it) only has its default other entry changed, the rest stays.
    """
    defaults = [line.split("#", 1)[0].strip() for line in acl_text.splitlines()]
    defaults = [line for line in defaults if line.startswith("default:")]
    if "default:other::---" in defaults:
        return None
    entries = "o::---" if defaults else CLOSED_DEFAULTS
    return ["setfacl", "-P", "-d", "-m", entries, "--", folder]


def acl_qualifier(grantee_kind: str, ident: int) -> str:
    return f"{'u' if grantee_kind == 'user' else 'g'}:{ident}"


def grant_acl_argv(path: str, qualifier: str, mode: str, is_dir: bool) -> list[str]:
    """setfacl for a share: the entry on path (recursively, with default entries, for a folder)."""
    perms = "rX" if check_mode(mode) == "ro" else "rwX"
    if is_dir:
        return ["setfacl", "-P", "-R", "-m", f"{qualifier}:{perms},d:{qualifier}:{perms}", "--", path]
    return ["setfacl", "-P", "-m", f"{qualifier}:{perms}", "--", path]


def revoke_acl_argv(path: str, qualifier: str, is_dir: bool) -> list[list[str]]:
    """setfacl runs that remove the grantee's entries (and default entries) from path and below."""
    if is_dir:
        return [
            ["setfacl", "-P", "-R", "-x", qualifier, "--", path],
            ["setfacl", "-P", "-R", "-d", "-x", qualifier, "--", path],
        ]
    return [["setfacl", "-P", "-x", qualifier, "--", path]]


def parse_acl(text: str, *, default: bool = False) -> dict[str, str]:
    """Named entries of `getfacl -n --omit-header` output: {'u:1001': 'r-x', 'g:60001': '--x', ...}.

    Access entries (default=False) or default entries (True); 'user::', 'mask::' and comments are left out.
    """
    entries: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("default:") != default:
            continue
        line = line.removeprefix("default:")
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in ("user", "group") or not fields[1]:
            continue
        entries[f"{fields[0][0]}:{fields[1]}"] = fields[2]
    return entries


def link_name(path: PurePosixPath, sid: str, taken: Collection[str]) -> str:
    """The name of the recipient's symlink: the item's own name, or name-<id> when the owner shares two of that name."""
    name = path.name
    return name if name not in taken else f"{name}-{sid[1:7]}"


def link_url(owner: str, name: str) -> str:
    return LINK_BASE + quote(f"{SHARED_DIR}/{owner}/{name}")


def parse_prefix(target: str, owner: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/') of 'bucket/prefix/'; only the owner's home bucket may be shared."""
    bucket, sep, prefix = target.strip().lstrip("/").partition("/")
    home = f"home-{owner}"
    if not sep or not prefix.strip("/"):
        raise Invalid(f"{target!r}: write bucket/prefix/, e.g. {home}/results/")
    if bucket != home:
        raise Forbidden(f"you can share prefixes of your home bucket {home} only, not of {bucket}")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or not _PREFIX_PART.match(p) for p in parts):
        raise Invalid(
            f"{prefix!r} is not a prefix that can be shared: use letters, digits and . _ - = + @ , between '/'"
        )
    return bucket, "/".join(parts) + "/"


def prefix_statements(sid: str, bucket: str, prefix: str, principals: Sequence[str], mode: str) -> list[dict[str, Any]]:
    """The two statements of one prefix share: read (and write) objects under it; list under it."""
    who = {"AWS": [f"arn:aws:iam:::user/{p}" for p in sorted(set(principals))]}
    return [
        {
            "Sid": f"share{sid}",
            "Effect": "Allow",
            "Principal": who,
            "Action": OBJECT_ACTIONS[check_mode(mode)],
            "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"],
        },
        {
            "Sid": f"share{sid}list",
            "Effect": "Allow",
            "Principal": who,
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
    ]


def _is_share_statement(statement: Any, sid: str) -> bool:
    return isinstance(statement, dict) and statement.get("Sid") in (f"share{sid}", f"share{sid}list")


def merge_statements(policy: dict[str, Any] | None, sid: str, statements: list[dict[str, Any]]) -> dict[str, Any]:
    """The policy with this share's statements replaced by `statements`; every other statement kept."""
    base = dict(policy or {"Version": "2012-10-17", "Statement": []})
    kept = [s for s in _statements(base) if not _is_share_statement(s, sid)]
    base["Statement"] = kept + statements
    base.setdefault("Version", "2012-10-17")
    return base


def remove_statements(policy: dict[str, Any] | None, sid: str) -> dict[str, Any] | None:
    """The policy without this share's statements; None when nothing is left."""
    if policy is None:
        return None
    kept = [s for s in _statements(policy) if not _is_share_statement(s, sid)]
    if not kept:
        return None
    return {**policy, "Statement": kept}


def _statements(policy: dict[str, Any]) -> list[Any]:
    statements = policy.get("Statement", [])
    return list(statements) if isinstance(statements, list) else [statements]


def canonical_table(target: str) -> str:
    """'schema.table' ('public.' when no schema is given); unquoted lowercase names only."""
    name = target.strip()
    if not _TABLE.match(name):
        raise Invalid(
            f"{target!r} is not a table name that can be shared: write table or schema.table "
            "(lowercase letters, digits and '_')"
        )
    return name if "." in name else f"public.{name}"


# ------------------------------------------------------------------ the service


class Sharing:
    """Shares of one platform, administered from a hub host (every method is idempotent)."""

    def __init__(
        self,
        *,
        mydb: Any = None,
        posix: Any = None,
        store: Any = None,
        directory: Any = None,
        operators: Collection[str] = (),
        run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
    ) -> None:
        self.mydb = mydb
        self.posix = posix
        self.store = store
        self.directory = directory
        self.operators = set(operators) | {OPERATOR}
        self._run = run or (lambda argv: subprocess.run(argv, capture_output=True, text=True, check=False))
        self._schema_ready = False

    @classmethod
    def from_host_config(cls, operators: Collection[str] = ()) -> Sharing:
        """The components deployed on this host: MyDB (the registry, required), posix, storage, directory.

        Operators: `operators`, the hub's admins (admin_users of /etc/jupyterhub/sciplat.json) and
        collab.OPERATOR, as for collaborations.
        """
        admins: list[str] = []
        with contextlib.suppress(OSError, ValueError, AttributeError):
            admins = [str(a) for a in json.loads(HUB_SETTINGS.read_text()).get("admin_users") or []]
        operators = {*operators, *admins}
        from sciplat_hub import mydb as mydb_mod

        try:
            db = mydb_mod.MyDB.from_host_config()
        except mydb_mod.MyDBError as exc:
            raise CollabError(f"sharing needs the MyDB registry on this host: {exc}") from None
        posix = store = directory = None
        with contextlib.suppress(Exception):
            from sciplat_hub import posix as posix_mod

            posix = posix_mod.Posix.from_host_config()
        with contextlib.suppress(Exception):
            from sciplat_hub.storage import config as storage_config

            store = storage_config.from_host_config()
        with contextlib.suppress(Exception):
            from sciplat_hub import directory as directory_mod

            directory = directory_mod.Directory.from_host_config()
        return cls(mydb=db, posix=posix, store=store, directory=directory, operators=operators)

    def is_operator(self, username: str) -> bool:
        return username in self.operators

    # ------------------------------------------------------------ registry

    @contextlib.contextmanager
    def _registry(self, lock: str | None = None) -> Iterator[Any]:
        if self.mydb is None:
            raise CollabError("sharing is not available: this host has no MyDB settings (the share registry)")
        try:
            with self.mydb.connect() as conn:
                if not self._schema_ready:
                    conn.execute("SELECT pg_advisory_lock(hashtext('sciplat_shares:schema'))")
                    try:
                        conn.execute(REGISTRY_SQL)
                    finally:
                        conn.execute("SELECT pg_advisory_unlock(hashtext('sciplat_shares:schema'))")
                    self._schema_ready = True
                if lock is None:
                    yield conn
                    return
                conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [f"sciplat_shares:{lock}"])
                try:
                    yield conn
                finally:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [f"sciplat_shares:{lock}"])
        except CollabError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("sciplat_hub.mydb") or type(exc).__module__.startswith("psycopg"):
                raise CollabError(f"sharing failed in the database: {str(exc).strip()}") from None
            raise

    @staticmethod
    def _row_share(row: Sequence[Any]) -> Share:
        created = row[6]
        return Share(
            id=row[0],
            kind=row[1],
            owner=row[2],
            target=row[3],
            grantee=row[4],
            mode=row[5],
            created=created.astimezone(UTC).isoformat() if isinstance(created, datetime) else str(created),
            link=row[7],
        )

    def _rows(self, conn: Any, where: str, params: Sequence[Any]) -> list[tuple[Share, dict[str, Any]]]:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM platform_shares WHERE {where} ORDER BY created, id", list(params)
        ).fetchall()
        return [(self._row_share(r), dict(r[8] or {})) for r in rows]

    def get(self, share_id: str) -> Share:
        with self._registry() as conn:
            rows = self._rows(conn, "id = %s", [share_id])
        if not rows:
            raise NotFound(f"there is no share {share_id}")
        return rows[0][0]

    def by_owner(self, owner: str) -> list[Share]:
        with self._registry() as conn:
            return [s for s, _ in self._rows(conn, "owner = %s", [owner])]

    def with_user(self, username: str) -> list[Share]:
        grantees = [f"user:{username}"] + [f"group:{g}" for g in self._groups_of(username)]
        with self._registry() as conn:
            return [s for s, _ in self._rows(conn, "grantee = ANY(%s) AND owner <> %s", [grantees, username])]

    def public_area(self) -> str:
        """The public-datasets directory (readable by every user; ~/public in every home)."""
        if self.posix is None or getattr(self.posix, "public_root", None) is None:
            raise NotFound("this platform has no public-datasets area (it needs the shared file system)")
        area: str = self.posix.ensure_public_area()
        return area

    # ------------------------------------------------------------ accounts

    def _groups_of(self, username: str) -> list[str]:
        if self.directory is not None:
            return [g.name for g in self.directory.groups_of(username)]
        return sorted(g.gr_name for g in grp.getgrall() if username in g.gr_mem)

    def _group_members(self, group: str) -> list[str]:
        if self.directory is not None:
            found = self.directory.get_group(group)
            if found is None:
                raise NotFound(f"there is no group {group}")
            return list(found.members)
        try:
            return list(grp.getgrnam(group).gr_mem)
        except KeyError:
            raise NotFound(f"there is no group {group}") from None

    def _user_ids(self, username: str) -> tuple[int, int]:
        if self.directory is not None:
            account = self.directory.get_user(username)
            if account is None:
                raise NotFound(f"there is no user {username}")
            return int(account.uid), int(account.gid)
        try:
            entry = pwd.getpwnam(username)
        except KeyError:
            raise NotFound(f"there is no user {username}") from None
        return entry.pw_uid, entry.pw_gid

    def _group_id(self, group: str) -> int:
        if self.directory is not None:
            found = self.directory.get_group(group)
            if found is None:
                raise NotFound(f"there is no group {group}")
            return int(found.gid)
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise NotFound(f"there is no group {group}") from None

    def _recipients(self, grantee: str, owner: str) -> list[str]:
        kind, name = parse_grantee(grantee)
        users = [name] if kind == "user" else self._group_members(name)
        return sorted(u for u in set(users) if u != owner)

    # ------------------------------------------------------------ create / delete

    def create(self, owner: str, kind: str, target: str, grantee: str, mode: str = "ro") -> Share:
        check_kind(kind)
        check_mode(mode)
        gkind, gname = parse_grantee(grantee)
        if not _NAME.match(owner):
            raise Invalid(f"{owner!r} is not a platform user name")
        if gkind == "user" and gname == owner:
            raise Invalid("you cannot share something with yourself")
        if gkind == "user":
            self._user_ids(gname)
        else:
            self._group_id(gname)
        canonical = self._canonical_target(owner, kind, target)
        sid = share_id(kind, owner, canonical, grantee)
        with self._registry(owner) as conn:
            existing = self._rows(conn, "id = %s", [sid])
            detail = existing[0][1] if existing else {}
            link = existing[0][0].link if existing else None
            if kind == "path":
                taken = {
                    d.get("link_name")
                    for s, d in self._rows(conn, "owner = %s AND kind = 'path' AND target <> %s", [owner, canonical])
                }
                detail = self._apply_path(owner, canonical, grantee, mode, sid, detail, taken)
                link = link_url(owner, detail["link_name"])
            elif kind == "prefix":
                detail = self._apply_prefix(owner, canonical, grantee, mode, sid)
            else:
                detail = self._apply_table(owner, canonical, grantee, mode)
            conn.execute(
                "INSERT INTO platform_shares (id, kind, owner, target, grantee, mode, link, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET mode = EXCLUDED.mode, "
                "link = EXCLUDED.link, detail = EXCLUDED.detail",
                [sid, kind, owner, canonical, grantee, mode, link, json.dumps(detail)],
            )
            if kind == "path":  # nested shares to the same grantee: the more specific one wins
                self._reapply_paths(conn, grantee, exclude=sid, after=canonical)
            return self._rows(conn, "id = %s", [sid])[0][0]

    def delete(self, share_id: str, *, by: str) -> None:
        with self._registry() as conn:
            rows = self._rows(conn, "id = %s", [share_id])
        if not rows:
            raise NotFound(f"there is no share {share_id}")
        share, _ = rows[0]
        if by != share.owner and not self.is_operator(by):
            if share.grantee == f"user:{by}":
                raise Forbidden(f"only {share.owner}, who shared it, can end this share")
            raise NotFound(f"there is no share {share_id}")
        with self._registry(share.owner) as conn:
            rows = self._rows(conn, "id = %s", [share_id])
            if not rows:
                return  # deleted meanwhile
            share, detail = rows[0]
            if share.kind == "path":
                self._revoke_path(share, detail)
            elif share.kind == "prefix":
                self._revoke_prefix(share)
            else:
                self._revoke_table(share)
            conn.execute("DELETE FROM platform_shares WHERE id = %s", [share_id])
            if share.kind == "path":
                self._reapply_paths(conn, share.grantee, exclude=share_id)
                self._reapply_inside(conn, share.target)

    def refresh(self, grantee: str) -> list[Share]:
        """Apply every share to `grantee` again (after a group's members changed: links and bucket principals)."""
        parse_grantee(grantee)
        with self._registry() as conn:
            rows = self._rows(conn, "grantee = %s", [grantee])
        done = []
        for share, _ in rows:
            done.append(self.create(share.owner, share.kind, share.target, share.grantee, share.mode))
        return done

    def _canonical_target(self, owner: str, kind: str, target: str) -> str:
        if kind == "path":
            path, _ = self._resolve(owner, target)
            return str(path)
        if kind == "prefix":
            bucket, prefix = parse_prefix(target, owner)
            return f"{bucket}/{prefix}"
        return canonical_table(target)

    # ------------------------------------------------------------ kind=path

    def _roots(self) -> tuple[PurePosixPath, PurePosixPath]:
        if self.posix is None:
            raise Invalid("files cannot be shared here: this platform has no shared file system")
        return PurePosixPath(str(self.posix.home_root)), PurePosixPath(str(self.posix.group_root))

    def _resolve(self, owner: str, target: str) -> tuple[PurePosixPath, PurePosixPath]:
        home_root, group_root = self._roots()
        groups = self._groups_of(owner) if not target.startswith(str(home_root)) else []
        return resolve_path(target, owner, home_root, group_root, groups)

    def _qualifier(self, grantee: str) -> str:
        kind, name = parse_grantee(grantee)
        ident = self._user_ids(name)[0] if kind == "user" else self._group_id(name)
        return acl_qualifier(kind, ident)

    def _setfacl(self, argv: list[str]) -> None:
        done = self._run(argv)
        if done.returncode != 0:
            raise CollabError(f"setting the access rights failed ({' '.join(argv[:-1])}): {done.stderr.strip()}")

    def _getfacl(self, path: str) -> str:
        done = self._run(["getfacl", "-n", "-p", "--omit-header", "--", path])
        if done.returncode != 0:
            raise CollabError(f"reading the access rights of {path} failed: {done.stderr.strip()}")
        return done.stdout

    def _acl(self, path: str, *, default: bool = False) -> dict[str, str]:
        return parse_acl(self._getfacl(path), default=default)

    def _close_to_others(self, path: PurePosixPath, root: PurePosixPath) -> None:
        """Close every folder a grantee of path passes through to everyone without an entry of their own.

        In each folder from root down to path's parent: the children other than the one on the way to
        path lose their "other" permissions (chmod o-rwx, not recursive), and the folder gets the
        default entry other::--- for what is made there later. Homes and group directories give
        "other" nothing by themselves, so only the grantees of pass-through entries (--x) lose what
        they could open by guessing its name; named entries (other shares) stay. The folders are
        walked from root without following symlinks. Idempotent.
        """
        folders = traversal_dirs(path, root)
        ways = [*path.relative_to(root).parts]
        fds: list[int] = []
        try:
            for i, folder in enumerate(folders):
                name = str(folder) if i == 0 else ways[i - 1]
                try:
                    fds.append(
                        os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1] if fds else None)
                    )
                    children = []
                    with os.scandir(fds[-1]) as entries:
                        for entry in entries:
                            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                                children.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
                    for child in closed_modes(children, ways[i]):
                        self._chmod_other_off(fds[-1], child)
                except OSError as exc:
                    raise CollabError(
                        f"{folder} could not be closed to other users before sharing {path} "
                        f"({exc.strerror or exc}); nothing was shared"
                    ) from None
                argv = closed_default_argv(str(folder), self._getfacl(str(folder)))
                if argv is not None:
                    self._setfacl(argv)
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _chmod_other_off(dir_fd: int, name: str) -> None:
        """chmod o-rwx on name in dir_fd itself, never on what a symlink points to."""
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o007:
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(info.st_mode) & ~0o007)
        finally:
            os.close(fd)

    def _apply_path(
        self,
        owner: str,
        target: str,
        grantee: str,
        mode: str,
        sid: str,
        detail: dict[str, Any],
        taken: Collection[str | None],
    ) -> dict[str, Any]:
        path, root = self._resolve(owner, target)
        uid = self._user_ids(owner)[0]
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"there is no file or folder {path}") from None
        if stat.S_ISLNK(info.st_mode):
            raise Invalid(f"{path} is a symbolic link; share the file or folder it points to")
        if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            raise Invalid(f"{path} is neither a file nor a folder")
        if info.st_uid != uid:
            raise Forbidden(f"{path} belongs to another user; only its owner can share it")
        if os.path.realpath(path) != str(path):
            raise Invalid(f"{path} is reached through a symbolic link; give its real path")
        qualifier = self._qualifier(grantee)
        self._close_to_others(path, root)  # before anyone may pass through
        self._setfacl(grant_acl_argv(str(path), qualifier, mode, stat.S_ISDIR(info.st_mode)))
        for folder in traversal_dirs(path, root):
            entry = self._acl(str(folder)).get(qualifier)
            if entry is None:
                self._setfacl(["setfacl", "-m", f"{qualifier}:x", "--", str(folder)])
            elif "x" not in entry:
                self._setfacl(["setfacl", "-m", f"{qualifier}:{entry.replace('-', '')}x", "--", str(folder)])
        name = detail.get("link_name") or link_name(path, sid, {t for t in taken if t})
        links = self._sync_links(owner, grantee, str(path), name, dict(detail.get("links") or {}))
        return {"path": str(path), "root": str(root), "qualifier": qualifier, "link_name": name, "links": links}

    def _revoke_path(self, share: Share, detail: dict[str, Any]) -> None:
        path = detail.get("path") or share.target
        root = detail.get("root")
        qualifier = detail.get("qualifier") or self._qualifier(share.grantee)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISLNK(info.st_mode):
            for argv in revoke_acl_argv(path, qualifier, stat.S_ISDIR(info.st_mode)):
                self._setfacl(argv)
            if stat.S_ISDIR(info.st_mode) and not self._acl(path, default=True):
                # no one else's default entry is left: drop the default ACL, so the owner's umask counts again
                self._setfacl(["setfacl", "-P", "-R", "-k", "--", path])
        if root:
            for folder in traversal_dirs(PurePosixPath(path), PurePosixPath(root)):
                with contextlib.suppress(FileNotFoundError):
                    if self._acl(str(folder)).get(qualifier) == "--x":
                        self._setfacl(["setfacl", "-x", qualifier, "--", str(folder)])
        recipients = set(dict(detail.get("links") or {}))
        with contextlib.suppress(NotFound):  # links made at sign-in (sync_user) are not recorded
            recipients |= set(self._recipients(share.grantee, share.owner))
        name = detail.get("link_name") or PurePosixPath(path).name
        for user in sorted(recipients):
            self._unlink(user, share.owner, name, path)

    def _reapply_paths(self, conn: Any, grantee: str, *, exclude: str, after: str | None = None) -> None:
        """Apply the other path shares to grantee again, outer before inner (the inner one wins).

        Unsharing removes pass-through entries other shares to the same grantee may need (a group
        directory two owners share from); making a share overwrites the entries of shares inside it.
        """
        rows = self._rows(conn, "grantee = %s AND kind = 'path' AND id <> %s", [grantee, exclude])
        for share, detail in sorted(rows, key=lambda r: len(r[0].target)):
            if after is not None and not PurePosixPath(share.target).is_relative_to(after):
                continue  # only shares inside the one just made were overwritten by it
            try:
                self._apply_path(share.owner, share.target, grantee, share.mode, share.id, detail, ())
            except CollabError as exc:  # e.g. the item was removed meanwhile
                log.warning("share %s could not be applied again: %s", share.id, exc)

    def _reapply_inside(self, conn: Any, target: str) -> None:
        """Apply the path shares inside target again (any grantee), outer before inner.

        Unsharing a folder may drop every default ACL below it (setfacl -R -k): the default entries
        of shares inside it and the default other::--- of the folders those shares pass through.
        """
        prefix = target.rstrip("/") + "/"
        rows = self._rows(conn, "kind = 'path' AND left(target, %s) = %s", [len(prefix), prefix])
        for share, detail in sorted(rows, key=lambda r: len(r[0].target)):
            try:
                self._apply_path(share.owner, share.target, share.grantee, share.mode, share.id, detail, ())
            except CollabError as exc:  # e.g. the item was removed meanwhile
                log.warning("share %s could not be applied again: %s", share.id, exc)

    # recipients' symlinks ~/shared/<owner>/<name>

    def sync_user(self, username: str) -> list[str]:
        """At sign-in: a link for every file or folder shared with the user; links of ended shares go.

        Catches up what happened while the user had no home yet or was not yet in a group. Only
        symlinks into the homes or group directories are ever removed, never the user's own files.
        """
        grantees = [f"user:{username}"] + [f"group:{g}" for g in self._groups_of(username)]
        with self._registry() as conn:
            rows = self._rows(conn, "grantee = ANY(%s) AND owner <> %s AND kind = 'path'", [grantees, username])
        wanted: dict[tuple[str, str], str] = {}
        for share, detail in rows:
            name, target = detail.get("link_name"), detail.get("path") or share.target
            if name and self._link(username, share.owner, name, target):
                wanted[(share.owner, name)] = target
        self._prune_links(username, wanted)
        return sorted(f"{SHARED_DIR}/{owner}/{name}" for owner, name in wanted)

    def _prune_links(self, user: str, wanted: dict[tuple[str, str], str]) -> None:
        home_root, group_root = self._roots()
        try:
            home, uid, _ = self._home_of(user)
        except NotFound:
            return
        home_fd = self._open_dir(str(home), None, uid)
        if home_fd is None:
            return
        try:
            shared_fd = self._open_dir(SHARED_DIR, home_fd, uid)
            if shared_fd is None:
                return
            try:
                for owner in os.listdir(shared_fd):
                    owner_fd = self._open_dir(owner, shared_fd, uid)
                    if owner_fd is None:
                        continue
                    try:
                        for name in os.listdir(owner_fd):
                            try:
                                target = os.readlink(name, dir_fd=owner_fd)
                            except OSError:
                                continue  # not a symlink: the user's own
                            ours = target.startswith((f"{home_root}/", f"{group_root}/"))
                            if ours and wanted.get((owner, name)) != target:
                                os.unlink(name, dir_fd=owner_fd)
                    finally:
                        os.close(owner_fd)
                    with contextlib.suppress(OSError):  # only when empty
                        os.rmdir(owner, dir_fd=shared_fd)
            finally:
                os.close(shared_fd)
        finally:
            os.close(home_fd)

    def _sync_links(self, owner: str, grantee: str, target: str, name: str, old: dict[str, str]) -> dict[str, str]:
        links: dict[str, str] = {}
        recipients = self._recipients(grantee, owner)
        for user in recipients:
            made = self._link(user, owner, name, target)
            if made:
                links[user] = made
        for user in set(old) - set(recipients):  # no longer a member of the group
            self._unlink(user, owner, PurePosixPath(old[user]).name, target)
        return links

    def _home_of(self, user: str) -> tuple[PurePosixPath, int, int]:
        home_root, _ = self._roots()
        uid, gid = self._user_ids(user)
        return home_root / user, uid, gid

    @staticmethod
    def _open_dir(name: str | Path, dir_fd: int | None, uid: int) -> int | None:
        """A folder owned by uid, opened without following a symlink; None when it is not that."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                return None
            raise
        if os.fstat(fd).st_uid != uid:
            os.close(fd)
            return None
        return fd

    def _link(self, user: str, owner: str, name: str, target: str) -> str | None:
        """Make ~user/shared/<owner>/<name> -> target (as root, never following the user's symlinks)."""
        try:
            home, uid, gid = self._home_of(user)
        except NotFound:
            return None
        fds: list[int] = []
        try:
            fd = self._open_dir(str(home), None, uid)
            if fd is None:
                return None  # no home yet: made at their first sign-in
            fds.append(fd)
            for part in (SHARED_DIR, owner):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fds[-1])
                    os.chown(part, uid, gid, dir_fd=fds[-1], follow_symlinks=False)
                sub = self._open_dir(part, fds[-1], uid)
                if sub is None:
                    log.warning("%s/%s is not a folder of %s: no link to %s", home, part, user, target)
                    return None
                fds.append(sub)
            try:
                current: str | None = os.readlink(name, dir_fd=fds[-1])
            except FileNotFoundError:
                current = None
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # the user's own file of that name: leave it
                    return None
                raise
            if current != target:
                if current is not None:
                    os.unlink(name, dir_fd=fds[-1])
                os.symlink(target, name, dir_fd=fds[-1])
                os.chown(name, uid, gid, dir_fd=fds[-1], follow_symlinks=False)
            return str(home / SHARED_DIR / owner / name)
        finally:
            for fd in fds:
                os.close(fd)

    def _unlink(self, user: str, owner: str, name: str, target: str) -> None:
        try:
            home, uid, _ = self._home_of(user)
        except NotFound:
            return
        fds: list[int] = []
        try:
            fd = self._open_dir(str(home), None, uid)
            if fd is None:
                return
            fds.append(fd)
            for part in (SHARED_DIR, owner):
                sub = self._open_dir(part, fds[-1], uid)
                if sub is None:
                    return
                fds.append(sub)
            with contextlib.suppress(OSError):
                if os.readlink(name, dir_fd=fds[-1]) == target:
                    os.unlink(name, dir_fd=fds[-1])
            with contextlib.suppress(OSError):  # only when empty
                os.rmdir(owner, dir_fd=fds[-2])
        finally:
            for fd in fds:
                os.close(fd)

    # ------------------------------------------------------------ kind=prefix

    def _policy_store(self) -> Any:
        if self.store is None:
            raise Invalid("bucket prefixes cannot be shared here: this platform has no object storage")
        if not hasattr(self.store, "set_bucket_policy"):
            raise Invalid("sharing bucket prefixes needs the Ceph RGW object store")
        return self.store

    def _apply_prefix(self, owner: str, target: str, grantee: str, mode: str, sid: str) -> dict[str, Any]:
        store = self._policy_store()
        bucket, prefix = parse_prefix(target, owner)
        principals = [u for u in self._recipients(grantee, owner) if store.has_user(u)]
        try:
            policy = store.bucket_policy(bucket, owner)
            wanted: dict[str, Any] | None
            if principals:
                wanted = merge_statements(policy, sid, prefix_statements(sid, bucket, prefix, principals, mode))
            else:  # a group whose members have no object-storage account yet
                wanted = remove_statements(policy, sid)
            if wanted != policy:
                store.set_bucket_policy(bucket, owner, wanted)
        except CollabError:
            raise
        except Exception as exc:
            raise CollabError(f"the policy of bucket {bucket} could not be changed: {exc}") from None
        return {"bucket": bucket, "prefix": prefix, "principals": principals}

    def _revoke_prefix(self, share: Share) -> None:
        store = self._policy_store()
        bucket, _ = parse_prefix(share.target, share.owner)
        try:
            policy = store.bucket_policy(bucket, share.owner)
            wanted = remove_statements(policy, share.id)
            if wanted != policy:
                store.set_bucket_policy(bucket, share.owner, wanted)
        except Exception as exc:
            raise CollabError(f"the policy of bucket {bucket} could not be changed: {exc}") from None

    # ------------------------------------------------------------ kind=table

    def _grantee_role(self, grantee: str) -> str:
        from sciplat_hub import mydb as mydb_mod

        kind, name = parse_grantee(grantee)
        return mydb_mod.user_role(name) if kind == "user" else mydb_mod.group_role(name)

    @contextlib.contextmanager
    def _owner_db(self, owner: str) -> Iterator[Any]:
        from psycopg import sql

        from sciplat_hub import mydb as mydb_mod
        from sciplat_hub.mydb_cli import CliError

        role = mydb_mod.user_role(owner)
        try:
            with self.mydb.connect(role) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                yield conn
        except CliError as exc:
            raise NotFound(str(exc)) from None
        except mydb_mod.MyDBError as exc:
            raise NotFound(f"you have no MyDB database yet ({exc})") from None

    def _apply_table(self, owner: str, target: str, grantee: str, mode: str) -> dict[str, Any]:
        from sciplat_hub.mydb_cli import grant_table

        role = self._grantee_role(grantee)
        with self.mydb.connect() as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
                raise NotFound(
                    f"{grantee.partition(':')[2]} has no MyDB database yet (a user gets one at their first sign-in)"
                )
        with self._owner_db(owner) as conn:
            schema, name = grant_table(conn, target, role, mode == "rw")
            database = conn.info.dbname
        return {"database": database, "table": f"{schema}.{name}", "role": role}

    def _revoke_table(self, share: Share) -> None:
        from sciplat_hub.mydb_cli import revoke_table

        role = self._grantee_role(share.grantee)
        try:
            with self._owner_db(share.owner) as conn:
                revoke_table(conn, share.target, role)
        except NotFound as exc:  # the table (or the role) is gone: nothing left to revoke
            log.info("share %s: %s", share.id, exc)


# ---------------------------------------------------------------- command line (operators, as root on a hub host)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciplat_hub.sharing", description="Shares (operators)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="share as OWNER (what the platform API does for a user)")
    p.add_argument("owner")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("target")
    p.add_argument("grantee", help="user:NAME or group:NAME")
    p.add_argument("--mode", default="ro", choices=MODES)
    p = sub.add_parser("delete", help="end a share (as an operator)")
    p.add_argument("id")
    p = sub.add_parser("list", help="shares made by a user and shared with them")
    p.add_argument("username")
    p = sub.add_parser("refresh", help="apply every share to user:NAME or group:NAME again")
    p.add_argument("grantee")
    sub.add_parser("public", help="make sure the public-datasets area exists; print its path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    result: Any
    try:
        sharing = Sharing.from_host_config()
        if args.command == "create":
            result = sharing.create(args.owner, args.kind, args.target, args.grantee, args.mode).to_json()
        elif args.command == "delete":
            sharing.delete(args.id, by=OPERATOR)
            result = {"deleted": args.id}
        elif args.command == "list":
            result = {
                "by_me": [s.to_json() for s in sharing.by_owner(args.username)],
                "with_me": [s.to_json() for s in sharing.with_user(args.username)],
            }
        elif args.command == "refresh":
            result = [s.to_json() for s in sharing.refresh(args.grantee)]
        else:
            result = {"public": sharing.public_area()}
    except CollabError as exc:
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
