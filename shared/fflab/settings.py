"""Every setting of the service, read from ``FFLAB_*`` environment variables.

With nothing set, everything lives under ``var/`` on one machine: SQLite for
the database, kombu's SQLAlchemy transport as the Celery broker, the database
result backend and a local artifact folder. Setting ``FFLAB_DATABASE_URL``,
``FFLAB_BROKER_URL`` and ``FFLAB_S3_BUCKET`` (with endpoint and keys) switches to
PostgreSQL, Redis and S3 without a code change.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUE_KINDS = ("cpu", "gpu")  # the run queues: Settings.queue_name(kind) names each


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FFLAB_", extra="ignore")

    var_dir: Path = Field(Path("var"), description="Home of the embedded defaults below.")
    data_root: Path = Field(Path("data"), description="Where MNIST and Fashion-MNIST are (fflab fetch-data).")
    database_url: str | None = Field(None, description="Default: sqlite:///<var_dir>/fflab.db.")
    broker_url: str | None = Field(None, description="Default: sqla+sqlite:///<var_dir>/broker.db.")
    result_backend: str | None = Field(
        None, description="Default: db+sqlite:///<var_dir>/celery-results.db."
    )
    artifacts_dir: Path | None = Field(None, description="Default: <var_dir>/artifacts.")
    s3_bucket: str | None = Field(None, description="Store artifacts in this S3 bucket.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO).")
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_url: str | None = Field(None, description="Client verbs: default http://<api_host>:<api_port>.")
    api_key: str | None = Field(None, description="Client verbs: default the key in admin_key_file.")
    admin_key_file: Path | None = Field(None, description="Default: <var_dir>/admin.key.")
    public_url: str | None = Field(
        None, description="The URL clients reach the API at (https://fflab.lab.example): absolute URLs in "
                          "responses start with it. Unset: the URL each request came to (its Host header)."
    )
    secret_key: str | None = Field(
        None, description="Signs the web UI's CSRF tokens (an HMAC of the session id). Default: a random "
                          "secret kept in <var_dir>/secret.key (mode 600), made on first use; set it "
                          "(the same on every API process) when the var dir is not shared."
    )
    ui_session_ttl_s: float = Field(
        7 * 24 * 3600, gt=0, description="A web UI sign-in ends this long after it began (sign in again)."
    )
    metrics_token: str | None = Field(
        None, description="A bearer token that may read /metrics (for Prometheus). Unset: only an admin's "
                          "API key may."
    )
    startup_connect_timeout_s: float = Field(
        5.0, gt=0, le=120, description="fflab serve, the API and the worker give up on an unreachable "
                                       "database or broker after this long, with a one-line error."
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or networks (10.0.0.0/8) of reverse proxies whose "
                        "X-Forwarded-For and X-Forwarded-Proto are believed; from anyone else they are ignored."
    )

    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    # Overload (api.overload): each request's blocking work runs in units that take a
    # slot, a thread and (inside it) a pooled connection, and hold none of them while
    # waiting for anything else; beyond the slots, a request waits a moment, then 503.
    database_pool_size: int = Field(
        16, ge=1, le=200, description="PostgreSQL connections each API or worker process keeps open (SQLite: "
                                      "not used). With database_max_overflow, the most it opens at once: size "
                                      "the server's max_connections to the processes times that."
    )
    database_max_overflow: int = Field(
        4, ge=0, le=200, description="PostgreSQL connections a process may open beyond database_pool_size "
                                     "under load, closed again when returned."
    )
    api_db_concurrency: int = Field(
        16, ge=1, le=64, description="Most database units (a request's reads, or its transaction) one API "
                                     "process runs at once, each in a thread on a pooled connection; keep it "
                                     "at most the connection pool (PostgreSQL: database_pool_size + "
                                     "database_max_overflow)."
    )
    api_storage_concurrency: int = Field(
        16, ge=1, le=64, description="Most artifact opens (a file or S3 object and its first chunk) one API "
                                     "process runs at once; the rest of a file streams without a slot."
    )
    api_queue_wait_s: float = Field(
        1.0, gt=0, le=30, description="How long a request waits for a database or storage slot before it is "
                                      "shed: 503 (code unavailable) with Retry-After."
    )
    api_retry_after_s: int = Field(
        2, ge=1, le=300, description="Retry-After (seconds) of the 503 that sheds a request under overload."
    )
    # Server-side limits on submitted specs (422 naming the field above them); the
    # spec's own bounds (fflab.spec) still apply below these.
    max_epochs: int = Field(100_000, ge=1, description="Most epochs of any model (ff, bpff, bp).")
    max_width: int = Field(8192, ge=4, description="Most units per hidden layer.")
    max_layers: int = Field(8, ge=1, description="Most hidden layers.")
    max_seeds: int = Field(100, ge=1, description="Most seeds per experiment.")
    max_train_subset: int = Field(60_000, ge=20, description="Largest train subset (null = whole set, 60000).")
    max_test_subset: int = Field(10_000, ge=20, description="Largest test subset (null = whole set, 10000).")
    max_runs_per_experiment: int = Field(1000, ge=1, description="Most runs one experiment may have.")
    # Representations files (fflab.representations, docs/representations.md).
    representations_max_bytes: int = Field(
        512 * 2**20, ge=1024, description="Largest representations file uploaded (413 above), and most bytes "
                                          "its arrays may declare once decompressed (4x this).")
    representations_max_units: int = Field(8192, ge=1, description="Most units per layer of a representations file.")
    representations_max_images: int = Field(100_000, ge=2, description="Most images (rows) of a representations file.")
    max_queued_runs_per_user: int = Field(
        500, ge=1, description="Most runs a user may have waiting to start (429 above it); large "
                               "enough for the paper sweep (120 runs): fair-share dispatch, not this "
                               "cap, keeps one user from holding every worker.",
        validation_alias=AliasChoices("max_queued_runs_per_user", "FFLAB_MAX_QUEUED_RUNS_PER_USER",
                                      "max_active_runs_per_user", "FFLAB_MAX_ACTIVE_RUNS_PER_USER"),
    )
    capacity_retry_after_s: int = Field(
        30, ge=1, description="Retry-After (seconds) of the 429 that refuses a submission over the cap."
    )
    storage_quota_bytes_per_user: int | None = Field(
        None, ge=0, description="Most bytes of stored artifacts a user's experiments may hold (fflab.usage): a "
                                "submission that would take them over it, by its estimate, is refused (429), "
                                "and a re-analysis once they are at it. Unset: no quota."
    )
    max_queued_run_hours_per_user: float | None = Field(
        None, gt=0, description="Most estimated run-hours (fflab.usage.estimate_run_seconds) a user may have "
                                "waiting or running at once; a submission past it is refused (429). Unset: no "
                                "limit."
    )
    gpus_available: bool = Field(
        False, description="The deployment runs GPU workers: device 'auto' goes to the gpu queue."
    )
    queue_prefix: str = Field("", description="Prefix of the cpu/gpu queue names.")
    runs_per_gpu: int = Field(
        4, ge=1, le=64, description="Runs a GPU worker (fflab worker --gpu N) trains at once on its GPU, "
                                    "each admitted only if its estimated memory fits (fflab.gpu)."
    )
    gpu_memory_margin: float = Field(
        0.10, ge=0, lt=1, description="Fraction of a GPU's memory never handed to runs by admission."
    )
    gpu_admission_wait_s: float = Field(
        300.0, ge=0, description="How long a GPU run waits for memory to free before it goes back to "
                                 "the queue (its estimate fits the GPU, but not now)."
    )
    max_running_fraction: float = Field(
        1.0, gt=0, le=1, description="Most runs one user may have running (or handed to a worker) on a "
                                     "queue, as a fraction of its worker slots (rounded down, at least 1)."
    )
    fair_share_half_life_s: float = Field(
        86_400.0, gt=0, description="Fair share: a user's run-time counts half after this long (the "
                                    "window over which usage decays)."
    )
    expected_run_s: float = Field(
        600.0, gt=0, description="Expected run length on a queue where no run has ended within the "
                                 "half-life (afterwards: the median of those that did)."
    )
    queue_places_ttl_s: float = Field(
        2.0, ge=0, le=60, description="The API reuses a queue snapshot this young for the places it "
                                      "reports (status polls); 0 reads the queue for every request."
    )
    status_cache_ttl_s: float = Field(
        1.0, ge=0, le=60, description="The API reuses an experiment's rendered status this young for "
                                      "the polls of users who may read it; writes through the same "
                                      "process show at once, workers' progress within this time. 0 "
                                      "renders every poll."
    )
    preemption: bool = Field(
        False, description="Stop the longest-running run of the most over-served user at its next "
                           "checkpoint, and requeue it, when an under-served user has waited "
                           "preempt_after_s and every slot is busy."
    )
    preempt_after_s: float = Field(
        1800.0, gt=0, description="With preemption: how long an under-served user's run waits first."
    )
    sweep_interval_s: float = Field(
        15.0, gt=0, description="How often workers sweep: requeue runs of lost workers, dispatch runs "
                                "and aggregations a failed send left."
    )
    task_max_attempts: int = Field(3, ge=1, description="Deliveries of a run task before it fails.")
    broker_visibility_timeout_s: int = Field(
        12 * 3600, ge=1, description="Redis: an unacknowledged run is redelivered after this."
    )
    run_heartbeat_timeout_s: float = Field(
        300.0, gt=0, description="A running run whose own heartbeat is older than this lost its worker "
                                 "(even if the worker still beats): the sweep requeues it (or fails it "
                                 "after task_max_attempts)."
    )
    worker_heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="A worker not heard from for this long is gone: /readyz counts only "
                                "workers heard from within it, and the next sweep requeues its running "
                                "runs (so within this plus sweep_interval_s)."
    )
    worker_restart_backoff_s: float = Field(
        1.0, ge=0, description="fflab serve: wait before restarting its worker after it died; doubles "
                               "while it keeps dying within a minute of its start (at most 30 s)."
    )
    lost_message_grace_s: float = Field(
        10.0, ge=0, description="Redis broker: a run sent this long ago whose message is in no queue "
                                "(the broker restarted without persistence) is sent again."
    )
    upload_attempts: int = Field(
        5, ge=1, description="Tries to store a run's artifacts before the run fails."
    )
    upload_backoff_s: float = Field(
        1.0, ge=0, description="Wait before the second upload try; doubles after each failed try."
    )
    checkpoint_every_epochs: int = Field(
        25, ge=1, description="BP/FF and BP runs checkpoint every this many epochs (FF and SymBa: after "
                              "every layer), so that a redelivered run resumes instead of starting over."
    )
    worker_nice: int = Field(
        10, ge=0, le=19, description="Niceness of worker processes: training yields the CPU to the "
                                     "API where both share a machine (0 = no change)."
    )
    # Disk (fflab.storage.disk_problems): the var dir (SQLite, the broker), the local
    # artifact folder and the folder runs train in must keep this much free.
    min_free_disk_bytes: int = Field(
        200 * 2**20, ge=0, description="Free space the var dir, the artifact folder and the temporary "
                                       "folder runs train in must keep: below it /readyz answers 503, a "
                                       "run does not start, and a running run fails at its next epoch or "
                                       "before its upload, while there is still room to record why "
                                       "(0 turns the checks off)."
    )
    disk_check_interval_s: float = Field(
        5.0, ge=0, description="Least time between a running run's free-space checks."
    )
    # Failed authentication (api.middleware.FailedAuthLimitMiddleware, the limits library).
    auth_failures_per_minute: int = Field(
        30, ge=1, description="Failed authentications (401) one client IP may have per minute; past it "
                              "its 401s become 429 with Retry-After (a valid key still works)."
    )
    # The HTTP server (uvicorn, fflab serve and api.cli): connections and headers.
    max_header_bytes: int = Field(
        64 * 1024, ge=4096, le=16 * 2**20, description="Largest request line plus headers: past it the "
                                                        "connection gets 431 (or 400) and is closed."
    )
    max_header_count: int = Field(100, ge=10, le=10_000, description="Most request headers (431 past it).")
    keep_alive_s: float = Field(
        5.0, gt=0, le=600, description="An idle keep-alive connection is closed after this long."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="A client must send a request's line and headers within this long "
                                        "of its connection opening or its previous response; else the "
                                        "connection is closed (408)."
    )
    max_connections: int = Field(
        1000, ge=1, description="Most connections (and requests) the server holds at once; past it a new "
                                "request gets 503."
    )
    progress_interval_s: float = Field(1.0, ge=0, description="Least time between progress writes.")
    stop_check_interval_s: float = Field(1.0, ge=0, description="Least time between cancel checks.")
    run_log_max_bytes: int = Field(
        256 * 1024, ge=1024, le=64 * 1024 * 1024,
        description="A run's stored log (GET .../runs/{run_id}/log) keeps at most this many bytes: its first "
                    "and last halves, the middle cut with a line saying how much."
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir.resolve() / 'fflab.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.var_dir.resolve() / 'broker.db'}"

    @property
    def resolved_result_backend(self) -> str:
        return self.result_backend or f"db+sqlite:///{self.var_dir.resolve() / 'celery-results.db'}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.var_dir / "artifacts").resolve()

    @property
    def resolved_admin_key_file(self) -> Path:
        return (self.admin_key_file or self.var_dir / "admin.key").resolve()

    @property
    def resolved_api_url(self) -> str:
        return (self.api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def queue_name(self, kind: str) -> str:
        """``cpu`` or ``gpu`` with the deployment's prefix."""
        return f"{self.queue_prefix}{kind}"

    def queue_for_device(self, device: str) -> str:
        """Where a run with this spec.device goes: cuda -> gpu, cpu -> cpu, auto -> gpu
        when the deployment runs GPU workers (FFLAB_GPUS_AVAILABLE), else cpu."""
        if device == "cuda" or (device == "auto" and self.gpus_available):
            return self.queue_name("gpu")
        return self.queue_name("cpu")


@lru_cache
def get_settings() -> Settings:
    return Settings()
