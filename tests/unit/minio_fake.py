"""A FAKE MinIO server: the few admin-API and S3 endpoints sciplat_hub.storage.minio calls.

MinIO itself cannot run on the machines this project is tested on (no binary is
published any more for the community edition; see docs/storage-backends.md). This
server implements, per MinIO's admin API (madmin-go's request and response shapes,
`/minio/admin/v3/<command>`) and the S3 API, exactly what the backend uses:

- every request must carry a valid AWS SigV4 signature by a known, enabled key (the
  root user or a MinIO user) and a body whose SHA-256 matches the signed one;
- admin commands (root only): add-user (body encrypted with the root secret, as
  madmin does), user-info, set-user-status, add-canned-policy, info-canned-policy,
  set-user-or-group-policy, update-group-members, group, set-bucket-quota,
  get-bucket-quota, datausageinfo; errors as MinIO sends them (JSON, X-MinIO codes);
- S3: HEAD/PUT bucket, PUT/GET object. Users are authorized by a simplified policy
  evaluator (Allow statements, action and resource wildcards; MinIO denies what no
  policy allows); a put beyond a bucket's hard quota is refused like MinIO does
  (HTTP 400, XMinioAdminBucketQuotaExceeded). Unlike MinIO, usage is counted at once
  (MinIO's scanner lags).

It records every request (method, command or S3 path, caller) for the tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from minio.credentials import Credentials
from minio.crypto import DecryptReader
from minio.signer import sign_v4_s3

ROOT_USER = "sciplat-admin"
ROOT_PASSWORD = "root-password-for-tests-0123456789"


@dataclass
class State:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # ak -> {secret, status, policy}
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {members: set, policy}
    buckets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    quotas: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, what, caller)

    def writes(self) -> list[tuple[str, str, str]]:
        return [entry for entry in self.log if entry[0] in ("PUT", "POST", "DELETE")]


class _Body(io.BytesIO):
    """What minio.crypto.DecryptReader expects of a response."""

    def release_conn(self) -> None:
        pass


def _decrypt(body: bytes, secret: str) -> bytes:
    result = b""
    with DecryptReader(_Body(body), secret.encode()) as reader:  # type: ignore[arg-type]
        for chunk in reader.stream():
            result += chunk
    return result


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---------------------------------------------------------------- plumbing

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _admin_error(self, status: int, code: str, message: str) -> None:
        self._send(status, json.dumps({"Code": code, "Message": message, "Resource": self.path}).encode())

    def _s3_error(self, status: int, code: str, message: str) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
        body += f"<Resource>{urlsplit(self.path).path}</Resource><RequestId>1</RequestId></Error>"
        self._send(status, body.encode(), "application/xml")

    def _authenticate(self, body: bytes) -> str | None:
        """The signing access key, or None after sending the error."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            self._s3_error(403, "AccessDenied", "Access Denied.")
            return None
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
        access_key, _date, region, _service, _ = fields["Credential"].split("/")
        if access_key == ROOT_USER:
            secret = ROOT_PASSWORD
        elif access_key in self.state.users and self.state.users[access_key]["status"] == "enabled":
            secret = self.state.users[access_key]["secret"]
        else:
            self._s3_error(403, "InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records.")
            return None
        content_sha256 = self.headers.get("x-amz-content-sha256", "")
        if content_sha256 != "UNSIGNED-PAYLOAD" and content_sha256 != hashlib.sha256(body).hexdigest():
            self._s3_error(400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' does not match.")
            return None
        signed = {name: self.headers.get(name, "") for name in fields["SignedHeaders"].split(";")}
        date = datetime.strptime(self.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
        expected = sign_v4_s3(
            method=self.command,
            url=urlsplit(f"http://{self.headers['Host']}{self.path}"),
            region=region,
            headers=dict(signed),
            credentials=Credentials(access_key, secret),
            content_sha256=content_sha256,
            date=date,
        )["Authorization"]
        if expected != auth:
            self._s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
            return None
        return access_key

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        caller = self._authenticate(body)
        if caller is None:
            return
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path.startswith("/minio/admin/v3/"):
            command = url.path[len("/minio/admin/v3/") :]
            self.state.log.append((self.command, command, caller))
            if caller != ROOT_USER:
                self._admin_error(403, "AccessDenied", "Access Denied.")
                return
            self._admin(command, query, body)
        else:
            self.state.log.append((self.command, url.path, caller))
            self._s3(url.path, caller, body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    # ---------------------------------------------------------------- admin API

    def _admin(self, command: str, q: dict[str, str], body: bytes) -> None:
        st = self.state
        if command == "add-user":
            payload = json.loads(_decrypt(body, ROOT_PASSWORD))
            user = st.users.setdefault(q["accessKey"], {"policy": ""})
            user.update(secret=payload["secretKey"], status=payload["status"])
            self._send(200)
        elif command == "user-info":
            user = st.users.get(q["accessKey"])
            if user is None:
                self._admin_error(404, "XMinioAdminNoSuchUser", "The specified user does not exist")
                return
            member_of = sorted(g for g, d in st.groups.items() if q["accessKey"] in d["members"])
            self._send(
                200,
                json.dumps({"policyName": user["policy"], "status": user["status"], "memberOf": member_of}).encode(),
            )
        elif command == "set-user-status":
            if q["accessKey"] not in st.users:
                self._admin_error(404, "XMinioAdminNoSuchUser", "The specified user does not exist")
                return
            st.users[q["accessKey"]]["status"] = q["status"]
            self._send(200)
        elif command == "add-canned-policy":
            document = json.loads(body)
            if document.get("Version") != "2012-10-17" or not document.get("Statement"):
                self._admin_error(400, "XMinioMalformedJSON", "policy has no Version or Statement")
                return
            st.policies[q["name"]] = document
            self._send(200)
        elif command == "info-canned-policy":
            if q["name"] not in st.policies:
                self._admin_error(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist")
                return
            # MinIO keeps actions and resources as sets: it echoes them reordered.
            echoed = json.loads(json.dumps(st.policies[q["name"]]))
            for statement in echoed["Statement"]:
                statement["Action"] = sorted(statement["Action"], reverse=True)
                statement["Resource"] = sorted(statement["Resource"], reverse=True)
            self._send(200, json.dumps(echoed).encode())
        elif command == "set-user-or-group-policy":
            name, is_group, policy = q["userOrGroup"], q["isGroup"] == "true", q["policyName"]
            if policy not in st.policies:
                self._admin_error(404, "XMinioAdminNoSuchPolicy", "The canned policy does not exist")
                return
            table = st.groups if is_group else st.users
            if name not in table:
                code = "XMinioAdminNoSuchGroup" if is_group else "XMinioAdminNoSuchUser"
                self._admin_error(404, code, "no such user or group")
                return
            table[name]["policy"] = policy
            self._send(200)
        elif command == "update-group-members":
            payload = json.loads(body)
            name, members = payload["group"], payload.get("members") or []
            for member in members:
                if member not in st.users:
                    self._admin_error(404, "XMinioAdminNoSuchUser", f"user {member} does not exist")
                    return
            if payload["isRemove"]:
                if name not in st.groups:
                    self._admin_error(404, "XMinioAdminNoSuchGroup", "The specified group does not exist")
                    return
                st.groups[name]["members"] -= set(members)
            else:
                st.groups.setdefault(name, {"members": set(), "policy": ""})["members"] |= set(members)
            self._send(200)
        elif command == "group":
            group = st.groups.get(q["group"])
            if group is None:
                self._admin_error(404, "XMinioAdminNoSuchGroup", "The specified group does not exist")
                return
            desc = {
                "name": q["group"],
                "status": "enabled",
                "members": sorted(group["members"]),
                "policy": group["policy"],
            }
            self._send(200, json.dumps(desc).encode())
        elif command == "set-bucket-quota":
            if q["bucket"] not in st.buckets:
                self._admin_error(404, "NoSuchBucket", "The specified bucket does not exist")
                return
            quota = json.loads(body)
            if quota.get("quotatype") != "hard":
                self._admin_error(400, "XMinioAdminInvalidArgument", "only hard quotas")
                return
            if quota["quota"]:
                st.quotas[q["bucket"]] = int(quota["quota"])
            else:
                st.quotas.pop(q["bucket"], None)
            self._send(200)
        elif command == "get-bucket-quota":
            if q["bucket"] not in st.quotas:
                self._admin_error(404, "XMinioAdminNoSuchQuotaConfiguration", "The quota configuration does not exist")
                return
            size = st.quotas[q["bucket"]]
            self._send(200, json.dumps({"quota": size, "size": size, "quotatype": "hard"}).encode())
        elif command == "datausageinfo":
            usage = {
                name: {"size": sum(len(v) for v in objects.values()), "objectsCount": len(objects)}
                for name, objects in st.buckets.items()
            }
            self._send(200, json.dumps({"bucketsCount": len(usage), "bucketsUsageInfo": usage}).encode())
        else:
            self._admin_error(400, "XMinioAdminNotImplemented", f"the fake does not implement {command}")

    # ---------------------------------------------------------------- S3

    def _allowed(self, caller: str, action: str, resource: str) -> bool:
        if caller == ROOT_USER:
            return True
        st = self.state
        names = [st.users[caller]["policy"]]
        names += [d["policy"] for d in st.groups.values() if caller in d["members"]]
        for name in filter(None, names):
            for statement in st.policies.get(name, {}).get("Statement", []):
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                if (
                    statement["Effect"] == "Allow"
                    and any(fnmatch.fnmatchcase(action, a) for a in actions)
                    and any(fnmatch.fnmatchcase(resource, r) for r in resources)
                ):
                    return True
        return False

    def _s3(self, path: str, caller: str, body: bytes) -> None:
        st = self.state
        bucket, _, key = path.lstrip("/").partition("/")
        if not key:
            if self.command == "HEAD":
                if not self._allowed(caller, "s3:ListBucket", f"arn:aws:s3:::{bucket}"):
                    self._send(403)
                else:
                    self._send(200 if bucket in st.buckets else 404)
            elif self.command == "PUT":
                if not self._allowed(caller, "s3:CreateBucket", f"arn:aws:s3:::{bucket}"):
                    self._s3_error(403, "AccessDenied", "Access Denied.")
                elif bucket in st.buckets:
                    self._s3_error(409, "BucketAlreadyOwnedByYou", "Your previous request to create succeeded.")
                else:
                    st.buckets[bucket] = {}
                    self._send(200)
            else:
                self._s3_error(501, "NotImplemented", "not in the fake")
            return
        resource = f"arn:aws:s3:::{bucket}/{key}"
        if bucket not in st.buckets:
            self._s3_error(404, "NoSuchBucket", "The specified bucket does not exist")
        elif self.command == "PUT":
            if not self._allowed(caller, "s3:PutObject", resource):
                self._s3_error(403, "AccessDenied", "Access Denied.")
                return
            used = sum(len(v) for k, v in st.buckets[bucket].items() if k != key)
            # MinIO refuses when usage plus the new object reaches the quota (>=).
            if bucket in st.quotas and used + len(body) >= st.quotas[bucket]:
                self._s3_error(400, "XMinioAdminBucketQuotaExceeded", "Bucket quota exceeded")
                return
            st.buckets[bucket][key] = body
            self._send(200)
        elif self.command == "GET":
            if not self._allowed(caller, "s3:GetObject", resource):
                self._s3_error(403, "AccessDenied", "Access Denied.")
            elif key not in st.buckets[bucket]:
                self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
            else:
                self._send(200, st.buckets[bucket][key], "application/octet-stream")
        else:
            self._s3_error(501, "NotImplemented", "not in the fake")


class FakeMinio:
    def __init__(self) -> None:
        self.state = State()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeMinio:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
