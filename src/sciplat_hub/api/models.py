"""The API's request and answer bodies (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Phase = Literal["PENDING", "QUEUED", "EXECUTING", "COMPLETED", "ERROR", "ABORTED"]


class Problem(BaseModel):
    detail: str = Field(description="What went wrong, in a sentence, and what to do about it.")


class Health(BaseModel):
    ok: bool


class Quotas(BaseModel):
    home_bytes: int | None = Field(description="Quota of your home directory; null: no quota or no shared filesystem.")
    bucket_bytes: int | None = Field(description="Quota of your object storage; null: none.")
    mydb_bytes: int | None = Field(description="Quota of your MyDB database; null: none.")


class Usage(BaseModel):
    home_bytes: int | None
    bucket_bytes: int | None
    mydb_bytes: int | None
    core_hours: float | None = Field(description="Core-hours your Slurm jobs used (as Slurm's fair share counts them).")


class Me(BaseModel):
    name: str
    admin: bool
    groups: list[str] = Field(description="Names of the collaborations you are a member of.")
    quotas: Quotas
    usage: Usage


class S3Credentials(BaseModel):
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "default"
    bucket: str = Field(description="Your home bucket.")


class MyDBCredentials(BaseModel):
    host: str
    port: int
    dbname: str
    user: str
    password: str
    sslmode: str


class Credentials(BaseModel):
    s3: S3Credentials | None
    mydb: MyDBCredentials | None


class Allocation(BaseModel):
    account: str
    core_hours_awarded: float | None = Field(description="null: the account has no awarded limit.")
    core_hours_used: float = Field(description="By every member of the account.")
    core_hours_remaining: float | None
    core_hours_mine: float = Field(description="By your own jobs in this account.")
    until: str | None = Field(description="Last day of the allocation (YYYY-MM-DD), if it has one.")


class Collaboration(BaseModel):
    name: str
    gid: int
    description: str
    owners: list[str]
    members: list[str]
    directory: str | None
    bucket: str | None
    database: str | None
    slurm_account: str | None
    deleted: bool


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}$", description="Lower-case letters, digits and '-'.")
    description: str = Field(default="", max_length=500)


class MemberRole(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["owner", "member"] = "member"


class Share(BaseModel):
    id: str
    kind: Literal["path", "prefix", "table"]
    owner: str
    target: str
    grantee: str
    mode: Literal["ro", "rw"]
    created: str
    link: str | None


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["path", "prefix", "table"]
    target: str = Field(min_length=1, max_length=1024)
    grantee: str = Field(pattern=r"^(user|group):[a-z][a-z0-9-]{0,31}$", description="user:NAME or group:NAME")
    mode: Literal["ro", "rw"] = "ro"


class Shares(BaseModel):
    by_me: list[Share]
    with_me: list[Share]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    script: str = Field(
        min_length=1,
        max_length=1024 * 1024,
        description="The batch script; without a #! line it runs with /bin/bash. It runs in your home directory.",
    )
    account: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,63}$", description="Slurm account.")
    partition: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    time_limit: int | None = Field(default=None, ge=1, le=525600, description="Minutes.")
    cpus: int | None = Field(default=None, ge=1, le=1024)
    mem: str | None = Field(default=None, pattern=r"^[0-9]{1,9}[KMGT]?$", description="Memory, e.g. 4G or 500M.")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")


class Job(BaseModel):
    id: str
    name: str
    phase: Phase = Field(description="UWS phase.")
    slurm_state: str = Field(description="Slurm's own state word.")
    reason: str = Field(description="Why Slurm keeps it waiting (squeue's reason), if it waits.")
    account: str | None
    partition: str | None
    submitted: str | None
    started: str | None
    ended: str | None
    exit_code: int | None


class JobResults(BaseModel):
    id: str
    phase: Phase
    exit_code: int | None
    stdout: str = Field(description="The last 64 KiB of the job's standard output.")
    stderr: str = Field(description="The last 64 KiB of the job's standard error.")


class PhaseChange(BaseModel):
    PHASE: Literal["ABORT"]
