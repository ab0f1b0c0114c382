"""`sciplat status` expects Ceph's daemons and mounts only where the spec chose Ceph."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat.status import SERVICES, service_enabled

CEPH = {"ceph", "radosgw"}
MOUNTS = {"cephfs-home", "cephfs-groups"}


def expected(storage: dict[str, str]) -> set[str]:
    spec = PlatformSpec.model_validate({"platform": {"name": "lab", "domain": "lab.example.org"}, "storage": storage})
    hostvars = role_vars(spec, Path("/inv"))
    return {s.name for s in SERVICES if service_enabled(s, hostvars)}


def test_ceph_backend_expects_the_cluster_and_the_mounts() -> None:
    assert expected({"backend": "ceph"}) >= CEPH | MOUNTS


@pytest.mark.parametrize("backend", ["minio", "s3"])
def test_other_backends_do_not_expect_ceph(backend: str) -> None:
    assert not (CEPH & expected({"backend": backend}))


def test_hosts_without_rendered_variables_expect_ceph_as_before() -> None:
    assert {s.name for s in SERVICES if service_enabled(s, {})} >= CEPH | MOUNTS
