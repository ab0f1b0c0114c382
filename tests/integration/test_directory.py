"""The accounts directory on the deployed test bed, as the hub and the hosts see it.

Users and groups are made the way account provisioning makes them: with
sciplat_hub.directory, in the platform venv on the hub host (gw). Then every
host resolves them through SSSD with the same numbers; the directory refuses a
disabled user's bind, shows no password hash to anonymous or read-only binds,
refuses a simple bind without TLS from another host, and lets the provisioner
write only below ou=people and ou=groups.

The names are fixed (dirtest-*) so that a re-run finds what the last run made;
numbers are never reused, so each run of test_deleted_uid_is_never_reused uses one more uid.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import shlex
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY

HUB = "gw"
DIRECTORY = "data"
PY = "/opt/sciplat/venv/bin/python"
BASE_DN = "dc=sciplat,dc=test"

PRELUDE = """
import dataclasses, json, sys
from sciplat_hub.directory import Directory, DirectoryError
d = Directory.from_host_config()
def out(v):
    if dataclasses.is_dataclass(v):
        v = dataclasses.asdict(v)
    elif isinstance(v, list):
        v = [dataclasses.asdict(x) for x in v]
    print(json.dumps(v))
"""


def inventory_hosts() -> list[str]:
    return sorted(yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["hosts"])


def address_of(name: str) -> str:
    return str(yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["hosts"][name]["ansible_host"])


@pytest.fixture(scope="module")
def hub_py(host_of: Callable[[str], Any]) -> Callable[[str], Any]:
    """Run Python with sciplat_hub.directory on the hub host; returns what the code printed (JSON)."""

    def run(code: str) -> Any:
        result = host_of(HUB).run(f"{PY} -c {shlex.quote(PRELUDE + code)}")
        assert result.rc == 0, f"on {HUB}: {result.stderr[-2000:]}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


def ldap3_on_hub(host_of: Callable[[str], Any], code: str) -> Any:
    """Run raw ldap3 code on the hub host (another host than the directory's)."""
    result = host_of(HUB).run(f"{PY} -c {shlex.quote(code)}")
    assert result.rc == 0, f"on {HUB}: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1)


@pytest.fixture(scope="module")
def alice(hub_py: Callable[[str], Any]) -> dict[str, Any]:
    hub_py("d.enable_user('dirtest-alice') if d.get_user('dirtest-alice') else None; out(None)")
    account = hub_py("out(d.ensure_user('dirtest-alice', display_name='Alice Test', email='alice@example.org'))")
    hub_py("d.ensure_group('dirtest-team', description='test'); out(d.add_member('dirtest-team', 'dirtest-alice'))")
    return dict(account)


def test_account_from_the_module(alice: dict[str, Any], hub_py: Callable[[str], Any]) -> None:
    assert alice["username"] == "dirtest-alice"
    assert 20000 <= alice["uid"] <= 59999 and alice["gid"] == alice["uid"]
    assert (alice["home"], alice["shell"], alice["disabled"]) == ("/home/dirtest-alice", "/bin/bash", False)
    again = hub_py("out(d.ensure_user('dirtest-alice'))")
    assert again["uid"] == alice["uid"], "ensure_user must return the same uid every time"
    team = hub_py("out(d.get_group('dirtest-team'))")
    assert 60000 <= team["gid"] <= 99999 and "dirtest-alice" in team["members"]
    assert [g["name"] for g in hub_py("out(d.groups_of('dirtest-alice'))")] == ["dirtest-team"]


@pytest.mark.parametrize("name", inventory_hosts())
def test_same_uid_on_every_host(name: str, alice: dict[str, Any], host_of: Callable[[str], Any]) -> None:
    host = host_of(name)

    def entry() -> str:
        result = host.run("getent passwd dirtest-alice")
        return str(result.stdout.strip()) if result.rc == 0 else ""

    line = wait_for(entry)
    assert line, f"getent passwd dirtest-alice finds nothing on {name}"
    fields = line.split(":")
    assert fields[2:4] == [str(alice["uid"]), str(alice["gid"])], line
    assert fields[5:7] == ["/home/dirtest-alice", "/bin/bash"], line

    def id_with_team() -> Any:
        result = host.run("id dirtest-alice")
        return result if "(dirtest-team)" in result.stdout else None

    groups = wait_for(id_with_team)
    assert groups, f"id dirtest-alice on {name} does not list dirtest-team"
    assert f"uid={alice['uid']}(dirtest-alice) gid={alice['gid']}(dirtest-alice)" in groups.stdout
    team = host.run("getent group dirtest-team")
    assert team.rc == 0 and "dirtest-alice" in team.stdout.strip().split(":")[3].split(",")


def test_deleted_uid_is_never_reused(hub_py: Callable[[str], Any]) -> None:
    first = hub_py("d.delete_user('dirtest-tmp'); out(d.ensure_user('dirtest-tmp'))")
    hub_py("d.delete_user('dirtest-tmp'); out(None)")
    assert hub_py("out(d.get_user('dirtest-tmp'))") is None
    second = hub_py("out(d.ensure_user('dirtest-tmp'))")
    assert second["uid"] > first["uid"], f"uid {first['uid']} was handed out again after its user was deleted"


def test_disabled_user_cannot_bind_or_log_in(hub_py: Callable[[str], Any], host_of: Callable[[str], Any]) -> None:
    password = pysecrets.token_urlsafe(18)
    hub_py(
        "d.ensure_user('dirtest-bob'); d.enable_user('dirtest-bob'); "
        f"d.set_password('dirtest-bob', {password!r}); out(None)"
    )
    assert hub_py(f"out(d.authenticate('dirtest-bob', {password!r}))") is True
    assert hub_py("out(d.authenticate('dirtest-bob', 'wrong password'))") is False
    try:
        assert hub_py("out(d.disable_user('dirtest-bob'))")["disabled"] is True
        assert hub_py(f"out(d.authenticate('dirtest-bob', {password!r}))") is False, "a disabled user could bind"
        # SSSD on another host refuses the account (shadowExpire); it still resolves.
        data = host_of(DIRECTORY)
        data.run("sss_cache -u dirtest-bob")
        check = data.run("sssctl user-checks -a acct -s sshd dirtest-bob")
        assert "pam_acct_mgmt: User account has expired" in check.stderr, check.stdout + check.stderr
    finally:
        hub_py("d.enable_user('dirtest-bob'); out(None)")
    assert hub_py(f"out(d.authenticate('dirtest-bob', {password!r}))") is True
    data.run("sss_cache -u dirtest-bob")
    check = data.run("sssctl user-checks -a acct -s sshd dirtest-bob")
    assert "pam_acct_mgmt: Success" in check.stderr, check.stdout + check.stderr


def test_no_password_hash_for_anonymous_or_reader(
    hub_py: Callable[[str], Any], host_of: Callable[[str], Any], secret: Callable[[str], Any]
) -> None:
    hub_py(f"d.ensure_user('dirtest-bob'); d.set_password('dirtest-bob', {pysecrets.token_urlsafe(18)!r}); out(None)")
    code = f"""
import json, ssl, ldap3
tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file='/etc/sciplat/pki/ca.crt')
server = ldap3.Server('ldaps://{address_of(DIRECTORY)}:636', use_ssl=True, tls=tls)
found = {{}}
for who, dn, pw in [('anonymous', None, None),
                    ('reader', 'cn=reader,{BASE_DN}', {secret("directory_reader_password")!r}),
                    ('provisioner', 'cn=provisioner,{BASE_DN}', {secret("directory_provisioner_password")!r})]:
    conn = ldap3.Connection(server, user=dn, password=pw, auto_bind=True)
    conn.search('ou=people,{BASE_DN}', '(uid=dirtest-bob)', attributes=['uid', 'uidNumber', 'userPassword'])
    found[who] = [{{k: str(v) for k, v in e['attributes'].items() if v}} for e in conn.response
                  if e['type'] == 'searchResEntry']
print(json.dumps(found))
"""
    found = ldap3_on_hub(host_of, code)
    assert found["anonymous"] == [], f"anonymous can read people: {found['anonymous']}"
    assert found["reader"] and "uidNumber" in found["reader"][0], "the reader (SSSD) must see users"
    for who in ("reader", "provisioner"):
        assert all("userPassword" not in entry for entry in found[who]), f"{who} can read password hashes"


def test_simple_bind_without_tls_is_refused(host_of: Callable[[str], Any], secret: Callable[[str], Any]) -> None:
    code = f"""
import json, ssl, ldap3
pw = {secret("directory_reader_password")!r}
server = ldap3.Server('ldap://{address_of(DIRECTORY)}:389')
plain = ldap3.Connection(server, user='cn=reader,{BASE_DN}', password=pw)
plain_ok = plain.bind()
tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file='/etc/sciplat/pki/ca.crt')
server = ldap3.Server('ldap://{address_of(DIRECTORY)}:389', tls=tls)
starttls = ldap3.Connection(server, user='cn=reader,{BASE_DN}', password=pw)
starttls.open(); starttls.start_tls()
print(json.dumps({{'plain': plain_ok, 'plain_result': plain.result['description'], 'starttls': starttls.bind()}}))
"""
    result = ldap3_on_hub(host_of, code)
    assert result["plain"] is False and result["plain_result"] == "confidentialityRequired", result
    assert result["starttls"] is True, "a bind after StartTLS must work"


def test_provisioner_writes_only_people_and_groups(host_of: Callable[[str], Any], secret: Callable[[str], Any]) -> None:
    code = f"""
import json, ssl, ldap3
tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file='/etc/sciplat/pki/ca.crt')
server = ldap3.Server('ldaps://{address_of(DIRECTORY)}:636', use_ssl=True, tls=tls)
conn = ldap3.Connection(server, user='cn=provisioner,{BASE_DN}', password={secret("directory_provisioner_password")!r},
                        auto_bind=True)
added = conn.add('cn=intruder,{BASE_DN}', ['organizationalRole'], {{'cn': 'intruder'}})
add_result = conn.result['description']
changed = conn.modify('cn=reader,{BASE_DN}', {{'description': [(ldap3.MODIFY_REPLACE, ['changed'])]}})
print(json.dumps({{'added': added, 'add_result': add_result, 'changed': changed}}))
"""
    result = ldap3_on_hub(host_of, code)
    assert result["added"] is False and result["add_result"] == "insufficientAccessRights", result
    assert result["changed"] is False, "the provisioner changed an entry outside ou=people/ou=groups"


def test_directory_ports_closed_to_other_machines(deployed: dict[str, Any]) -> None:
    # This machine (the podman gateway of the bed's network) is not a platform host.
    for port in (389, 636):
        with pytest.raises(OSError), socket.create_connection((address_of(DIRECTORY), port), timeout=3):
            pass
