"""The synthetic user: a bot that uses the platform like a person, as metrics.

Run by ``sciplat-probe.service`` (a timer, on the monitor host). One run:

1. ``signin``: with the hub service token of ``sciplat-probe`` (scopes limited to
   the bot's own account) make sure the bot user exists, get a short-lived token
   for it and check the hub answers ``/hub/api/user`` with the bot's name;
2. ``spawn``: start the bot's server through the hub REST API and wait until it is ready;
3. ``cell``: start a kernel and run a cell over the kernel WebSocket;
4. ``s3``: from inside that server, write, read and delete an object in the bot's
   home bucket with the server's S3 environment (AWS_*, SCIPLAT_HOME_BUCKET);
5. ``mydb``: from inside that server, query the bot's MyDB with its PG* environment;
6. ``job``: from inside that server, submit a one-second Slurm job and wait for it;
7. ``stop``: stop the server and wait until the hub says it is gone.

Everything goes through the platform's public URL (the gateway, TLS verified
against the platform CA), like a user. Steps of components that are not deployed
(``steps`` in the settings) are skipped: not run, not exported. Steps that could
not run because an earlier one failed are not exported either, so only the
failing step reports 0. Each failure logs one sentence naming the step and the error.

Results go to node_exporter's textfile collector (``sciplat_probe.prom``, an
atomic write): ``sciplat_probe_step_success{step}``, ``sciplat_probe_step_duration_seconds{step}``
and ``sciplat_probe_last_run_timestamp_seconds``.

    sciplat-probe [run] [--settings FILE]   one run (exit 0 when it completed, failing steps or not)
    sciplat-probe status [--settings FILE]  the last run's age and failing steps (exit 1 when unhealthy)

Settings: ``/etc/sciplat/probe/client.json`` (0600 root, written by roles/probe).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_FILE = Path("/etc/sciplat/probe/client.json")
METRICS_FILE_NAME = "sciplat_probe.prom"
STEPS = ("signin", "spawn", "cell", "s3", "mydb", "job", "stop")
# steps that only run when their component is deployed (settings "steps")
OPTIONAL_STEPS = ("s3", "mydb", "job")

log = logging.getLogger("sciplat-probe")


class ProbeError(Exception):
    """A step failed; the message is a sentence saying what went wrong."""


# ------------------------------------------------------------------ settings


@dataclass
class Settings:
    public_url: str
    service_token: str = field(repr=False)
    user: str = "sciplat-probe"
    ca_cert: str = "/etc/sciplat/pki/ca.crt"
    # "host[:port]" to connect to instead of what the public URL's name resolves to
    # (a test bed whose public URL is a port published on another machine's loopback)
    gateway_address: str = ""
    textfile_directory: str = "/var/lib/prometheus/node-exporter"
    steps: dict[str, bool] = field(default_factory=dict)
    spawn_timeout: float = 180
    step_timeout: float = 60
    token_lifetime: int = 900
    interval_seconds: int = 300

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> Settings:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def enabled(self, step: str) -> bool:
        return step not in OPTIONAL_STEPS or bool(self.steps.get(step, False))

    @property
    def metrics_file(self) -> Path:
        return Path(self.textfile_directory) / METRICS_FILE_NAME


def from_host_config(path: Path = CONFIG_FILE) -> Settings:
    return Settings.load(path)


# ------------------------------------------------------------------ HTTP through the gateway


def _split_address(address: str, default_port: int) -> tuple[str, int]:
    if not address:
        raise ValueError("empty address")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, default_port


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the public name (SNI, Host, certificate check), connected to `address` when given."""

    def __init__(self, host: str, port: int, address: tuple[str, int] | None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        if self._address is None:
            super().connect()
            return
        raw = socket.create_connection(self._address, self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


class Public:
    """The platform's public URL, as a user's client reaches it."""

    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.public_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"public_url {settings.public_url!r} must be an https:// URL")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/")
        self.context = ssl.create_default_context(cafile=settings.ca_cert)
        self.address = _split_address(settings.gateway_address, 443) if settings.gateway_address else None
        self.timeout = settings.step_timeout

    def connection(self, timeout: float | None = None) -> _Connection:
        return _Connection(self.host, self.port, self.address, context=self.context, timeout=timeout or self.timeout)

    def socket(self, timeout: float | None = None) -> ssl.SSLSocket:
        """A TLS socket to the gateway (for the kernel WebSocket)."""
        address = self.address or (self.host, self.port)
        raw = socket.create_connection(address, timeout or self.timeout)
        return self.context.wrap_socket(raw, server_hostname=self.host)

    def request(
        self, method: str, path: str, token: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        conn = self.connection(timeout)
        headers = {"Authorization": f"token {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self.base + path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ProbeError(f"{method} {path} did not answer: {exc}") from exc
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")[:300]

    def events(self, path: str, token: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Server-sent events of the hub (the spawn progress stream)."""
        conn = self.connection(timeout)
        try:
            conn.request(
                "GET", self.base + path, headers={"Authorization": f"token {token}", "Accept": "text/event-stream"}
            )
            response = conn.getresponse()
            if response.status != 200:
                raise ProbeError(f"GET {path} answered {response.status}: {response.read()[:300]!r}")
            while True:
                line = response.readline()
                if not line:
                    return
                text = line.decode(errors="replace").strip()
                if text.startswith("data:"):
                    yield json.loads(text[5:].strip())
        except (OSError, http.client.HTTPException) as exc:
            raise ProbeError(f"GET {path} did not answer: {exc}") from exc
        finally:
            conn.close()


def _detail(body: Any) -> str:
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(body)[:300]


# ------------------------------------------------------------------ the cells run inside the server

# Inside the bot's server, with nothing but its environment and the standard
# library (plus psycopg2 when the server's Python has it): what a user's notebook
# does with boto3, psql and sbatch.
S3_CELL = r"""
import datetime, hashlib, hmac, http.client, os, socket, ssl, urllib.parse
def _sciplat_probe_s3(gateway):
    env = os.environ
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SCIPLAT_HOME_BUCKET") if not env.get(k)]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if missing or not endpoint:
        raise RuntimeError("the server has no S3 settings: missing " + ", ".join(missing or ["AWS_ENDPOINT_URL_S3"]))
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or 443
    netloc = host if port == 443 else f"{host}:{port}"
    region = env.get("AWS_DEFAULT_REGION") or "us-east-1"
    cafile = env.get("AWS_CA_BUNDLE") or None
    context = ssl.create_default_context(cafile=cafile)
    key = "sciplat-probe/" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    payload = os.urandom(1024)
    def call(method, body=b""):
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        path = "/" + urllib.parse.quote(env["SCIPLAT_HOME_BUCKET"]) + "/" + urllib.parse.quote(key)
        digest = hashlib.sha256(body).hexdigest()
        headers = {"host": netloc, "x-amz-content-sha256": digest, "x-amz-date": stamp}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, digest])
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + env["AWS_SECRET_ACCESS_KEY"]).encode()
        for part in (day, region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={env['AWS_ACCESS_KEY_ID']}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        address = gateway or (host, port)
        raw = socket.create_connection(address, 30)
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
        conn.sock = context.wrap_socket(raw, server_hostname=host)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise RuntimeError(f"S3 {method} {endpoint}{path} answered {response.status}: {data[:200]!r}")
        return data
    call("PUT", payload)
    if call("GET") != payload:
        raise RuntimeError("S3 GET returned other bytes than the PUT wrote")
    call("DELETE")
    print("s3 ok", env["SCIPLAT_HOME_BUCKET"])
_sciplat_probe_s3(GATEWAY)
"""

MYDB_CELL = r"""
import os, subprocess
def _sciplat_probe_mydb():
    if not os.environ.get("PGHOST") or not os.environ.get("PGDATABASE"):
        raise RuntimeError("the server has no MyDB settings (PGHOST, PGDATABASE)")
    query = "select current_user, current_database(), 6*7"
    try:
        import psycopg2
    except ImportError:
        out = subprocess.run(["psql", "-XAtc", query], capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise RuntimeError("psql failed: " + out.stderr.strip()[-300:])
        row = out.stdout.strip().split("|")
    else:
        with psycopg2.connect(connect_timeout=15) as conn, conn.cursor() as cur:
            cur.execute(query)
            row = [str(v) for v in cur.fetchone()]
        conn.close()
    if row[-1] != "42":
        raise RuntimeError(f"MyDB answered {row!r}")
    print("mydb ok", row[0], row[1])
_sciplat_probe_mydb()
"""

JOB_CELL = r"""
import os, subprocess
def _sciplat_probe_job():
    out = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--job-name=sciplat-probe", "--time=2", "--ntasks=1",
         "--mem=64M", "--output=/dev/null", "--wrap", "sleep 1"],
        capture_output=True, text=True, timeout=TIMEOUT)
    if out.returncode:
        why = (out.stderr or out.stdout).strip()[-300:]
        raise RuntimeError("sbatch --wait failed (exit %d): %s" % (out.returncode, why))
    print("job ok", out.stdout.strip())
_sciplat_probe_job()
"""


# ------------------------------------------------------------------ the run


@dataclass
class StepResult:
    step: str
    ok: bool
    seconds: float
    error: str = ""


def execute_request(code: str, username: str) -> dict[str, Any]:
    """A Jupyter-protocol execute_request for CODE on the shell channel; its id is header.msg_id."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": username,
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
    }


def cell_output(ws: Any, msg_id: str, deadline: float) -> str:
    """Read the kernel's messages about MSG_ID until it is idle again: the cell's stdout.
    ProbeError names the exception when the cell failed, or says it ran out of time."""
    out: list[str] = []
    while True:
        if time.monotonic() > deadline:
            raise ProbeError("the cell did not finish in time")
        reply = json.loads(ws.recv())
        if reply.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = reply.get("msg_type")
        if kind == "stream":
            out.append(reply["content"]["text"])
        elif kind == "error":
            content = reply["content"]
            raise ProbeError(f"{content.get('ename')}: {content.get('evalue')}")
        elif kind == "status" and reply["content"].get("execution_state") == "idle":
            return "".join(out)


class Probe:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.public = Public(settings)
        self.user = settings.user
        self.user_token = ""
        self.token_id = ""

    # -- hub API
    def hub(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        return self.public.request(method, "/hub/api" + path, token or self.user_token, body)

    def sign_in(self) -> None:
        service = self.settings.service_token
        status, body = self.hub("GET", f"/users/{self.user}", service)
        if status == 404:
            status, body = self.hub("POST", f"/users/{self.user}", service)
            if status not in (201, 409):
                raise ProbeError(f"the hub refused to create the bot user {self.user} ({status}: {_detail(body)})")
        elif status != 200:
            raise ProbeError(f"the hub refused the probe's service token ({status}: {_detail(body)})")
        status, body = self.hub(
            "POST",
            f"/users/{self.user}/tokens",
            service,
            {"note": "sciplat-probe run", "expires_in": int(self.settings.token_lifetime)},
        )
        if status not in (200, 201) or not isinstance(body, dict) or "token" not in body:
            raise ProbeError(f"the hub gave no token for {self.user} ({status}: {_detail(body)})")
        self.user_token, self.token_id = body["token"], str(body.get("id", ""))
        status, body = self.hub("GET", "/user")
        if status != 200 or not isinstance(body, dict) or body.get("name") != self.user:
            raise ProbeError(f"/hub/api/user with the bot's token answered {status}: {_detail(body)}")

    def _server(self) -> dict[str, Any] | None:
        status, body = self.hub("GET", f"/users/{self.user}")
        if status != 200 or not isinstance(body, dict):
            raise ProbeError(f"the hub did not describe {self.user} ({status}: {_detail(body)})")
        servers = body.get("servers") or {}
        server: dict[str, Any] | None = servers.get("")
        return server

    def spawn(self) -> None:
        server = self._server()
        if server and server.get("ready"):
            return  # left running by a run that was killed: use it
        if not server:
            status, body = self.hub("POST", f"/users/{self.user}/server")
            if status not in (201, 202):
                raise ProbeError(f"the hub refused to start the server ({status}: {_detail(body)})")
        deadline = time.monotonic() + self.settings.spawn_timeout
        last = ""
        try:
            for event in self.public.events(
                f"/hub/api/users/{self.user}/server/progress", self.user_token, self.settings.spawn_timeout
            ):
                last = str(event.get("message", "")) or last
                if event.get("failed"):
                    raise ProbeError(f"the server failed to start: {last}")
                if event.get("ready"):
                    return
                if time.monotonic() > deadline:
                    break
        except ProbeError:
            raise
        except (TimeoutError, OSError) as exc:
            last = f"{last} ({exc})"
        server = self._server()
        if server and server.get("ready"):
            return
        raise ProbeError(
            f"the server was not ready within {self.settings.spawn_timeout:.0f} s; last progress: {last or 'none'}"
        )

    def stop(self) -> None:
        status, body = self.hub("DELETE", f"/users/{self.user}/server")
        if status not in (202, 204, 400):
            raise ProbeError(f"the hub refused to stop the server ({status}: {_detail(body)})")
        deadline = time.monotonic() + self.settings.step_timeout
        while time.monotonic() < deadline:
            server = self._server()
            if not server:
                return
            time.sleep(1)
        raise ProbeError(
            f"the server was still there {self.settings.step_timeout:.0f} s after the hub was told to stop it"
        )

    def revoke_token(self) -> None:
        if self.token_id:
            self.hub("DELETE", f"/users/{self.user}/tokens/{self.token_id}", self.settings.service_token)

    # -- the kernel
    def start_kernel(self) -> str:
        status, body = self.public.request(
            "POST", f"/user/{self.user}/api/kernels", self.user_token, {"name": "python3"}
        )
        if status != 201 or not isinstance(body, dict):
            raise ProbeError(f"the server refused to start a kernel ({status}: {_detail(body)})")
        return str(body["id"])

    def stop_kernel(self, kernel: str) -> None:
        self.public.request("DELETE", f"/user/{self.user}/api/kernels/{kernel}", self.user_token)

    def execute(self, kernel: str, code: str, timeout: float) -> str:
        """Run CODE in the kernel over its WebSocket; its stdout, or ProbeError with the exception."""
        import websocket  # websocket-client, declared for the monitor hosts

        public = self.public
        netloc = public.host if public.port == 443 else f"{public.host}:{public.port}"
        url = f"wss://{netloc}{public.base}/user/{self.user}/api/kernels/{kernel}/channels"
        try:
            ws = websocket.create_connection(
                url,
                header=[f"Authorization: token {self.user_token}"],
                socket=public.socket(timeout),
                timeout=timeout,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise ProbeError(f"the kernel WebSocket did not open: {exc}") from exc
        message = execute_request(code, self.user)
        try:
            ws.send(json.dumps(message))
            return cell_output(ws, message["header"]["msg_id"], time.monotonic() + timeout)
        except (OSError, websocket.WebSocketException) as exc:
            raise ProbeError(f"the kernel WebSocket broke: {exc}") from exc
        finally:
            ws.close()

    # -- one run
    def run(self) -> list[StepResult]:
        results: list[StepResult] = []
        settings = self.settings

        def step(name: str, action: Callable[[], None]) -> bool:
            started = time.monotonic()
            try:
                action()
            except Exception as exc:  # every failure becomes a sentence and a 0
                error = str(exc) if isinstance(exc, ProbeError) else f"{type(exc).__name__}: {exc}"
                results.append(StepResult(name, False, time.monotonic() - started, error))
                log.error("step %s failed: %s", name, error)
                return False
            results.append(StepResult(name, True, time.monotonic() - started))
            log.info("step %s ok (%.1f s)", name, time.monotonic() - started)
            return True

        if not step("signin", self.sign_in):
            return results
        try:
            spawned = step("spawn", self.spawn)
            if spawned:
                kernel: list[str] = []

                def cell() -> None:
                    kernel.append(self.start_kernel())
                    got = self.execute(kernel[0], "print(6 * 7)", settings.step_timeout).strip()
                    if got != "42":
                        raise ProbeError(f"the cell print(6 * 7) printed {got!r}")

                try:
                    if step("cell", cell):
                        gateway = list(self.public.address) if self.public.address else None
                        cells = {
                            "s3": f"GATEWAY = {gateway!r}\n" + S3_CELL,
                            "mydb": MYDB_CELL,
                            "job": f"TIMEOUT = {int(settings.step_timeout)}\n" + JOB_CELL,
                        }
                        for name in OPTIONAL_STEPS:
                            if settings.enabled(name):
                                code = cells[name]
                                step(name, lambda code=code: self._cell(kernel[0], code))  # type: ignore[misc]
                finally:
                    if kernel:
                        try:
                            self.stop_kernel(kernel[0])
                        except ProbeError as exc:
                            log.warning("could not stop the kernel: %s", exc)
        finally:
            # stop what this run may have started, even when the spawn failed half-way
            step("stop", self.stop)
            try:
                self.revoke_token()
            except ProbeError as exc:
                log.warning("could not revoke the run's token: %s", exc)
        return results

    def _cell(self, kernel: str, code: str) -> None:
        self.execute(kernel, code, self.settings.step_timeout + 15)


# ------------------------------------------------------------------ metrics


def render_metrics(results: list[StepResult], finished: float) -> str:
    lines = [
        "# HELP sciplat_probe_step_success 1 when the synthetic user's step succeeded in its last run, else 0.",
        "# TYPE sciplat_probe_step_success gauge",
        *(f'sciplat_probe_step_success{{step="{r.step}"}} {1 if r.ok else 0}' for r in results),
        "# HELP sciplat_probe_step_duration_seconds How long the step took in the synthetic user's last run.",
        "# TYPE sciplat_probe_step_duration_seconds gauge",
        *(f'sciplat_probe_step_duration_seconds{{step="{r.step}"}} {r.seconds:.3f}' for r in results),
        "# HELP sciplat_probe_last_run_timestamp_seconds When the synthetic user's last run finished.",
        "# TYPE sciplat_probe_last_run_timestamp_seconds gauge",
        f"sciplat_probe_last_run_timestamp_seconds {finished:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_metrics(path: Path, text: str) -> None:
    """Atomic: node_exporter never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def parse_metrics(text: str) -> tuple[float | None, dict[str, int]]:
    """(last run timestamp, {step: success}) from a metrics file."""
    last: float | None = None
    steps: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("sciplat_probe_last_run_timestamp_seconds "):
            last = float(line.split()[1])
        elif line.startswith('sciplat_probe_step_success{step="'):
            name = line.split('"')[1]
            steps[name] = int(float(line.rsplit(" ", 1)[1]))
    return last, steps


def status(settings: Settings, now: float | None = None) -> tuple[bool, str]:
    """The last run in one line, and whether it is healthy (recent, no failing step)."""
    path = settings.metrics_file
    if not path.is_file():
        return False, f"no run yet ({path} missing)"
    last, steps = parse_metrics(path.read_text(encoding="utf-8"))
    if last is None:
        return False, f"{path} has no last-run time"
    age = (now if now is not None else time.time()) - last
    failing = sorted(s for s, ok in steps.items() if not ok)
    text = f"last run {age / 60:.0f} min ago; steps {len(steps) - len(failing)}/{len(steps)} ok"
    if failing:
        text += "; failing: " + ", ".join(failing)
    too_old = age > 3 * max(settings.interval_seconds, 60) + 300
    if too_old:
        text += " (too long ago: is sciplat-probe.timer running?)"
    return not failing and not too_old, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-probe", description="The platform's synthetic user.")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "status"])
    parser.add_argument("--settings", type=Path, default=CONFIG_FILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = Settings.load(args.settings)
    except (OSError, ValueError, TypeError) as exc:
        print(f"sciplat-probe: cannot read {args.settings}: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        healthy, text = status(settings)
        print(text)
        return 0 if healthy else 1
    results = Probe(settings).run()
    write_metrics(settings.metrics_file, render_metrics(results, time.time()))
    failed = [r.step for r in results if not r.ok]
    log.info(
        "run done: %d/%d steps ok%s",
        len(results) - len(failed),
        len(results),
        ("; failing: " + ", ".join(failed)) if failed else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
