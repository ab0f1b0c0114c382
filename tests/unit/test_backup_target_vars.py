"""The backup role's view of `backup.target`: which bucket and prefix the hosts write to.

Evaluated by ansible-playbook itself (roles/backup/vars/main.yml loaded as a vars file, on
localhost), because the regular expressions live in folded YAML scalars, where a wrong
number of backslashes once made every s3:// target's bucket a literal '\\1'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def target_vars(tmp_path: Path, target: str) -> dict[str, str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars_files": [str(REPO / "roles" / "backup" / "vars" / "main.yml")],
                    "tasks": [
                        {
                            "name": "bucket and prefix",
                            "ansible.builtin.debug": {
                                "msg": "{{ {'bucket': __backup_bucket, 'prefix': __backup_prefix} | to_json }}"
                            },
                        }
                    ],
                }
            ]
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    extra = {"backup_target": target, "sciplat_platform_name": "demo"}
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook), "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    return dict(json.loads(result) if isinstance(result, str) else result)


@pytest.mark.parametrize(
    ("target", "bucket", "prefix"),
    [
        ("platform", "sciplat-backup", "demo"),
        ("s3://offsite-backups", "offsite-backups", ""),
        ("s3://offsite-backups/sites/demo/", "offsite-backups", "sites/demo"),
    ],
)
def test_the_target_names_the_bucket_and_prefix_the_hosts_write_to(
    tmp_path: Path, target: str, bucket: str, prefix: str
) -> None:
    assert target_vars(tmp_path, target) == {"bucket": bucket, "prefix": prefix}
