"""Every configuration option in one table: flag, environment variable, default, parser, help.

The table drives command-line parsing, ``--help`` and ``docs/reference/configuration.md``
(karma.config_cli; a test checks the doc against it). `Config` is the validated result, one
field per option; the parsers the table names, and `Role`, are karma.config_values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import attrs

from karma.config_values import (
    Role,
    parse_bool,
    parse_count,
    parse_log_level,
    parse_name,
    parse_port,
    parse_positive,
    parse_positive_seconds,
    parse_role,
    parse_seconds,
    parse_text,
    parse_tls_version,
    parse_token,
    parse_ttl,
    parse_urls,
)


@attrs.frozen
class Option:
    flag: str
    env: str
    default: object
    parse: Callable[[str], object]
    help: str

    @property
    def attr(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default_text(self) -> str:
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


OPTIONS: Final[tuple[Option, ...]] = (
    Option("--bind", "KARMA_HOST", "0.0.0.0", parse_text, "Address to listen on."),
    Option("--port", "KARMA_PORT", 8080, parse_port, "TCP port (0 picks a free port)."),
    Option(
        "--directory",
        "KARMA_DUMP_DIR",
        ".",
        parse_text,
        "Data directory: snapshots, WAL and metadata.",
    ),
    Option("--role", "KARMA_ROLE", Role.MASTER, parse_role, "Node role: master or slave."),
    Option(
        "--restore",
        "KARMA_RESTORE",
        True,
        parse_bool,
        "Load snapshots and replay the WAL on startup.",
    ),
    Option(
        "--restore-accept-loss",
        "KARMA_RESTORE_ACCEPT_LOSS",
        False,
        parse_bool,
        "Start even when snapshots and WAL do not join up (a newer snapshot or a WAL file was"
        " removed or damaged), losing the writes no file holds; each lost LSN range is logged."
        " Without it such a start is refused.",
    ),
    Option(
        "--nodelay", "KARMA_TCP_NODELAY", True, parse_bool, "Set TCP_NODELAY on client sockets."
    ),
    Option("--wal", "KARMA_WAL", True, parse_bool, "Log every mutation to the write-ahead log."),
    Option(
        "--wal-fsync",
        "KARMA_WAL_FSYNC",
        True,
        parse_bool,
        "fsync each WAL batch before answering (group commit).",
    ),
    Option(
        "--wal-segment-bytes",
        "KARMA_WAL_SEGMENT_BYTES",
        67108864,
        parse_count,
        "Rotate karma.wal into a segment past this size; 0 disables rotation.",
    ),
    Option(
        "--wal-batch-size",
        "KARMA_WAL_BATCH_SIZE",
        1024,
        parse_positive,
        "Most mutations written by one WAL batch.",
    ),
    Option(
        "--wal-batch-wait-us",
        "KARMA_WAL_BATCH_WAIT_MICROSECONDS",
        0,
        parse_count,
        "How long the WAL writer waits for more mutations before writing a batch "
        "(timers are millisecond-grained: 1-1000 all wait up to 1 ms; 0, the default, is best).",
    ),
    Option(
        "--max-request-bytes",
        "KARMA_MAX_REQUEST_BYTES",
        4096,
        parse_positive,
        "Longest accepted request line; longer ones get request_too_large and a close.",
    ),
    Option(
        "--max-response-bytes",
        "KARMA_MAX_RESPONSE_BYTES",
        1048576,
        parse_count,
        "Longest answer; larger ones get response_too_large. 0 disables the limit.",
    ),
    Option(
        "--read-timeout",
        "KARMA_READ_TIMEOUT_SECONDS",
        5.0,
        parse_seconds,
        "Close a connection idle this many seconds; 0 disables.",
    ),
    Option(
        "--write-timeout",
        "KARMA_WRITE_TIMEOUT_SECONDS",
        5.0,
        parse_seconds,
        "Close a connection whose answer cannot be sent in this many seconds; 0 disables.",
    ),
    Option(
        "--request-line-timeout",
        "KARMA_REQUEST_LINE_TIMEOUT_SECONDS",
        10.0,
        parse_seconds,
        "Close a connection whose request line, once begun, is not complete within this many "
        "seconds (a client trickling bytes restarts --read-timeout, not this); 0 disables.",
    ),
    Option(
        "--slow-request-ms",
        "KARMA_SLOW_REQUEST_MS",
        100,
        parse_count,
        "Log a request.slow line for, and keep in system.slowlog, every request taking at"
        " least this many milliseconds (WAL waits included); 0 disables.",
    ),
    Option(
        "--query-timeout-ms",
        "KARMA_QUERY_TIMEOUT_MS",
        1000,
        parse_count,
        "Budget for large reads (tree.*), answered query_timeout when exceeded; 0 disables.",
    ),
    Option(
        "--shutdown-timeout",
        "KARMA_SHUTDOWN_TIMEOUT_SECONDS",
        5.0,
        parse_seconds,
        "On SIGINT/SIGTERM, how long open connections may finish before they are cut.",
    ),
    Option(
        "--auth-token",
        "KARMA_AUTH_TOKEN",
        None,
        parse_token,
        "Token every request must carry (field `token`).",
    ),
    Option(
        "--read-auth-token",
        "KARMA_READ_AUTH_TOKEN",
        None,
        parse_token,
        "Token allowed to run read-only commands. Setting either token makes a valid token"
        " required on every request.",
    ),
    Option(
        "--tokens-file",
        "KARMA_TOKENS_FILE",
        None,
        parse_text,
        "JSON file of scoped tokens (name, SHA-256, rights, series prefixes; docs/security.md),"
        " reloaded on SIGHUP. --auth-token and --read-auth-token stay valid beside it.",
    ),
    Option(
        "--tls-cert",
        "KARMA_TLS_CERT",
        None,
        parse_text,
        "PEM certificate (chain) file: the client port, the metrics port and replication links"
        " speak TLS (docs/security.md). Unset: plaintext. Reloaded on SIGHUP.",
    ),
    Option(
        "--tls-key",
        "KARMA_TLS_KEY",
        None,
        parse_text,
        "PEM private key of --tls-cert (unset: the key is in the --tls-cert file).",
    ),
    Option(
        "--tls-ca",
        "KARMA_TLS_CA",
        None,
        parse_text,
        "PEM CA file: clients must present a certificate it signed (mTLS), and replication"
        " links trust it for the master's certificate.",
    ),
    Option(
        "--tls-min-version",
        "KARMA_TLS_MIN_VERSION",
        "1.2",
        parse_tls_version,
        "Oldest TLS version accepted: 1.2 or 1.3.",
    ),
    Option(
        "--tls-port",
        "KARMA_TLS_PORT",
        None,
        parse_port,
        "Serve TLS on this port and plaintext on --port (unset: with --tls-cert, --port itself"
        " speaks TLS).",
    ),
    Option(
        "--dump-retention-per-tree",
        "KARMA_DUMP_RETENTION_PER_TREE",
        5,
        parse_count,
        "Snapshots kept per series after snapshot.create_all; 0 keeps all.",
    ),
    Option(
        "--snapshot-interval-seconds",
        "KARMA_SNAPSHOT_INTERVAL_SECONDS",
        0.0,
        parse_seconds,
        "Take snapshot.create_all periodically; 0 disables.",
    ),
    Option(
        "--idempotency-max-records",
        "KARMA_IDEMPOTENCY_MAX_RECORDS",
        1000000,
        parse_count,
        "Most idempotency records remembered.",
    ),
    Option(
        "--idempotency-max-age-seconds",
        "KARMA_IDEMPOTENCY_MAX_AGE_SECONDS",
        604800,
        parse_count,
        "Oldest idempotency record kept; 0 disables age pruning.",
    ),
    Option(
        "--max-open-reservations",
        "KARMA_MAX_OPEN_RESERVATIONS",
        1000000,
        parse_positive,
        "Most open limit.reserve holds; more are refused with capacity_exceeded.",
    ),
    Option(
        "--max-settled-reservations",
        "KARMA_MAX_SETTLED_RESERVATIONS",
        1000000,
        parse_positive,
        "Most settled reservations remembered for retried commits and voids (~300 bytes"
        " each); the oldest are forgotten first, as are those older than"
        " --idempotency-max-age-seconds.",
    ),
    Option(
        "--replication-source-host",
        "KARMA_REPLICATION_SOURCE_HOST",
        None,
        parse_text,
        "Master host a slave polls.",
    ),
    Option(
        "--replication-source-port",
        "KARMA_REPLICATION_SOURCE_PORT",
        8080,
        parse_port,
        "Master port a slave polls.",
    ),
    Option(
        "--replication-token",
        "KARMA_REPLICATION_TOKEN",
        None,
        parse_token,
        "Token a slave sends to its master.",
    ),
    Option(
        "--replication-poll-interval-ms",
        "KARMA_REPLICATION_POLL_INTERVAL_MS",
        1000,
        parse_positive,
        "How often a slave polls its master.",
    ),
    Option(
        "--replication-batch-size",
        "KARMA_REPLICATION_BATCH_SIZE",
        1000,
        parse_positive,
        "Most WAL entries fetched by one poll.",
    ),
    Option(
        "--metrics-bind",
        "KARMA_METRICS_HOST",
        "127.0.0.1",
        parse_text,
        "Address of the Prometheus /metrics endpoint.",
    ),
    Option(
        "--metrics-port",
        "KARMA_METRICS_PORT",
        0,
        parse_port,
        "Port of the Prometheus /metrics endpoint; 0 disables it.",
    ),
    Option(
        "--ready-max-lag-entries",
        "KARMA_READY_MAX_LAG_ENTRIES",
        10000,
        parse_count,
        "GET /readyz on the metrics port fails on a replica more than this many WAL entries"
        " behind its master.",
    ),
    Option(
        "--ha-etcd",
        "KARMA_HA_ETCD",
        None,
        parse_urls,
        "etcd client URLs, comma-separated (http://127.0.0.1:2379,...): turns on automatic"
        " failover (docs/ha.md). Unset: no HA, --role decides.",
    ),
    Option(
        "--ha-etcd-ca",
        "KARMA_HA_ETCD_CA",
        None,
        parse_text,
        "PEM CA file trusted for https:// etcd members (unset: the system's trust store).",
    ),
    Option(
        "--ha-etcd-cert",
        "KARMA_HA_ETCD_CERT",
        None,
        parse_text,
        "PEM client certificate presented to etcd (its --client-cert-auth).",
    ),
    Option(
        "--ha-etcd-key",
        "KARMA_HA_ETCD_KEY",
        None,
        parse_text,
        "PEM private key of --ha-etcd-cert.",
    ),
    Option(
        "--ha-cluster",
        "KARMA_HA_CLUSTER",
        "karma",
        parse_name,
        "HA group name: keys live under /karma/NAME/ in etcd.",
    ),
    Option(
        "--group",
        "KARMA_GROUP",
        None,
        parse_name,
        "The HA group this node belongs to, and in a cluster the group whose slots it serves;"
        " the same setting as --ha-cluster (which stays as its alias; giving both with"
        " different names is refused).",
    ),
    Option(
        "--cluster",
        "KARMA_CLUSTER",
        None,
        parse_name,
        "Sharded cluster name (docs/cluster.md): the node follows the shard map at"
        " /karma/NAME/shardmap in etcd, serves the keys whose slots its group owns and answers"
        " `moved` for the others. Needs --ha-etcd. Unset: no sharding, nothing changes.",
    ),
    Option(
        "--ha-node",
        "KARMA_HA_NODE",
        None,
        parse_name,
        "This node's unique name in the HA group (default: the host name and port).",
    ),
    Option(
        "--ha-ttl",
        "KARMA_HA_TTL",
        10,
        parse_ttl,
        "Seconds the leader lease lives without a renewal; a master that cannot renew stops"
        " acknowledging writes before it expires.",
    ),
    Option(
        "--ha-loop-wait",
        "KARMA_HA_LOOP_WAIT",
        2.0,
        parse_positive_seconds,
        "Seconds between HA loop rounds (lease renewal, member key, leader check).",
    ),
    Option(
        "--ha-max-lag-on-failover",
        "KARMA_HA_MAX_LAG_ON_FAILOVER",
        1000,
        parse_count,
        "A replica more than this many WAL entries behind the last known master LSN is never"
        " promoted.",
    ),
    Option(
        "--ha-priority",
        "KARMA_HA_PRIORITY",
        1,
        parse_count,
        "Among equally caught-up candidates, the higher priority is promoted first.",
    ),
    Option(
        "--ha-nofailover",
        "KARMA_HA_NOFAILOVER",
        False,
        parse_bool,
        "Never promote this node (it only follows the leader).",
    ),
    Option(
        "--ha-advertise",
        "KARMA_HA_ADVERTISE",
        None,
        parse_text,
        "host:port clients and replicas use to reach this node (default: --bind and --port, or"
        " the host name when binding every address).",
    ),
    Option(
        "--replicated-timeout-ms",
        "KARMA_REPLICATED_TIMEOUT_MS",
        5000,
        parse_positive,
        'How long a write sent with durability "replicated:N" waits for N replicas to confirm'
        " it before answering replication_timeout.",
    ),
    Option("--log", "KARMA_LOG", True, parse_bool, "Write structured JSON logs to stderr."),
    Option(
        "--log-level",
        "KARMA_LOG_LEVEL",
        "info",
        parse_log_level,
        "Least severe log level written: debug, info, warning or error.",
    ),
)

OPTIONS_BY_FLAG: Final[Mapping[str, Option]] = {option.flag: option for option in OPTIONS}


@attrs.frozen(kw_only=True)
class Config:
    """A complete, validated configuration. Field names are the flags without dashes."""

    bind: str = "0.0.0.0"
    port: int = 8080
    directory: str = "."
    role: Role = Role.MASTER
    restore: bool = True
    restore_accept_loss: bool = False
    nodelay: bool = True
    wal: bool = True
    wal_fsync: bool = True
    wal_segment_bytes: int = 67108864
    wal_batch_size: int = 1024
    wal_batch_wait_us: int = 0
    max_request_bytes: int = 4096
    max_response_bytes: int = 1048576
    read_timeout: float = 5.0
    write_timeout: float = 5.0
    request_line_timeout: float = 10.0
    slow_request_ms: int = 100
    query_timeout_ms: int = 1000
    shutdown_timeout: float = 5.0
    auth_token: str | None = None
    read_auth_token: str | None = None
    tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_min_version: str = "1.2"
    tls_port: int | None = None
    dump_retention_per_tree: int = 5
    snapshot_interval_seconds: float = 0.0
    idempotency_max_records: int = 1000000
    idempotency_max_age_seconds: int = 604800
    max_open_reservations: int = 1000000
    max_settled_reservations: int = 1000000
    replication_source_host: str | None = None
    replication_source_port: int = 8080
    replication_token: str | None = None
    replication_poll_interval_ms: int = 1000
    replication_batch_size: int = 1000
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0
    ready_max_lag_entries: int = 10000
    ha_etcd: str | None = None
    ha_etcd_ca: str | None = None
    ha_etcd_cert: str | None = None
    ha_etcd_key: str | None = None
    ha_cluster: str = "karma"
    group: str | None = None
    cluster: str | None = None
    ha_node: str | None = None
    ha_ttl: int = 10
    ha_loop_wait: float = 2.0
    ha_max_lag_on_failover: int = 1000
    ha_priority: int = 1
    ha_nofailover: bool = False
    ha_advertise: str | None = None
    replicated_timeout_ms: int = 5000
    log: bool = True
    log_level: str = "info"
