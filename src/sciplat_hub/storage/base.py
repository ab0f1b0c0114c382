"""The backend-neutral object-storage admin interface.

Account provisioning and the platform API call only these methods; a backend
(`rgw`, `minio`, `aws`) implements them. Every method is idempotent: calling it
again with the same arguments changes nothing and returns the same answer, so a
provisioning run that failed halfway can simply be repeated.

Naming, the same on every backend:
- a user's home bucket is `home-<username>`;
- a group's bucket is `group-<groupname>`.
(Both are valid S3 bucket names when user and group names are lower-case
letters, digits and dashes, as the directory enforces.)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


class StorageError(Exception):
    """An admin operation failed; the message says what and what to do."""


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str
    endpoint: str  # the URL users address (path-style), e.g. https://s3.example.org
    region: str = "default"

    def env(self) -> dict[str, str]:
        """Variables that make boto3, the AWS CLI and s3fs find the credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "S3_ENDPOINT_URL": self.endpoint,
        }


@dataclass(frozen=True)
class BucketUsage:
    bucket: str
    bytes_used: int
    objects: int
    quota_bytes: int | None  # None: no quota


@dataclass(frozen=True)
class UserUsage:
    username: str
    bytes_used: int
    objects: int
    quota_bytes: int | None
    buckets: tuple[BucketUsage, ...] = ()


def home_bucket(username: str) -> str:
    return f"home-{username}"


def group_bucket(group: str) -> str:
    return f"group-{group}"


class ObjectStore(abc.ABC):
    """Admin operations on one object store."""

    @abc.abstractmethod
    def ensure_user(self, username: str, quota_bytes: int | None) -> S3Credentials:
        """The user exists, enabled, with this quota; return their (stable) keys."""

    @abc.abstractmethod
    def ensure_home_bucket(self, username: str) -> str:
        """The user's private home bucket exists, owned by them; return its name."""

    @abc.abstractmethod
    def ensure_group_bucket(self, group: str, members: list[str], quota_bytes: int | None) -> str:
        """The group's bucket exists; exactly `members` may read and write it."""

    def delete_group_bucket(self, group: str) -> bool:
        """Delete the group's bucket with every object in it (a purge); True when there was one."""
        raise StorageError(
            f"the {type(self).__name__} backend cannot purge group buckets; delete {group_bucket(group)} "
            "and its objects with the provider's own tools"
        )

    @abc.abstractmethod
    def set_user_quota(self, username: str, quota_bytes: int | None) -> None:
        """Change a user's quota (None removes it)."""

    @abc.abstractmethod
    def usage(self, username: str) -> UserUsage:
        """Bytes and objects the user stores, per bucket, with the quota."""

    @abc.abstractmethod
    def disable_user(self, username: str) -> None:
        """The user's keys stop working; their data stays."""

    @abc.abstractmethod
    def enable_user(self, username: str) -> None:
        """Undo disable_user."""
