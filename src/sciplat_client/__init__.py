"""A Python client of the platform API (https://PLATFORM/api/v1) and the `sciplat-client` command.

Standard library only, so it works from a laptop, a notebook or a batch job with
nothing but the platform's URL, a JupyterHub API token and, for a platform with its
own certificate authority, the CA file::

    from sciplat_client import PlatformClient

    client = PlatformClient("https://platform.example.org", token="...", ca="ca.crt")
    print(client.me()["quotas"])
    client.create_group("galaxies", "Galaxy zoo follow-up")
    client.add_member("galaxies", "bob")

Without arguments the URL comes from ``SCIPLAT_URL`` (or, inside a user server,
the hub's public URL), the token from ``SCIPLAT_TOKEN`` or ``JUPYTERHUB_API_TOKEN``
and the CA file from ``SCIPLAT_CA``. Every refusal raises `PlatformError` with the
API's sentence and HTTP status.
"""

from sciplat_client.client import (
    ENDED_PHASES,
    Allocation,
    Collaboration,
    Credentials,
    Job,
    JobResults,
    Me,
    PlatformClient,
    PlatformError,
    Share,
    Shares,
)

__all__ = [
    "ENDED_PHASES",
    "Allocation",
    "Collaboration",
    "Credentials",
    "Job",
    "JobResults",
    "Me",
    "PlatformClient",
    "PlatformError",
    "Share",
    "Shares",
]
