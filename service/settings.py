"""Service settings, read from ``DIFFMAMBA_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

# A CPU pass is memory-bound: per tile, batch 2 is slightly cheaper than 1 and larger batches
# are dearer (bench/serve.py: 1.20x throughput at 2, 0.89x at 8 on 2 cores). A GPU pass is
# launch-bound and gains from every tile added.
CPU_MAX_BATCH, CUDA_MAX_BATCH = 2, 8

EngineName = Literal["torch", "compile", "onnxruntime", "tensorrt"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFMAMBA_", extra="ignore")

    models_dir: Path = Field(REPO_MODELS_DIR, description="one checkpoint per task, named after it")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int | None = Field(
        None, ge=1, le=256, description="tiles per network pass (default: 2 on CPU, 8 on CUDA)"
    )
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_size: int = Field(256, ge=1, description="queued tiles per task before 503")
    request_timeout_s: float = Field(120.0, gt=0, description="deadline per request (504 after)")
    tile_size: int = Field(256, ge=8, le=4096)
    tile_overlap: int = Field(32, ge=0, le=2048)
    default_steps: int = Field(4, ge=1, le=50)
    max_upload_bytes: int = Field(32 * 2**20, ge=1)
    max_pixels: int = Field(4096 * 4096, ge=1)
    whole_image_max_pixels: int = Field(
        512 * 512, ge=1, description="single-pass models run whole images up to this size"
    )
    drain_timeout_s: float = Field(30.0, ge=0)
    memory_budget_mb: int | None = Field(
        None, ge=64, description="resident memory the process may use; requests reserve their "
        "estimated peak from it before decoding (default: 75% of the cgroup limit, else of RAM)")
    # HTTP limits (service.api.connection, service.api.timeouts): slow or idle clients.
    header_timeout_s: float = Field(10.0, gt=0, description="a request line and headers must"
                                    " arrive within this; else 408 and the connection closes")
    body_timeout_s: float = Field(30.0, gt=0, description="longest wait for more of a request"
                                  " body (408 after)")
    min_upload_rate: float = Field(4096.0, ge=0, description="bytes/s an upload must average"
                                   " after its first body_timeout_s (408 below); 0: off")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections"
                                        " close after this")
    max_connections: int = Field(1000, ge=1, description="open connections; more get 503")
    max_header_bytes: int = Field(16384, ge=1024, description="request line + headers (431)")
    # Access control (service.api.auth, service.api.cors).
    api_keys_file: Path | None = Field(None, description="keys file of `diffmamba keys`;"
                                       " unset: no authentication")
    rate_limit_per_s: float = Field(5.0, ge=0, description="requests per second per key"
                                    " (token bucket; 0: unlimited)")
    rate_limit_burst: int = Field(20, ge=1, description="requests a key may send at once")
    max_concurrent_per_key: int = Field(4, ge=0, description="requests in progress per key;"
                                        " 0: unlimited")
    auth_exempt_paths: list[str] = Field(
        # The web page and its files hold no data: the page asks for the key itself.
        default_factory=lambda: ["/healthz", "/readyz", "/metrics", "/", "/static/*"],
        description='paths reachable without a key, JSON; "/prefix/*" for a prefix')
    cors_allow_origins: list[str] = Field(
        default_factory=list, description='origins allowed cross-origin, JSON:'
        ' ["https://app.example.com"], or ["*"]; empty: no CORS')
    warmup: bool = True
    # Engines for the network pass (service.engines): built or loaded and warmed at start-up.
    engine: EngineName = Field("torch", description="torch, compile, onnxruntime or tensorrt")
    task_engines: dict[str, EngineName] = Field(
        default_factory=dict, description='per-task override, JSON: {"denoise": "onnxruntime"}'
    )
    engine_cache_dir: Path | None = Field(
        None, description="exported engines when the models directory is read-only"
    )
    precision: Precision = Field(
        "auto", description="network pass precision: auto (bf16 on a CPU with native bf16 when "
        "it stays within 45 dB of fp32, else fp32), fp32, bf16 or fp16 (CUDA)")
    task_precisions: dict[str, Precision] = Field(
        default_factory=dict, description='per-task override, JSON: {"derain": "fp32"}'
    )
    cuda_graphs: bool = Field(True, description="replay CUDA graphs for full tiles (torch, CUDA)")
    # Async jobs (POST /v1/jobs): where they are kept, for how long, and how many run at once.
    job_store: str = Field(
        "local", description="'local' (this process, results on disk) or a redis:// URL shared"
        " by every replica")
    job_dir: Path | None = Field(
        None, description="local store: results (and records) here, kept across restarts;"
        " default: a temporary directory removed at exit")
    job_ttl_s: float = Field(3600.0, gt=0, description="a finished job and its result expire"
                             " this long after it ended")
    job_store_max_bytes: int = Field(1 << 30, ge=1, description="all stored results together;"
                                     " the oldest are evicted above")
    job_concurrency: int = Field(4, ge=1, description="jobs computing at once per replica")
    job_queue_size: int = Field(64, ge=1, description="unfinished jobs per replica before 503")
    job_lease_s: float = Field(15.0, gt=0, description="a job whose replica stops renewing its"
                               " lease this long is marked failed (Redis store)")
    job_poll_s: float = Field(0.25, gt=0, le=60, description="how often a replica checks cancel"
                              " flags and event streams re-read a job (Redis store)")
    job_webhook_hosts: list[str] = Field(
        default_factory=list, description='hosts completion webhooks may call, JSON:'
        ' ["hooks.example.com", ".internal.example.com"]; empty: webhooks refused')
    job_webhook_retries: int = Field(4, ge=0, le=20)
    job_webhook_backoff_s: float = Field(1.0, ge=0, description="first retry delay, doubling")
    job_webhook_timeout_s: float = Field(10.0, gt=0)

    @field_validator("job_store")
    @classmethod
    def _job_store_kind(cls, value: str) -> str:
        if value != "local" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"'local' or a redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
                raise ValueError(f"an origin is scheme://host[:port] or '*', got {origin!r}")
        return value

    @field_validator("tile_size", "tile_overlap")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> Settings:
        if self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than"
                f" tile_size ({self.tile_size})"
            )
        return self


def max_batch_for(settings: Settings, device: object) -> int:
    """The batcher's (and static engines') batch size on ``device``: the setting, else the
    device's default."""
    if settings.max_batch is not None:
        return settings.max_batch
    return CUDA_MAX_BATCH if str(device).startswith("cuda") else CPU_MAX_BATCH
