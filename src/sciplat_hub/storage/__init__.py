"""Object storage administration, the same for every backend (Ceph RGW, MinIO, AWS S3)."""

from sciplat_hub.storage.base import (
    BucketUsage,
    ObjectStore,
    S3Credentials,
    StorageError,
    UserUsage,
)

__all__ = ["BucketUsage", "ObjectStore", "S3Credentials", "StorageError", "UserUsage"]
