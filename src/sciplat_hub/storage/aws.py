"""AWS S3 backend of the storage admin interface (`storage.backend: s3`).

What it makes, per platform user and group (all names start with the configured
`prefix`, because S3 bucket names are global across every AWS account):

- an IAM user `<prefix>-<username>` under the IAM path `/sciplat/<prefix>/`, tagged,
  with one access key. AWS shows a secret key only once, when it is created, so the
  backend keeps it in SSM Parameter Store (SecureString `<ssm_prefix>/<username>`)
  and returns it from there on every later call. If that parameter is lost, the next
  `ensure_user` makes a new key, stores it and deletes the old one.
- a home bucket `<prefix>-home-<username>`, and an inline identity policy on the user
  that allows object access to that bucket only;
- a group bucket `<prefix>-group-<group>` and an IAM group `<prefix>-group-<group>`
  whose inline policy allows object access to that bucket; the IAM group's members are
  set to exactly the members given (those that have IAM users yet).

Every bucket gets Block Public Access (all four settings), BucketOwnerEnforced object
ownership, SSE-S3 default encryption, tags, and a bucket policy that denies requests
not made over TLS and (`admit_only_owners`, on by default) denies every principal but
the bucket's owner or the group's members and the platform's admin principals (the
caller's user or role and the account root, or `admin_principals`), so the bucket
policy itself admits exactly them, even against account-wide s3:* grants.

Quotas: S3 has no storage quota. The quota is recorded as the bucket tag
`sciplat:quota-bytes`, and `enforce_quotas()` (run it from a timer; the module's
command line `python -m sciplat_hub.storage.aws enforce-quotas` does) measures each
managed bucket and, when it is over quota, adds a bucket-policy statement
`SciplatQuotaExceeded` that denies s3:PutObject to everyone; it removes the statement
once usage is below the quota again. So a quota is enforced with a delay (the timer's
period) and a put is refused with AccessDenied, not QuotaExceeded; one put may
overshoot by its own size. Usage is measured by listing the bucket (exact, one
ListObjectsV2 page per 1000 objects) or, with `usage_source: cloudwatch`, from the
daily CloudWatch storage metrics (free of request cost, up to ~48 h old).

Configuration (`/etc/sciplat/storage/client.json`, `"backend": "aws"`):

    {"backend": "aws", "region": "eu-central-1", "prefix": "sciplat-demo",
     "endpoint": "https://s3.eu-central-1.amazonaws.com",        # optional
     "ssm_prefix": "/sciplat/sciplat-demo/s3-keys",               # optional
     "tags": {"sciplat:tenant": "astro"},                         # optional
     "usage_source": "list" | "cloudwatch",                       # optional
     "deny_insecure_transport": true,                             # optional
     "admit_only_owners": true,                                   # optional
     "admin_principals": ["arn:aws:iam::123456789012:role/x"],    # optional
     "access_key": "...", "secret_key": "..."}                    # optional: else
                                                                  # boto3's chain
                                                                  # (instance role)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from sciplat_hub.storage.base import (
    BucketUsage,
    ObjectStore,
    S3Credentials,
    StorageError,
    UserUsage,
)

QUOTA_TAG = "sciplat:quota-bytes"
MANAGED_TAG = "sciplat:managed"
QUOTA_SID = "SciplatQuotaExceeded"
TLS_SID = "SciplatDenyInsecureTransport"
ADMITTED_SID = "SciplatAdmitOnlyOwners"
USER_POLICY = "sciplat-home-bucket"
GROUP_POLICY = "sciplat-group-bucket"
DISABLED_POLICY = "sciplat-disabled"
DENY_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "SciplatUserDisabled", "Effect": "Deny", "Action": "*", "Resource": "*"}],
}

PUBLIC_ACCESS_BLOCK = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
ENCRYPTION_RULES = [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]

# What a user may do in a bucket they have access to: objects and listing, not the
# bucket's configuration (policy, tags, encryption, deletion of the bucket).
OBJECT_ACTIONS = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectAttributes",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
BUCKET_ACTIONS = ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"]

_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{1,22}[a-z0-9]$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def bucket_access_policy(bucket: str) -> dict[str, Any]:
    """The identity policy that gives object access to one bucket."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListTheBucket",
                "Effect": "Allow",
                "Action": BUCKET_ACTIONS,
                "Resource": f"arn:aws:s3:::{bucket}",
            },
            {
                "Sid": "ObjectsInTheBucket",
                "Effect": "Allow",
                "Action": OBJECT_ACTIONS,
                "Resource": f"arn:aws:s3:::{bucket}/*",
            },
        ],
    }


def bucket_policy(
    bucket: str,
    *,
    over_quota: bool,
    deny_insecure_transport: bool,
    admitted: list[str] | None = None,
) -> dict[str, Any] | None:
    """The bucket policy: deny plain HTTP; deny everyone but `admitted`; while over quota, deny puts.

    `admitted` (principal ARN patterns: the owner or the group's members, and the
    platform's admin principals) makes the bucket policy itself admit exactly them:
    even an account administrator whose identity policy allows s3:* on everything is
    denied. None leaves that statement out.
    """
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    statements: list[dict[str, Any]] = []
    if deny_insecure_transport:
        statements.append(
            {
                "Sid": TLS_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        )
    if admitted is not None:
        statements.append(
            {
                "Sid": ADMITTED_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"StringNotLike": {"aws:PrincipalArn": sorted(set(admitted))}},
            }
        )
    if over_quota:
        statements.append(
            {
                "Sid": QUOTA_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        )
    if not statements:
        return None
    return {"Version": "2012-10-17", "Statement": statements}


def admin_patterns(caller_arn: str) -> list[str]:
    """aws:PrincipalArn patterns that match the platform's admin (the caller) and the account root.

    An assumed-role session (arn:aws:sts::A:assumed-role/R/session) is matched by its
    role's ARN, arn:aws:iam::A:role/R or, with a path, arn:aws:iam::A:role/<path>/R.
    """
    parts = caller_arn.split(":", 5)
    if len(parts) != 6:
        raise StorageError(f"cannot read the admin principal ARN {caller_arn!r}")
    partition, account, resource = parts[1], parts[4], parts[5]
    patterns = [f"arn:{partition}:iam::{account}:root"]
    if resource.startswith("assumed-role/"):
        role = resource.split("/")[1]
        patterns += [f"arn:{partition}:iam::{account}:role/{role}", f"arn:{partition}:iam::{account}:role/*/{role}"]
    elif resource != "root":
        patterns.append(caller_arn)
    return patterns


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


_T = TypeVar("_T")


def _reported(method: Callable[..., _T]) -> Callable[..., _T]:
    """AWS and network errors become StorageError naming the operation."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return method(*args, **kwargs)
        except StorageError:
            raise
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"AWS {method.__name__} failed: {error}") from error

    return wrapper


class AwsObjectStore(ObjectStore):
    def __init__(
        self,
        *,
        region: str,
        prefix: str,
        endpoint: str = "",
        ssm_prefix: str = "",
        tags: dict[str, str] | None = None,
        usage_source: str = "list",
        deny_insecure_transport: bool = True,
        admit_only_owners: bool = True,
        admin_principals: list[str] | None = None,
        session: boto3.Session | None = None,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise StorageError(
                f"storage prefix {prefix!r} is not usable in S3 bucket names: use 3 to 24 lower-case letters, "
                "digits and dashes, starting and ending with a letter or digit (e.g. the platform name)"
            )
        if usage_source not in ("list", "cloudwatch"):
            raise StorageError(f"usage_source must be 'list' or 'cloudwatch', not {usage_source!r}")
        self.region = region
        self.prefix = prefix
        self.endpoint = endpoint or f"https://s3.{region}.amazonaws.com"
        self.ssm_prefix = (ssm_prefix or f"/sciplat/{prefix}/s3-keys").rstrip("/")
        self.iam_path = f"/sciplat/{prefix}/"
        self.tags = {MANAGED_TAG: prefix, **(tags or {})}
        self.usage_source = usage_source
        self.deny_insecure_transport = deny_insecure_transport
        self.admit_only_owners = admit_only_owners
        self._admin_principals = list(admin_principals or [])
        session = session or boto3.Session(region_name=region)
        self.iam = session.client("iam")
        self.s3 = session.client("s3", region_name=region)
        self.ssm = session.client("ssm", region_name=region)
        self.cloudwatch = session.client("cloudwatch", region_name=region)
        self.sts = session.client("sts", region_name=region)

    # ------------------------------------------------------------------ names

    @staticmethod
    def _check(kind: str, name: str) -> None:
        if not _NAME.match(name):
            raise StorageError(f"{kind} name {name!r} is not valid: expected ^[a-z][a-z0-9-]{{0,31}}$")

    def iam_user(self, username: str) -> str:
        self._check("user", username)
        return f"{self.prefix}-{username}"

    def iam_group(self, group: str) -> str:
        self._check("group", group)
        return f"{self.prefix}-group-{group}"

    def home_bucket(self, username: str) -> str:
        self._check("user", username)
        return f"{self.prefix}-home-{username}"

    def group_bucket(self, group: str) -> str:
        self._check("group", group)
        return f"{self.prefix}-group-{group}"

    def _tag_list(self, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in sorted({**self.tags, **(extra or {})}.items())]

    # ------------------------------------------------------------------ users

    def _user_exists(self, name: str) -> bool:
        try:
            self.iam.get_user(UserName=name)
        except ClientError as error:
            if _code(error) == "NoSuchEntity":
                return False
            raise
        return True

    def _key_parameter(self, username: str) -> str:
        return f"{self.ssm_prefix}/{username}"

    def _stored_key(self, username: str) -> dict[str, str] | None:
        try:
            value = self.ssm.get_parameter(Name=self._key_parameter(username), WithDecryption=True)
        except ClientError as error:
            if _code(error) == "ParameterNotFound":
                return None
            raise
        try:
            stored = json.loads(value["Parameter"]["Value"])
        except ValueError:
            return None
        if isinstance(stored, dict) and {"access_key", "secret_key"} <= set(stored):
            return {"access_key": str(stored["access_key"]), "secret_key": str(stored["secret_key"])}
        return None

    def _keys_of(self, name: str) -> list[dict[str, Any]]:
        return list(self.iam.list_access_keys(UserName=name)["AccessKeyMetadata"])

    @_reported
    def ensure_user(self, username: str, quota_bytes: int | None) -> S3Credentials:
        name = self.iam_user(username)
        try:
            if not self._user_exists(name):
                self.iam.create_user(UserName=name, Path=self.iam_path, Tags=self._tag_list({"sciplat:user": username}))
            bucket = self.ensure_home_bucket(username)
            self._put_identity_policy(name, USER_POLICY, bucket_access_policy(bucket))
            self._set_quota_tag(bucket, quota_bytes)
            keys = self._keys_of(name)
            stored = self._stored_key(username)
            current = next((k for k in keys if stored and k["AccessKeyId"] == stored["access_key"]), None)
            if stored is None or current is None:
                # The secret of any existing key is unknown: replace it. IAM allows two keys
                # per user, so the old ones go first.
                for key in keys:
                    self.iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
                created = self.iam.create_access_key(UserName=name)["AccessKey"]
                stored = {"access_key": created["AccessKeyId"], "secret_key": created["SecretAccessKey"]}
                self.ssm.put_parameter(
                    Name=self._key_parameter(username),
                    Value=json.dumps(stored),
                    Type="SecureString",
                    Overwrite=True,
                    Description=f"S3 access key of platform user {username} ({self.prefix})",
                )
            else:
                for key in keys:
                    if key["AccessKeyId"] != stored["access_key"]:
                        self.iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
                if current["Status"] != "Active":
                    self.iam.update_access_key(UserName=name, AccessKeyId=current["AccessKeyId"], Status="Active")
            self._lift_disable(name)
        except ClientError as error:
            raise StorageError(f"AWS refused to set up S3 user {username} (IAM user {name}): {error}") from error
        return S3Credentials(stored["access_key"], stored["secret_key"], self.endpoint, self.region)

    def _put_identity_policy(self, user: str, name: str, document: dict[str, Any]) -> None:
        text = json.dumps(document, sort_keys=True)
        try:
            current = self.iam.get_user_policy(UserName=user, PolicyName=name)["PolicyDocument"]
            if isinstance(current, str):
                current = json.loads(current)
            if json.dumps(current, sort_keys=True) == text:
                return
        except ClientError as error:
            if _code(error) != "NoSuchEntity":
                raise
        self.iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=text)

    @_reported
    def disable_user(self, username: str) -> None:
        """Keys set Inactive, and an explicit deny-everything policy on the user.

        The deny also stops temporary credentials the user may have made from the keys
        with sts:GetSessionToken before (deactivating a key does not revoke those).
        """
        self._set_key_status(username, "Inactive")
        try:
            self._put_identity_policy(self.iam_user(username), DISABLED_POLICY, DENY_ALL)
        except ClientError as error:
            raise StorageError(f"AWS refused to disable {username}: {error}") from error

    @_reported
    def enable_user(self, username: str) -> None:
        self._set_key_status(username, "Active")
        self._lift_disable(self.iam_user(username))

    def _lift_disable(self, name: str) -> None:
        try:
            if DISABLED_POLICY in self.iam.list_user_policies(UserName=name)["PolicyNames"]:
                self.iam.delete_user_policy(UserName=name, PolicyName=DISABLED_POLICY)
        except ClientError as error:
            raise StorageError(f"AWS refused to enable IAM user {name}: {error}") from error

    def _set_key_status(self, username: str, status: str) -> None:
        name = self.iam_user(username)
        try:
            for key in self._keys_of(name):
                if key["Status"] != status:
                    self.iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status=status)
        except ClientError as error:
            if _code(error) == "NoSuchEntity":
                raise StorageError(f"S3 user {username} does not exist (no IAM user {name})") from error
            raise StorageError(f"AWS refused to set the keys of {username} {status}: {error}") from error

    # ------------------------------------------------------------------ buckets

    def _ensure_bucket(self, bucket: str, extra_tags: dict[str, str], owners: list[str]) -> None:
        try:
            self.s3.head_bucket(Bucket=bucket)
            exists = True
        except ClientError as error:
            if _code(error) in ("404", "NoSuchBucket", "NotFound"):
                exists = False
            elif _code(error) in ("403", "AccessDenied"):
                raise StorageError(
                    f"bucket {bucket} is not accessible: it belongs to another AWS account (bucket names are "
                    "global: choose another storage prefix), or the admin credentials lack s3:ListBucket on it"
                ) from error
            else:
                raise
        if not exists:
            args: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "BucketOwnerEnforced"}
            if self.region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self.s3.create_bucket(**args)
        block = {name: True for name in PUBLIC_ACCESS_BLOCK}
        if not exists or self._public_access_block(bucket) != block:
            self.s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=block)
        if not exists or self._encryption_rules(bucket) != ENCRYPTION_RULES:
            self.s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": ENCRYPTION_RULES})
        tags = self._bucket_tags(bucket) if exists else {}
        wanted = {**tags, **self.tags, **extra_tags}
        if wanted != tags:
            self.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": self._tags_to_list(wanted)})
        # A quota mark set by enforce_quota stays until enforce_quota lifts it.
        self._write_bucket_policy(bucket, over_quota=None if exists else False, owners=owners)

    def _public_access_block(self, bucket: str) -> dict[str, bool]:
        try:
            return dict(self.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"])
        except ClientError as error:
            if _code(error) == "NoSuchPublicAccessBlockConfiguration":
                return {}
            raise

    def _encryption_rules(self, bucket: str) -> list[dict[str, Any]]:
        try:
            answer = self.s3.get_bucket_encryption(Bucket=bucket)
        except ClientError as error:
            if _code(error) == "ServerSideEncryptionConfigurationNotFoundError":
                return []
            raise
        return list(answer["ServerSideEncryptionConfiguration"]["Rules"])

    @staticmethod
    def _tags_to_list(tags: dict[str, str]) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    def _bucket_tags(self, bucket: str) -> dict[str, str]:
        try:
            tag_set = self.s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
        except ClientError as error:
            if _code(error) in ("NoSuchTagSet", "NoSuchTagSetError"):
                return {}
            raise
        return {t["Key"]: t["Value"] for t in tag_set}

    def _current_policy(self, bucket: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.s3.get_bucket_policy(Bucket=bucket)["Policy"]))
        except ClientError as error:
            if _code(error) == "NoSuchBucketPolicy":
                return None
            raise

    def admins(self) -> list[str]:
        """Principal patterns always admitted: admin_principals, else the caller and the account root."""
        if not self._admin_principals:
            self._admin_principals = admin_patterns(self.sts.get_caller_identity()["Arn"])
        return list(self._admin_principals)

    def _user_arn(self, username: str) -> str | None:
        try:
            return str(self.iam.get_user(UserName=self.iam_user(username))["User"]["Arn"])
        except ClientError as error:
            if _code(error) == "NoSuchEntity":
                return None
            raise

    def _write_bucket_policy(
        self, bucket: str, *, over_quota: bool | None = None, owners: list[str] | None = None
    ) -> None:
        """Write the bucket policy; over_quota/owners None keep what the current one says."""
        current = self._current_policy(bucket)
        statements = (current or {}).get("Statement", [])
        if over_quota is None:
            over_quota = any(s.get("Sid") == QUOTA_SID for s in statements)
        admitted: list[str] | None = None
        if self.admit_only_owners:
            if owners is None:
                kept = next((s for s in statements if s.get("Sid") == ADMITTED_SID), None)
                values = kept["Condition"]["StringNotLike"]["aws:PrincipalArn"] if kept else []
                admins = set(self.admins())
                owners = [v for v in ([values] if isinstance(values, str) else values) if v not in admins]
            admitted = self.admins() + owners
        wanted = bucket_policy(
            bucket, over_quota=over_quota, deny_insecure_transport=self.deny_insecure_transport, admitted=admitted
        )
        if json.dumps(current, sort_keys=True) == json.dumps(wanted, sort_keys=True):
            return
        if wanted is None:
            self.s3.delete_bucket_policy(Bucket=bucket)
        else:
            self.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))

    def _set_quota_tag(self, bucket: str, quota_bytes: int | None) -> None:
        tags = self._bucket_tags(bucket)
        wanted = dict(tags)
        if quota_bytes is None:
            wanted.pop(QUOTA_TAG, None)
        else:
            if quota_bytes < 0:
                raise StorageError(f"quota of {bucket} must be >= 0 bytes or None, not {quota_bytes}")
            wanted[QUOTA_TAG] = str(int(quota_bytes))
        if wanted != tags:
            self.s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": self._tags_to_list(wanted)})

    def _quota_of(self, bucket: str) -> int | None:
        value = self._bucket_tags(bucket).get(QUOTA_TAG)
        return int(value) if value is not None else None

    @_reported
    def ensure_home_bucket(self, username: str) -> str:
        bucket = self.home_bucket(username)
        try:
            arn = self._user_arn(username)
            self._ensure_bucket(bucket, {"sciplat:user": username, "sciplat:kind": "home"}, [arn] if arn else [])
        except ClientError as error:
            raise StorageError(f"AWS refused to set up home bucket {bucket}: {error}") from error
        return bucket

    @_reported
    def ensure_group_bucket(self, group: str, members: list[str], quota_bytes: int | None) -> str:
        bucket = self.group_bucket(group)
        iam_group = self.iam_group(group)
        try:
            for name in members:
                self._check("user", name)
            arns = [arn for arn in (self._user_arn(m) for m in sorted(set(members))) if arn]
            self._ensure_bucket(bucket, {"sciplat:group": group, "sciplat:kind": "group"}, arns)
            self._set_quota_tag(bucket, quota_bytes)
            try:
                self.iam.get_group(GroupName=iam_group)
            except ClientError as error:
                if _code(error) != "NoSuchEntity":
                    raise
                self.iam.create_group(GroupName=iam_group, Path=self.iam_path)
            text = json.dumps(bucket_access_policy(bucket), sort_keys=True)
            try:
                current = self.iam.get_group_policy(GroupName=iam_group, PolicyName=GROUP_POLICY)["PolicyDocument"]
                current_text = json.dumps(json.loads(current) if isinstance(current, str) else current, sort_keys=True)
            except ClientError as error:
                if _code(error) != "NoSuchEntity":
                    raise
                current_text = ""
            if current_text != text:
                self.iam.put_group_policy(GroupName=iam_group, PolicyName=GROUP_POLICY, PolicyDocument=text)
            self._set_members(iam_group, members)
        except ClientError as error:
            raise StorageError(f"AWS refused to set up group bucket {bucket}: {error}") from error
        return bucket

    @_reported
    def delete_group_bucket(self, group: str) -> bool:
        """Delete the group's bucket (every object version first) and its IAM group and policy."""
        bucket = self.group_bucket(group)
        iam_group = self.iam_group(group)
        found = False
        try:
            try:
                self.s3.head_bucket(Bucket=bucket)
                found = True
            except ClientError as error:
                if _code(error) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            if found:
                for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                    doomed = [
                        {"Key": v["Key"], "VersionId": v["VersionId"]}
                        for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                    ]
                    if doomed:
                        self.s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
                self.s3.delete_bucket(Bucket=bucket)
            try:
                self._set_members(iam_group, [])
            except ClientError as error:
                if _code(error) != "NoSuchEntity":
                    raise
            else:
                with contextlib.suppress(ClientError):
                    self.iam.delete_group_policy(GroupName=iam_group, PolicyName=GROUP_POLICY)
                self.iam.delete_group(GroupName=iam_group)
                found = True
        except ClientError as error:
            raise StorageError(f"AWS refused to delete group bucket {bucket}: {error}") from error
        return found

    def _set_members(self, iam_group: str, members: Iterable[str]) -> None:
        wanted = {self.iam_user(m) for m in members}
        # Members who have not signed in yet have no IAM user; they are added when
        # provisioning calls ensure_group_bucket again after their ensure_user.
        wanted = {m for m in wanted if self._user_exists(m)}
        current: set[str] = set()
        for page in self.iam.get_paginator("get_group").paginate(GroupName=iam_group):
            current |= {u["UserName"] for u in page["Users"]}
        for name in sorted(wanted - current):
            self.iam.add_user_to_group(GroupName=iam_group, UserName=name)
        for name in sorted(current - wanted):
            self.iam.remove_user_from_group(GroupName=iam_group, UserName=name)

    # ------------------------------------------------------------------ quotas and usage

    @_reported
    def set_user_quota(self, username: str, quota_bytes: int | None) -> None:
        bucket = self.home_bucket(username)
        try:
            self._set_quota_tag(bucket, quota_bytes)
            self.enforce_quota(bucket)
        except ClientError as error:
            raise StorageError(f"AWS refused to set the quota of {bucket}: {error}") from error

    @_reported
    def set_group_quota(self, group: str, quota_bytes: int | None) -> None:
        bucket = self.group_bucket(group)
        try:
            self._set_quota_tag(bucket, quota_bytes)
            self.enforce_quota(bucket)
        except ClientError as error:
            raise StorageError(f"AWS refused to set the quota of {bucket}: {error}") from error

    @_reported
    def bucket_usage(self, bucket: str) -> BucketUsage:
        return self._bucket_usage(bucket)

    def _bucket_usage(self, bucket: str) -> BucketUsage:
        size, count = self._measure(bucket)
        return BucketUsage(bucket, size, count, self._quota_of(bucket))

    def _measure(self, bucket: str) -> tuple[int, int]:
        if self.usage_source == "cloudwatch":
            return self._measure_cloudwatch(bucket)
        size = count = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                size += int(item["Size"])
                count += 1
        return size, count

    def _measure_cloudwatch(self, bucket: str) -> tuple[int, int]:
        end = datetime.now(UTC)
        values: list[int] = []
        for metric, storage_type in (("BucketSizeBytes", "StandardStorage"), ("NumberOfObjects", "AllStorageTypes")):
            answer = self.cloudwatch.get_metric_statistics(
                Namespace="AWS/S3",
                MetricName=metric,
                Dimensions=[
                    {"Name": "BucketName", "Value": bucket},
                    {"Name": "StorageType", "Value": storage_type},
                ],
                StartTime=end - timedelta(days=3),
                EndTime=end,
                Period=86400,
                Statistics=["Average"],
            )
            points = sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])
            values.append(int(points[-1]["Average"]) if points else 0)
        return values[0], values[1]

    @_reported
    def usage(self, username: str) -> UserUsage:
        bucket = self.home_bucket(username)
        try:
            home = self._bucket_usage(bucket)
        except ClientError as error:
            if _code(error) in ("NoSuchBucket", "404"):
                return UserUsage(username, 0, 0, None, ())
            raise StorageError(f"AWS refused to measure {bucket}: {error}") from error
        return UserUsage(username, home.bytes_used, home.objects, home.quota_bytes, (home,))

    @_reported
    def enforce_quota(self, bucket: str) -> bool:
        """Deny puts to the bucket while it is over its quota; return whether it is."""
        quota = self._quota_of(bucket)
        over = False
        if quota is not None:
            size, _ = self._measure(bucket)
            over = size >= quota
        self._write_bucket_policy(bucket, over_quota=over)  # owners: kept as they are
        return over

    def managed_buckets(self) -> list[str]:
        names = []
        for bucket in self.s3.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            if not name.startswith(f"{self.prefix}-home-") and not name.startswith(f"{self.prefix}-group-"):
                continue
            if self._bucket_tags(name).get(MANAGED_TAG) == self.prefix:
                names.append(name)
        return names

    @_reported
    def enforce_quotas(self) -> dict[str, bool]:
        """enforce_quota on every bucket this platform manages; {bucket: over quota}."""
        return {bucket: self.enforce_quota(bucket) for bucket in self.managed_buckets()}


def from_config(cfg: dict[str, Any]) -> ObjectStore:
    """The AWS backend from the storage client.json (see the module docstring)."""
    for key in ("region", "prefix"):
        if not cfg.get(key):
            raise StorageError(f"storage client configuration (backend aws) lacks {key!r}")
    session = None
    if cfg.get("access_key"):
        session = boto3.Session(
            aws_access_key_id=cfg["access_key"],
            aws_secret_access_key=cfg.get("secret_key", ""),
            region_name=cfg["region"],
        )
    return AwsObjectStore(
        region=str(cfg["region"]),
        prefix=str(cfg["prefix"]),
        endpoint=str(cfg.get("endpoint", "")),
        ssm_prefix=str(cfg.get("ssm_prefix", "")),
        tags={str(k): str(v) for k, v in (cfg.get("tags") or {}).items()},
        usage_source=str(cfg.get("usage_source", "list")),
        deny_insecure_transport=bool(cfg.get("deny_insecure_transport", True)),
        admit_only_owners=bool(cfg.get("admit_only_owners", True)),
        admin_principals=[str(p) for p in cfg.get("admin_principals") or []],
        session=session,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m sciplat_hub.storage.aws [enforce-quotas]`: one enforcement pass (for a timer)."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["enforce-quotas"]):
        print("usage: python -m sciplat_hub.storage.aws enforce-quotas", file=sys.stderr)
        return 2
    # sciplat_hub.storage.config (the ceph component's) picks the backend from client.json.
    store = importlib.import_module("sciplat_hub.storage.config").from_host_config()
    if not isinstance(store, AwsObjectStore):
        print("the storage backend of this host is not aws; nothing to enforce", file=sys.stderr)
        return 2
    for bucket, over in sorted(store.enforce_quotas().items()):
        print(f"{bucket}: {'OVER QUOTA, puts denied' if over else 'ok'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
