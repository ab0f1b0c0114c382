"""The monthly cost split per tenant.

On AWS the bill comes from Cost Explorer, grouped by the ``tenant`` and ``component``
cost-allocation tags the stack puts on every resource:

1. **Direct costs** — tagged with a tenant (its bucket, its budget) — go to that tenant.
2. **Shared costs** — tagged ``tenant=shared`` or untagged — are split by measured use:
   ``compute`` (Slurm nodes and controller) by Slurm core-hours, ``storage`` and ``homes``
   by bytes stored, ``database`` by MyDB size, and everything else (network, gateway,
   hub, monitor, untagged) by the mean of the tenant's three shares of use.
   Use by groups that belong to no tenant is charged to the row ``platform``.
   When nobody used a resource at all its cost is split equally between the tenants.

On-prem the same report is use x the rates of ``cloud.rates`` in platform.yaml, with
``fixed_monthly_usd`` split like the shared costs above.

Amounts are split exactly (fractions) and then rounded to the cent with the
largest-remainder method, so the tenants' shares always add up to the total.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sciplat.cloud.config import SHARED_TENANT
from sciplat.spec import Rates, Tenant

UNASSIGNED = "platform"
GIB = 1024**3
CENT = Decimal("0.01")

#: Which measured use splits a shared component's cost.
DRIVER = {
    "compute": "core_hours",
    "storage": "stored_bytes",
    "homes": "stored_bytes",
    "database": "mydb_bytes",
}
DIMENSIONS = ("core_hours", "stored_bytes", "mydb_bytes")


class CostError(Exception):
    """The report cannot be made; the message says what to provide."""


# ------------------------------------------------------------------ inputs


class Usage(BaseModel):
    """Measured use during one month, per platform group (Slurm account, group directory/bucket/database).

    ``stored_bytes`` is the month's average of object and POSIX bytes; ``mydb_bytes`` the
    databases' size. ``s3_locations`` (group → ``s3://bucket/prefix``) are measured with
    boto3 and added to ``stored_bytes``.
    """

    model_config = ConfigDict(extra="forbid")

    month: str
    core_hours: dict[str, float] = Field(default_factory=dict)
    stored_bytes: dict[str, int] = Field(default_factory=dict)
    mydb_bytes: dict[str, int] = Field(default_factory=dict)
    s3_locations: dict[str, str] = Field(default_factory=dict)

    @field_validator("month")
    @classmethod
    def _month(cls, value: str) -> str:
        return check_month(value)

    @field_validator("core_hours", "stored_bytes", "mydb_bytes")
    @classmethod
    def _non_negative(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, amount in value.items():
            if amount < 0:
                raise ValueError(f"{key}: {amount} is negative; use is never below zero")
        return value


def check_month(value: str) -> str:
    if not re.match(r"^\d{4}-(0[1-9]|1[0-2])$", value):
        raise ValueError(f"{value!r} is not a month; write it as YYYY-MM, e.g. 2026-10")
    return value


def month_bounds(month: str) -> tuple[str, str]:
    """Cost Explorer's [start, end) dates of a month."""
    year, mon = map(int, check_month(month).split("-"))
    end = f"{year + 1}-01-01" if mon == 12 else f"{year}-{mon + 1:02d}-01"
    return f"{year}-{mon:02d}-01", end


def load_usage(path: Path) -> Usage:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CostError(f"cannot read the usage file {path}: {exc}") from None
    try:
        return Usage.model_validate(data)
    except ValueError as exc:
        raise CostError(f"{path}: {exc}") from None


def parse_sreport(text: str) -> dict[str, float]:
    """Core-hours per account from ``sreport -nP -t Hours cluster AccountUtilizationByUser
    start=… end=… format=Account,Login,Used`` (the account's own line has no login)."""
    hours: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0] or parts[1]:
            continue
        if parts[0] == "root":
            continue
        hours[parts[0]] = hours.get(parts[0], 0.0) + float(parts[2] or 0)
    return hours


def parse_database_sizes(text: str, prefix: str = "g_") -> dict[str, int]:
    """Bytes per group from ``psql -AtF'|' -c "select datname, pg_database_size(datname) from pg_database"``;
    group databases are named ``<prefix><group>``."""
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        name, _, size = line.strip().partition("|")
        if name.startswith(prefix) and size.isdigit():
            sizes[name.removeprefix(prefix)] = int(size)
    return sizes


def measure_s3(locations: Mapping[str, str], s3: Any) -> dict[str, int]:
    """Bytes stored (every object version) per group at ``s3://bucket/prefix`` locations."""
    out: dict[str, int] = {}
    for group, url in locations.items():
        match = re.match(r"^s3://([^/]+)/?(.*)$", url)
        if not match:
            raise CostError(f"s3_locations.{group}: {url!r} is not an s3://bucket/prefix URL")
        bucket, prefix = match.groups()
        total = 0
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(int(v["Size"]) for v in page.get("Versions", []))
        out[group] = out.get(group, 0) + total
    return out


# ------------------------------------------------------------------ splitting


@dataclass
class Row:
    tenant: str
    direct: Fraction = Fraction(0)
    shared: Fraction = Fraction(0)
    usage: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DIMENSIONS, 0.0))
    total_cents: int = 0
    direct_cents: int = 0


def _tenant_of(tenants: Sequence[Tenant]) -> dict[str, str]:
    return {group: t.name for t in tenants for group in t.groups}


def tenant_usage(usage: Usage, tenants: Sequence[Tenant]) -> dict[str, dict[str, float]]:
    """Use per tenant (and ``platform`` for groups of no tenant) in each dimension."""
    owner = _tenant_of(tenants)
    out: dict[str, dict[str, float]] = {t.name: dict.fromkeys(DIMENSIONS, 0.0) for t in tenants}
    for dim in DIMENSIONS:
        for group, amount in getattr(usage, dim).items():
            row = out.setdefault(owner.get(group, UNASSIGNED), dict.fromkeys(DIMENSIONS, 0.0))
            row[dim] += float(amount)
    if UNASSIGNED in out and not any(out[UNASSIGNED].values()):
        del out[UNASSIGNED]
    return out


def _weights(use: Mapping[str, Mapping[str, float]], driver: str | None, tenants: Sequence[str]) -> dict[str, Fraction]:
    """Each row's fraction of a shared cost."""
    dims = [driver] if driver else list(DIMENSIONS)
    shares: dict[str, Fraction] = dict.fromkeys(use, Fraction(0))
    counted = 0
    for dim in dims:
        total = sum(Fraction(u[dim]) for u in use.values())
        if total == 0:
            continue
        counted += 1
        for name, u in use.items():
            shares[name] += Fraction(u[dim]) / total
    if counted == 0:
        names = list(tenants) or [UNASSIGNED]
        return {n: Fraction(1, len(names)) for n in names}
    return {n: s / counted for n, s in shares.items() if s}


def round_to_total(exact: Mapping[str, Fraction]) -> tuple[dict[str, int], int]:
    """Cents per row that add up exactly to the rounded total (largest remainder; any sign)."""
    total_cents = _to_cents(sum(exact.values(), Fraction(0)))
    scaled = {k: v * 100 for k, v in exact.items()}
    cents = {k: v.numerator // v.denominator for k, v in scaled.items()}
    left = total_cents - sum(cents.values())
    order = sorted(scaled, key=lambda k: (scaled[k] - cents[k], k), reverse=True)
    for k in order[:left]:
        cents[k] += 1
    return cents, total_cents


def _to_cents(amount: Fraction | Decimal) -> int:
    value = Fraction(amount) * 100
    whole, rest = divmod(value.numerator, value.denominator)
    return whole + (1 if 2 * rest >= value.denominator else 0)


def split(
    costs: Mapping[tuple[str, str], Decimal],
    use: Mapping[str, Mapping[str, float]],
    tenants: Sequence[str],
) -> tuple[list[Row], int, dict[str, int]]:
    """Split (tenant tag, component tag) → amount into rows; returns (rows, total cents, shared cents per component)."""
    rows: dict[str, Row] = {t: Row(t) for t in tenants}
    for name, u in use.items():
        rows.setdefault(name, Row(name)).usage = dict(u)
    exact: dict[str, Fraction] = dict.fromkeys(rows, Fraction(0))
    shared_by_component: dict[str, Fraction] = {}
    for (tenant, component), amount in costs.items():
        value = Fraction(amount)
        if tenant and tenant != SHARED_TENANT:
            rows.setdefault(tenant, Row(tenant)).direct += value
            exact[tenant] = exact.get(tenant, Fraction(0)) + value
            continue
        key = component or "(untagged)"
        shared_by_component[key] = shared_by_component.get(key, Fraction(0)) + value
    for component, value in shared_by_component.items():
        weights = _weights(use, DRIVER.get(component), tenants)
        weight_sum = sum(weights.values())
        for name, w in weights.items():
            rows.setdefault(name, Row(name)).shared += value * w / weight_sum
            exact[name] = exact.get(name, Fraction(0)) + value * w / weight_sum
    cents, total_cents = round_to_total(exact)
    for name, row in rows.items():
        row.total_cents = cents.get(name, 0)
        row.direct_cents = _to_cents(row.direct)
    return list(rows.values()), total_cents, {k: _to_cents(v) for k, v in shared_by_component.items()}


# ------------------------------------------------------------------ sources


def aws_costs(ce: Any, month: str, platform: str, *, whole_account: bool = False) -> dict[tuple[str, str], Decimal]:
    """Unblended cost of the month per (tenant tag, component tag) from Cost Explorer."""
    start, end = month_bounds(month)
    request: dict[str, Any] = {
        "TimePeriod": {"Start": start, "End": end},
        "Granularity": "MONTHLY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "TAG", "Key": "tenant"}, {"Type": "TAG", "Key": "component"}],
    }
    if not whole_account:
        request["Filter"] = {"Tags": {"Key": "platform", "Values": [platform]}}
    costs: dict[tuple[str, str], Decimal] = {}
    while True:
        answer = ce.get_cost_and_usage(**request)
        for period in answer.get("ResultsByTime", []):
            for group in period.get("Groups", []):
                tenant, component = (k.partition("$")[2] for k in group["Keys"])
                amount = Decimal(group["Metrics"]["UnblendedCost"]["Amount"])
                costs[(tenant, component)] = costs.get((tenant, component), Decimal(0)) + amount
            if not period.get("Groups") and period.get("Total"):
                amount = Decimal(period["Total"]["UnblendedCost"]["Amount"])
                costs[("", "")] = costs.get(("", ""), Decimal(0)) + amount
        token = answer.get("NextPageToken")
        if not token:
            return costs
        request["NextPageToken"] = token


def onprem_costs(use: Mapping[str, Mapping[str, float]], rates: Rates, month: str) -> dict[tuple[str, str], Decimal]:
    """Use x rates per row (as direct costs) plus the fixed monthly cost (shared)."""
    costs: dict[tuple[str, str], Decimal] = {}
    for name, u in use.items():
        amount = (
            Decimal(str(u["core_hours"])) * Decimal(str(rates.core_hour_usd))
            + Decimal(str(u["stored_bytes"])) / GIB * Decimal(str(rates.storage_gib_month_usd))
            + Decimal(str(u["mydb_bytes"])) / GIB * Decimal(str(rates.mydb_gib_month_usd))
        )
        if amount:
            costs[(name, "use")] = amount
    if rates.fixed_monthly_usd:
        costs[(SHARED_TENANT, "fixed")] = Decimal(str(rates.fixed_monthly_usd))
    check_month(month)
    return costs


# ------------------------------------------------------------------ the report


def report(
    *,
    month: str,
    source: str,
    costs: Mapping[tuple[str, str], Decimal],
    usage: Usage,
    tenants: Sequence[Tenant],
) -> dict[str, Any]:
    use = tenant_usage(usage, tenants)
    rows, total_cents, shared = split(costs, use, [t.name for t in tenants])
    assert sum(r.total_cents for r in rows) == total_cents, "shares must add up to the total"
    days = calendar.monthrange(*map(int, month.split("-")))[1]
    return {
        "month": month,
        "days": days,
        "source": source,
        "currency": "USD",
        "total": _money(total_cents),
        "shared_by_component": {k: _money(v) for k, v in sorted(shared.items())},
        "tenants": [
            {
                "tenant": r.tenant,
                "direct": _money(r.direct_cents) if source == "aws" else None,
                "total": _money(r.total_cents),
                "share_percent": round(100 * r.total_cents / total_cents, 2) if total_cents else 0.0,
                "core_hours": round(r.usage.get("core_hours", 0.0), 2),
                "stored_gib": round(r.usage.get("stored_bytes", 0.0) / GIB, 3),
                "mydb_gib": round(r.usage.get("mydb_bytes", 0.0) / GIB, 3),
            }
            for r in sorted(rows, key=lambda r: (r.tenant == UNASSIGNED, r.tenant))
        ],
        "method": (
            "direct: costs tagged with the tenant; shared (tenant=shared or untagged): compute by Slurm "
            "core-hours, storage and homes by bytes stored, database by MyDB size, the rest by the mean "
            "of those shares; rounded to the cent by largest remainder"
            if source == "aws"
            else "use x cloud.rates (core-hours, GiB-months stored, GiB-months of MyDB); fixed_monthly_usd "
            "split by the mean of the tenants' shares of use; rounded to the cent by largest remainder"
        ),
    }


def _money(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


def to_csv(data: Mapping[str, Any]) -> str:
    out = io.StringIO()
    columns = ["tenant", "total", "share_percent", "direct", "core_hours", "stored_gib", "mydb_gib"]
    writer = csv.DictWriter(out, fieldnames=["month", *columns], lineterminator="\n")
    writer.writeheader()
    for row in data["tenants"]:
        writer.writerow({"month": data["month"], **{c: "" if row[c] is None else row[c] for c in columns}})
    writer.writerow({"month": data["month"], "tenant": "TOTAL", "total": data["total"], "share_percent": 100.0})
    return out.getvalue()


def sum_cents(values: Iterable[str]) -> int:
    return sum(int(Decimal(v) * 100) for v in values)
