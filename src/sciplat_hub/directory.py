"""The platform's accounts directory (OpenLDAP): users, groups, uid/gid allocation.

Account provisioning in the hub calls this module; the `directory` role writes
its settings to `/etc/sciplat/directory/client.json` (0600 root) on the hosts of
group `hub` (and `directory`):

    {"uri": "ldaps://data:636", "base_dn": "dc=sciplat,dc=test",
     "bind_dn": "cn=provisioner,dc=sciplat,dc=test", "password": "...",
     "ca_file": "/etc/sciplat/pki/ca.crt",
     "uid_range": [20000, 59999], "gid_range": [60000, 99999]}

Layout of the directory (RFC 2307, what SSSD reads on every host):
- users: `uid=<name>,ou=people,<base>`, objectClasses inetOrgPerson, posixAccount,
  shadowAccount; home `/home/<name>`, shell `/bin/bash`;
- each user's personal group: `cn=<name>,ou=groups,<base>` with gidNumber == uidNumber;
- other groups: `cn=<name>,ou=groups,<base>` (posixGroup, members in memberUid),
  gidNumber from the gid range;
- the allocators: `cn=uid-next,ou=people,<base>` (uidNumber) and
  `cn=gid-next,ou=groups,<base>` (gidNumber) hold the next number to hand out.
  A number is taken with an atomic compare-and-swap on that value (one modify that
  deletes the old value and adds the next; it fails if another writer got there
  first), so two hubs never get the same number, and the counter only ever goes
  up: a number is never handed out twice, even after its user was deleted.
- a disabled user has `shadowExpire: 1`: the directory refuses their binds (an
  access rule on userPassword) and SSSD refuses their logins on every host.

Every method is idempotent and safe to repeat after a failure halfway.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

CONFIG_PATH = Path("/etc/sciplat/directory/client.json")

USERNAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
GROUPNAME_RE = USERNAME_RE
HOME_ROOT = "/home"
SHELL = "/bin/bash"

# Names that exist on every Debian host (or mean something to the platform):
# a directory user with such a name would be shadowed by the local account.
RESERVED_NAMES = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "_apt",
        "postgres",
        "munge",
        "slurm",
        "ceph",
        "prometheus",
        "node-exporter",
        "openldap",
        "sssd",
        "nginx",
        "jupyterhub",
        "admin",
        "administrator",
        "sciplat",
        "operator",
        "staff",
        "users",
        "adm",
        "sudo",
        "wheel",
        "shadow",
        "disk",
        "tty",
        "kmem",
        "dialout",
        "cdrom",
        "floppy",
        "audio",
        "video",
        "plugdev",
        "netdev",
        "input",
        "kvm",
        "render",
        "crontab",
        "ssl-cert",
        "ldap",
        "hub",
        "anonymous",
        "guest",
    ]
)

_DISABLED_SHADOW_EXPIRE = "1"  # days since 1970: long expired


class DirectoryError(Exception):
    """A directory operation failed; the message says what and what to do."""


@dataclass(frozen=True)
class Account:
    username: str
    uid: int
    gid: int
    home: str
    shell: str
    display_name: str
    email: str
    disabled: bool


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class GroupRecord:
    """A group with what collaborations keep beside the members: its owners and a category.

    Kept in the group's own entry (auxiliary class extensibleObject): `owner` holds the DNs
    of the owners' user entries, `businessCategory` the category (e.g. "sciplat:collaboration"),
    so a slapcat backup and a restore keep them with the members.
    """

    name: str
    gid: int
    members: tuple[str, ...]
    description: str
    owners: tuple[str, ...]
    category: str


def normalize_username(raw: str) -> str:
    """A valid platform user name made from what an identity provider gave.

    Lower-case; an e-mail address gives its local part (``Jane.Doe@uni.edu`` ->
    ``jane-doe``); accents are dropped (``José`` -> ``jose``); any other
    character that is not a letter, digit or dash becomes a dash; runs of dashes
    collapse; a leading digit gets the prefix ``u``; at most 32 characters.
    Raises ValueError with a sentence when no valid name can be made.
    """
    if not isinstance(raw, str):
        raise ValueError(f"A user name must be text, not {type(raw).__name__}.")
    text = raw.strip()
    if "@" in text:
        local = text.split("@", 1)[0]
        if not local:
            raise ValueError(f"{raw!r} looks like an e-mail address without the part before '@'.")
        text = local
    text = text.split("+", 1)[0] if "+" in text and not text.startswith("+") else text
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.lower()
    text = re.sub(r"[^a-z0-9-]+", "-", text)
    text = re.sub(r"-{2,}", "-", text).strip("-")
    if not text:
        raise ValueError(
            f"{raw!r} has no letters or digits to make a user name from; a user name needs at least one letter (a-z)."
        )
    if text[0].isdigit():
        text = "u" + text
    text = text[:32].rstrip("-")
    if not USERNAME_RE.match(text):  # pragma: no cover - the steps above guarantee it
        raise ValueError(f"{raw!r} cannot be made into a valid user name.")
    if text in RESERVED_NAMES:
        raise ValueError(
            f"{raw!r} gives the user name {text!r}, which is reserved for a system account; choose another name."
        )
    return text


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid {what} name: use 1-32 lower-case letters, digits and '-', "
            "starting with a letter (normalize_username() makes one)."
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved for a system account; choose another {what} name.")


def _first(entry: dict[str, Any], attr: str, default: Any = "") -> Any:
    value = entry.get(attr)
    if value is None:
        return default
    if isinstance(value, list | tuple):
        return value[0] if value else default
    return value


class Directory:
    """Users and groups in the platform's LDAP directory."""

    def __init__(
        self,
        uri: str,
        base_dn: str,
        bind_dn: str,
        password: str,
        ca_file: str | None = None,
        uid_range: tuple[int, int] = (20000, 59999),
        gid_range: tuple[int, int] = (60000, 99999),
        *,
        timeout: float = 10.0,
        server: Any = None,
        strategy: Any = None,
    ) -> None:
        self.uri = uri
        self.base_dn = base_dn
        self.bind_dn = bind_dn
        self._password = password
        self.ca_file = ca_file
        self.uid_range = (int(uid_range[0]), int(uid_range[1]))
        self.gid_range = (int(gid_range[0]), int(gid_range[1]))
        for label, (start, end) in (("uid_range", self.uid_range), ("gid_range", self.gid_range)):
            if not 1000 <= start <= end:
                raise DirectoryError(f"{label} {start}-{end} is not a range of numbers from 1000 up.")
        if self.uid_range[0] <= self.gid_range[1] and self.gid_range[0] <= self.uid_range[1]:
            raise DirectoryError(
                f"uid_range {self.uid_range} and gid_range {self.gid_range} overlap; personal groups take "
                "their gid from the uid range, so the two ranges must not overlap."
            )
        self.timeout = timeout
        self.people_dn = f"ou=people,{base_dn}"
        self.groups_dn = f"ou=groups,{base_dn}"
        self._uid_counter_dn = f"cn=uid-next,{self.people_dn}"
        self._gid_counter_dn = f"cn=gid-next,{self.groups_dn}"
        self._server = server  # an ldap3.Server; tests pass a mock one
        self._mock_strategy = strategy  # ldap3.MOCK_SYNC in unit tests
        self._lock = threading.Lock()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Directory:
        missing = [k for k in ("uri", "base_dn", "bind_dn", "password") if not cfg.get(k)]
        if missing:
            raise DirectoryError(f"The directory client settings lack {', '.join(missing)}; re-run `sciplat up`.")
        return cls(
            uri=cfg["uri"],
            base_dn=cfg["base_dn"],
            bind_dn=cfg["bind_dn"],
            password=cfg["password"],
            ca_file=cfg.get("ca_file") or None,
            uid_range=tuple(cfg.get("uid_range", (20000, 59999))),
            gid_range=tuple(cfg.get("gid_range", (60000, 99999))),
        )

    @classmethod
    def from_host_config(cls, path: str | Path = CONFIG_PATH) -> Directory:
        try:
            cfg = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DirectoryError(
                f"{path} does not exist: this host is not a directory client (group hub); run `sciplat up`."
            ) from None
        except PermissionError:
            raise DirectoryError(f"{path} is readable by root only; run this as root.") from None
        except json.JSONDecodeError as exc:
            raise DirectoryError(f"{path} is not valid JSON ({exc}); re-run `sciplat up`.") from None
        return cls.from_config(cfg)

    # -- connection -----------------------------------------------------------------------------

    def _make_server(self) -> Any:
        import ldap3

        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=self.ca_file,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        return ldap3.Server(
            self.uri,
            use_ssl=self.uri.lower().startswith("ldaps://"),
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.timeout,
        )

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        if self._server is None:
            self._server = self._make_server()
        mock = self._mock_strategy
        try:
            conn = ldap3.Connection(
                self._server,
                user=self.bind_dn,
                password=self._password,
                client_strategy=mock or ldap3.SYNC,
                receive_timeout=int(self.timeout),
                raise_exceptions=False,
                read_only=False,
            )
            if mock is None and not self.uri.lower().startswith("ldaps://") and not conn.start_tls():
                raise DirectoryError(f"StartTLS with {self.uri} failed: {conn.result.get('description')}.")
            if not conn.bind():
                raise DirectoryError(
                    f"The directory refused the bind as {self.bind_dn}: {conn.result.get('description')} "
                    f"({conn.result.get('message', '')}). Check the password in /etc/sciplat/directory/client.json "
                    "against the vault; re-run `sciplat up`."
                )
        except LDAPException as exc:
            raise DirectoryError(f"Cannot reach the directory at {self.uri}: {exc}") from exc
        try:
            yield conn
        except LDAPException as exc:
            raise DirectoryError(f"Directory operation failed at {self.uri}: {exc}") from exc
        finally:
            with suppress(Exception):
                conn.unbind()

    @staticmethod
    def _search(conn: Any, base: str, flt: str, attrs: list[str], *, scope: str = "LEVEL") -> list[dict[str, Any]]:
        import ldap3

        scopes = {"LEVEL": ldap3.LEVEL, "SUBTREE": ldap3.SUBTREE, "BASE": ldap3.BASE}
        ok = conn.search(base, flt, search_scope=scopes[scope], attributes=attrs)
        if not ok and conn.result.get("result") not in (0, 32):  # 32: noSuchObject
            raise DirectoryError(f"Search {flt} under {base} failed: {conn.result.get('description')}.")
        out = []
        for item in conn.response or []:
            if item.get("type") != "searchResEntry":
                continue
            attrs_ = dict(item.get("attributes") or {})
            attrs_["dn"] = item.get("dn", "")
            out.append(attrs_)
        return out

    @staticmethod
    def _check(conn: Any, ok: bool, what: str) -> None:
        if not ok:
            res = conn.result
            raise DirectoryError(f"{what} failed: {res.get('description')} {res.get('message', '')}".strip() + ".")

    # -- allocation -----------------------------------------------------------------------------

    def _allocate(self, conn: Any, kind: str) -> int:
        """Take the next unused number of the uid or gid range; never hands one out twice."""
        import ldap3

        if kind == "uid":
            dn, attr, (start, end) = self._uid_counter_dn, "uidNumber", self.uid_range
        else:
            dn, attr, (start, end) = self._gid_counter_dn, "gidNumber", self.gid_range
        for _ in range(1000):
            found = self._search(conn, dn, "(objectClass=*)", [attr], scope="BASE")
            if not found:
                ok = conn.add(
                    dn,
                    ["organizationalRole", "extensibleObject"],
                    {"cn": dn.split(",", 1)[0][3:], attr: str(start), "description": "next free number (sciplat)"},
                )
                if not ok and conn.result.get("result") != 68:  # 68: entryAlreadyExists (a race)
                    self._check(conn, ok, f"Creating the {kind} allocator {dn}")
                continue
            current = int(_first(found[0], attr, start))
            candidate = max(current, start)
            if candidate > end:
                raise DirectoryError(
                    f"The {kind} range {start}-{end} is used up; widen identity.{kind}_range in platform.yaml."
                )
            changes = {attr: [(ldap3.MODIFY_DELETE, [str(current)]), (ldap3.MODIFY_ADD, [str(candidate + 1)])]}
            if not conn.modify(dn, changes):
                if conn.result.get("result") in (16, 20):  # noSuchAttribute/exists: someone else took it
                    continue
                self._check(conn, False, f"Updating the {kind} allocator")
            # The counter moved past candidate; skip numbers an operator used by hand.
            flt = f"(|(uidNumber={candidate})(gidNumber={candidate}))"
            taken = [
                e
                for e in self._search(conn, self.base_dn, flt, ["cn"], scope="SUBTREE")
                if e["dn"].lower() not in (self._uid_counter_dn.lower(), self._gid_counter_dn.lower())
            ]
            if not taken:
                return candidate
        raise DirectoryError(f"Could not allocate a {kind}: the allocator is too contended; try again.")

    # -- users ----------------------------------------------------------------------------------

    _USER_ATTRS: ClassVar[list[str]] = [
        "uid",
        "uidNumber",
        "gidNumber",
        "homeDirectory",
        "loginShell",
        "displayName",
        "cn",
        "mail",
    ]
    _USER_ATTRS_ALL: ClassVar[list[str]] = [*_USER_ATTRS, "shadowExpire"]

    def _user_dn(self, username: str) -> str:
        return f"uid={username},{self.people_dn}"

    def _group_dn(self, name: str) -> str:
        return f"cn={name},{self.groups_dn}"

    @staticmethod
    def _account(entry: dict[str, Any]) -> Account:
        expire = _first(entry, "shadowExpire", None)
        return Account(
            username=str(_first(entry, "uid")),
            uid=int(_first(entry, "uidNumber", -1)),
            gid=int(_first(entry, "gidNumber", -1)),
            home=str(_first(entry, "homeDirectory")),
            shell=str(_first(entry, "loginShell", SHELL)),
            display_name=str(_first(entry, "displayName", "")),
            email=str(_first(entry, "mail", "")),
            disabled=expire is not None and str(expire) != "" and int(expire) >= 0,
        )

    def _get_user(self, conn: Any, username: str) -> dict[str, Any] | None:
        found = self._search(
            conn, self.people_dn, f"(&(objectClass=posixAccount)(uid={username}))", self._USER_ATTRS_ALL
        )
        return found[0] if found else None

    def _get_group(self, conn: Any, name: str) -> dict[str, Any] | None:
        found = self._search(
            conn,
            self.groups_dn,
            f"(&(objectClass=posixGroup)(cn={name}))",
            ["cn", "gidNumber", "memberUid", "description"],
        )
        return found[0] if found else None

    def _is_personal(self, gid: int) -> bool:
        return self.uid_range[0] <= gid <= self.uid_range[1]

    def ensure_user(self, username: str, *, display_name: str = "", email: str = "") -> Account:
        """The user's account, made if missing: uid allocated once, personal group gid == uid."""
        import ldap3

        _check_name(username, "user")
        with self._lock, self._connection() as conn:
            entry = self._get_user(conn, username)
            if entry is None:
                clash = self._get_group(conn, username)
                if clash is not None and not self._is_personal(int(_first(clash, "gidNumber", 0))):
                    raise DirectoryError(
                        f"{username!r} is already the name of the group {clash['dn']}; a user cannot have the "
                        "name of a group (the user's personal group would clash). Choose another user name."
                    )
                uid = self._allocate(conn, "uid")
                attrs: dict[str, Any] = {
                    "uid": username,
                    "cn": display_name or username,
                    "sn": (display_name.split()[-1] if display_name.split() else username),
                    "uidNumber": str(uid),
                    "gidNumber": str(uid),
                    "homeDirectory": f"{HOME_ROOT}/{username}",
                    "loginShell": SHELL,
                }
                if display_name:
                    attrs["displayName"] = display_name
                if email:
                    attrs["mail"] = email
                ok = conn.add(self._user_dn(username), ["inetOrgPerson", "posixAccount", "shadowAccount"], attrs)
                if not ok and conn.result.get("result") != 68:  # 68: made by a concurrent call
                    self._check(conn, ok, f"Adding the user {username}")
                entry = self._get_user(conn, username)
                if entry is None:
                    raise DirectoryError(f"The user {username} vanished right after it was added; try again.")
            else:
                changes: dict[str, Any] = {}
                if display_name and _first(entry, "displayName", "") != display_name:
                    changes["displayName"] = [(ldap3.MODIFY_REPLACE, [display_name])]
                    changes["cn"] = [(ldap3.MODIFY_REPLACE, [display_name])]
                if email and _first(entry, "mail", "") != email:
                    changes["mail"] = [(ldap3.MODIFY_REPLACE, [email])]
                if changes:
                    self._check(conn, conn.modify(entry["dn"], changes), f"Updating the user {username}")
                    entry = self._get_user(conn, username) or entry
            account = self._account(entry)
            self._ensure_personal_group(conn, account)
            return account

    def _ensure_personal_group(self, conn: Any, account: Account) -> None:
        group = self._get_group(conn, account.username)
        if group is None:
            ok = conn.add(
                self._group_dn(account.username),
                ["posixGroup"],
                {
                    "cn": account.username,
                    "gidNumber": str(account.gid),
                    "description": f"personal group of {account.username}",
                },
            )
            if not ok and conn.result.get("result") != 68:
                self._check(conn, ok, f"Adding the personal group of {account.username}")
            group = self._get_group(conn, account.username)
        if group is not None and int(_first(group, "gidNumber", -1)) != account.gid:
            raise DirectoryError(
                f"The group {account.username} has gid {_first(group, 'gidNumber')} but the user's primary gid is "
                f"{account.gid}; an operator must rename or remove that group."
            )

    def get_user(self, username: str) -> Account | None:
        with self._connection() as conn:
            entry = self._get_user(conn, username)
            return self._account(entry) if entry else None

    def list_users(self) -> list[Account]:
        with self._connection() as conn:
            entries = self._search(conn, self.people_dn, "(objectClass=posixAccount)", self._USER_ATTRS_ALL)
        return sorted((self._account(e) for e in entries), key=lambda a: a.username)

    def _require_user(self, conn: Any, username: str) -> dict[str, Any]:
        entry = self._get_user(conn, username)
        if entry is None:
            raise DirectoryError(f"There is no user {username!r} in the directory.")
        return entry

    def disable_user(self, username: str) -> Account:
        """The user can no longer bind to the directory or log in on any host; nothing is deleted."""
        import ldap3

        with self._connection() as conn:
            entry = self._require_user(conn, username)
            if str(_first(entry, "shadowExpire", "")) != _DISABLED_SHADOW_EXPIRE:
                changes: dict[str, Any] = {"shadowExpire": [(ldap3.MODIFY_REPLACE, [_DISABLED_SHADOW_EXPIRE])]}
                if "shadowAccount" not in self._object_classes(conn, entry["dn"]):
                    changes["objectClass"] = [(ldap3.MODIFY_ADD, ["shadowAccount"])]
                self._check(conn, conn.modify(entry["dn"], changes), f"Disabling {username}")
                entry = self._require_user(conn, username)
            return self._account(entry)

    def enable_user(self, username: str) -> Account:
        import ldap3

        with self._connection() as conn:
            entry = self._require_user(conn, username)
            if _first(entry, "shadowExpire", None) not in (None, ""):
                ok = conn.modify(entry["dn"], {"shadowExpire": [(ldap3.MODIFY_REPLACE, [])]})
                self._check(conn, ok, f"Enabling {username}")
                entry = self._require_user(conn, username)
            return self._account(entry)

    def _object_classes(self, conn: Any, dn: str) -> list[str]:
        found = self._search(conn, dn, "(objectClass=*)", ["objectClass"], scope="BASE")
        return [str(c) for c in (found[0].get("objectClass", []) if found else [])]

    def set_password(self, username: str, password: str) -> None:
        """Set the user's directory password (hashed by the server), for LDAP/PAM sign-in."""
        with self._connection() as conn:
            entry = self._require_user(conn, username)
            ok = conn.extend.standard.modify_password(entry["dn"], new_password=password)
            if not ok:
                self._check(conn, False, f"Setting the password of {username}")

    def authenticate(self, username: str, password: str) -> bool:
        """Whether a simple bind as the user with this password succeeds (False for disabled users)."""
        import ldap3

        _check_name(username, "user")
        if not password:
            return False
        if self._server is None:
            self._server = self._make_server()
        conn = ldap3.Connection(
            self._server,
            user=self._user_dn(username),
            password=password,
            client_strategy=self._mock_strategy or ldap3.SYNC,
            receive_timeout=int(self.timeout),
            raise_exceptions=False,
        )
        try:
            if self._mock_strategy is None and not self.uri.lower().startswith("ldaps://"):
                conn.start_tls()
            return bool(conn.bind())
        finally:
            with suppress(Exception):
                conn.unbind()

    def delete_user(self, username: str) -> None:
        """Remove the account, its personal group and its memberships. Its uid is never reused."""
        import ldap3

        _check_name(username, "user")
        with self._lock, self._connection() as conn:
            for group in self._search(
                conn, self.groups_dn, f"(&(objectClass=posixGroup)(memberUid={username}))", ["cn"]
            ):
                ok = conn.modify(group["dn"], {"memberUid": [(ldap3.MODIFY_DELETE, [username])]})
                if not ok and conn.result.get("result") != 16:
                    self._check(conn, ok, f"Removing {username} from {group['dn']}")
            entry = self._get_user(conn, username)
            personal = self._get_group(conn, username)
            if (
                personal is not None
                and (entry is None or int(_first(personal, "gidNumber", -1)) == int(_first(entry, "gidNumber", -2)))
                and self._is_personal(int(_first(personal, "gidNumber", 0)))
            ):
                ok = conn.delete(personal["dn"])
                if not ok and conn.result.get("result") != 32:
                    self._check(conn, ok, f"Deleting the personal group of {username}")
            if entry is not None:
                ok = conn.delete(entry["dn"])
                if not ok and conn.result.get("result") != 32:
                    self._check(conn, ok, f"Deleting {username}")

    # -- groups ---------------------------------------------------------------------------------

    @staticmethod
    def _group(entry: dict[str, Any]) -> Group:
        members = entry.get("memberUid") or []
        if isinstance(members, str):
            members = [members]
        return Group(
            name=str(_first(entry, "cn")),
            gid=int(_first(entry, "gidNumber", -1)),
            members=tuple(sorted(str(m) for m in members)),
        )

    def ensure_group(self, name: str, *, description: str = "") -> Group:
        """The group, made if missing with a gid from the gid range (allocated once)."""
        import ldap3

        _check_name(name, "group")
        with self._lock, self._connection() as conn:
            entry = self._get_group(conn, name)
            if entry is None:
                if self._get_user(conn, name) is not None:
                    raise DirectoryError(
                        f"{name!r} is a user's name (and their personal group); choose another group name."
                    )
                gid = self._allocate(conn, "gid")
                attrs: dict[str, Any] = {"cn": name, "gidNumber": str(gid)}
                if description:
                    attrs["description"] = description
                ok = conn.add(self._group_dn(name), ["posixGroup"], attrs)
                if not ok and conn.result.get("result") != 68:
                    self._check(conn, ok, f"Adding the group {name}")
                entry = self._get_group(conn, name)
                if entry is None:
                    raise DirectoryError(f"The group {name} vanished right after it was added; try again.")
            else:
                if self._is_personal(int(_first(entry, "gidNumber", 0))):
                    raise DirectoryError(f"{name!r} is the personal group of the user {name}; choose another name.")
                if description and _first(entry, "description", "") != description:
                    ok = conn.modify(entry["dn"], {"description": [(ldap3.MODIFY_REPLACE, [description])]})
                    self._check(conn, ok, f"Updating the group {name}")
            return self._group(entry)

    def get_group(self, name: str) -> Group | None:
        with self._connection() as conn:
            entry = self._get_group(conn, name)
            return self._group(entry) if entry else None

    def list_groups(self, *, include_personal: bool = False) -> list[Group]:
        with self._connection() as conn:
            entries = self._search(conn, self.groups_dn, "(objectClass=posixGroup)", ["cn", "gidNumber", "memberUid"])
        groups = [self._group(e) for e in entries]
        if not include_personal:
            groups = [g for g in groups if not self._is_personal(g.gid)]
        return sorted(groups, key=lambda g: g.name)

    def delete_group(self, name: str) -> None:
        """Remove a (non-personal) group; its gid is never reused."""
        _check_name(name, "group")
        with self._connection() as conn:
            entry = self._get_group(conn, name)
            if entry is None:
                return
            if self._is_personal(int(_first(entry, "gidNumber", 0))):
                raise DirectoryError(f"{name!r} is a personal group; delete the user instead.")
            ok = conn.delete(entry["dn"])
            if not ok and conn.result.get("result") != 32:
                self._check(conn, ok, f"Deleting the group {name}")

    def _member_change(self, group: str, username: str, add: bool) -> Group:
        import ldap3

        _check_name(group, "group")
        _check_name(username, "user")
        with self._connection() as conn:
            entry = self._get_group(conn, group)
            if entry is None:
                raise DirectoryError(f"There is no group {group!r}; call ensure_group first.")
            if self._is_personal(int(_first(entry, "gidNumber", 0))):
                raise DirectoryError(f"{group!r} is a personal group; its membership cannot change.")
            members = set(self._group(entry).members)
            if add and username not in members:
                self._require_user(conn, username)
                ok = conn.modify(entry["dn"], {"memberUid": [(ldap3.MODIFY_ADD, [username])]})
                if not ok and conn.result.get("result") != 20:  # 20: already there (a race)
                    self._check(conn, ok, f"Adding {username} to {group}")
            elif not add and username in members:
                ok = conn.modify(entry["dn"], {"memberUid": [(ldap3.MODIFY_DELETE, [username])]})
                if not ok and conn.result.get("result") != 16:  # 16: already gone
                    self._check(conn, ok, f"Removing {username} from {group}")
            else:
                return self._group(entry)
            return self._group(self._get_group(conn, group) or entry)

    def add_member(self, group: str, username: str) -> Group:
        return self._member_change(group, username, add=True)

    def remove_member(self, group: str, username: str) -> Group:
        return self._member_change(group, username, add=False)

    def groups_of(self, username: str) -> list[Group]:
        """The groups the user is a member of (not their personal group)."""
        _check_name(username, "user")
        with self._connection() as conn:
            entries = self._search(
                conn,
                self.groups_dn,
                f"(&(objectClass=posixGroup)(memberUid={username}))",
                ["cn", "gidNumber", "memberUid"],
            )
        return sorted((self._group(e) for e in entries), key=lambda g: g.name)

    # -- group records (collaborations: owners and a category in the group's entry) ------------

    _RECORD_ATTRS: ClassVar[list[str]] = ["cn", "gidNumber", "memberUid", "description", "owner", "businessCategory"]

    def _record(self, entry: dict[str, Any]) -> GroupRecord:
        group = self._group(entry)
        owners = entry.get("owner") or []
        if isinstance(owners, str):
            owners = [owners]
        suffix = "," + self.people_dn.lower()
        names = []
        for dn in owners:
            text = str(dn)
            if text.lower().startswith("uid=") and text.lower().endswith(suffix):
                names.append(text[4 : len(text) - len(suffix)])
        return GroupRecord(
            name=group.name,
            gid=group.gid,
            members=group.members,
            description=str(_first(entry, "description", "")),
            owners=tuple(sorted(names)),
            category=str(_first(entry, "businessCategory", "")),
        )

    def group_record(self, name: str) -> GroupRecord | None:
        """The group with its owners and category, or None."""
        _check_name(name, "group")
        with self._connection() as conn:
            found = self._search(conn, self.groups_dn, f"(&(objectClass=posixGroup)(cn={name}))", self._RECORD_ATTRS)
        return self._record(found[0]) if found else None

    def group_records(self, *, category: str, member: str | None = None) -> list[GroupRecord]:
        """The groups of this category (those with `member` among their members when given)."""
        from ldap3.utils.conv import escape_filter_chars

        flt = f"(&(objectClass=posixGroup)(businessCategory={escape_filter_chars(category)})"
        if member is not None:
            _check_name(member, "user")
            flt += f"(memberUid={member})"
        flt += ")"
        with self._connection() as conn:
            entries = self._search(conn, self.groups_dn, flt, self._RECORD_ATTRS)
        return sorted((self._record(e) for e in entries), key=lambda g: g.name)

    def set_group_record(
        self, name: str, *, owners: list[str] | None = None, category: str | None = None
    ) -> GroupRecord:
        """Set the owners (user names, each must exist) and/or the category of a non-personal group."""
        import ldap3

        _check_name(name, "group")
        with self._lock, self._connection() as conn:
            found = self._search(conn, self.groups_dn, f"(&(objectClass=posixGroup)(cn={name}))", self._RECORD_ATTRS)
            if not found:
                raise DirectoryError(f"There is no group {name!r}; call ensure_group first.")
            entry = found[0]
            if self._is_personal(int(_first(entry, "gidNumber", 0))):
                raise DirectoryError(f"{name!r} is a personal group; it has no owners.")
            record = self._record(entry)
            changes: dict[str, Any] = {}
            if owners is not None and tuple(sorted(set(owners))) != record.owners:
                for owner in owners:
                    _check_name(owner, "user")
                    self._require_user(conn, owner)
                changes["owner"] = [(ldap3.MODIFY_REPLACE, [self._user_dn(o) for o in sorted(set(owners))])]
            if category is not None and category != record.category:
                changes["businessCategory"] = [(ldap3.MODIFY_REPLACE, [category] if category else [])]
            if not changes:
                return record
            if "extensibleObject" not in self._object_classes(conn, entry["dn"]):
                changes["objectClass"] = [(ldap3.MODIFY_ADD, ["extensibleObject"])]
            self._check(conn, conn.modify(entry["dn"], changes), f"Updating the owners of the group {name}")
            found = self._search(conn, self.groups_dn, f"(&(objectClass=posixGroup)(cn={name}))", self._RECORD_ATTRS)
            return self._record(found[0]) if found else record


def main(argv: list[str] | None = None) -> int:
    """`sciplat-directory`: a small operator's tool on hub hosts (JSON out)."""
    import argparse
    import dataclasses
    import sys

    parser = argparse.ArgumentParser(prog="sciplat-directory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ensure-user")
    p.add_argument("username")
    p.add_argument("--display-name", default="")
    p.add_argument("--email", default="")
    for cmd in ("get-user", "disable-user", "enable-user", "delete-user", "groups-of"):
        sub.add_parser(cmd).add_argument("username")
    sub.add_parser("list-users")
    sub.add_parser("list-groups")
    p = sub.add_parser("ensure-group")
    p.add_argument("name")
    p.add_argument("--description", default="")
    for cmd in ("add-member", "remove-member"):
        p = sub.add_parser(cmd)
        p.add_argument("group")
        p.add_argument("username")
    sub.add_parser("get-group").add_argument("name")
    sub.add_parser("delete-group").add_argument("name")
    p = sub.add_parser("normalize")
    p.add_argument("raw")
    args = parser.parse_args(argv)

    def out(value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, list):
            value = [dataclasses.asdict(v) for v in value]
        print(json.dumps(value, indent=2))

    try:
        if args.cmd == "normalize":
            out(normalize_username(args.raw))
            return 0
        d = Directory.from_host_config()
        cmd = args.cmd
        if cmd == "ensure-user":
            out(d.ensure_user(args.username, display_name=args.display_name, email=args.email))
        elif cmd == "get-user":
            out(d.get_user(args.username))
        elif cmd == "list-users":
            out(d.list_users())
        elif cmd == "disable-user":
            out(d.disable_user(args.username))
        elif cmd == "enable-user":
            out(d.enable_user(args.username))
        elif cmd == "delete-user":
            d.delete_user(args.username)
            out(None)
        elif cmd == "groups-of":
            out(d.groups_of(args.username))
        elif cmd == "ensure-group":
            out(d.ensure_group(args.name, description=args.description))
        elif cmd == "get-group":
            out(d.get_group(args.name))
        elif cmd == "list-groups":
            out(d.list_groups())
        elif cmd == "delete-group":
            d.delete_group(args.name)
            out(None)
        elif cmd == "add-member":
            out(d.add_member(args.group, args.username))
        elif cmd == "remove-member":
            out(d.remove_member(args.group, args.username))
    except (DirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
