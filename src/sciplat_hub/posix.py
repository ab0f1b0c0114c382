"""POSIX homes and group directories on the shared file system, with quotas.

The ceph role mounts CephFS (ceph-fuse) at `/home` and `/groups` on the hub and
compute hosts and writes `/etc/sciplat/posix/client.json` (0600, root) on the
hub hosts: `{"backend": "cephfs", "home_root": "/home", "group_root": "/groups",
"home_quota_bytes": N}`. Quotas are CephFS directory quotas
(`ceph.quota.max_bytes`), enforced by every client: a write beyond one fails
with EDQUOT ("Disk quota exceeded"). Usage is the recursive byte count CephFS
keeps per directory (`ceph.dir.rbytes`), so reading it costs nothing.

Every method is idempotent: it creates what is missing and corrects owner,
mode and quota, and never touches the files inside.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = Path("/etc/sciplat/posix/client.json")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
QUOTA_XATTR = "ceph.quota.max_bytes"
RBYTES_XATTR = "ceph.dir.rbytes"


class PosixError(Exception):
    """A home or group directory could not be made as asked; the message says why."""


@dataclass(frozen=True)
class Posix:
    home_root: Path = Path("/home")
    group_root: Path = Path("/groups")
    backend: str = "cephfs"  # cephfs: quotas and usage from CephFS's xattrs
    home_quota_bytes: int | None = None
    # The public-datasets area (a CephFS directory mounted on the hub and compute hosts, like
    # /home): readable by every user, writable by root and the members of public_curators.
    public_root: Path | None = None
    public_curators: str = "public-data"

    @classmethod
    def from_host_config(cls, path: Path = CONFIG_FILE) -> Posix:
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise PosixError(
                f"{path} is missing: the ceph role writes it on the hosts of group hub, which mount "
                "the shared file system; run `sciplat up` or use a hub host"
            ) from None
        except (OSError, ValueError) as exc:
            raise PosixError(f"cannot read {path}: {exc}") from None
        quota = int(config.get("home_quota_bytes") or 0)
        return cls(
            home_root=Path(config.get("home_root", "/home")),
            group_root=Path(config.get("group_root", "/groups")),
            backend=str(config.get("backend", "cephfs")),
            home_quota_bytes=quota or None,
            public_root=Path(config["public_root"]) if config.get("public_root") else None,
            public_curators=str(config.get("public_curators") or "public-data"),
        )

    # ------------------------------------------------------------ directories

    def ensure_home(self, username: str, uid: int, gid: int, quota_bytes: int | None) -> str:
        """`<home_root>/<username>`: owner uid:gid, mode 0700, this quota (None: none)."""
        path = self._child(self.home_root, "user", username)
        self._ensure_dir(path, uid, gid, 0o700)
        self.set_quota(path, quota_bytes)
        return str(path)

    def ensure_group_dir(self, group: str, gid: int, quota_bytes: int | None) -> str:
        """`<group_root>/<group>`: owner root, group gid, setgid 2770, this quota."""
        path = self._child(self.group_root, "group", group)
        self._ensure_dir(path, 0, gid, 0o2770)
        self.set_quota(path, quota_bytes)
        return str(path)

    def ensure_public_area(self) -> str | None:
        """The public-datasets area: root-owned, group public_curators, setgid 2775 (2755 without curators).

        Its default ACL (other::r-x) makes what curators put there readable by every user,
        whatever their umask. None when this platform has no public area.
        """
        root = self.public_root
        if root is None:
            return None
        if not os.path.ismount(root) and self.backend == "cephfs":
            raise PosixError(f"{root} is not mounted: the public-datasets area is missing on this host")
        try:
            gid = grp.getgrnam(self.public_curators).gr_gid
        except KeyError:  # no curators group yet: operators (root) only
            gid = 0
        self._ensure_dir(root, 0, gid, 0o2775 if gid else 0o2755)
        wanted = "default:other::r-x"
        current = subprocess.run(
            ["getfacl", "--omit-header", "--absolute-names", str(root)], capture_output=True, text=True, check=False
        ).stdout
        if wanted not in current.split():
            subprocess.run(
                ["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rx", str(root)], capture_output=True, text=True, check=True
            )
        return str(root)

    def ensure_public_link(self, home: str | Path, uid: int, gid: int) -> None:
        """`~/public` -> the public area, made in the user's home without following any symlink there."""
        if self.public_root is None:
            return
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_uid != uid:
                raise PosixError(f"{home} is not owned by uid {uid}; not adding ~/public")
            try:
                current = os.readlink("public", dir_fd=fd)
            except FileNotFoundError:
                current = None
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # the user's own file or folder named public: leave it
                    return
                raise
            if current == str(self.public_root):
                return
            if current is not None:
                os.unlink("public", dir_fd=fd)
            os.symlink(str(self.public_root), "public", dir_fd=fd)
            os.chown("public", uid, gid, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def _child(self, root: Path, kind: str, name: str) -> Path:
        if not _NAME.match(name):
            raise PosixError(
                f"{kind} name {name!r} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter"
            )
        if not os.path.ismount(root) and self.backend == "cephfs":
            raise PosixError(
                f"{root} is not mounted: the shared file system is missing on this host "
                f"(systemctl status {str(root).strip('/')}.mount)"
            )
        return root / name

    @staticmethod
    def _ensure_dir(path: Path, uid: int, gid: int, mode: int) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise PosixError(f"{path} exists and is not a directory; move it away and retry")
        if (info.st_uid, info.st_gid) != (uid, gid):
            os.chown(path, uid, gid, follow_symlinks=False)
        # chown clears setgid: read the mode again after it
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)

    # ------------------------------------------------------------ quotas and usage

    def set_quota(self, path: str | Path, quota_bytes: int | None) -> None:
        """Set (or with None, remove) the directory quota of path."""
        if self.backend != "cephfs":
            if quota_bytes:
                raise PosixError(f"the {self.backend} backend has no directory quotas; set quota to None")
            return
        wanted = max(0, int(quota_bytes or 0))
        if self._quota(path) == (wanted or None):
            return
        os.setxattr(path, QUOTA_XATTR, str(wanted).encode())

    def _quota(self, path: str | Path) -> int | None:
        try:
            value = int(os.getxattr(path, QUOTA_XATTR).decode() or 0)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, getattr(errno, "ENOATTR", errno.ENODATA)):
                return None
            raise
        return value or None

    def usage(self, path: str | Path) -> tuple[int, int | None]:
        """(bytes used under path, its quota or None)."""
        if self.backend != "cephfs":
            used = 0
            for root, _dirs, files in os.walk(path):
                for name in files:
                    try:
                        used += os.lstat(os.path.join(root, name)).st_size
                    except OSError:
                        continue
            return used, None
        used = int(os.getxattr(path, RBYTES_XATTR).decode() or 0)
        return used, self._quota(path)
