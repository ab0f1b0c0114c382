"""ObjectStorage: the platform's bucket and one bucket per tenant — private
(public access blocked, ACLs disabled), encrypted, versioned, with lifecycle rules.
On AWS the platform's storage backend is ``s3``."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import ObjectStorageConfig, TenantConfig
from sciplat_aws.tags import Component


class ObjectStorage(Component):
    component = "storage"

    def __init__(
        self,
        name: str,
        config: ObjectStorageConfig,
        admin_role: aws.iam.Role | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("sciplat:aws:ObjectStorage", name, opts)
        self.config = config
        self.admin: pulumi.Output[dict[str, Any]] | None = None
        if admin_role is not None:
            self.admin = self._storage_admin(name, admin_role)
        self.platform_bucket = self._bucket(f"{name}-platform", config.bucket_name(), None)
        self.tenant_buckets = {
            t.name: self._bucket(f"{name}-t-{t.name}", config.bucket_name(t.name), t) for t in config.tenants
        }
        self.register_outputs({"platform_bucket": self.platform_bucket.bucket})

    def _bucket(self, logical: str, bucket_name: str, tenant: TenantConfig | None) -> aws.s3.Bucket:
        tags: dict[str, str] = {"Name": bucket_name}
        if tenant is not None:
            tags |= {"tenant": tenant.name, **({"cost-center": tenant.cost_center} if tenant.cost_center else {})}
        bucket = aws.s3.Bucket(logical, bucket=bucket_name, force_destroy=False, tags=tags, opts=self.child())
        child = self.child(parent=bucket)
        aws.s3.BucketOwnershipControls(
            f"{logical}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=child
        )
        aws.s3.BucketPublicAccessBlock(
            f"{logical}-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{logical}-encryption",
            bucket=bucket.id,
            rules=[
                {"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}
            ],
            opts=child,
        )
        versioning = aws.s3.BucketVersioning(
            f"{logical}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=child
        )
        rule: dict[str, Any] = {
            "id": "sciplat",
            "status": "Enabled",
            "filter": {},
            "noncurrent_version_expiration": {"noncurrent_days": self.config.noncurrent_expire_days},
            "abort_incomplete_multipart_upload": {"days_after_initiation": self.config.abort_multipart_days},
        }
        if self.config.infrequent_access_after_days:
            rule["transitions"] = [{"days": self.config.infrequent_access_after_days, "storage_class": "STANDARD_IA"}]
        aws.s3.BucketLifecycleConfiguration(
            f"{logical}-lifecycle",
            bucket=bucket.id,
            rules=[rule],
            opts=self.child(parent=bucket, depends_on=[versioning]),
        )
        return bucket

    def _storage_admin(self, name: str, role: aws.iam.Role) -> pulumi.Output[dict[str, Any]]:
        """What the hub's storage backend (sciplat_hub.storage.aws) may do, and no more.

        It creates per-user IAM users, access keys, home and group buckets. Users may only
        be created with the permissions boundary below, which caps whatever inline policy
        they get at object access to the platform's own buckets: a compromised hub cannot
        mint an administrator.
        """
        prefix = self.config.platform
        path = f"/sciplat/{prefix}/"
        buckets = [f"arn:aws:s3:::{prefix}-*", f"arn:aws:s3:::{prefix}-*/*"]
        users = f"arn:aws:iam::*:user{path}*"
        groups = f"arn:aws:iam::*:group{path}*"
        boundary = aws.iam.Policy(
            f"{name}-user-boundary",
            path=path,
            description=f"Upper bound of every IAM user sciplat creates for {prefix}: its own buckets only",
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Sid": "PlatformBucketsOnly", "Effect": "Allow", "Action": "s3:*", "Resource": buckets}
                    ],
                }
            ),
            opts=self.child(),
        )
        document = boundary.arn.apply(
            lambda arn: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Sid": "PlatformBuckets", "Effect": "Allow", "Action": "s3:*", "Resource": buckets},
                        {"Sid": "ListBuckets", "Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"},
                        {
                            "Sid": "CreateBoundedUsers",
                            "Effect": "Allow",
                            "Action": "iam:CreateUser",
                            "Resource": users,
                            "Condition": {"StringEquals": {"iam:PermissionsBoundary": arn}},
                        },
                        {
                            "Sid": "ManagePlatformUsers",
                            "Effect": "Allow",
                            "Action": [
                                "iam:GetUser",
                                "iam:DeleteUser",
                                "iam:TagUser",
                                "iam:UntagUser",
                                "iam:ListUserTags",
                                "iam:CreateAccessKey",
                                "iam:DeleteAccessKey",
                                "iam:UpdateAccessKey",
                                "iam:ListAccessKeys",
                                "iam:PutUserPolicy",
                                "iam:GetUserPolicy",
                                "iam:DeleteUserPolicy",
                                "iam:ListUserPolicies",
                                "iam:ListGroupsForUser",
                            ],
                            "Resource": users,
                        },
                        {
                            "Sid": "ManagePlatformGroups",
                            "Effect": "Allow",
                            "Action": [
                                "iam:CreateGroup",
                                "iam:DeleteGroup",
                                "iam:GetGroup",
                                "iam:AddUserToGroup",
                                "iam:RemoveUserFromGroup",
                                "iam:PutGroupPolicy",
                                "iam:GetGroupPolicy",
                                "iam:DeleteGroupPolicy",
                                "iam:ListGroupPolicies",
                            ],
                            "Resource": groups,
                        },
                        {
                            "Sid": "KeepTheBoundary",
                            "Effect": "Deny",
                            "Action": ["iam:DeleteUserPermissionsBoundary", "iam:PutUserPermissionsBoundary"],
                            "Resource": "*",
                        },
                        {
                            "Sid": "KeysInParameterStore",
                            "Effect": "Allow",
                            "Action": [
                                "ssm:PutParameter",
                                "ssm:GetParameter",
                                "ssm:DeleteParameter",
                                "ssm:GetParametersByPath",
                            ],
                            "Resource": f"arn:aws:ssm:*:*:parameter/sciplat/{prefix}/*",
                        },
                        {
                            "Sid": "StorageMetrics",
                            "Effect": "Allow",
                            "Action": ["cloudwatch:GetMetricStatistics", "cloudwatch:GetMetricData"],
                            "Resource": "*",
                        },
                    ],
                }
            )
        )
        aws.iam.RolePolicy(f"{name}-storage-admin", role=role.id, policy=document, opts=self.child())
        return boundary.arn.apply(
            lambda arn: {"bucket_prefix": prefix, "iam_path": path, "user_permissions_boundary": arn}
        )
