"""The cloud side of sciplat: typed stack configuration, policy rules, the inventory
rendered from stack outputs, and the per-tenant cost report.

Nothing here imports Pulumi: the Pulumi program lives in ``stacks/aws`` and imports
these modules; the operator's tool only needs Pulumi for ``sciplat up --target aws``.
"""
