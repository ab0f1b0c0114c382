"""Budgets: one AWS Budget per tenant (costs tagged tenant=<name>) and one for the
whole platform (platform=<name>), alerting at the spec's thresholds of actual spend
and when the month's forecast passes the forecast threshold."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import SHARED_TENANT, BudgetsConfig
from sciplat_aws.tags import Component


class Budgets(Component):
    component = "budgets"

    def __init__(self, name: str, config: BudgetsConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("sciplat:aws:Budgets", name, opts)
        self.budgets: dict[str, aws.budgets.Budget] = {}
        if config.platform_monthly_usd is not None:
            self.budgets[SHARED_TENANT] = self._budget(
                f"{name}-platform",
                f"{config.platform}-platform",
                config.platform_monthly_usd,
                f"user:platform${config.platform}",
                config.alert_emails,
                config,
                {},
            )
        for tenant in config.tenants:
            if tenant.budget_monthly_usd is None:
                continue
            tags = {"tenant": tenant.name, **({"cost-center": tenant.cost_center} if tenant.cost_center else {})}
            self.budgets[tenant.name] = self._budget(
                f"{name}-t-{tenant.name}",
                f"{config.platform}-tenant-{tenant.name}",
                tenant.budget_monthly_usd,
                f"user:tenant${tenant.name}",
                tuple(dict.fromkeys(config.alert_emails + tenant.alert_emails)),
                config,
                tags,
            )
        self.register_outputs({})

    def _budget(
        self,
        logical: str,
        budget_name: str,
        amount: float,
        tag_filter: str,
        emails: tuple[str, ...],
        config: BudgetsConfig,
        tags: dict[str, str],
    ) -> aws.budgets.Budget:
        notifications: list[dict[str, Any]] = []
        if emails:
            notifications += [
                {
                    "comparison_operator": "GREATER_THAN",
                    "threshold": threshold,
                    "threshold_type": "PERCENTAGE",
                    "notification_type": "ACTUAL",
                    "subscriber_email_addresses": list(emails),
                }
                for threshold in config.thresholds
            ]
            if config.forecast_threshold is not None:
                notifications.append(
                    {
                        "comparison_operator": "GREATER_THAN",
                        "threshold": config.forecast_threshold,
                        "threshold_type": "PERCENTAGE",
                        "notification_type": "FORECASTED",
                        "subscriber_email_addresses": list(emails),
                    }
                )
        return aws.budgets.Budget(
            logical,
            name=budget_name,
            budget_type="COST",
            limit_amount=f"{amount:.2f}",
            limit_unit="USD",
            time_unit="MONTHLY",
            cost_filters=[{"name": "TagKeyValue", "values": [tag_filter]}],
            notifications=notifications,
            tags=tags,
            opts=self.child(),
        )
