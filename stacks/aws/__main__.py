"""Pulumi program: a sciplat platform's AWS resources, built from platform.yaml.

Run by ``sciplat up --target aws -i DIR`` through the Automation API (which sets
``sciplat:spec``), or by hand: ``pulumi config set sciplat:spec DIR/platform.yaml``
then ``pulumi up`` in this directory with sciplat's venv (``pip install -e '.[cloud]'``).
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import yaml
from sciplat_aws.program import build

from sciplat.cloud.config import read_public_key, stack_config
from sciplat.spec import PlatformSpec

config = pulumi.Config("sciplat")
spec_path = Path(config.require("spec")).expanduser().resolve()
spec = PlatformSpec.model_validate(yaml.safe_load(spec_path.read_text()))
assert spec.cloud is not None, f"{spec_path} has no cloud section"
key_file = config.get("sshPublicKeyFile") or spec.cloud.ssh_public_key_file
stack = stack_config(spec, ssh_public_key=read_public_key(key_file, spec_path.parent))

for name, value in build(stack).items():
    pulumi.export(name, value)
