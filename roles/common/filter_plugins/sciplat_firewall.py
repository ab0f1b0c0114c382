"""Filters that check and resolve the firewall declarations of sciplat.

A declaration (docs/development.md, "Declarations") is a list of items
``{name, port, proto, group, sources}`` kept in variables named
``firewall_rules_<component>``. The role collects every item, checks them with
``sciplat_firewall_errors`` in its preflight and renders the rules that apply to
a host with ``sciplat_firewall_resolve``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

_PROTOS = ("tcp", "udp")
_PORT_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_KEYS = {"name", "port", "proto", "group", "sources"}


def _label(rule: Any, index: int) -> str:
    if isinstance(rule, Mapping) and rule.get("name"):
        return f"firewall rule {rule['name']!r}"
    return f"firewall rule #{index + 1} (it has no name)"


def _port_error(port: Any) -> str | None:
    """Return why ``port`` is not an int 1-65535 or a range "a-b", or None."""
    if isinstance(port, bool):
        return f"port {port!r} is not a port number"
    if isinstance(port, int):
        return None if 1 <= port <= 65535 else f"port {port} is outside 1-65535"
    if isinstance(port, str):
        text = port.strip()
        if text.isdigit():
            return _port_error(int(text))
        match = _PORT_RANGE.match(text)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if not (1 <= low <= 65535 and 1 <= high <= 65535):
                return f"port range {port!r} is outside 1-65535"
            if low > high:
                return f"port range {port!r} starts above its end"
            return None
    return f'port {port!r} is neither a number nor a range like "8000-8010"'


def _port_text(port: Any) -> str:
    if isinstance(port, str):
        match = _PORT_RANGE.match(port)
        if match:
            return f"{int(match.group(1))}-{int(match.group(2))}"
        return str(int(port.strip()))
    return str(int(port))


def _network(source: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(source, strict=False)
    except ValueError:
        return None


def _collapse(networks: Iterable[Any]) -> list[str]:
    """Merge overlapping networks (nftables refuses overlapping set elements)."""
    return [str(n) for n in ipaddress.collapse_addresses(sorted(networks))]


def firewall_errors(rules: Any, groups: Mapping[str, Any]) -> list[str]:
    """Every problem with the declared rules, one message per problem.

    ``groups`` is Ansible's ``groups`` magic variable. An empty list means the
    declarations are sound.
    """
    if rules is None:
        return []
    if not isinstance(rules, list):
        return [f"firewall rules must be a list of mappings, got {type(rules).__name__}"]
    errors: list[str] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        label = _label(rule, index)
        if not isinstance(rule, Mapping):
            errors.append(f"{label}: must be a mapping with keys {sorted(_KEYS)}, got {rule!r}")
            continue
        name = rule.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.:-]+$", name):
            errors.append(f"{label}: 'name' must be letters, digits, '_', '.', ':' or '-', got {name!r}")
        elif name in seen:
            errors.append(f"{label}: the name is declared twice")
        else:
            seen[name] = index
        unknown = sorted(set(rule) - _KEYS)
        if unknown:
            errors.append(f"{label}: unknown keys {unknown}; allowed are {sorted(_KEYS)}")
        if "port" not in rule:
            errors.append(f"{label}: 'port' is missing")
        else:
            problem = _port_error(rule["port"])
            if problem:
                errors.append(f"{label}: {problem}")
        proto = rule.get("proto")
        if proto not in _PROTOS:
            errors.append(f"{label}: 'proto' must be one of {list(_PROTOS)}, got {proto!r}")
        group = rule.get("group")
        if not isinstance(group, str) or not group:
            errors.append(f"{label}: 'group' must name the host group that opens the port")
        sources = rule.get("sources")
        if not isinstance(sources, list) or not sources:
            errors.append(f"{label}: 'sources' must be a non-empty list of group names, CIDRs or 'any'")
            continue
        for source in sources:
            if not isinstance(source, str) or not source:
                errors.append(f"{label}: source {source!r} is not a string")
            elif source == "any" or source in groups or _network(source) is not None:
                continue
            else:
                errors.append(
                    f"{label}: source {source!r} is neither 'any', a CIDR, nor a group of "
                    f"this inventory (groups: {', '.join(sorted(groups))})"
                )
    return errors


def _addresses(host_facts: Mapping[str, Any]) -> list[str]:
    found = []
    for key in ("ansible_default_ipv4", "ansible_default_ipv6"):
        facts = host_facts.get(key)
        if isinstance(facts, Mapping) and facts.get("address"):
            found.append(str(facts["address"]))
    return found


def firewall_resolve(
    rules: Iterable[Mapping[str, Any]],
    groups: Mapping[str, Any],
    hostvars: Mapping[str, Any],
    host: str,
) -> list[dict[str, Any]]:
    """The rules that apply to ``host``, with their sources turned into addresses.

    Each result is ``{name, port, proto, any, ipv4, ipv6, missing}``: ``any`` when
    every source address may connect, otherwise sorted ``ipv4``/``ipv6``
    networks; ``missing`` lists the hosts of source groups whose address is
    unknown (their facts were not gathered).
    """
    resolved = []
    for rule in rules or []:
        members = groups.get(rule["group"]) or []
        if host not in members:
            continue
        any_source = False
        ipv4: set[ipaddress.IPv4Network] = set()
        ipv6: set[ipaddress.IPv6Network] = set()
        missing: list[str] = []
        for source in rule["sources"]:
            if source == "any":
                any_source = True
                continue
            if source in groups:
                addresses: list[str] = []
                for member in groups[source]:
                    found = _addresses(hostvars.get(member) or {})
                    if not found:
                        missing.append(member)
                    addresses.extend(found)
            else:
                addresses = [source]
            for address in addresses:
                net = _network(address)
                if isinstance(net, ipaddress.IPv4Network):
                    ipv4.add(net)
                elif isinstance(net, ipaddress.IPv6Network):
                    ipv6.add(net)
        resolved.append(
            {
                "name": rule["name"],
                "port": _port_text(rule["port"]),
                "proto": rule["proto"],
                "any": any_source,
                "ipv4": _collapse(ipv4),
                "ipv6": _collapse(ipv6),
                "missing": sorted(set(missing)),
            }
        )
    return sorted(resolved, key=lambda r: r["name"])


class FilterModule:
    """sciplat firewall filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "sciplat_firewall_errors": firewall_errors,
            "sciplat_firewall_resolve": firewall_resolve,
        }
