"""Ceph RGW backend of the object-storage admin interface.

Why the admin-ops API and not `radosgw-admin`: the hub then needs only the S3
keys of one RGW user with admin capabilities (`users=*;buckets=*`, from the
vault), never a Ceph keyring that could read every pool. Requests are signed
with SigV4 (botocore) and go straight to radosgw on the storage hosts
(`admin_endpoints`, inside the platform network); users are handed the public
endpoint (`https://s3.<domain>` through the gateway).

Mapping onto RGW:
- a platform user is an RGW user of the same uid, with a user quota;
- the home bucket `home-<user>` is created with the user's own keys, so the user
  owns it and nobody else can read it (no policy: private);
- a group bucket `group-<group>` is owned by the RGW user `grp.<group>` (a dot
  cannot occur in a platform user name, so the two never collide), whose user
  quota is the group's quota; a bucket policy grants exactly the members
  read/write (and nothing on the bucket's policy or lifecycle).
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

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
GROUP_OWNER_PREFIX = "grp."
# What a member may do in a group bucket: objects and listings, not the
# bucket's policy, ACL, lifecycle or existence.
MEMBER_ACTIONS = [
    "s3:GetBucketLocation",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise StorageError(
            f"{kind} name {name!r} is not valid here: use 1-32 lowercase letters, digits and '-', "
            "starting with a letter (the directory normalizes names this way)"
        )
    return name


class RgwStore(ObjectStore):
    """Admin operations on a Ceph RGW through its admin-ops REST API."""

    def __init__(
        self,
        admin_endpoints: list[str],
        access_key: str,
        secret_key: str,
        public_endpoint: str,
        *,
        region: str = "default",
        ca_file: str | None = None,
        timeout: float = 30,
    ) -> None:
        if not admin_endpoints:
            raise StorageError("the RGW backend needs at least one admin endpoint (http://storage-host:7480)")
        self.admin_endpoints = [e.rstrip("/") for e in admin_endpoints]
        self.access_key = access_key
        self.secret_key = secret_key
        self.public_endpoint = public_endpoint.rstrip("/")
        self.region = region
        self.ca_file = ca_file
        self.timeout = timeout

    # ------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: bytes = b"",
        keys: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One signed request to the first admin endpoint that answers."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        access, secret = keys or (self.access_key, self.secret_key)
        query = urlencode(sorted((params or {}).items()), quote_via=quote)
        last_error: Exception | None = None
        for endpoint in self.admin_endpoints:
            url = f"{endpoint}{path}" + (f"?{query}" if query else "")
            request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
            S3SigV4Auth(Credentials(access, secret), "s3", self.region).add_auth(request)
            prepared = request.prepare()
            raw = urllib.request.Request(
                prepared.url, data=body or None, method=method, headers=dict(prepared.headers.items())
            )
            context = ssl.create_default_context(cafile=self.ca_file) if url.startswith("https") else None
            try:
                with urllib.request.urlopen(raw, timeout=self.timeout, context=context) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
            except (urllib.error.URLError, OSError) as exc:
                last_error = exc
        raise StorageError(f"no RGW admin endpoint answered ({', '.join(self.admin_endpoints)}): {last_error}")

    def _admin(self, method: str, resource: str, params: dict[str, str], *, ok_missing: bool = False) -> Any:
        status, body = self._request(method, f"/admin/{resource}", {**params, "format": "json"})
        if status == 404 and ok_missing:
            return None
        if status >= 300:
            raise StorageError(f"RGW admin {method} /admin/{resource} {params} failed: HTTP {status} {_code(body)}")
        return json.loads(body) if body.strip() else None

    def _s3(
        self, method: str, bucket: str, keys: tuple[str, str], params: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        return self._request(method, f"/{bucket}", params, body=body, keys=keys)

    # ------------------------------------------------------------ users

    def _user(self, uid: str) -> dict[str, Any] | None:
        info = self._admin("GET", "user", {"uid": uid}, ok_missing=True)
        return info if isinstance(info, dict) else None

    def _ensure_rgw_user(self, uid: str, display_name: str) -> dict[str, Any]:
        info = self._user(uid)
        if info is None:
            info = self._admin("PUT", "user", {"uid": uid, "display-name": display_name, "key-type": "s3"})
        if not [k for k in info.get("keys", []) if k.get("user") == uid]:
            self._admin("PUT", "user", {"key": "", "uid": uid, "key-type": "s3", "generate-key": "true"})
            info = self._user(uid) or info
        return info

    @staticmethod
    def _keys_of(info: dict[str, Any], uid: str) -> tuple[str, str]:
        keys = sorted((k for k in info.get("keys", []) if k.get("user") == uid), key=lambda k: str(k.get("access_key")))
        if not keys:
            raise StorageError(f"RGW user {uid} has no S3 keys")
        return keys[0]["access_key"], keys[0]["secret_key"]

    def _set_quota(self, uid: str, quota_bytes: int | None) -> None:
        wanted = quota_bytes is not None and quota_bytes > 0
        current = self._admin("GET", "user", {"quota": "", "uid": uid, "quota-type": "user"}) or {}
        if bool(current.get("enabled")) == wanted and (not wanted or int(current.get("max_size", -1)) == quota_bytes):
            return
        self._put_user_quota(uid, enabled=wanted, max_size=quota_bytes if wanted and quota_bytes else -1)

    def _put_user_quota(self, uid: str, *, enabled: bool, max_size: int = -1, max_objects: int = -1) -> None:
        self._admin(
            "PUT",
            "user",
            {
                "quota": "",
                "uid": uid,
                "quota-type": "user",
                "enabled": "true" if enabled else "false",
                "max-size": str(max_size if enabled else -1),
                "max-objects": str(max_objects if enabled else -1),
            },
        )

    def ensure_user(self, username: str, quota_bytes: int | None) -> S3Credentials:
        uid = _check_name("user", username)
        info = self._ensure_rgw_user(uid, uid)
        if info.get("suspended"):
            self._admin("POST", "user", {"uid": uid, "suspended": "false"})
        self._set_quota(uid, quota_bytes)
        access, secret = self._keys_of(info, uid)
        return S3Credentials(access_key=access, secret_key=secret, endpoint=self.public_endpoint, region=self.region)

    def set_user_quota(self, username: str, quota_bytes: int | None) -> None:
        uid = _check_name("user", username)
        if self._user(uid) is None:
            raise StorageError(f"no object-storage user {uid}; ensure_user creates it")
        self._set_quota(uid, quota_bytes)

    def disable_user(self, username: str) -> None:
        uid = _check_name("user", username)
        if self._user(uid) is not None:
            self._admin("POST", "user", {"uid": uid, "suspended": "true"})

    def enable_user(self, username: str) -> None:
        uid = _check_name("user", username)
        if self._user(uid) is None:
            raise StorageError(f"no object-storage user {uid}; ensure_user creates it")
        self._admin("POST", "user", {"uid": uid, "suspended": "false"})

    # ------------------------------------------------------------ buckets

    def _create_bucket(self, bucket: str, keys: tuple[str, str]) -> None:
        status, body = self._s3("PUT", bucket, keys)
        if status == 409 and _code(body) == "BucketAlreadyOwnedByYou":
            return
        if status >= 300:
            raise StorageError(f"creating bucket {bucket} failed: HTTP {status} {_code(body)}")

    def ensure_home_bucket(self, username: str) -> str:
        uid = _check_name("user", username)
        info = self._user(uid)
        if info is None:
            raise StorageError(f"no object-storage user {uid}; call ensure_user first")
        bucket = home_bucket(uid)
        self._create_bucket(bucket, self._keys_of(info, uid))
        return bucket

    def ensure_group_bucket(self, group: str, members: list[str], quota_bytes: int | None) -> str:
        name = _check_name("group", group)
        for member in members:
            _check_name("user", member)
        owner = GROUP_OWNER_PREFIX + name
        info = self._ensure_rgw_user(owner, f"group {name}")
        self._set_quota(owner, quota_bytes)
        keys = self._keys_of(info, owner)
        bucket = group_bucket(name)
        self._create_bucket(bucket, keys)
        wanted = sorted(set(members))
        status, body = self._s3("GET", bucket, keys, {"policy": ""})
        current = json.loads(body) if status == 200 else None
        policy = self.group_bucket_policy(bucket, wanted, owner)
        if current != policy:
            status, body = self._s3("PUT", bucket, keys, {"policy": ""}, json.dumps(policy).encode())
            if status >= 300:
                raise StorageError(f"setting the policy of {bucket} failed: HTTP {status} {_code(body)}")
        return bucket

    def delete_group_bucket(self, group: str) -> bool:
        """Remove the group's RGW owner user with its bucket and every object in it."""
        owner = GROUP_OWNER_PREFIX + _check_name("group", group)
        if self._user(owner) is None:
            return False
        self._admin("DELETE", "user", {"uid": owner, "purge-data": "true"}, ok_missing=True)
        return True

    @staticmethod
    def group_bucket_policy(bucket: str, members: list[str], owner: str) -> dict[str, Any]:
        """What a group bucket gets: the members and its owner user may use it, everyone else is denied.

        The Deny matters: an object belongs to whoever uploaded it, and its ACL would still let a
        removed member read what they uploaded; an explicit Deny in the bucket policy wins over it.
        """
        allowed = sorted(set(members) | {owner})
        policy = RgwStore.group_policy(bucket, allowed)
        policy["Statement"].append(
            {
                "Sid": "nobody-else",
                "Effect": "Deny",
                "NotPrincipal": {"AWS": [f"arn:aws:iam:::user/{m}" for m in allowed]},
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        )
        return policy

    @staticmethod
    def group_policy(bucket: str, members: list[str]) -> dict[str, Any]:
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "members",
                    "Effect": "Allow",
                    "Principal": {"AWS": [f"arn:aws:iam:::user/{m}" for m in sorted(members)]},
                    "Action": MEMBER_ACTIONS,
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }

    # ------------------------------------------------------------ policies of a user's own buckets (sharing)

    def bucket_policy(self, bucket: str, owner: str) -> dict[str, Any] | None:
        """The policy of `owner`'s bucket (None: it has none), read with the owner's keys."""
        return self.policy_with(bucket, self._owner_keys(owner))

    def set_bucket_policy(self, bucket: str, owner: str, policy: dict[str, Any] | None) -> None:
        """Replace the policy of `owner`'s bucket (None: remove it), with the owner's keys."""
        keys = self._owner_keys(owner)
        if policy is None:
            status, body = self._s3("DELETE", bucket, keys, {"policy": ""})
        else:
            status, body = self._s3("PUT", bucket, keys, {"policy": ""}, json.dumps(policy).encode())
        if status >= 300:
            raise StorageError(f"setting the policy of {bucket} failed: HTTP {status} {_code(body)}")

    def has_user(self, username: str) -> bool:
        """Whether the object store knows this user (a policy may name only existing users)."""
        return self._user(_check_name("user", username)) is not None

    def _owner_keys(self, owner: str) -> tuple[str, str]:
        uid = _check_name("user", owner)
        info = self._user(uid)
        if info is None:
            raise StorageError(f"no object-storage user {uid}; ensure_user creates it")
        return self._keys_of(info, uid)

    # ------------------------------------------------------------ usage

    def _buckets_of(self, uid: str) -> list[BucketUsage]:
        stats = self._admin("GET", "bucket", {"uid": uid, "stats": "true"}) or []
        found = []
        for item in stats:
            if not isinstance(item, dict):
                continue
            main = (item.get("usage") or {}).get("rgw.main") or {}
            quota = item.get("bucket_quota") or {}
            found.append(
                BucketUsage(
                    bucket=str(item.get("bucket")),
                    bytes_used=int(main.get("size", 0)),
                    objects=int(main.get("num_objects", 0)),
                    quota_bytes=int(quota["max_size"])
                    if quota.get("enabled") and int(quota.get("max_size", -1)) > 0
                    else None,
                )
            )
        return sorted(found, key=lambda b: b.bucket)

    def usage(self, username: str) -> UserUsage:
        uid = _check_name("user", username)
        if self._user(uid) is None:
            raise StorageError(f"no object-storage user {uid}")
        buckets = self._buckets_of(uid)
        quota = self._admin("GET", "user", {"quota": "", "uid": uid, "quota-type": "user"}) or {}
        return UserUsage(
            username=uid,
            bytes_used=sum(b.bytes_used for b in buckets),
            objects=sum(b.objects for b in buckets),
            quota_bytes=int(quota["max_size"]) if quota.get("enabled") and int(quota.get("max_size", -1)) > 0 else None,
            buckets=tuple(buckets),
        )

    def group_usage(self, group: str) -> BucketUsage:
        """Bytes and objects in a group's bucket, with the group's quota."""
        name = _check_name("group", group)
        owner = GROUP_OWNER_PREFIX + name
        if self._user(owner) is None:
            raise StorageError(f"no bucket for group {name}; ensure_group_bucket creates it")
        buckets = [b for b in self._buckets_of(owner) if b.bucket == group_bucket(name)]
        quota = self._admin("GET", "user", {"quota": "", "uid": owner, "quota-type": "user"}) or {}
        used = buckets[0] if buckets else BucketUsage(group_bucket(name), 0, 0, None)
        limit = int(quota["max_size"]) if quota.get("enabled") and int(quota.get("max_size", -1)) > 0 else None
        return BucketUsage(used.bucket, used.bytes_used, used.objects, limit)

    # ------------------------------------------------------------ backups (sciplat_hub.backup_buckets)
    #
    # These take raw RGW uids (the group owners `grp.<group>` too) and explicit keys:
    # a backup copies every user that owns a bucket, a restore puts them back as they were.

    def all_buckets(self) -> list[dict[str, Any]]:
        """Every bucket of the cluster: name, owner and bucket quota (None: none)."""
        stats = self._admin("GET", "bucket", {"stats": "true"}) or []
        found = []
        for item in stats:
            if not isinstance(item, dict) or not item.get("bucket"):
                continue
            found.append(
                {
                    "name": str(item["bucket"]),
                    "owner": str(item.get("owner", "")),
                    "quota": _quota(item.get("bucket_quota")),
                }
            )
        return sorted(found, key=lambda b: b["name"])

    def all_users(self) -> list[str]:
        """Every RGW user id of the cluster (the admin-ops user reads the metadata)."""
        found = self._admin("GET", "metadata/user", {}) or []
        return sorted(str(u) for u in found if isinstance(u, str))

    def user_record(self, uid: str) -> dict[str, Any] | None:
        """What re-creates the user as it is: names, state, every S3 key of its own, its user quota."""
        info = self._user(uid)
        if info is None:
            return None
        quota = self._admin("GET", "user", {"quota": "", "uid": uid, "quota-type": "user"}) or {}
        keys = sorted(
            (
                {"access_key": str(k["access_key"]), "secret_key": str(k["secret_key"])}
                for k in info.get("keys", [])
                if k.get("user") == uid and k.get("access_key")
            ),
            key=lambda k: k["access_key"],
        )
        return {
            "uid": uid,
            "display_name": str(info.get("display_name") or uid),
            "email": str(info.get("email") or ""),
            "suspended": bool(info.get("suspended")),
            "max_buckets": int(info.get("max_buckets", 1000)),
            "keys": keys,
            "quota": _quota(quota),
        }

    def access_keys(self, uid: str) -> set[str] | None:
        """The user's own S3 access keys (None: no such user)."""
        info = self._user(uid)
        if info is None:
            return None
        return {str(k["access_key"]) for k in info.get("keys", []) if k.get("user") == uid and k.get("access_key")}

    def restore_user(self, record: dict[str, Any]) -> str:
        """Create the user with its backed-up keys, or add the keys it lacks: "created", "keys-added", "present".

        An existing user keeps the keys it has now (a user who signed in before the
        restore has a new key: both work).
        """
        uid = str(record["uid"])
        keys = list(record.get("keys") or [])
        present = self.access_keys(uid)
        outcome = "present"
        if present is None:
            params = {
                "uid": uid,
                "display-name": str(record.get("display_name") or uid),
                "max-buckets": str(int(record.get("max_buckets", 1000))),
                "key-type": "s3",
            }
            if record.get("email"):
                params["email"] = str(record["email"])
            if keys:
                params |= {"access-key": keys[0]["access_key"], "secret-key": keys[0]["secret_key"]}
            else:
                params["generate-key"] = "false"
            # created active: the restore uploads with its keys (it suspends it again afterwards)
            self._admin("PUT", "user", params)
            present, outcome = {k["access_key"] for k in keys[:1]}, "created"
        for key in keys:
            if key["access_key"] in present:
                continue
            self._admin(
                "PUT",
                "user",
                {
                    "key": "",
                    "uid": uid,
                    "key-type": "s3",
                    "access-key": key["access_key"],
                    "secret-key": key["secret_key"],
                },
            )
            outcome = "created" if outcome == "created" else "keys-added"
        return outcome

    def set_suspended(self, uid: str, suspended: bool) -> None:
        """Suspend the user (its keys are refused) or lift the suspension."""
        self._admin("POST", "user", {"uid": uid, "suspended": "true" if suspended else "false"})

    def set_quota_record(self, uid: str, quota: dict[str, Any] | None) -> None:
        """Apply a user quota as user_record() gave it (None or disabled: no quota)."""
        if not (quota and quota.get("enabled")):
            self._put_user_quota(uid, enabled=False)
            return
        self._put_user_quota(
            uid,
            enabled=True,
            max_size=int(quota.get("max_size", -1)),
            max_objects=int(quota.get("max_objects", -1)),
        )

    def set_bucket_quota(self, bucket: str, owner: str, quota: dict[str, Any]) -> None:
        body = json.dumps(
            {
                "enabled": bool(quota.get("enabled")),
                "max_size": int(quota.get("max_size", -1)),
                "max_objects": int(quota.get("max_objects", -1)),
            }
        ).encode()
        status, answer = self._request(
            "PUT", "/admin/bucket", {"quota": "", "uid": owner, "bucket": bucket, "format": "json"}, body=body
        )
        if status >= 300:
            raise StorageError(f"setting the quota of bucket {bucket} failed: HTTP {status} {_code(answer)}")

    def create_bucket_with(self, bucket: str, keys: tuple[str, str]) -> bool:
        """Create the bucket with these (its owner's) keys; False when they own it already."""
        status, body = self._s3("PUT", bucket, keys)
        if status == 409 and _code(body) == "BucketAlreadyOwnedByYou":
            return False
        if status >= 300:
            raise StorageError(f"creating bucket {bucket} failed: HTTP {status} {_code(body)}")
        return True

    def policy_with(self, bucket: str, keys: tuple[str, str]) -> dict[str, Any] | None:
        """The bucket's policy read with its owner's keys (None: it has none)."""
        status, body = self._s3("GET", bucket, keys, {"policy": ""})
        if status == 404 and _code(body) == "NoSuchBucketPolicy":
            return None
        if status >= 300:
            raise StorageError(f"reading the policy of {bucket} failed: HTTP {status} {_code(body)}")
        policy: dict[str, Any] = json.loads(body)
        return policy

    def put_policy_with(self, bucket: str, keys: tuple[str, str], policy: dict[str, Any]) -> None:
        status, body = self._s3("PUT", bucket, keys, {"policy": ""}, json.dumps(policy).encode())
        if status >= 300:
            raise StorageError(f"setting the policy of {bucket} failed: HTTP {status} {_code(body)}")

    def s3_endpoint(self) -> str:
        """The first admin endpoint that answers: objects are copied straight from radosgw, not through the gateway."""
        last: Exception | None = None
        for endpoint in self.admin_endpoints:
            probe = RgwStore([endpoint], self.access_key, self.secret_key, self.public_endpoint, region=self.region)
            try:
                probe._request("GET", "/")
                return endpoint
            except StorageError as exc:
                last = exc
        raise StorageError(f"no radosgw answered: {last}")


def _quota(value: Any) -> dict[str, Any] | None:
    """A quota as RGW reports it, reduced to enabled/max_size/max_objects (None: not enabled)."""
    if not isinstance(value, dict) or not value.get("enabled"):
        return None
    return {
        "enabled": True,
        "max_size": int(value.get("max_size", -1)),
        "max_objects": int(value.get("max_objects", -1)),
    }


def _code(body: bytes) -> str:
    """The S3/RGW error code in a response body (XML or JSON), or the body's start."""
    text = body.decode(errors="replace")
    match = re.search(r"<Code>([^<]+)</Code>", text) or re.search(r'"Code"\s*:\s*"([^"]+)"', text)
    return match.group(1) if match else text[:200]


def from_config(config: dict[str, Any]) -> RgwStore:
    """Build the store from /etc/sciplat/storage/client.json's settings."""
    try:
        return RgwStore(
            admin_endpoints=list(config["admin_endpoints"]),
            access_key=str(config["access_key"]),
            secret_key=str(config["secret_key"]),
            public_endpoint=str(config["public_endpoint"]),
            region=str(config.get("region", "default")),
            ca_file=config.get("ca_file"),
        )
    except KeyError as exc:
        raise StorageError(
            f"the RGW settings lack {exc.args[0]!r} (admin_endpoints, access_key, secret_key, public_endpoint)"
        ) from None
