"""The `buckets` backup kind: the platform's object storage (Ceph RGW), mirrored and restored.

Backup (on the first hub host, which has the RGW admin keys in
/etc/sciplat/storage/client.json):

1. every RGW user and every bucket of the cluster with its owner (admin-ops API),
   except the users named in `skip_users` (the backup user, the admin-ops user)
   and their buckets;
2. for each user: display name, state, S3 keys and user quota; for each bucket:
   its policy (read with the owner's keys) and bucket quota;
3. a local mirror, `<mirror>/objects/<bucket>/<file>`, synced incrementally: an
   object is downloaded only when it is new or its size or ETag changed, a file
   whose object is gone is removed; downloads run in parallel threads (boto3, one
   client per owner), straight from radosgw;
4. `<mirror>/manifest.json`: users, buckets, objects (key, size, ETag, MD5,
   SHA-256, content type, metadata, owner, mirror file).

restic then backs the mirror up into the repository `buckets` (sciplat_hub.backup);
restic encrypts, so the keys in the manifest are as safe as the rest of the backup.

Restore: the snapshot is restored into a scratch directory; each user is created
if missing with the same S3 keys (or gets the backed-up keys it lacks), each bucket
is created as its owner if missing, its policy and quota put back, and every object
that is missing or differs is uploaded (content type and metadata kept, as the
object's owner when that user may, else as the bucket's owner). Objects that exist
now but are not in the backup are kept. The user quotas are set last, so a restore
never runs into them.

The planning steps are pure functions (`plan_sync`, `plan_restore`) with unit tests;
the rest talks to radosgw.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

MANIFEST = "manifest.json"
OBJECTS = "objects"
FORMAT = 1
CHUNK = 1024 * 1024


class BucketBackupError(Exception):
    """A step of the buckets backup or restore failed; the message says which."""


# ------------------------------------------------------------------ mirror layout


def object_file(key: str) -> str:
    """The mirror's file name of an object key: the key percent-encoded into one path segment.

    Keys may contain `/`, `..` or be longer than a file name may be; a key whose encoding
    does not fit (or is `.`/`..`) is named by its SHA-256 after a `#`, which an encoded
    key never contains.
    """
    name = quote(key, safe="")
    if name in ("", ".", "..") or len(name.encode()) > 240:
        return "#" + hashlib.sha256(key.encode()).hexdigest()
    return name


@dataclass(frozen=True)
class Listed:
    """An object as the bucket listing shows it."""

    key: str
    size: int
    etag: str
    owner: str = ""


@dataclass
class SyncPlan:
    keep: list[dict[str, Any]] = field(default_factory=list)  # manifest entries still valid
    download: list[Listed] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # mirror files of objects that are gone


def plan_sync(previous: Iterable[dict[str, Any]], listing: Iterable[Listed], files: dict[str, int]) -> SyncPlan:
    """What to download and remove so that a bucket's mirror matches its listing.

    `previous`: the bucket's objects in the last manifest; `files`: the mirror's files
    of the bucket with their sizes. An object is kept when the last manifest has it
    with the same size and ETag and its file is still there with that size.
    """
    before = {str(e["key"]): e for e in previous}
    plan = SyncPlan()
    wanted: set[str] = set()
    for item in listing:
        name = object_file(item.key)
        wanted.add(name)
        old = before.get(item.key)
        if (
            old is not None
            and int(old["size"]) == item.size
            and str(old["etag"]) == item.etag
            and files.get(str(old.get("file", name))) == item.size
        ):
            plan.keep.append({**old, "owner": item.owner or old.get("owner", "")})
        else:
            plan.download.append(item)
    plan.remove = sorted(set(files) - wanted)
    return plan


# ------------------------------------------------------------------ restore plan


@dataclass
class RestorePlan:
    create_users: list[str] = field(default_factory=list)
    add_keys: dict[str, list[str]] = field(default_factory=dict)  # uid -> access keys it lacks
    create_buckets: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # bucket exists, owned by another user
    upload: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (bucket, manifest entry)
    unchanged: int = 0
    kept_extra: int = 0  # objects there now that the backup does not have (left alone)


def same_object(entry: dict[str, Any], present: tuple[int, str] | None) -> bool:
    """Whether the object there now is the backed-up one: same size, and its ETag is the
    backed-up ETag or the content's MD5 (what a single-part upload of it gets)."""
    if present is None:
        return False
    size, etag = present
    return size == int(entry["size"]) and etag in {str(entry["etag"]), str(entry.get("md5", ""))}


def plan_restore(
    manifest: dict[str, Any],
    users: dict[str, set[str]],
    buckets: dict[str, str],
    objects: dict[str, dict[str, tuple[int, str]]],
) -> RestorePlan:
    """What a restore must do, from the manifest and what exists now.

    `users`: uid -> its access keys now; `buckets`: name -> owner now; `objects`:
    bucket -> key -> (size, ETag) now.
    """
    plan = RestorePlan()
    for user in manifest.get("users", []):
        uid = str(user["uid"])
        wanted = [str(k["access_key"]) for k in user.get("keys", [])]
        if uid not in users:
            plan.create_users.append(uid)
        elif missing := [k for k in wanted if k not in users[uid]]:
            plan.add_keys[uid] = missing
    for bucket in manifest.get("buckets", []):
        name, owner = str(bucket["name"]), str(bucket["owner"])
        if name in buckets and buckets[name] != owner:
            plan.conflicts.append(name)
            continue
        if name not in buckets:
            plan.create_buckets.append(name)
        present = objects.get(name, {})
        backed_up = set()
        for entry in bucket.get("objects", []):
            backed_up.add(str(entry["key"]))
            if same_object(entry, present.get(str(entry["key"]))):
                plan.unchanged += 1
            else:
                plan.upload.append((name, entry))
        plan.kept_extra += len(set(present) - backed_up)
    return plan


# ------------------------------------------------------------------ S3 objects (boto3)


class Clients:
    """One boto3 S3 client per set of keys, to one radosgw endpoint; thread-safe."""

    def __init__(self, endpoint: str, region: str, parallel: int) -> None:
        self.endpoint, self.region, self.parallel = endpoint, region, parallel
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, keys: tuple[str, str]) -> Any:
        with self._lock:
            if keys not in self._clients:
                import boto3
                from botocore.config import Config

                self._clients[keys] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id=keys[0],
                    aws_secret_access_key=keys[1],
                    config=Config(
                        s3={"addressing_style": "path"},
                        signature_version="s3v4",
                        retries={"max_attempts": 5, "mode": "standard"},
                        max_pool_connections=self.parallel + 2,
                        connect_timeout=30,
                        read_timeout=300,
                    ),
                )
            return self._clients[keys]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def list_objects(client: Any, bucket: str) -> list[Listed]:
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, FetchOwner=True):
        for item in page.get("Contents", []):
            found.append(
                Listed(
                    key=str(item["Key"]),
                    size=int(item["Size"]),
                    etag=str(item["ETag"]).strip('"'),
                    owner=str((item.get("Owner") or {}).get("ID", "")),
                )
            )
    return found


def download(client: Any, bucket: str, item: Listed, path: Path) -> dict[str, Any] | None:
    """Fetch one object into `path` (via a temporary file); its manifest entry, None when it is gone."""
    partial = path.with_name(path.name + ".partial")
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    try:
        answer = client.get_object(Bucket=bucket, Key=item.key)
    except Exception as exc:
        if _error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise
    with open(partial, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        body = answer["Body"]
        for chunk in iter(lambda: body.read(CHUNK), b""):
            handle.write(chunk)
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    etag = str(answer.get("ETag", item.etag)).strip('"')
    if "-" not in etag and etag != md5.hexdigest():
        partial.unlink(missing_ok=True)
        raise BucketBackupError(f"{bucket}/{item.key}: downloaded content does not match its ETag {etag}")
    os.replace(partial, path)
    return {
        "key": item.key,
        "file": path.name,
        "size": size,
        "etag": etag,
        "md5": md5.hexdigest(),
        "sha256": sha256.hexdigest(),
        "content_type": str(answer.get("ContentType") or "binary/octet-stream"),
        "metadata": dict(answer.get("Metadata") or {}),
        "owner": item.owner,
    }


def upload(client: Any, bucket: str, entry: dict[str, Any], path: Path) -> None:
    """Put one object back from its mirror file, with its content type and metadata."""
    from boto3.s3.transfer import TransferConfig

    extra: dict[str, Any] = {"ContentType": entry.get("content_type") or "binary/octet-stream"}
    if entry.get("metadata"):
        extra["Metadata"] = dict(entry["metadata"])
    # single-part up to 256 MiB: the object then gets its MD5 as ETag, which the next restore compares
    config = TransferConfig(
        multipart_threshold=256 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024, use_threads=False
    )
    client.upload_file(str(path), bucket, str(entry["key"]), ExtraArgs=extra, Config=config)


# ------------------------------------------------------------------ backup


@dataclass
class BucketSettings:
    mirror: Path
    skip_users: list[str]
    parallel: int = 8
    storage_config: Path = Path("/etc/sciplat/storage/client.json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], cache_directory: str) -> BucketSettings:
        return cls(
            mirror=Path(str(data.get("mirror") or Path(cache_directory) / "buckets")),
            skip_users=[str(u) for u in data.get("skip_users", [])],
            parallel=max(1, int(data.get("parallel", 8))),
            storage_config=Path(str(data.get("storage_config", "/etc/sciplat/storage/client.json"))),
        )


def admin_store(settings: BucketSettings) -> Any:
    """The RGW admin interface provisioning uses, from this host's storage settings."""
    from sciplat_hub.storage.base import StorageError
    from sciplat_hub.storage.config import load_config
    from sciplat_hub.storage.rgw import from_config

    try:
        config = load_config(settings.storage_config)
    except StorageError as exc:
        raise BucketBackupError(str(exc)) from None
    if config.get("backend") != "rgw":
        raise BucketBackupError(
            f"the buckets backup copies Ceph RGW object storage; this platform's backend is {config.get('backend')}"
        )
    return from_config(config)


def _stderr(message: str) -> None:
    """Progress goes to stderr: stdout is sciplat-backup's (JSON) answer."""
    print(message, file=sys.stderr)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(partial, path)


def _files(directory: Path) -> dict[str, int]:
    if not directory.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file() and not p.name.endswith(".partial")}


def _complete(directory: Path, bucket: dict[str, Any]) -> bool:
    """Whether the mirror has every object of a manifest's bucket, at its size."""
    files = _files(directory)
    return all(files.get(str(e["file"])) == int(e["size"]) for e in bucket.get("objects", []))


def _keys(user: dict[str, Any] | None) -> tuple[str, str] | None:
    if not user or not user.get("keys"):
        return None
    first = user["keys"][0]
    return str(first["access_key"]), str(first["secret_key"])


def mirror(
    settings: BucketSettings, store: Any | None = None, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Bring the local mirror and its manifest up to date with the object store; returns counts."""
    store = store or admin_store(settings)
    root = settings.mirror
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    objects_root = root / OBJECTS
    objects_root.mkdir(exist_ok=True, mode=0o700)
    previous = {b["name"]: b for b in _read_manifest(root / MANIFEST).get("buckets", [])}

    skip = set(settings.skip_users)
    buckets = [b for b in store.all_buckets() if b["owner"] not in skip]
    # every user, not only bucket owners: a group member without a bucket of their own
    # uses the group's bucket with their own keys, which must survive a rebuild too
    users: dict[str, dict[str, Any]] = {}
    for uid in sorted((set(store.all_users()) | {b["owner"] for b in buckets}) - skip):
        record = store.user_record(uid)
        if record is not None:
            users[uid] = record
    clients = Clients(store.s3_endpoint(), store.region, settings.parallel)

    manifest_buckets: list[dict[str, Any]] = []
    counts = {"buckets": 0, "objects": 0, "bytes": 0, "downloaded": 0, "downloaded_bytes": 0, "removed": 0}
    failures: list[str] = []

    def copy_bucket(pool: ThreadPoolExecutor, bucket: dict[str, Any], keys: tuple[str, str]) -> dict[str, Any]:
        name = bucket["name"]
        policy = store.policy_with(name, keys)
        listing = list_objects(clients.get(keys), name)
        directory = objects_root / object_file(name)
        directory.mkdir(exist_ok=True, mode=0o700)
        plan = plan_sync(previous.get(name, {}).get("objects", []), listing, _files(directory))
        for stale in plan.remove:
            (directory / stale).unlink(missing_ok=True)
        counts["removed"] += len(plan.remove)

        def fetch(item: Listed) -> Any:
            # as the object's owner (a member's object in a group bucket), else as the bucket's
            owner_keys = _keys(users.get(item.owner)) or keys
            try:
                return download(clients.get(owner_keys), name, item, directory / object_file(item.key))
            except Exception:
                if owner_keys == keys:
                    raise
                return download(clients.get(keys), name, item, directory / object_file(item.key))

        entries = list(plan.keep)
        futures = {pool.submit(fetch, item): item for item in plan.download}
        for future in as_completed(futures):
            item = futures[future]
            try:
                entry = future.result()
            except Exception as exc:
                failures.append(f"{name}/{item.key}: {exc}")
                continue
            if entry is not None:
                entries.append(entry)
                counts["downloaded"] += 1
                counts["downloaded_bytes"] += int(entry["size"])
        entries.sort(key=lambda e: str(e["key"]))
        return {"name": name, "owner": bucket["owner"], "policy": policy, "quota": bucket["quota"], "objects": entries}

    by_owner: dict[str, list[dict[str, Any]]] = {}
    for bucket in buckets:
        by_owner.setdefault(bucket["owner"], []).append(bucket)
    with ThreadPoolExecutor(max_workers=settings.parallel) as pool:
        for owner, owned in sorted(by_owner.items()):
            record = users.get(owner)
            if record is None:  # deleted since the listing, and its buckets with it
                continue
            keys = _keys(record)
            if keys is None:
                failures.append(f"{owner} owns {', '.join(b['name'] for b in owned)} but has no S3 key to read them")
                continue
            lifted = False
            if record.get("suspended"):
                # a suspended user's keys are refused. Their buckets cannot change through
                # them: the copy already in the mirror is kept; only a bucket not copied yet
                # is read with the suspension lifted for the seconds that takes
                kept = [previous.get(b["name"]) for b in owned]
                if all(k is not None and _complete(objects_root / object_file(k["name"]), k) for k in kept):
                    for bucket, old in zip(owned, kept, strict=True):
                        assert old is not None
                        manifest_buckets.append({**old, "quota": bucket["quota"]})
                    continue
                store.set_suspended(owner, False)
                lifted = True
            try:
                for bucket in owned:
                    try:
                        manifest_buckets.append(copy_bucket(pool, bucket, keys))
                    except Exception as exc:
                        failures.append(f"bucket {bucket['name']}: {exc}")
            finally:
                if lifted:
                    store.set_suspended(owner, True)
    for copied in manifest_buckets:
        counts["buckets"] += 1
        counts["objects"] += len(copied["objects"])
        counts["bytes"] += sum(int(e["size"]) for e in copied["objects"])
    # buckets that are gone: their mirror directories go too
    wanted_dirs = {object_file(b["name"]) for b in manifest_buckets} | {object_file(b["name"]) for b in buckets}
    for stale_dir in objects_root.iterdir():
        if stale_dir.is_dir() and stale_dir.name not in wanted_dirs:
            shutil.rmtree(stale_dir)
            counts["removed"] += 1
    manifest = {
        "format": FORMAT,
        "taken": dt.datetime.now(dt.UTC).isoformat(),
        "skipped_users": sorted(skip),
        "users": [users[u] for u in sorted(users)],
        "buckets": manifest_buckets,
    }
    # written even after failures: the next run then downloads only what is still missing
    _write_manifest(root / MANIFEST, manifest)
    if failures:
        raise BucketBackupError(
            f"{len(failures)} bucket(s)/object(s) not copied: "
            + "; ".join(failures[:5])
            + ("…" if len(failures) > 5 else "")
        )
    (log or _stderr)(
        f"buckets: {counts['buckets']} buckets, {counts['objects']} objects ({counts['bytes']} bytes); "
        f"downloaded {counts['downloaded']} ({counts['downloaded_bytes']} bytes), removed {counts['removed']}"
    )
    return counts


# ------------------------------------------------------------------ restore


def _present_objects(clients: Clients, bucket: str, keys: tuple[str, str]) -> dict[str, tuple[int, str]]:
    return {o.key: (o.size, o.etag) for o in list_objects(clients.get(keys), bucket)}


def restore_from(
    root: Path, settings: BucketSettings, store: Any | None = None, *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Put users, buckets, policies, quotas and objects of the manifest under `root` back; returns counts."""
    manifest = _read_manifest(root / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise BucketBackupError(f"{root / MANIFEST} is missing or not a buckets manifest of format {FORMAT}")
    store = store or admin_store(settings)
    clients = Clients(store.s3_endpoint(), store.region, settings.parallel)
    users = {str(u["uid"]): u for u in manifest.get("users", [])}

    errors: list[str] = []
    counts = {"users_created": 0, "users_keys_added": 0, "buckets_created": 0, "policies_set": 0, "uploaded": 0}
    before = {uid: store.user_record(uid) for uid in users}
    for record in users.values():
        try:
            outcome = store.restore_user(record)
        except Exception as exc:
            errors.append(f"user {record['uid']}: {exc}")
            continue
        counts["users_created"] += outcome == "created"
        counts["users_keys_added"] += outcome == "keys-added"
    # suspended users' keys are refused: lifted while their objects are put back. Afterwards a
    # user that existed keeps the state it has now; a user the restore created gets the backed-up one
    suspend = {uid for uid, now in before.items() if now and now.get("suspended")}
    suspend |= {uid for uid, now in before.items() if now is None and users[uid].get("suspended")}
    for uid in sorted(suspend):
        if before[uid] is not None:
            store.set_suspended(uid, False)
    try:
        _restore_buckets(root, store, clients, settings, manifest, users, before, counts, errors)
    finally:
        for uid in sorted(suspend):
            try:
                store.set_suspended(uid, True)
            except Exception as exc:
                errors.append(f"suspending {uid} again: {exc}")
    result = {
        **counts,
        "users": len(users),
        "buckets": len(manifest.get("buckets", [])),
        "objects": sum(len(b.get("objects", [])) for b in manifest.get("buckets", [])),
        "taken": manifest.get("taken", ""),
    }
    (log or _stderr)(
        f"buckets: {result['users']} users ({counts['users_created']} created, "
        f"{counts['users_keys_added']} got keys back), "
        f"{result['buckets']} buckets ({counts['buckets_created']} created, {counts['policies_set']} policies set), "
        f"{counts['uploaded']} objects uploaded, {counts['unchanged']} unchanged, "
        f"{counts['kept_not_in_backup']} not in the backup kept"
    )
    if errors:
        raise BucketBackupError(f"{len(errors)} item(s) not restored: " + "; ".join(errors[:5]))
    return result


def _restore_buckets(
    root: Path,
    store: Any,
    clients: Clients,
    settings: BucketSettings,
    manifest: dict[str, Any],
    users: dict[str, dict[str, Any]],
    before: dict[str, dict[str, Any] | None],
    counts: dict[str, int],
    errors: list[str],
) -> None:
    """Buckets, policies, quotas and objects of the manifest, once its users exist (and may use their keys)."""
    present_buckets = {b["name"]: b["owner"] for b in store.all_buckets()}
    present_objects: dict[str, dict[str, tuple[int, str]]] = {}
    for bucket in manifest.get("buckets", []):
        name, owner = str(bucket["name"]), str(bucket["owner"])
        keys = _keys(users.get(owner))
        if present_buckets.get(name) == owner and keys is not None:
            with contextlib.suppress(Exception):
                present_objects[name] = _present_objects(clients, name, keys)
    present_users = {uid: {str(k["access_key"]) for k in now.get("keys", [])} for uid, now in before.items() if now}
    plan = plan_restore(manifest, present_users, present_buckets, present_objects)
    counts["unchanged"], counts["kept_not_in_backup"] = plan.unchanged, plan.kept_extra
    errors += [
        f"bucket {name} exists but belongs to {present_buckets[name]} now: not restored" for name in plan.conflicts
    ]

    owners: dict[str, tuple[str, str]] = {}
    for bucket in manifest.get("buckets", []):
        name, owner = str(bucket["name"]), str(bucket["owner"])
        keys = _keys(users.get(owner))
        if name in plan.conflicts:
            continue
        if keys is None:
            errors.append(f"bucket {name}: its owner {owner} has no keys in the backup")
            continue
        try:
            counts["buckets_created"] += store.create_bucket_with(name, keys)
        except Exception as exc:
            errors.append(f"bucket {name}: {exc}")
            continue
        owners[name] = keys
        # a policy or quota that cannot be put back is reported; the objects go back all the same
        try:
            if bucket.get("policy") and store.policy_with(name, keys) != bucket["policy"]:
                store.put_policy_with(name, keys, bucket["policy"])
                counts["policies_set"] += 1
            if bucket.get("quota"):
                store.set_bucket_quota(name, owner, bucket["quota"])
        except Exception as exc:
            errors.append(f"bucket {name}: {exc}")

    def put(name: str, entry: dict[str, Any]) -> None:
        bucket_keys = owners[name]
        path = root / OBJECTS / object_file(name) / str(entry["file"])
        if not path.is_file():
            raise BucketBackupError(f"the backup lacks the file of {name}/{entry['key']}")
        # as the object's owner (a member's object in a group bucket stays theirs), else the bucket's
        writer = _keys(users.get(str(entry.get("owner") or ""))) or bucket_keys
        try:
            upload(clients.get(writer), name, entry, path)
        except Exception:
            if writer == bucket_keys:
                raise
            upload(clients.get(bucket_keys), name, entry, path)

    with ThreadPoolExecutor(max_workers=settings.parallel) as pool:
        futures = {pool.submit(put, name, entry): (name, entry) for name, entry in plan.upload if name in owners}
        for future in as_completed(futures):
            name, entry = futures[future]
            try:
                future.result()
                counts["uploaded"] += 1
            except Exception as exc:
                errors.append(f"{name}/{entry['key']}: {exc}")
    # quotas last: a quota never stops the restore of what was within it
    for uid, record in users.items():
        try:
            store.set_quota_record(uid, record.get("quota"))
        except Exception as exc:
            errors.append(f"quota of {uid}: {exc}")
