"""The AWS S3 storage backend (sciplat_hub.storage.aws) against moto: MOCKED AWS, not real AWS.

What moto enforces and what it does not (moto 5.x, read in its source and checked here):
- With request authorization on (`set_initial_no_auth_action_count`), moto checks the
  signature, that the access key exists (not whether it is Active), and the caller's IDENTITY
  policies (user inline/attached and IAM-group policies), including explicit Deny.
  The backend grants access only through identity policies, so the access tests
  below (own bucket yes, another's no, group members only, disabled keys) are
  enforced by moto, not just asserted on documents.
- Bucket policies: moto applies a bucket-policy Deny only when its Principal is "*"
  and ignores its Condition keys (it has no request context), so the
  deny-insecure-transport and admit-only-owners statements would deny everything under
  moto. The access tests switch them off and test_moto_bucket_policies_admit_exactly_
  the_owners checks the documents moto stores, evaluated by the rule AWS documents for
  StringNotLike. The quota statement (Principal "*", no condition) is enforced.
- Anonymous requests crash moto's authorizer, and Block Public Access is stored but
  not enforced: the tests check the configuration that makes AWS refuse them.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from typing import Any

import boto3
import moto
import pytest
from botocore.exceptions import ClientError
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin

from sciplat_hub.storage import StorageError, aws

REGION = "eu-central-1"
PREFIX = "sp-test"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Mocked AWS with authorization enforced after an admin user is made."""
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    state: dict[str, Any] = {}
    with moto.mock_aws():
        # What moto's set_initial_no_auth_action_count decorator does, held for the
        # whole test: the first three requests (making the admin) are not
        # authorized; every later one is.
        saved = settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 3
        ActionAuthenticatorMixin.request_count = 0
        try:
            iam = boto3.client("iam", region_name=REGION)
            iam.create_user(UserName="platform-admin")
            iam.put_user_policy(UserName="platform-admin", PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY))
            key = iam.create_access_key(UserName="platform-admin")["AccessKey"]
            state["session"] = boto3.Session(
                aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name=REGION
            )
            state["store"] = aws.from_config(
                {
                    "backend": "aws",
                    "region": REGION,
                    "prefix": PREFIX,
                    "access_key": key["AccessKeyId"],
                    "secret_key": key["SecretAccessKey"],
                    "tags": {"sciplat:tenant": "astro"},
                    # moto cannot evaluate these statements' conditions (module docstring):
                    # test_moto_bucket_policies_admit_exactly_the_owners checks the documents.
                    "deny_insecure_transport": False,
                    "admit_only_owners": False,
                }
            )
            yield state
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved


def client_for(creds: aws.S3Credentials) -> Any:
    return boto3.client(
        "s3", region_name=REGION, aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key
    )


def error_code(call: Any) -> str:
    try:
        call()
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return "OK"


def test_moto_user_keys_work_on_own_bucket_and_are_denied_on_another(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    alice = store.ensure_user("alice", 10 * 2**20)
    bob = store.ensure_user("bob", 10 * 2**20)
    a, b = client_for(alice), client_for(bob)
    home_a = store.home_bucket("alice")
    assert home_a == "sp-test-home-alice"
    a.put_object(Bucket=home_a, Key="notes.txt", Body=b"hello")
    assert a.get_object(Bucket=home_a, Key="notes.txt")["Body"].read() == b"hello"
    assert error_code(lambda: b.get_object(Bucket=home_a, Key="notes.txt")) == "AccessDenied"
    assert error_code(lambda: b.put_object(Bucket=home_a, Key="x", Body=b"x")) == "AccessDenied"
    assert error_code(lambda: b.list_objects_v2(Bucket=home_a)) == "AccessDenied"
    # Users cannot change their bucket's configuration or make buckets.
    assert error_code(lambda: a.delete_bucket_policy(Bucket=home_a)) == "AccessDenied"
    assert error_code(lambda: a.create_bucket(Bucket="sp-test-home-mallory")) == "AccessDenied"


def test_moto_group_bucket_admits_exactly_the_members(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    creds = {u: store.ensure_user(u, None) for u in ("alice", "bob", "carol")}
    bucket = store.ensure_group_bucket("lsst", ["alice", "bob"], 2**30)
    assert bucket == "sp-test-group-lsst"
    client_for(creds["alice"]).put_object(Bucket=bucket, Key="shared.csv", Body=b"a,b")
    assert client_for(creds["bob"]).get_object(Bucket=bucket, Key="shared.csv")["Body"].read() == b"a,b"
    assert error_code(lambda: client_for(creds["carol"]).get_object(Bucket=bucket, Key="shared.csv")) == "AccessDenied"

    # Membership follows the list given: bob out, carol in.
    store.ensure_group_bucket("lsst", ["alice", "carol"], 2**30)
    assert error_code(lambda: client_for(creds["bob"]).get_object(Bucket=bucket, Key="shared.csv")) == "AccessDenied"
    assert client_for(creds["carol"]).get_object(Bucket=bucket, Key="shared.csv")["Body"].read() == b"a,b"
    members = {u["UserName"] for u in store.iam.get_group(GroupName="sp-test-group-lsst")["Users"]}
    assert members == {"sp-test-alice", "sp-test-carol"}


def test_moto_group_member_without_an_account_yet_is_added_later(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    store.ensure_user("alice", None)
    store.ensure_group_bucket("euclid", ["alice", "dave"], None)
    dave = store.ensure_user("dave", None)
    bucket = store.ensure_group_bucket("euclid", ["alice", "dave"], None)
    client_for(dave).put_object(Bucket=bucket, Key="k", Body=b"v")


def test_moto_disable_stops_the_keys_and_enable_restores_them(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    alice = store.ensure_user("alice", None)
    a = client_for(alice)
    bucket = store.home_bucket("alice")
    a.put_object(Bucket=bucket, Key="k", Body=b"v")
    store.disable_user("alice")
    # moto does not check a key's status; it does enforce the deny-all policy that
    # disable_user adds (which AWS applies to session tokens made from the key too).
    keys = store.iam.list_access_keys(UserName="sp-test-alice")["AccessKeyMetadata"]
    assert [k["Status"] for k in keys] == ["Inactive"]
    assert error_code(lambda: a.get_object(Bucket=bucket, Key="k")) == "AccessDenied"
    store.disable_user("alice")  # idempotent
    # Data stays; the admin still sees it.
    assert store.usage("alice").objects == 1
    store.enable_user("alice")
    assert a.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(StorageError, match="does not exist"):
        store.disable_user("nobody")


def test_moto_ensure_user_is_idempotent_and_keys_are_stable(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    first = store.ensure_user("alice", 5 * 2**20)
    second = store.ensure_user("alice", 5 * 2**20)
    assert first == second
    assert len(store.iam.list_access_keys(UserName="sp-test-alice")["AccessKeyMetadata"]) == 1
    assert store.ensure_home_bucket("alice") == store.ensure_home_bucket("alice")
    store.ensure_group_bucket("g1", ["alice"], None)
    store.ensure_group_bucket("g1", ["alice"], None)
    # ensure_user re-enables a disabled user, with the same key.
    store.disable_user("alice")
    assert store.ensure_user("alice", 5 * 2**20) == first
    client_for(first).put_object(Bucket=store.home_bucket("alice"), Key="k", Body=b"v")


def test_moto_second_run_writes_nothing(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    calls: list[str] = []
    for client in (store.iam, store.s3, store.ssm):
        client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))

    def provision() -> None:
        for user in ("alice", "bob"):
            store.ensure_user(user, 2**30)
            store.ensure_home_bucket(user)
        store.ensure_group_bucket("lsst", ["alice", "bob"], 2**31)

    provision()
    assert any(name.startswith(("Create", "Put")) for name in calls)
    calls.clear()
    provision()
    writes = [n for n in calls if n.startswith(("Create", "Put", "Delete", "Update", "Add", "Remove", "Attach"))]
    assert writes == [], writes
    assert calls  # it did look


def test_moto_lost_secret_is_replaced_by_a_new_key(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    first = store.ensure_user("alice", None)
    store.ssm.delete_parameter(Name="/sciplat/sp-test/s3-keys/alice")
    second = store.ensure_user("alice", None)
    assert second.access_key != first.access_key
    keys = store.iam.list_access_keys(UserName="sp-test-alice")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [second.access_key]
    client_for(second).put_object(Bucket=store.home_bucket("alice"), Key="k", Body=b"v")
    assert error_code(lambda: client_for(first).get_object(Bucket=store.home_bucket("alice"), Key="k")) != "OK"


def test_moto_quota_enforcement_denies_puts_while_over_and_lifts_after(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    alice = store.ensure_user("alice", 1000)
    a = client_for(alice)
    bucket = store.home_bucket("alice")
    a.put_object(Bucket=bucket, Key="big", Body=b"x" * 1500)
    usage = store.usage("alice")
    assert (usage.bytes_used, usage.objects, usage.quota_bytes) == (1500, 1, 1000)
    assert store.enforce_quotas() == {bucket: True}
    # AWS answers a bucket-policy deny with AccessDenied; moto with a bare 403.
    with pytest.raises(ClientError) as refused:
        a.put_object(Bucket=bucket, Key="more", Body=b"y")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert a.get_object(Bucket=bucket, Key="big")["Body"].read() == b"x" * 1500  # reads still work
    # ensure_user at the next sign-in keeps the mark.
    store.ensure_user("alice", 1000)
    assert store.enforce_quota(bucket) is True
    # Raising the quota lifts it at once.
    store.set_user_quota("alice", 10_000)
    a.put_object(Bucket=bucket, Key="more", Body=b"y")
    assert store.usage("alice").quota_bytes == 10_000
    store.set_user_quota("alice", None)
    assert store.usage("alice").quota_bytes is None


def test_moto_usage_of_a_user_without_a_bucket_is_zero(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    assert store.usage("nobody") == aws.UserUsage("nobody", 0, 0, None, ())
    with pytest.raises(StorageError, match="bucket_usage"):
        store.bucket_usage("sp-test-home-nobody")


def test_moto_buckets_are_private_encrypted_and_tagged(env: dict[str, Any]) -> None:
    store: aws.AwsObjectStore = env["store"]
    store.ensure_user("alice", 123)
    bucket = store.home_bucket("alice")
    block = store.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rule = store.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    tags = {t["Key"]: t["Value"] for t in store.s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags["sciplat:tenant"] == "astro" and tags[aws.QUOTA_TAG] == "123" and tags["sciplat:user"] == "alice"
    user = store.iam.get_user(UserName="sp-test-alice")["User"]
    assert user["Path"] == "/sciplat/sp-test/"
    assert store.managed_buckets() == [bucket]


def _denied_by_admission(policy: dict[str, Any], principal_arn: str) -> bool:
    """AWS's rule for the admission statement: Deny applies when aws:PrincipalArn is
    StringNotLike every pattern (* and ? wildcards)."""
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == aws.ADMITTED_SID]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    patterns = statement["Condition"]["StringNotLike"]["aws:PrincipalArn"]
    return not any(fnmatch.fnmatchcase(principal_arn, p) for p in patterns)


def test_moto_bucket_policies_admit_exactly_the_owners(env: dict[str, Any]) -> None:
    store = aws.AwsObjectStore(
        region=REGION,
        prefix=PREFIX,
        deny_insecure_transport=True,
        admit_only_owners=True,
        session=env["session"],
    )
    for user in ("alice", "bob", "carol"):
        store.ensure_user(user, None)
    store.ensure_group_bucket("lsst", ["alice", "bob"], None)
    arn = {u: store.iam.get_user(UserName=f"sp-test-{u}")["User"]["Arn"] for u in ("alice", "bob", "carol")}
    account = arn["alice"].split(":")[4]
    admin = store.sts.get_caller_identity()["Arn"]
    outsider_admin = f"arn:aws:iam::{account}:role/account-admin"

    home = json.loads(store.s3.get_bucket_policy(Bucket="sp-test-home-alice")["Policy"])
    assert not _denied_by_admission(home, arn["alice"])
    assert not _denied_by_admission(home, admin)
    assert not _denied_by_admission(home, f"arn:aws:iam::{account}:root")
    for other in (arn["bob"], arn["carol"], outsider_admin):
        assert _denied_by_admission(home, other)

    group = json.loads(store.s3.get_bucket_policy(Bucket="sp-test-group-lsst")["Policy"])
    assert not _denied_by_admission(group, arn["alice"]) and not _denied_by_admission(group, arn["bob"])
    assert _denied_by_admission(group, arn["carol"]) and _denied_by_admission(group, outsider_admin)
    tls = next(s for s in group["Statement"] if s["Sid"] == aws.TLS_SID)
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    # Membership changes rewrite the admission; quota marks keep it.
    store.ensure_group_bucket("lsst", ["alice", "carol"], 10)
    group = json.loads(store.s3.get_bucket_policy(Bucket="sp-test-group-lsst")["Policy"])
    assert _denied_by_admission(group, arn["bob"]) and not _denied_by_admission(group, arn["carol"])
    store._write_bucket_policy("sp-test-group-lsst", over_quota=True)
    group = json.loads(store.s3.get_bucket_policy(Bucket="sp-test-group-lsst")["Policy"])
    assert {s["Sid"] for s in group["Statement"]} == {aws.TLS_SID, aws.ADMITTED_SID, aws.QUOTA_SID}
    assert not _denied_by_admission(group, arn["carol"]) and _denied_by_admission(group, arn["bob"])


def test_admin_patterns_match_the_role_behind_a_session() -> None:
    patterns = aws.admin_patterns("arn:aws:sts::123456789012:assumed-role/sciplat-hub/i-0abc")
    assert patterns == [
        "arn:aws:iam::123456789012:root",
        "arn:aws:iam::123456789012:role/sciplat-hub",
        "arn:aws:iam::123456789012:role/*/sciplat-hub",
    ]
    assert fnmatch.fnmatchcase("arn:aws:iam::123456789012:role/platform/sciplat-hub", patterns[2])
    assert aws.admin_patterns("arn:aws:iam::123456789012:user/admin")[1] == "arn:aws:iam::123456789012:user/admin"
    assert aws.admin_patterns("arn:aws:iam::123456789012:root") == ["arn:aws:iam::123456789012:root"]


def test_policy_documents() -> None:
    """The documents themselves, for what moto does not evaluate."""
    access = aws.bucket_access_policy("sp-home-alice")
    resources = {s["Sid"]: s["Resource"] for s in access["Statement"]}
    assert resources == {
        "ListTheBucket": "arn:aws:s3:::sp-home-alice",
        "ObjectsInTheBucket": "arn:aws:s3:::sp-home-alice/*",
    }
    actions = {a for s in access["Statement"] for a in s["Action"]}
    assert not any(a in actions for a in ("s3:*", "s3:PutBucketPolicy", "s3:DeleteBucket", "s3:CreateBucket"))
    assert all(s["Effect"] == "Allow" for s in access["Statement"])

    policy = aws.bucket_policy("b", over_quota=True, deny_insecure_transport=True)
    assert policy is not None
    tls, quota = policy["Statement"]
    assert tls["Effect"] == "Deny" and tls["Principal"] == "*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert tls["Resource"] == ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]
    assert quota == {
        "Sid": aws.QUOTA_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::b/*",
    }
    # No statement ever allows anyone: access comes only from identity policies, and
    # Block Public Access refuses any public policy.
    assert aws.bucket_policy("b", over_quota=False, deny_insecure_transport=False) is None


def test_configuration_errors_name_the_fix() -> None:
    with pytest.raises(StorageError, match="lacks 'prefix'"):
        aws.from_config({"backend": "aws", "region": REGION})
    with pytest.raises(StorageError, match="3 to 24 lower-case"):
        aws.from_config({"backend": "aws", "region": REGION, "prefix": "Bad_Prefix"})
    store = aws.AwsObjectStore(region=REGION, prefix="ok-prefix", session=boto3.Session(region_name=REGION))
    with pytest.raises(StorageError, match="not valid"):
        store.home_bucket("Alice")
    # The longest names still make valid bucket names (<= 63 characters).
    longest = aws.AwsObjectStore(region=REGION, prefix="p" * 24, session=boto3.Session(region_name=REGION))
    assert len(longest.group_bucket("g" * 32)) <= 63
