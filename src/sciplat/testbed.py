"""The local test bed: hosts that behave like real servers, as podman containers.

``sciplat testbed up`` turns ``<inventory>/testbed.yml`` into running hosts —
systemd as PID 1, sshd, apt — on the test bed's own podman network, then writes
``<inventory>/hosts.yml`` and ``<inventory>/.sciplat/ssh_config`` so that
``sciplat up`` deploys to them over SSH exactly as to real servers.

The base image is built once with ``debootstrap`` from the machine's own Debian
mirror (read from its apt sources at run time) and ``podman import``-ed under a
tag that hashes the recipe, so a changed recipe rebuilds and an unchanged one is
reused. ``up`` is idempotent: it reuses what is healthy and recreates what is not,
whatever state an earlier (possibly killed) run left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.table import Table

__all__ = [
    "AptSource",
    "TestbedError",
    "TestbedHost",
    "TestbedSpec",
    "down",
    "load_spec",
    "status",
    "up",
]

# --------------------------------------------------------------------------- constants

SUITE = "bookworm"
IMAGE_REPO = "localhost/sciplat-testbed"
LABEL = "io.sciplat.testbed"
LABEL_HOST = "io.sciplat.testbed.host"
LABEL_CONFIG = "io.sciplat.testbed.config"
LABEL_RECIPE = "io.sciplat.testbed.recipe"

#: Global flags for every podman call: crun refuses the machine's hybrid cgroup layout.
PODMAN_GLOBAL_FLAGS: tuple[str, ...] = ("--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs")
#: Higher limits than these are refused by the runtime on these machines.
ULIMITS: tuple[str, ...] = ("nofile=16384:16384", "nproc=16384:16384")
PIDS_LIMIT = 8192

#: Packages of the base image (debootstrap --variant=minbase --include=...). Roles
#: install everything else through apt themselves.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "ca-certificates",
    "iproute2",
    "procps",
    "less",
    "curl",
)
#: Bump when the build steps change in a way the files and packages do not show.
RECIPE_VERSION = 1

CACHE_ROOT = Path("/var/cache/sciplat-testbed")
ETC_APT = Path("/etc/apt")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

BOOT_TIMEOUT = 180.0
SSH_TIMEOUT = 90.0
LOCK_TIMEOUT = 3600.0

_NAME_RE = r"^[a-z][a-z0-9-]{0,30}$"
_GROUP_RE = r"^[a-z][a-z0-9_]*$"
_PUBLISH_RE = re.compile(r"^(?P<ip>[0-9.]+):(?P<host>\d{1,5}):(?P<ctr>\d{1,5})(?:/(?P<proto>tcp|udp))?$")


class TestbedError(Exception):
    """An error the operator can act on; the CLI prints it and exits 1."""


# --------------------------------------------------------------------------- testbed.yml


class HostSpec(BaseModel):
    """One host of the bed."""

    model_config = ConfigDict(extra="forbid")

    ip: ipaddress.IPv4Address
    groups: list[str] = Field(default_factory=list)
    publish: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    cap_add: list[str] = Field(default_factory=list)
    shm_size: str = "512m"

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if not re.match(_GROUP_RE, group):
                raise ValueError(
                    f"group {group!r} is not a valid Ansible group name "
                    "(lower-case letters, digits and '_', starting with a letter)"
                )
        return list(dict.fromkeys(value))

    @field_validator("publish")
    @classmethod
    def _publish(cls, value: list[str]) -> list[str]:
        for item in value:
            match = _PUBLISH_RE.match(item)
            if not match:
                raise ValueError(
                    f"{item!r} is not 'HOST_IP:HOST_PORT:CONTAINER_PORT[/tcp|/udp]', e.g. '127.0.0.1:8443:443'"
                )
            try:
                address = ipaddress.IPv4Address(match["ip"])
            except ValueError as exc:
                raise ValueError(f"{item!r}: {match['ip']!r} is not an IPv4 address") from exc
            if not address.is_loopback:
                raise ValueError(
                    f"{item!r}: the test bed publishes ports on the machine's loopback only; "
                    f"use 127.0.0.1 instead of {match['ip']}"
                )
            for port in (match["host"], match["ctr"]):
                if not 1 <= int(port) <= 65535:
                    raise ValueError(f"{item!r}: port {port} is not between 1 and 65535")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/dev/"):
                raise ValueError(f"device {item!r} must be a path under /dev, e.g. /dev/fuse")
        return value

    @field_validator("cap_add")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        caps: list[str] = []
        for item in value:
            cap = item.upper().removeprefix("CAP_")
            if not re.match(r"^[A-Z_]+$", cap):
                raise ValueError(f"capability {item!r} is not a name like NET_ADMIN or SYS_ADMIN")
            caps.append(cap)
        return list(dict.fromkeys(caps))

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, value: str) -> str:
        if not re.match(r"^\d+[bkmg]?$", value):
            raise ValueError(f"shm_size {value!r} is not a size like '512m' or '1g'")
        return value


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    subnet: ipaddress.IPv4Network

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if value.prefixlen > 29:
            raise ValueError(f"subnet {value} is too small; use a /24 such as 10.213.42.0/24")
        if not value.is_private:
            raise ValueError(f"subnet {value} is not a private range; use e.g. 10.213.42.0/24")
        return value


class TestbedSpec(BaseModel):
    """``<inventory>/testbed.yml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_RE)
    network: NetworkSpec
    hosts: dict[str, HostSpec] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: dict[str, HostSpec]) -> dict[str, HostSpec]:
        for name in value:
            if not re.match(_NAME_RE, name):
                raise ValueError(
                    f"host name {name!r} must be lower-case letters, digits and '-', "
                    "starting with a letter (it becomes the hostname and an SSH alias)"
                )
        return value

    @model_validator(mode="after")
    def _addresses(self) -> TestbedSpec:
        subnet = self.network.subnet
        gateway = next(subnet.hosts())
        seen_ip: dict[ipaddress.IPv4Address, str] = {}
        seen_port: dict[tuple[str, str, str], str] = {}
        for name, host in self.hosts.items():
            if host.ip not in subnet:
                raise ValueError(
                    f"hosts.{name}.ip: {host.ip} is not in the subnet {subnet} of network {self.network.name}"
                )
            if host.ip in (subnet.network_address, subnet.broadcast_address, gateway):
                raise ValueError(
                    f"hosts.{name}.ip: {host.ip} is reserved in {subnet} (network, broadcast "
                    f"or the gateway {gateway}); pick another address"
                )
            if host.ip in seen_ip:
                raise ValueError(f"hosts.{name}.ip: {host.ip} is already the address of host {seen_ip[host.ip]}")
            seen_ip[host.ip] = name
            for item in host.publish:
                match = _PUBLISH_RE.match(item)
                assert match is not None  # checked by HostSpec
                key = (match["ip"], match["host"], match["proto"] or "tcp")
                if key in seen_port:
                    raise ValueError(
                        f"hosts.{name}.publish: {item!r} uses a machine port that host "
                        f"{seen_port[key]} already publishes"
                    )
                seen_port[key] = name
        return self

    def container(self, host: str) -> str:
        return f"sciplat-{self.name}-{host}"

    def groups(self) -> dict[str, list[str]]:
        """Group name → host names, in order of first appearance."""
        result: dict[str, list[str]] = {}
        for name, host in self.hosts.items():
            for group in host.groups:
                result.setdefault(group, []).append(name)
        return result


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid test bed description:"]
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(text: str, *, source: Path, default_name: str) -> TestbedSpec:
    """Parse and validate the text of a testbed.yml."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TestbedError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TestbedError(f"{source}: expected a mapping with 'network' and 'hosts'")
    data.setdefault("name", default_name)
    try:
        return TestbedSpec.model_validate(data)
    except ValidationError as exc:
        raise TestbedError(_format_validation_error(source, exc)) from exc


def load_spec(inventory_dir: Path) -> TestbedSpec:
    """Read ``<inventory_dir>/testbed.yml``; the bed's name defaults to the directory's."""
    path = inventory_dir / "testbed.yml"
    if not path.is_file():
        raise TestbedError(
            f"{path} does not exist: an inventory for the test bed needs a testbed.yml "
            "(see inventories/local/testbed.yml)"
        )
    default = re.sub(r"[^a-z0-9-]+", "-", inventory_dir.resolve().name.lower()).strip("-")
    return parse_spec(path.read_text(), source=path, default_name=default or "bed")


# --------------------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class AptSource:
    """One entry of the apt sources (one-line or deb822 stanza)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None
    enabled: bool = True
    origin: str = ""


def _parse_one_line_options(text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        options[key.rstrip("+-").lower()] = value
    return options


def parse_one_line_sources(text: str, origin: str = "") -> list[AptSource]:
    """Parse the classic one-line format (``deb [opts] URI SUITE COMPONENT...``)."""
    result: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        rest = rest.strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            options = _parse_one_line_options(rest[1:end])
            rest = rest[end + 1 :]
        words = rest.split()
        if len(words) < 2:
            continue
        result.append(
            AptSource(
                types=(kind,),
                uris=(words[0],),
                suites=(words[1],),
                components=tuple(words[2:]),
                signed_by=options.get("signed-by") or None,
                origin=origin,
            )
        )
    return result


def parse_deb822_sources(text: str, origin: str = "") -> list[AptSource]:
    """Parse the deb822 format (``Types:``/``URIs:``/``Suites:``/``Components:`` stanzas)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last_key = {}, None
            continue
        if raw[0] in " \t":
            if last_key is not None:
                current[last_key] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last_key = key.strip().lower()
        current[last_key] = value.strip()
    result: list[AptSource] = []
    for stanza in stanzas:
        types = tuple(stanza.get("types", "").split())
        uris = tuple(stanza.get("uris", "").split())
        suites = tuple(stanza.get("suites", "").split())
        if not (types and uris and suites):
            continue
        enabled = stanza.get("enabled", "yes").strip().lower() not in ("no", "false", "0")
        signed_by = stanza.get("signed-by", "").strip() or None
        result.append(
            AptSource(
                types=types,
                uris=uris,
                suites=suites,
                components=tuple(stanza.get("components", "").split()),
                signed_by=signed_by,
                enabled=enabled,
                origin=origin,
            )
        )
    return result


def _apt_part_ok(path: Path, suffixes: Sequence[str]) -> bool:
    """apt reads only parts whose names are [A-Za-z0-9_.-] and carry a known suffix."""
    name = path.name
    return bool(re.match(r"^[A-Za-z0-9_.-]+$", name)) and any(name.endswith(s) for s in suffixes)


def read_apt_sources(etc_apt: Path = ETC_APT) -> list[AptSource]:
    """Every enabled source the machine's apt uses (sources.list and sources.list.d)."""
    result: list[AptSource] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        result += parse_one_line_sources(main.read_text(errors="replace"), str(main))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if not path.is_file():
                continue
            if _apt_part_ok(path, (".list",)):
                result += parse_one_line_sources(path.read_text(errors="replace"), str(path))
            elif _apt_part_ok(path, (".sources",)):
                result += parse_deb822_sources(path.read_text(errors="replace"), str(path))
    return [source for source in result if source.enabled]


def _is_debian_archive(source: AptSource, uri: str) -> bool:
    """Heuristic: the Debian archive (or a mirror of it), not a third-party repository."""
    if source.signed_by:
        return "debian-archive-keyring" in source.signed_by
    last = urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]
    return last in ("debian", "debian-security")


def find_debian_mirror(sources: Sequence[AptSource], suite: str = SUITE) -> tuple[str, AptSource]:
    """The URI of the machine's Debian archive for ``suite`` (and the entry it came from)."""
    best: tuple[int, str, AptSource] | None = None
    for source in sources:
        if "deb" not in source.types or suite not in source.suites:
            continue
        if "main" not in source.components:
            continue
        for uri in source.uris:
            if not uri.startswith(("http://", "https://", "file:/")):
                continue
            score = 0
            if source.signed_by and "debian-archive-keyring" in source.signed_by:
                score += 2
            if urlsplit(uri).path.rstrip("/").endswith("/debian"):
                score += 2
            if _is_debian_archive(source, uri):
                score += 1
            if best is None or score > best[0]:
                best = (score, uri, source)
    if best is None or best[0] == 0:
        raise TestbedError(
            f"no Debian '{suite}' archive (component main) found in the machine's apt sources "
            f"({ETC_APT}/sources.list, {ETC_APT}/sources.list.d/*.list|*.sources); the test bed "
            "builds its image from the same mirror the machine uses"
        )
    return best[1], best[2]


def debian_sources_for_image(sources: Sequence[AptSource], suite: str = SUITE) -> list[AptSource]:
    """The machine's Debian entries for ``suite``, ``-updates`` and ``-security``."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    result: list[AptSource] = []
    for source in sources:
        if "deb" not in source.types or "main" not in source.components:
            continue
        suites = tuple(s for s in source.suites if s in wanted)
        uris = tuple(u for u in source.uris if _is_debian_archive(source, u))
        if not suites or not uris:
            continue
        result.append(
            AptSource(
                types=("deb",),
                uris=uris,
                suites=suites,
                components=source.components or ("main",),
                signed_by=source.signed_by,
                origin=source.origin,
            )
        )
    return result


def render_deb822(sources: Sequence[AptSource]) -> str:
    stanzas = []
    for source in sources:
        signed_by = source.signed_by
        if not signed_by or "\n" in signed_by:
            signed_by = DEBIAN_KEYRING
        stanzas.append(
            "\n".join(
                [
                    f"Types: {' '.join(source.types)}",
                    f"URIs: {' '.join(source.uris)}",
                    f"Suites: {' '.join(source.suites)}",
                    f"Components: {' '.join(source.components)}",
                    f"Signed-By: {signed_by}",
                ]
            )
        )
    header = "# Written by sciplat's test bed from the machine's apt sources.\n"
    return header + "\n\n".join(stanzas) + "\n"


# --------------------------------------------------------------------------- apt.conf


def _apt_conf_tokens(text: str) -> list[tuple[str, str]]:
    """Tokens of apt.conf syntax: ('str', value), ('word', value), ('{'|'}'|';', '')."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    text = "\n".join(lines)
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                end = n
            tokens.append(("str", text[i + 1 : end]))
            i = end + 1
        elif ch in "{};":
            tokens.append((ch, ""))
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '{};"':
                i += 1
            tokens.append(("word", text[start:i]))
    return tokens


def parse_apt_conf(text: str) -> list[tuple[str, str]]:
    """Flatten apt.conf text into ``(Key::Path, value)`` pairs (list items end in ``::``)."""
    tokens = _apt_conf_tokens(text)
    out: list[tuple[str, str]] = []
    stack: list[str] = []
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "}":
            if stack:
                stack.pop()
            i += 1
            continue
        if kind in (";", "{"):
            i += 1
            continue
        if kind == "str":  # an item of a list: "a"; "b";
            if stack:
                out.append((stack[-1] + "::", value))
            i += 1
            continue
        key = f"{stack[-1]}::{value}" if stack else value
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (";", "")
        if nxt[0] == "{":
            stack.append(key)
            i += 2
        elif nxt[0] in ("str", "word"):
            out.append((key, nxt[1]))
            i += 2
        else:
            out.append((key, ""))
            i += 1
    return out


def machine_acquire_settings(etc_apt: Path = ETC_APT) -> list[tuple[str, str]]:
    """The ``Acquire::`` settings of the machine's apt configuration, in apt's read order."""
    files: list[Path] = []
    if (etc_apt / "apt.conf").is_file():
        files.append(etc_apt / "apt.conf")
    parts = etc_apt / "apt.conf.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            name = path.name
            if path.is_file() and re.match(r"^[A-Za-z0-9_.-]+$", name):
                if "." in name and not name.endswith(".conf"):
                    continue
                files.append(path)
    result: list[tuple[str, str]] = []
    for path in files:
        for key, value in parse_apt_conf(path.read_text(errors="replace")):
            lower = key.lower()
            if not lower.startswith("acquire::") or '"' in value:
                continue
            # Index targets are defined by packages (appstream, apt-file) the image does
            # not have; only their on/off switches are the machine's settings.
            if lower.startswith("acquire::indextargets::") and not lower.endswith("::defaultenabled"):
                continue
            result.append((key, value))
    # apt keeps the last value of a key; keep one line per key (list items all stay).
    last = {key: i for i, (key, _) in enumerate(result) if not key.endswith("::")}
    return [(key, value) for i, (key, value) in enumerate(result) if key.endswith("::") or last[key] == i]


def render_apt_conf(settings: Sequence[tuple[str, str]]) -> str:
    lines = ["// Acquire:: settings of the machine that built this test-bed image (sciplat)."]
    lines += [f'{key} "{value}";' for key, value in settings]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- image recipe


@dataclass(frozen=True)
class ImageFile:
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Recipe:
    mirror: str
    keyring: str | None
    packages: tuple[str, ...]
    files: dict[str, ImageFile]
    masks: tuple[str, ...]
    enables: tuple[tuple[str, str], ...]  # (unit, wanted-by target)
    digest: str

    @property
    def image(self) -> str:
        return f"{IMAGE_REPO}:{SUITE}-{self.digest}"


SSH_HOSTKEYS_UNIT = """\
[Unit]
Description=Generate this host's SSH host keys (sciplat test bed)
Before=ssh.service
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=ssh.service multi-user.target
"""

KEEP_DEBS_CONF = """\
// The test bed bind-mounts a per-host cache over /var/cache/apt/archives: keep the .debs.
APT::Keep-Downloaded-Packages "true";
Binary::apt::APT::Keep-Downloaded-Packages "true";
"""

DPKG_EXCLUDES = """\
# Test-bed hosts carry no manual pages, info pages or translations.
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""


def _machine_files(etc_apt: Path, ca_dir: Path) -> tuple[str, str | None, dict[str, ImageFile]]:
    sources = read_apt_sources(etc_apt)
    mirror, entry = find_debian_mirror(sources)
    image_sources = debian_sources_for_image(sources)
    files: dict[str, ImageFile] = {
        "/etc/apt/sources.list": ImageFile(b""),
        "/etc/apt/sources.list.d/debian.sources": ImageFile(render_deb822(image_sources).encode()),
        "/etc/apt/apt.conf.d/90sciplat-machine": ImageFile(render_apt_conf(machine_acquire_settings(etc_apt)).encode()),
    }
    keyring: str | None = None
    for source in image_sources:
        signed_by = source.signed_by
        if signed_by and signed_by.startswith("/") and Path(signed_by).is_file():
            files[signed_by] = ImageFile(Path(signed_by).read_bytes())
    if entry.signed_by and entry.signed_by.startswith("/") and Path(entry.signed_by).is_file():
        keyring = entry.signed_by
    if ca_dir.is_dir():
        for cert in sorted(ca_dir.rglob("*.crt")):
            if cert.is_file():
                rel = cert.relative_to(ca_dir)
                files[f"/usr/local/share/ca-certificates/{rel}"] = ImageFile(cert.read_bytes())
    return mirror, keyring, files


def build_recipe(etc_apt: Path = ETC_APT, ca_dir: Path = EXTRA_CA_DIR) -> Recipe:
    """Everything that goes into the image; its digest names the image."""
    mirror, keyring, files = _machine_files(etc_apt, ca_dir)
    files.update(
        {
            "/etc/apt/apt.conf.d/10sciplat-keep-debs": ImageFile(KEEP_DEBS_CONF.encode()),
            "/etc/dpkg/dpkg.cfg.d/10sciplat-excludes": ImageFile(DPKG_EXCLUDES.encode()),
            "/etc/pip.conf": ImageFile(f"[global]\ncert = {CA_BUNDLE}\n".encode()),
            "/etc/npmrc": ImageFile(f"cafile={CA_BUNDLE}\n".encode()),
            "/etc/systemd/system/sciplat-ssh-hostkeys.service": ImageFile(SSH_HOSTKEYS_UNIT.encode()),
            "/etc/hostname": ImageFile(b"localhost\n"),
            "/etc/hosts": ImageFile(b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"),
            "/etc/resolv.conf": ImageFile(b""),
            "/etc/machine-id": ImageFile(b"", 0o444),
        }
    )
    masks: tuple[str, ...] = ()
    enables = (
        ("sciplat-ssh-hostkeys.service", "ssh.service"),
        ("sciplat-ssh-hostkeys.service", "multi-user.target"),
    )
    digest = hashlib.sha256()
    digest.update(f"v{RECIPE_VERSION}\n{SUITE}\n{mirror}\n{keyring}\n".encode())
    digest.update(("\n".join(PACKAGES) + "\n").encode())
    for path in sorted(files):
        digest.update(f"{path}\0{files[path].mode:o}\0".encode())
        digest.update(hashlib.sha256(files[path].content).digest())
    digest.update(repr((masks, enables)).encode())
    return Recipe(
        mirror=mirror,
        keyring=keyring,
        packages=PACKAGES,
        files=files,
        masks=masks,
        enables=enables,
        digest=digest.hexdigest()[:12],
    )


# --------------------------------------------------------------------------- processes


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 300,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"{argv[0]} is not installed on this machine") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise TestbedError(f"command failed ({proc.returncode}): {shlex.join(argv)}\n{detail}")
    return proc


def _podman(
    *args: str, check: bool = True, input: str | None = None, timeout: float | None = 300
) -> subprocess.CompletedProcess[str]:
    return _run(["podman", *PODMAN_GLOBAL_FLAGS, *args], check=check, input=input, timeout=timeout)


def _require_tools() -> None:
    missing = [tool for tool in ("podman", "ssh", "ssh-keyscan") if shutil.which(tool) is None]
    if missing:
        raise TestbedError(
            f"the test bed needs {', '.join(missing)} on this machine: apt-get install podman openssh-client"
        )


@contextlib.contextmanager
def _file_lock(path: Path, console: Console, waiting: str) -> Iterator[None]:
    """An exclusive flock (released by the kernel if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + LOCK_TIMEOUT
            with console.status(waiting):
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise TestbedError(f"gave up waiting for {path} (held by another sciplat)") from None
                        time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- image build


def _image_id(ref: str) -> str | None:
    proc = _podman("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _mount_points_under(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    points: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 2:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[1])
            if (point + "/").startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) root file system, unmounting what a killed build left."""
    if not path.exists():
        return
    for point in _mount_points_under(path):
        _run(["umount", "-l", point], check=False)
    if _mount_points_under(path):
        raise TestbedError(f"cannot remove {path}: file systems are still mounted below it")
    _run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


def _write_image_files(root: Path, recipe: Recipe) -> None:
    for target, item in recipe.files.items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_bytes(item.content)
        path.chmod(item.mode)
    systemd = root / "etc/systemd/system"
    for unit in recipe.masks:
        link = systemd / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    for unit, target in recipe.enables:
        wants = systemd / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/etc/systemd/system/{unit}")


def _slim_and_clean(root: Path) -> None:
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    for sub in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        base = root / sub
        if base.is_dir():
            for item in base.rglob("*"):
                if (item.is_file() or item.is_symlink()) and item.name != "locale.alias":
                    item.unlink()
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for item in root.glob(pattern):
            if item.is_file() and item.name != "lock":
                item.unlink()
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    for log in root.glob("var/log/*.log"):
        log.write_bytes(b"")


def _stream(argv: Sequence[str], log: Path, on_line: Callable[[str], None], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            out.write(line)
            tail = [*tail[-19:], line.rstrip()]
            on_line(line.rstrip())
            if time.monotonic() > deadline:
                proc.kill()
        code = proc.wait()
    if code != 0:
        raise TestbedError(f"{argv[0]} failed ({code}); last lines (full log: {log}):\n" + "\n".join(tail))


def _build_image(recipe: Recipe, console: Console) -> None:
    if shutil.which("debootstrap") is None:
        raise TestbedError("building the test-bed image needs debootstrap: apt-get install debootstrap")
    build_parent = CACHE_ROOT / "build"
    build_parent.mkdir(parents=True, exist_ok=True)
    for stale in build_parent.iterdir():  # left by a killed build; we hold the build lock
        _remove_tree(stale)
    (CACHE_ROOT / "logs").mkdir(parents=True, exist_ok=True)
    log = CACHE_ROOT / "logs" / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{recipe.digest}.log"
    debs = CACHE_ROOT / "debootstrap"
    debs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="image-", dir=build_parent))
    root = work / "root"
    started = time.monotonic()
    console.print(f"Building the test-bed base image {recipe.image} (log: {log})")
    try:
        with console.status("debootstrap: starting") as spinner:

            def progress(line: str) -> None:
                if line.startswith(("I: ", "W: ")):
                    elapsed = time.monotonic() - started
                    spinner.update(f"debootstrap ({elapsed:.0f}s): {line[3:][:90]}")

            argv = [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(recipe.packages)}",
                f"--cache-dir={debs}",
            ]
            if recipe.keyring:
                argv.append(f"--keyring={recipe.keyring}")
            argv += [SUITE, str(root), recipe.mirror]
            _stream(argv, log, progress, timeout=1800)
            spinner.update("configuring the image")
            _slim_and_clean(root)
            _write_image_files(root, recipe)
            _stream(["chroot", str(root), "update-ca-certificates"], log, lambda _: None, 300)
            spinner.update("packing and importing the image")
            tarball = work / "rootfs.tar"
            _run(
                ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tarball), "."],
                timeout=900,
            )
            _podman(
                "import",
                "--quiet",
                "--change",
                'CMD ["/sbin/init"]',
                "--change",
                "STOPSIGNAL SIGRTMIN+3",
                "--change",
                f"LABEL {LABEL_RECIPE}={recipe.digest}",
                "--message",
                f"sciplat test bed, Debian {SUITE}, recipe {recipe.digest}",
                str(tarball),
                recipe.image,
                timeout=900,
            )
    finally:
        with contextlib.suppress(TestbedError):
            _remove_tree(work)
    console.print(f"[green]✓[/] built {recipe.image} in {time.monotonic() - started:.0f}s")


def _prune_images(keep: str, console: Console) -> None:
    """Remove older recipes' images that no container uses."""
    proc = _podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO, check=False)
    for ref in proc.stdout.split():
        if ref == keep or not ref.startswith(IMAGE_REPO + ":"):
            continue
        if _podman("rmi", ref, check=False).returncode == 0:
            console.print(f"removed the outdated image {ref}")


def ensure_image(console: Console, recipe: Recipe | None = None) -> str:
    """The base image for the current recipe, built if it is missing."""
    recipe = recipe or build_recipe()
    if _image_id(recipe.image):
        return recipe.image
    with _file_lock(CACHE_ROOT / "locks" / "build.lock", console, "waiting for another test-bed image build"):
        if not _image_id(recipe.image):
            _build_image(recipe, console)
    return recipe.image


# --------------------------------------------------------------------------- SSH and files


def _paths(inventory_dir: Path) -> dict[str, Path]:
    base = inventory_dir.resolve() / ".sciplat"
    return {
        "dir": base,
        "key": base / "ssh" / "id_ed25519",
        "known_hosts": base / "ssh" / "known_hosts",
        "ssh_config": base / "ssh_config",
        "hosts": inventory_dir.resolve() / "hosts.yml",
    }


def ensure_ssh_key(key: Path, comment: str) -> str:
    """Create the bed's ed25519 key pair once; returns the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = key.with_name(key.name + ".pub")
    if key.is_file() and pub.is_file():
        return str(pub.read_text().strip())
    key.parent.mkdir(parents=True, exist_ok=True)
    key.parent.chmod(0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    line = f"{public.decode()} {comment}"
    pub.write_text(line + "\n")
    return line


def _quote_ssh(value: str) -> str:
    return f'"{value}"'


def render_ssh_config(spec: TestbedSpec, key: Path, known_hosts: Path) -> str:
    lines = [
        "# Generated by `sciplat testbed up` from testbed.yml; rewritten on every up.",
        f"# Usage: ssh -F {known_hosts.parent.parent / 'ssh_config'} <host>",
        "",
    ]
    for name, host in spec.hosts.items():
        lines += [
            f"Host {name}",
            f"  HostName {host.ip}",
            "  User root",
            f"  IdentityFile {_quote_ssh(str(key))}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {_quote_ssh(str(known_hosts))}",
            "  StrictHostKeyChecking yes",
            "  LogLevel ERROR",
            "",
        ]
    return "\n".join(lines)


def render_hosts_yml(spec: TestbedSpec, key: Path, known_hosts: Path) -> str:
    common_args = f"-o UserKnownHostsFile={shlex.quote(str(known_hosts))} -o StrictHostKeyChecking=yes"
    hosts: dict[str, Any] = {}
    for name, host in spec.hosts.items():
        hosts[name] = {
            "ansible_host": str(host.ip),
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": common_args,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    children = {group: {"hosts": {member: None for member in members}} for group, members in spec.groups().items()}
    inventory: dict[str, Any] = {"all": {"hosts": hosts}}
    if children:
        inventory["all"]["children"] = children
    header = (
        f"# Generated by `sciplat testbed up` from testbed.yml (bed '{spec.name}').\n"
        "# Do not edit: it is rewritten on every up. Put variables in group_vars/ and host_vars/.\n"
    )
    body = str(yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False, width=1000))
    return header + body.replace(": null\n", ":\n")


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _keyscan(spec: TestbedSpec, names: Sequence[str], deadline: float) -> dict[str, list[str]]:
    """known_hosts lines per host, retried until every host answers or the deadline passes."""
    result: dict[str, list[str]] = {}
    pending = list(names)
    while pending:
        by_ip = {str(spec.hosts[name].ip): name for name in pending}
        proc = _run(["ssh-keyscan", "-T", "5", "-t", "ed25519", *by_ip], check=False, timeout=60)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] in by_ip:
                name = by_ip[parts[0]]
                result.setdefault(name, []).append(f"{name},{parts[0]} {parts[1]} {parts[2]}")
        pending = [name for name in pending if name not in result]
        if pending:
            if time.monotonic() > deadline:
                raise TestbedError(f"sshd on {', '.join(pending)} did not answer within {SSH_TIMEOUT:.0f}s")
            time.sleep(1)
    return result


def _ssh_ok(ssh_config: Path, host: str, timeout: int = 10) -> bool:
    argv = [
        "ssh",
        "-F",
        str(ssh_config),
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={timeout}",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        host,
        "true",
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout + 10, check=False)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return proc.returncode == 0


def _port_open(ip: str, port: int = 22, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- network


def _network_inspect(name: str) -> dict[str, Any] | None:
    proc = _podman("network", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def _network_subnets(net: dict[str, Any]) -> list[str]:
    return [str(item.get("subnet")) for item in net.get("subnets") or []]


def _ensure_network(spec: TestbedSpec, console: Console) -> None:
    name, subnet = spec.network.name, str(spec.network.subnet)
    net = _network_inspect(name)
    if net is not None:
        labels = net.get("labels") or {}
        if labels.get(LABEL) != spec.name:
            raise TestbedError(
                f"podman network {name} exists but is not this test bed's (label {LABEL}="
                f"{spec.name} missing); remove it (podman network rm {name}) or rename the "
                "network in testbed.yml"
            )
        if _network_subnets(net) == [subnet] and net.get("driver") == "bridge":
            return
        console.print(f"network {name} has subnet {_network_subnets(net)}; recreating with {subnet}")
        _remove_containers(_containers_on_network(name))
        _podman("network", "rm", "--force", name)
    proc = _podman(
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        subnet,
        "--label",
        f"{LABEL}={spec.name}",
        name,
        check=False,
    )
    if proc.returncode != 0:
        raise TestbedError(
            f"cannot create podman network {name} ({subnet}): {proc.stderr.strip()}\n"
            "If another network uses this subnet, change network.subnet in testbed.yml."
        )


def _containers_on_network(network: str) -> list[str]:
    proc = _podman("ps", "-a", "--filter", f"network={network}", "--format", "{{.Names}}", check=False)
    return proc.stdout.split()


# --------------------------------------------------------------------------- containers


@dataclass
class TestbedHost:
    """A host of the bed as ``up`` left it."""

    name: str
    container: str
    ip: str
    groups: list[str]
    action: str  # "reused" | "created"
    state: str = "running"  # systemd state: running | degraded
    failed_units: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cache_dirs(spec: TestbedSpec, host: str) -> dict[str, Path]:
    base = CACHE_ROOT / f"{spec.name}-{host}"
    return {"apt": base / "apt", "pip": base / "pip"}


def _run_args(spec: TestbedSpec, name: str, image: str) -> list[str]:
    """``podman run`` arguments except the config label (which hashes them)."""
    host = spec.hosts[name]
    caches = _cache_dirs(spec, name)
    args = [
        "--name",
        spec.container(name),
        "--hostname",
        name,
        "--network",
        spec.network.name,
        "--ip",
        str(host.ip),
        "--label",
        f"{LABEL}={spec.name}",
        "--label",
        f"{LABEL_HOST}={name}",
        "--systemd=always",
        "--pids-limit",
        str(PIDS_LIMIT),
        "--shm-size",
        host.shm_size,
        "--volume",
        f"{caches['apt']}:/var/cache/apt/archives",
        "--volume",
        f"{caches['pip']}:/root/.cache/pip",
    ]
    for limit in ULIMITS:
        args += ["--ulimit", limit]
    for cap in host.cap_add:
        args += ["--cap-add", cap]
    for device in host.devices:
        args += ["--device", device]
    for item in host.publish:
        args += ["--publish", item]
    for other, other_host in spec.hosts.items():
        if other != name:
            args += ["--add-host", f"{other}:{other_host.ip}"]
    return [*args, image, "/sbin/init"]


def _config_digest(args: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(args).encode()).hexdigest()[:16]


def _inspect_containers(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    proc = _podman("container", "inspect", *names, check=False)
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        data = []
    result: dict[str, dict[str, Any]] = {}
    for item in data if isinstance(data, list) else []:
        result[str(item.get("Name", "")).lstrip("/")] = item
    return result


def _bed_containers(bed: str) -> list[str]:
    proc = _podman("ps", "-a", "--filter", f"label={LABEL}={bed}", "--format", "{{.Names}}")
    return proc.stdout.split()


def _remove_containers(names: Sequence[str]) -> None:
    if names:
        _podman("rm", "--force", "--ignore", "--time", "0", *names, timeout=120)


def _container_ip(info: dict[str, Any], network: str) -> str | None:
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    ip = (networks.get(network) or {}).get("IPAddress")
    return str(ip) if ip else None


def _systemd_state(container: str, wait: float | None) -> str:
    if wait is None:
        argv = ["exec", container, "systemctl", "is-system-running"]
        proc = _podman(*argv, check=False, timeout=30)
    else:
        argv = [
            "exec",
            container,
            "timeout",
            str(int(wait)),
            "systemctl",
            "is-system-running",
            "--wait",
        ]
        proc = _podman(*argv, check=False, timeout=wait + 30)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "unknown"


def _failed_units(container: str) -> list[str]:
    proc = _podman(
        "exec",
        container,
        "systemctl",
        "--failed",
        "--no-legend",
        "--plain",
        check=False,
        timeout=30,
    )
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _install_key(container: str, public_key: str) -> None:
    script = (
        "umask 077 && mkdir -p /root/.ssh && "
        "cat > /root/.ssh/authorized_keys.sciplat && "
        "mv /root/.ssh/authorized_keys.sciplat /root/.ssh/authorized_keys"
    )
    _podman("exec", "-i", container, "sh", "-c", script, input=public_key + "\n", timeout=60)


def _wait_host(spec: TestbedSpec, name: str, public_key: str) -> tuple[str, list[str]]:
    """Wait until systemd has booted and sshd listens; install the key. (state, failed units)"""
    container = spec.container(name)
    _install_key(container, public_key)
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = "unknown"
    while time.monotonic() < deadline:
        # Right after start, systemctl may not reach systemd yet ("Failed to connect to
        # bus"): it prints nothing and --wait returns at once. Ask again until it answers.
        state = _systemd_state(container, wait=max(1.0, deadline - time.monotonic()))
        if state not in ("unknown", "offline"):
            break
        time.sleep(0.5)
    failed: list[str] = []
    if state not in ("running", "degraded"):
        failed = _failed_units(container)
        raise TestbedError(
            f"host {name} ({container}) did not finish booting within {BOOT_TIMEOUT:.0f}s: "
            f"systemctl is-system-running says {state!r}"
            + (f"; failed units: {', '.join(failed)}" if failed else "")
            + f"\nInspect with: podman exec {container} systemctl --failed; "
            f"podman exec {container} journalctl -b"
        )
    if state == "degraded":
        failed = _failed_units(container)
    deadline = time.monotonic() + SSH_TIMEOUT
    while not _port_open(str(spec.hosts[name].ip)):
        if time.monotonic() > deadline:
            raise TestbedError(
                f"sshd on host {name} ({spec.hosts[name].ip}) does not accept connections "
                f"(systemd state {state}; failed units: {', '.join(failed) or 'none'})"
            )
        time.sleep(0.5)
    return state, failed


def _create_host(spec: TestbedSpec, name: str, image: str) -> None:
    for cache in _cache_dirs(spec, name).values():
        cache.mkdir(parents=True, exist_ok=True)
    args = _run_args(spec, name, image)
    labelled = [*args[:-2], "--label", f"{LABEL_CONFIG}={_config_digest(args)}", *args[-2:]]
    proc = _podman("run", "--detach", *labelled, check=False, timeout=180)
    if proc.returncode != 0:
        raise TestbedError(f"cannot start host {name} ({spec.container(name)}): {proc.stderr.strip()[-1500:]}")


def _reusable(spec: TestbedSpec, name: str, image: str, image_id: str, info: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether an existing container can stay: (True, systemd state) or (False, why not)."""
    if info is None:
        return False, "missing"
    labels = (info.get("Config") or {}).get("Labels") or {}
    state = (info.get("State") or {}).get("Status", "unknown")
    if state != "running":
        return False, f"container {state}"
    if labels.get(LABEL) != spec.name:
        return False, "not labelled as this bed's"
    if str(info.get("Image", "")) != image_id:
        return False, "built from another image"
    if labels.get(LABEL_CONFIG) != _config_digest(_run_args(spec, name, image)):
        return False, "configuration changed"
    if _container_ip(info, spec.network.name) != str(spec.hosts[name].ip):
        return False, "wrong address"
    systemd = _systemd_state(spec.container(name), wait=None)
    if systemd not in ("running", "degraded"):
        return False, f"systemd is {systemd}"
    return True, systemd


def _console(console: Console | None) -> Console:
    return console if console is not None else Console(stderr=True)


def _parallel(fn: Callable[[str], Any], names: Sequence[str]) -> dict[str, Any]:
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        futures = {name: pool.submit(fn, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------- public API


def up(inventory_dir: Path, *, recreate: bool = False, console: Console | None = None) -> list[TestbedHost]:
    """Create or heal the bed described by ``<inventory_dir>/testbed.yml``.

    Reuses every host that is running the current image and configuration and
    answers SSH; removes and recreates the others (all of them with ``recreate``).
    Writes ``hosts.yml``, ``.sciplat/ssh_config`` and ``.sciplat/ssh/known_hosts``.
    """
    out = _console(console)
    spec = load_spec(inventory_dir)
    _require_tools()
    paths = _paths(inventory_dir)
    started = time.monotonic()
    with _file_lock(
        CACHE_ROOT / "locks" / f"bed-{spec.name}.lock",
        out,
        f"waiting for another run on bed {spec.name}",
    ):
        image = ensure_image(out)
        image_id = _image_id(image)
        if image_id is None:
            raise TestbedError(f"image {image} vanished right after it was built")
        public_key = ensure_ssh_key(paths["key"], f"sciplat-testbed-{spec.name}")
        with out.status(f"network {spec.network.name}"):
            _ensure_network(spec, out)

        wanted = {spec.container(name): name for name in spec.hosts}
        stale = [c for c in _bed_containers(spec.name) if c not in wanted]
        if stale:
            out.print(f"removing containers no longer in testbed.yml: {', '.join(stale)}")
            _remove_containers(stale)

        infos = _inspect_containers(list(wanted))
        actions: dict[str, str] = {}
        with out.status("checking existing hosts"):
            checks: dict[str, tuple[bool, str]] = _parallel(
                lambda n: (
                    (False, "--recreate")
                    if recreate
                    else _reusable(spec, n, image, image_id, infos.get(spec.container(n)))
                ),
                list(spec.hosts),
            )
        results: dict[str, tuple[str, list[str]]] = {}
        for name, (ok, why) in checks.items():
            actions[name] = "reused" if ok else "created"
            if ok:
                results[name] = (why, _failed_units(spec.container(name)) if why == "degraded" else [])
            elif spec.container(name) in infos:
                out.print(f"host {name}: {why}; recreating")

        scanned: list[str] = []
        for attempt in (1, 2):
            to_create = [n for n in spec.hosts if actions[n] == "created" and n not in results]
            if to_create:
                with out.status(f"starting {', '.join(to_create)}"):
                    _remove_containers([spec.container(n) for n in to_create])
                    for name in to_create:
                        _create_host(spec, name, image)
            booting = [name for name in spec.hosts if name not in results]
            pending = [name for name in spec.hosts if name not in scanned]
            with out.status(f"waiting for systemd and sshd on {', '.join(pending)}"):
                results.update(_parallel(lambda n: _wait_host(spec, n, public_key), booting))
                known = _keyscan(spec, pending, time.monotonic() + SSH_TIMEOUT)
            _update_known_hosts(paths["known_hosts"], spec, known)
            _write_if_changed(paths["ssh_config"], render_ssh_config(spec, paths["key"], paths["known_hosts"]))
            ssh = _parallel(lambda n: _ssh_ok(paths["ssh_config"], n), pending)
            scanned = [name for name in pending if ssh[name]]
            broken = [name for name in pending if not ssh[name]]
            for name in [n for n in broken if actions[n] == "reused"]:
                # A healthy host that refuses our key (e.g. .sciplat/ was deleted): give it the key.
                _install_key(spec.container(name), public_key)
                if _ssh_ok(paths["ssh_config"], name):
                    broken.remove(name)
                    scanned.append(name)
            if not broken:
                break
            if attempt == 2 or any(actions[name] == "created" for name in broken):
                raise TestbedError(
                    f"SSH to {', '.join(broken)} fails; see ssh -F {paths['ssh_config']} -v {broken[0]} true"
                )
            out.print(f"SSH to {', '.join(broken)} fails; recreating")
            for name in broken:
                actions[name] = "created"
                results.pop(name, None)

        for name in (n for n in spec.hosts if actions[n] == "created"):
            # a new host: Ansible's cached facts (per inventory, see runner) describe the old one
            (inventory_dir / ".sciplat" / "facts" / name).unlink(missing_ok=True)
        _write_if_changed(paths["hosts"], render_hosts_yml(spec, paths["key"], paths["known_hosts"]))
        _prune_images(image, out)  # older recipes' images, once no container of ours uses them
    hosts = [
        TestbedHost(
            name=name,
            container=spec.container(name),
            ip=str(host.ip),
            groups=list(host.groups),
            action=actions[name],
            state=results[name][0],
            failed_units=results[name][1],
        )
        for name, host in spec.hosts.items()
    ]
    _print_hosts(out, spec, hosts, time.monotonic() - started, paths)
    return hosts


def _update_known_hosts(path: Path, spec: TestbedSpec, fresh: dict[str, list[str]]) -> None:
    """Rewrite known_hosts: fresh scans for the hosts given, kept lines for the others."""
    kept: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name = line.split(",", 1)[0]
            if name in spec.hosts and name not in fresh:
                kept.setdefault(name, []).append(line)
    lines: list[str] = []
    for name in spec.hosts:
        lines += fresh.get(name) or kept.get(name, [])
    _write_if_changed(path, "\n".join(lines) + "\n", 0o600)


def _print_hosts(
    out: Console,
    spec: TestbedSpec,
    hosts: Sequence[TestbedHost],
    elapsed: float,
    paths: dict[str, Path],
) -> None:
    table = Table(title=f"test bed '{spec.name}' ({elapsed:.0f}s)", title_justify="left")
    for column in ("host", "address", "groups", "container", "systemd"):
        table.add_column(column)
    for host in hosts:
        state = host.state if not host.failed_units else f"{host.state}: {', '.join(host.failed_units)}"
        color = "green" if host.state == "running" else "yellow"
        table.add_row(
            host.name,
            host.ip,
            ", ".join(host.groups),
            f"{host.container} ({host.action})",
            f"[{color}]{state}[/]",
        )
    out.print(table)
    out.print(f"inventory: {paths['hosts']}")
    out.print(f"ssh:       ssh -F {paths['ssh_config']} <host>")


def down(inventory_dir: Path, *, remove_image: bool = False, console: Console | None = None) -> None:
    """Remove the bed's containers and network (not the caches; the image only if asked)."""
    out = _console(console)
    spec = load_spec(inventory_dir)
    _require_tools()
    with _file_lock(
        CACHE_ROOT / "locks" / f"bed-{spec.name}.lock",
        out,
        f"waiting for another run on bed {spec.name}",
    ):
        containers = _bed_containers(spec.name)
        if containers:
            with out.status(f"removing {', '.join(containers)}"):
                _remove_containers(containers)
            out.print(f"removed {', '.join(containers)}")
        net = _network_inspect(spec.network.name)
        if net is not None and (net.get("labels") or {}).get(LABEL) == spec.name:
            _podman("network", "rm", "--force", spec.network.name)
            out.print(f"removed network {spec.network.name}")
    if remove_image:
        proc = _podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO, check=False)
        for ref in proc.stdout.split():
            if not ref.startswith(IMAGE_REPO + ":"):
                continue
            removed = _podman("rmi", ref, check=False)
            if removed.returncode == 0:
                out.print(f"removed image {ref}")
            else:
                out.print(f"kept image {ref}: still used by another bed's containers")


def status(inventory_dir: Path) -> dict[str, Any]:
    """The bed's state as JSON-serialisable data (image, network, each host)."""
    spec = load_spec(inventory_dir)
    _require_tools()
    paths = _paths(inventory_dir)
    image: dict[str, Any] = {"name": None, "present": False}
    image_id: str | None = None
    try:
        ref = build_recipe().image
        image_id = _image_id(ref)
        image = {"name": ref, "present": image_id is not None}
    except TestbedError as exc:
        image["error"] = str(exc)
    net = _network_inspect(spec.network.name)
    network = {
        "name": spec.network.name,
        "subnet": str(spec.network.subnet),
        "present": net is not None,
        "subnet_ok": net is not None and _network_subnets(net) == [str(spec.network.subnet)],
    }
    infos = _inspect_containers([spec.container(name) for name in spec.hosts])
    ssh_possible = paths["ssh_config"].is_file()

    def host_status(name: str) -> dict[str, Any]:
        container = spec.container(name)
        info = infos.get(container)
        state = str((info.get("State") or {}).get("Status", "unknown")) if info else "missing"
        systemd = _systemd_state(container, wait=None) if state == "running" else None
        return {
            "container": container,
            "state": state,
            "systemd": systemd,
            "ip": _container_ip(info, spec.network.name) if info else None,
            "expected_ip": str(spec.hosts[name].ip),
            "groups": list(spec.hosts[name].groups),
            "image_ok": info is not None and image_id is not None and info.get("Image") == image_id,
            "ssh_ok": state == "running" and ssh_possible and _ssh_ok(paths["ssh_config"], name, 5),
        }

    hosts = _parallel(host_status, list(spec.hosts))
    healthy = (
        bool(image["present"])
        and bool(network["subnet_ok"])
        and all(
            h["state"] == "running"
            and h["ssh_ok"]
            and h["ip"] == h["expected_ip"]
            and h["systemd"] in ("running", "degraded")
            for h in hosts.values()
        )
    )
    return {
        "bed": spec.name,
        "inventory": str(paths["hosts"]),
        "ssh_config": str(paths["ssh_config"]),
        "image": image,
        "network": network,
        "hosts": hosts,
        "healthy": healthy,
    }
