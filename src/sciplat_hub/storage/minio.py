"""MinIO backend of the storage admin interface (`storage.backend: minio`).

Admin calls go to MinIO's admin API (`/minio/admin/v3/…`) through the `minio`
package's MinioAdmin client; buckets through its Minio client, both signed with
the MinIO root credentials. What it makes:

- a MinIO user per platform user. Its access key is the user name (names shorter
  than MinIO's minimum of 3 characters are right-padded with `_`, which user names
  never contain, so no two users collide). Its secret key is derived, not stored:
  HMAC-SHA256(key_seed, user name), 40 characters, so the keys are stable across
  calls and hosts and `ensure_user` can return them again at every sign-in.
  Changing `key_seed` rotates every user's secret at their next sign-in.
- a canned policy `sciplat-home-<user>` attached to the user: object access to the
  home bucket `home-<user>` and nothing else (no bucket creation or configuration);
- a bucket `group-<group>`, a MinIO group `group-<group>` whose members are exactly
  the members given (those that have MinIO users yet), and a canned policy
  `sciplat-group-<group>` attached to that group.

Nobody else (and no anonymous request) has access: MinIO denies what no policy
allows and sciplat sets no bucket policies.

Quotas: MinIO has bucket quotas, not user quotas. A user's quota is set as the hard
quota of their home bucket and a group's on its group bucket; MinIO refuses a put
that would exceed it (error XMinioAdminBucketQuotaExceeded; S3 clients see
"Bucket quota exceeded"). MinIO counts usage with its background scanner, so a quota
bites after the scanner has seen the data (seconds to minutes on a quiet server).
Usage comes from the same scanner (admin `datausageinfo`).

Configuration (`/etc/sciplat/storage/client.json`, `"backend": "minio"`):

    {"backend": "minio",
     "admin_endpoint": "https://storage1.example.org:9000",  # where the hub calls MinIO
     "endpoint": "https://s3.example.org",                   # what users address
     "access_key": "<root user>", "secret_key": "<root password>",
     "key_seed": "<hex secret>",
     "ca_file": "/etc/sciplat/pki/ca.crt",                   # optional
     "region": "us-east-1"}                                  # optional
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.credentials.providers import StaticProvider
from minio.error import MinioAdminException, S3Error
from minio.minioadmin import MinioAdmin

from sciplat_hub.storage.base import (
    BucketUsage,
    ObjectStore,
    S3Credentials,
    StorageError,
    UserUsage,
    group_bucket,
    home_bucket,
)

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MIN_ACCESS_KEY = 3
SECRET_LENGTH = 40  # MinIO accepts 8 to 40 characters

OBJECT_ACTIONS = [
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
BUCKET_ACTIONS = ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"]


def bucket_access_policy(bucket: str) -> dict[str, Any]:
    """The canned policy that gives object access to one bucket."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": BUCKET_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }


def normalized_policy(document: Any) -> list[tuple[str, tuple[str, ...], tuple[str, ...], str]]:
    """A policy as MinIO may echo it (actions and resources are sets to MinIO, so it
    may reorder them or make lists of single strings): comparable across forms."""
    if isinstance(document, dict) and "Policy" in document and "Statement" not in document:
        document = document["Policy"]  # info-canned-policy?v=2 wraps it
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    result = []
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        result.append(
            (
                str(statement.get("Effect", "")),
                tuple(sorted([actions] if isinstance(actions, str) else actions)),
                tuple(sorted([resources] if isinstance(resources, str) else resources)),
                json.dumps(statement.get("Condition", {}), sort_keys=True),
            )
        )
    return sorted(result)


def access_key_of(username: str) -> str:
    if not _NAME.match(username):
        raise StorageError(f"user name {username!r} is not valid: expected ^[a-z][a-z0-9-]{{0,31}}$")
    return username.ljust(MIN_ACCESS_KEY, "_")


def derive_secret(key_seed: str, username: str) -> str:
    digest = hmac.new(key_seed.encode(), b"sciplat-minio-user\0" + username.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:SECRET_LENGTH]


def _check_group(group: str) -> None:
    if not _NAME.match(group):
        raise StorageError(f"group name {group!r} is not valid: expected ^[a-z][a-z0-9-]{{0,31}}$")


def _admin_code(error: MinioAdminException) -> str:
    try:
        return str(json.loads(error._body).get("Code", ""))
    except (ValueError, AttributeError):
        return ""


def _admin_status(error: MinioAdminException) -> int:
    try:
        return int(error._code)
    except (ValueError, AttributeError):
        return 0


_T = TypeVar("_T")


def _reported(method: Callable[..., _T]) -> Callable[..., _T]:
    """Errors of the server or the network become StorageError naming the operation."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return method(*args, **kwargs)
        except StorageError:
            raise
        except (MinioAdminException, S3Error, urllib3.exceptions.HTTPError, OSError) as error:
            raise StorageError(f"MinIO {method.__name__} failed: {error}") from error

    return wrapper


class MinioObjectStore(ObjectStore):
    def __init__(
        self,
        *,
        admin_endpoint: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        key_seed: str,
        ca_file: str = "",
        region: str = "us-east-1",
    ) -> None:
        if len(key_seed) < 16:
            raise StorageError("key_seed must be a secret of at least 16 characters (minio_user_key_seed)")
        parts = urlsplit(admin_endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"admin_endpoint must be an http(s) URL like https://host:9000, not {admin_endpoint!r}")
        secure = parts.scheme == "https"
        if ca_file and not os.path.isfile(ca_file):
            raise StorageError(f"ca_file {ca_file} does not exist: the platform CA (pki role) is missing")
        context = ssl.create_default_context(cafile=ca_file or None)
        http = urllib3.PoolManager(
            ssl_context=context if secure else None,
            timeout=urllib3.Timeout(connect=10, read=60),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        self.endpoint = endpoint or admin_endpoint
        self.region = region
        self._netloc = parts.netloc
        self._secure = secure
        self._http = http
        self._seed = key_seed
        self.admin = MinioAdmin(
            endpoint=parts.netloc,
            credentials=StaticProvider(access_key, secret_key),
            region=region,
            secure=secure,
            http_client=http,
        )
        self.s3 = self._client(access_key, secret_key)

    def _client(self, access_key: str, secret_key: str) -> Minio:
        return Minio(
            self._netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=self._secure,
            region=self.region,
            http_client=self._http,
        )

    # ------------------------------------------------------------------ users

    def credentials(self, username: str) -> S3Credentials:
        return S3Credentials(access_key_of(username), derive_secret(self._seed, username), self.endpoint, self.region)

    def _user_info(self, access_key: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.admin.user_info(access_key)))
        except MinioAdminException as error:
            if _admin_status(error) == 404 or _admin_code(error) == "XMinioAdminNoSuchUser":
                return None
            raise StorageError(f"MinIO refused to show user {access_key}: {error}") from error

    def _keys_work(self, username: str, creds: S3Credentials) -> bool:
        """Whether MinIO accepts these keys (a read: HEAD of the home bucket as the user)."""
        try:
            self._client(creds.access_key, creds.secret_key).bucket_exists(home_bucket(username))
        except S3Error as error:
            return error.code not in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
        return True

    @_reported
    def ensure_user(self, username: str, quota_bytes: int | None) -> S3Credentials:
        creds = self.credentials(username)
        policy = f"sciplat-home-{username}"
        try:
            info = self._user_info(creds.access_key)
            if info is None or info.get("status") != "enabled" or not self._keys_work(username, creds):
                # add-user is an upsert: it sets the secret and enables the user.
                self.admin.user_add(creds.access_key, creds.secret_key)
                info = self._user_info(creds.access_key) or {}
            bucket = self.ensure_home_bucket(username)
            self._ensure_policy(policy, bucket_access_policy(bucket))
            if info.get("policyName") != policy:
                self.admin.policy_set(policy, user=creds.access_key)
            self._set_bucket_quota(bucket, quota_bytes)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to set up user {username}: {error}") from error
        return creds

    def _ensure_policy(self, name: str, document: dict[str, Any]) -> None:
        try:
            if normalized_policy(json.loads(self.admin.policy_info(name))) == normalized_policy(document):
                return
        except MinioAdminException as error:
            if _admin_status(error) != 404 and _admin_code(error) != "XMinioAdminNoSuchPolicy":
                raise
        self.admin.policy_add(name, policy=document)

    @_reported
    def disable_user(self, username: str) -> None:
        self._set_status(username, enabled=False)

    @_reported
    def enable_user(self, username: str) -> None:
        self._set_status(username, enabled=True)

    def _set_status(self, username: str, *, enabled: bool) -> None:
        access_key = access_key_of(username)
        info = self._user_info(access_key)
        if info is None:
            raise StorageError(f"MinIO user {access_key} (platform user {username}) does not exist")
        wanted = "enabled" if enabled else "disabled"
        if info.get("status") == wanted:
            return
        try:
            if enabled:
                self.admin.user_enable(access_key)
            else:
                self.admin.user_disable(access_key)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to set user {access_key} {wanted}: {error}") from error

    # ------------------------------------------------------------------ buckets

    def _ensure_bucket(self, bucket: str) -> None:
        try:
            if not self.s3.bucket_exists(bucket):
                self.s3.make_bucket(bucket)
        except S3Error as error:
            if error.code != "BucketAlreadyOwnedByYou":
                raise StorageError(f"MinIO refused to make bucket {bucket}: {error}") from error

    @_reported
    def ensure_home_bucket(self, username: str) -> str:
        access_key_of(username)
        bucket = home_bucket(username)
        self._ensure_bucket(bucket)
        return bucket

    @_reported
    def ensure_group_bucket(self, group: str, members: list[str], quota_bytes: int | None) -> str:
        _check_group(group)
        bucket = group_bucket(group)
        policy = f"sciplat-group-{group}"
        self._ensure_bucket(bucket)
        try:
            self._ensure_policy(policy, bucket_access_policy(bucket))
            self._set_bucket_quota(bucket, quota_bytes)
            # Members who have not signed in yet have no MinIO user; they are added when
            # provisioning calls this again after their ensure_user.
            wanted = {access_key_of(m) for m in members}
            wanted = {m for m in wanted if self._user_info(m) is not None}
            info = self._group_info(bucket)
            current = set(info.get("members") or []) if info else set()
            if wanted - current:
                self.admin.group_add(bucket, sorted(wanted - current))  # type: ignore[arg-type]
            if current - wanted:
                self.admin.group_remove(bucket, sorted(current - wanted))  # type: ignore[arg-type]
            # Without a group (no member has a MinIO user yet) nobody has access: right.
            if (info is not None or wanted - current) and (info or {}).get("policy") != policy:
                self.admin.policy_set(policy, group=bucket)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to set up group bucket {bucket}: {error}") from error
        return bucket

    @_reported
    def delete_group_bucket(self, group: str) -> bool:
        _check_group(group)
        bucket = group_bucket(group)
        try:
            info = self._group_info(bucket)
            if info is not None:
                if info.get("members"):
                    self.admin.group_remove(bucket, sorted(info["members"]))
                self.admin.group_remove(bucket)
            with contextlib.suppress(MinioAdminException):
                self.admin.policy_remove(f"sciplat-group-{group}")
            if not self.s3.bucket_exists(bucket):
                return info is not None
            for version in self.s3.list_objects(bucket, recursive=True, include_version=True):
                self.s3.remove_object(bucket, str(version.object_name), version_id=version.version_id)
            self.s3.remove_bucket(bucket)
        except (MinioAdminException, S3Error) as error:
            raise StorageError(f"MinIO refused to delete group bucket {bucket}: {error}") from error
        return True

    def _group_info(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.admin.group_info(name)))
        except MinioAdminException as error:
            if _admin_status(error) == 404 or _admin_code(error) == "XMinioAdminNoSuchGroup":
                return None
            raise

    # ------------------------------------------------------------------ quotas and usage

    def _bucket_quota(self, bucket: str) -> int | None:
        try:
            answer = json.loads(self.admin.bucket_quota_get(bucket) or "{}")
        except MinioAdminException as error:
            # MinIO answers 404 XMinioAdminNoSuchQuotaConfiguration for a bucket without one.
            if _admin_status(error) == 404 or _admin_code(error) == "XMinioAdminNoSuchQuotaConfiguration":
                return None
            raise
        size = int(answer.get("size") or answer.get("quota") or 0)
        return size or None

    def _set_bucket_quota(self, bucket: str, quota_bytes: int | None) -> None:
        if quota_bytes is not None and quota_bytes <= 0:
            raise StorageError(f"quota of {bucket} must be > 0 bytes or None, not {quota_bytes}")
        if self._bucket_quota(bucket) == quota_bytes:
            return
        if quota_bytes is None:
            self.admin.bucket_quota_clear(bucket)
        else:
            self.admin.bucket_quota_set(bucket, quota_bytes)

    @_reported
    def set_user_quota(self, username: str, quota_bytes: int | None) -> None:
        access_key_of(username)
        try:
            self._set_bucket_quota(home_bucket(username), quota_bytes)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to set the quota of {username}: {error}") from error

    @_reported
    def set_group_quota(self, group: str, quota_bytes: int | None) -> None:
        _check_group(group)
        try:
            self._set_bucket_quota(group_bucket(group), quota_bytes)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to set the quota of group {group}: {error}") from error

    @_reported
    def bucket_usage(self, bucket: str) -> BucketUsage:
        try:
            answer = self.admin.get_data_usage_info()  # type: ignore[no-untyped-call]
            usage = json.loads(answer).get("bucketsUsageInfo") or {}
            quota = self._bucket_quota(bucket)
        except MinioAdminException as error:
            raise StorageError(f"MinIO refused to report usage: {error}") from error
        entry = usage.get(bucket) or {}
        return BucketUsage(bucket, int(entry.get("size", 0)), int(entry.get("objectsCount", 0)), quota)

    @_reported
    def usage(self, username: str) -> UserUsage:
        access_key_of(username)
        home = self.bucket_usage(home_bucket(username))
        return UserUsage(username, home.bytes_used, home.objects, home.quota_bytes, (home,))


def from_config(cfg: dict[str, Any]) -> ObjectStore:
    """The MinIO backend from the storage client.json (see the module docstring)."""
    missing = [k for k in ("admin_endpoint", "access_key", "secret_key", "key_seed") if not cfg.get(k)]
    if missing:
        raise StorageError(f"storage client configuration (backend minio) lacks {', '.join(missing)}")
    return MinioObjectStore(
        admin_endpoint=str(cfg["admin_endpoint"]),
        endpoint=str(cfg.get("endpoint") or cfg["admin_endpoint"]),
        access_key=str(cfg["access_key"]),
        secret_key=str(cfg["secret_key"]),
        key_seed=str(cfg["key_seed"]),
        ca_file=str(cfg.get("ca_file", "")),
        region=str(cfg.get("region") or "us-east-1"),
    )
