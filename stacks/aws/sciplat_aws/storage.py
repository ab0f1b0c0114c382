"""ObjectStorage: the platform's bucket and one bucket per tenant — private
(public access blocked, ACLs disabled), encrypted, versioned, with lifecycle rules.
On AWS the platform's storage backend is ``s3``."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import ObjectStorageConfig, TenantConfig
from sciplat_aws.tags import Component


class ObjectStorage(Component):
    component = "storage"

    def __init__(self, name: str, config: ObjectStorageConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("sciplat:aws:ObjectStorage", name, opts)
        self.config = config
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
