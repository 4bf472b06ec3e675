"""Settings from the environment, prefix NEXUS_ (e.g. NEXUS_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nexus_streams.domain.auth import AuthMode


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="ignore")

    kafka_bootstrap: str = Field(default="127.0.0.1:19092", description="host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how every Kafka client of the package connects: TLS (SSL, SASL_SSL) and/or a SASL "
        "identity (SASL_PLAINTEXT, SASL_SSL); nexus_streams/connection.py",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="with SASL_*: how the username and password are presented"
    )
    kafka_sasl_username: str | None = Field(default=None, description="with SASL_*: the Kafka user")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="with SASL_*: its password")
    kafka_ssl_ca_file: str | None = Field(
        default=None,
        description="with SSL/SASL_SSL: PEM file of the CAs that sign the brokers' "
        "certificates (default: the system's)",
    )
    kafka_ssl_cert_file: str | None = Field(
        default=None, description="with SSL/SASL_SSL: PEM certificate (chain) of the client, for mutual TLS"
    )
    kafka_ssl_key_file: str | None = Field(
        default=None, description="its private key (PEM; default: in the certificate file)"
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="with SSL/SASL_SSL: the broker's certificate must name the host dialled"
    )
    redis_url: str = "redis://127.0.0.1:16379/0"
    app_id: str = Field(default="nexus-streams", description="Kafka consumer group and table topic prefix")
    topic_prefix: str = Field(default="nexus.", description="prefix of every public topic")
    partitions: int = Field(
        default=8, ge=1, description="partitions of the co-partitioned input topics and tables"
    )
    replication_factor: int = Field(default=1, ge=1)
    table_store: str = Field(
        default="memory://", description="memory:// for development, rocksdb:// for production"
    )
    data_dir: str = Field(default=".nexus-data", description="worker state (RocksDB, Faust)")
    rocksdb_write_buffer_mb: int = Field(
        default=4, ge=1, description="rocksdb://: memtable size of each partition's database (two at most)"
    )
    rocksdb_block_cache_mb: int = Field(
        default=8, ge=1, description="rocksdb://: block cache of each partition's database"
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    standby_replicas: int = Field(
        default=1,
        ge=0,
        description="standby copies of each state partition kept warm on other workers, for fail-over",
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=1.0,
        description="a worker silent this long loses its partitions (the broker's "
        "group.min.session.timeout.ms, 6 s by default, bounds it from below; docs/operations.md)",
    )
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="a stable name for this worker, unique in the group (static membership): "
        "started again after a crash, it takes its partitions back at once instead of after the "
        "session timeout; it does not leave the group on SIGTERM (docs/operations.md)",
    )
    max_batch: int = Field(default=1000, ge=1, description="commands in one batch")
    max_nesting_depth: int = Field(
        default=64,
        ge=2,
        le=1000,
        description="how deep objects and arrays may nest in a message; deeper is a validation_error",
    )
    max_delete_entity: int = Field(
        default=10_000, ge=1, description="relationships one delete_entity may remove"
    )
    visit_limit: int = Field(
        default=25_000,
        ge=100,
        description="entities one bounded traversal may visit (bench/graph.py: 25,000 keeps a step "
        "well under 50 ms on 2 cores)",
    )
    subscriptions_per_namespace: int = Field(
        default=1000, ge=1, description="standing queries one namespace may hold (docs/standing-queries.md)"
    )
    subscription_visit_budget: int = Field(
        default=50_000,
        ge=100,
        description="entities the standing queries' evaluations after one change may visit together; "
        "those that do not fit are answered on a later change",
    )
    subscription_max_watched: int = Field(
        default=10_000,
        ge=1,
        description="entities one standing query watches at most; past it, every change of a type it "
        "follows evaluates it",
    )
    snapshot_max_age_s: float = Field(
        default=30.0, ge=0, description="analysis reuses an igraph snapshot up to this age"
    )
    min_offset_wait_s: float = Field(
        default=30.0, gt=0, description="how long a query waits for its min_offset"
    )
    request_retention_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="how long a request's result is remembered, so that a duplicate gets it again",
    )
    request_retention_count: int = Field(
        default=20_000,
        ge=1,
        description="results remembered per partition at most (the oldest are forgotten first); "
        "with rocksdb:// they are on disk, with memory:// in the worker's memory",
    )
    maintenance_interval_s: float = Field(
        default=1.0, gt=0, description="how often expiry and overdue queries are checked"
    )
    gc_threshold0: int = Field(
        default=20_000, ge=100, description="Python's generation-0 collection threshold in the worker"
    )
    gc_freeze: bool = Field(
        default=True, description="freeze what survives a full collection (see nexus_streams/runtime.py)"
    )
    gc_full_interval_s: float = Field(
        default=900.0, ge=0, description="seconds between complete collections of frozen objects; 0: never"
    )
    malloc_trim_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="seconds between returns of freed heap memory to the system (glibc malloc_trim); "
        "0: never (nexus_streams/runtime.py)",
    )
    loop_stall_warn_ms: float = Field(
        default=250.0,
        ge=0,
        description="log where the event loop is when it has not run for this long; 0: off",
    )
    export_chunk_bytes: int = Field(
        default=512 * 1024,
        ge=4096,
        le=800 * 1024,
        description="the largest chunk of an export's answer, as JSON (under the results' 900 KiB)",
    )
    export_max_running: int = Field(
        default=2, ge=1, description="exports a worker streams at once; more answer resource_limit"
    )
    export_slice_ms: float = Field(
        default=20.0,
        gt=0,
        le=200,
        description="how long an export reads its snapshot before it lets the event loop run again",
    )
    export_publish_timeout_s: float = Field(
        default=60.0, gt=0, description="how long an export waits for one chunk to be published"
    )
    web_port: int = Field(default=6066, description="Faust's web server port")
    web_enabled: bool = False
    metrics_port: int = Field(default=9464, description="Prometheus /metrics port; 0 disables")
    log_level: str = "INFO"
    log_json: bool = False
    admins: str = Field(
        default="",
        description="comma-separated principals with the admin role (store/change/delete system patterns, "
        "change or delete anyone's pattern, execute every pattern)",
    )
    auth: AuthMode = Field(
        default=AuthMode.OFF,
        description="off: the principal is the request's `principal` field (development); required: "
        "a verified token in the `authorization` header, its `sub` the principal (docs/security.md)",
    )
    auth_jwks: str | None = Field(
        default=None, description="path of a JWKS file: the public keys of RS256/ES256/EdDSA tokens"
    )
    auth_hs256_secret: SecretStr | None = Field(
        default=None, description="shared secret (32 bytes at least) of HS256 tokens, for development"
    )
    auth_issuer: str | None = Field(default=None, description="when set, a token's `iss` must equal it")
    auth_audience: str | None = Field(default=None, description="when set, a token's `aud` must include it")
    auth_clock_skew_s: float = Field(
        default=30.0, ge=0, le=600, description="how far `exp`, `nbf` and `iat` may be off"
    )
    rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="requests per second per principal and worker; 0: no limit"
    )
    rate_limit_burst: int = Field(
        default=0, ge=0, description="requests a principal may send at once; 0: one second's worth"
    )
    token: SecretStr | None = Field(
        default=None, description="the token the CLI and NexusClient send (`authorization: Bearer ...`)"
    )
    redis_key_prefix: str = Field(default="nexus:", description="prefix of every Redis key of this service")
    redis_socket_timeout_s: float = Field(default=5.0, gt=0, description="per Redis command and connect")
    redis_retry_attempts: int = Field(
        default=5, ge=1, description="tries of one pattern store operation before `store_unavailable`"
    )
    redis_retry_initial_backoff_ms: int = Field(default=50, ge=0)
    redis_retry_max_backoff_ms: int = Field(default=2000, ge=0)
    pattern_max_steps: int = Field(default=100, ge=1, description="steps in one pattern")
    pattern_max_document_bytes: int = Field(
        default=64 * 1024, ge=1024, description="a pattern document's size as compact JSON"
    )
    pattern_max_inclusion_depth: int = Field(
        default=4, ge=0, description="nesting of composite patterns (pattern/execute steps)"
    )
    pattern_versions_retained: int = Field(
        default=20, ge=0, description="versions kept per pattern, newest first; 0 keeps all"
    )
    pattern_cache_size: int = Field(default=1024, ge=0, description="patterns a worker keeps in memory")
    execution_dedupe_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="how long the store remembers an execution id so its statistics count once",
    )

    redrive_max: int = Field(
        default=3,
        ge=0,
        description="`deadletter redrive` re-sends a message at most this many times; a dead letter whose "
        "nexus-redrive-count reached it is skipped (edit or discard it)",
    )
    deadletter_watch: bool = Field(
        default=True,
        description="the worker counts the dead letters waiting (nexus_deadletters_waiting) by reading "
        "nexus.deadletter and nexus.deadletter-handled",
    )

    @field_validator(
        "auth_jwks",
        "auth_hs256_secret",
        "auth_issuer",
        "auth_audience",
        "token",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _kafka_security_is_whole(self) -> Settings:
        """Credentials the protocol would not send are a mistake, not a default: refuse them."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        has_credentials = self.kafka_sasl_username is not None or self.kafka_sasl_password is not None
        if sasl and (self.kafka_sasl_username is None or self.kafka_sasl_password is None):
            raise ValueError(
                f"NEXUS_KAFKA_SECURITY_PROTOCOL={protocol} needs NEXUS_KAFKA_SASL_USERNAME and "
                "NEXUS_KAFKA_SASL_PASSWORD"
            )
        if not sasl and has_credentials:
            raise ValueError(
                f"NEXUS_KAFKA_SASL_USERNAME/PASSWORD are set but NEXUS_KAFKA_SECURITY_PROTOCOL={protocol} "
                "sends no SASL credentials: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = [self.kafka_ssl_ca_file, self.kafka_ssl_cert_file, self.kafka_ssl_key_file]
        if not protocol.endswith("SSL") and any(f is not None for f in tls_files):
            raise ValueError(
                f"NEXUS_KAFKA_SSL_* files are set but NEXUS_KAFKA_SECURITY_PROTOCOL={protocol} does not "
                "use TLS: set it to SSL or SASL_SSL"
            )
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("NEXUS_KAFKA_SSL_KEY_FILE needs NEXUS_KAFKA_SSL_CERT_FILE (its certificate)")
        return self

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def admin_principals(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.admins.split(",") if name.strip())
