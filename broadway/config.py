"""Every tunable of the API server, in one frozen dataclass built from the CLI and the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broadway.sizes import parse_size
from broadway.validation import StageCeilings

MiB = 1024 * 1024


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8888
    # None: start the embedded nx-27017 store under data_dir.
    mongo_url: str | None = None
    data_dir: Path = Path("broadway-data")
    # None: generated once, kept in data_dir, printed at start-up.
    cluster_token: str | None = None
    client_token: str | None = None
    heartbeat_interval: int = 10
    # None: three heartbeat intervals.
    worker_timeout: float | None = None
    max_attempts: int = 3
    log_level: str = "INFO"
    # "text", or "json": one JSON object a line (broadway/logs.py).
    log_format: str = "text"
    # Bearer token GET /metrics requires; None: /metrics is open (scrapers on a trusted network).
    metrics_token: str | None = None
    # Seconds an idle keep-alive connection stays open: above the longest poll (--max-poll-wait,
    # --poll-hold) and libcurl's reuse limit (118 s), so graders' kept-alive connections are not
    # cut under them.
    idle_connection_timeout: float = 150.0
    max_body_bytes: int = 16 * MiB
    max_result_bytes: int = 4 * MiB
    # Longest a poller may ask to wait for a job (seconds).
    max_poll_wait: float = 30.0
    # How often a waiting poller re-checks the store for jobs queued by another API process.
    poll_recheck_interval: float = 0.5
    store_timeout_s: float = 5.0
    # A poll that names no `wait` (the 2018 grader's) is held this long before 412, as the 2018
    # API held it ~18 s: that grader retries at once on 412. Below its 20 s client timeout.
    poll_hold: float = 15.0
    # Ceilings on what a stage may ask for; submissions above them are refused (400).
    max_stage_timeout: float = 3600.0
    max_stage_memory_bytes: int = 16 << 30
    # Files of one single submission, all together (decoded), kept in GridFS.
    max_files_bytes: int = 20 * MiB
    # Callbacks to LMSs: the signing secret (None: generated once, kept in data_dir like the
    # tokens), how long an undelivered callback is retried, and which networks it may target
    # (empty: any address but link-local and cloud metadata, which are always refused).
    callback_secret: str | None = None
    callback_max_age_s: float = 24 * 3600.0
    callback_allow_networks: tuple[str, ...] = ()
    # JWT bearer tokens (a second way in, for LMSs): an HS256 secret, or the path of an RS256/ES256
    # public key PEM or of a JWKS file; None: JWTs are not accepted. Audience and issuer, when
    # set, must match the token's aud and iss.
    jwt_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # Grader images (POST /api/v1/grader_images): the largest `docker save` archive a builder may
    # upload, and how long a build may stay `building` before it is queued again (or failed once
    # it has had --max-attempts): a builder that died, or hung, does not hold it for ever.
    max_image_bytes: int = 4096 * MiB
    build_timeout_s: float = 1800.0
    # How often jobs whose release delay (Orca's `priority`) has passed are queued (seconds).
    orca_release_interval: float = 1.0

    @property
    def effective_worker_timeout(self) -> float:
        if self.worker_timeout is not None:
            return self.worker_timeout
        return 3.0 * self.heartbeat_interval

    @property
    def stage_ceilings(self) -> StageCeilings:
        return StageCeilings(max_timeout_s=self.max_stage_timeout, max_memory_bytes=self.max_stage_memory_bytes)

    @property
    def reaper_interval(self) -> float:
        # A dead worker's jobs must be requeued within 1.1x the timeout, so sweep at a
        # twentieth of it; never faster than 20 Hz, never slower than once a second.
        return max(0.05, min(1.0, self.effective_worker_timeout / 20.0))

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> Config:
        env = dict(os.environ if environ is None else environ)
        args = build_parser().parse_args(argv)
        problems = []
        if args.heartbeat_interval < 1:
            problems.append("--heartbeat-interval must be at least 1 second")
        if args.worker_timeout is not None and args.worker_timeout <= 0:
            problems.append("--worker-timeout must be positive")
        if args.max_attempts < 1:
            problems.append("--max-attempts must be at least 1")
        if not args.store_timeout > 0:
            problems.append("--store-timeout must be positive")
        if not 0 <= args.poll_hold <= 60:
            problems.append("--poll-hold must be between 0 and 60 seconds")
        if not args.max_stage_timeout > 0:
            problems.append("--max-stage-timeout must be positive")
        try:
            max_stage_memory = parse_size(args.max_stage_memory)
        except ValueError as e:
            problems.append(f"--max-stage-memory: {e}")
            max_stage_memory = 0
        if max_stage_memory and max_stage_memory < 6 * MiB:
            problems.append("--max-stage-memory must be at least 6m (Docker's minimum)")
        if args.max_files_mb < 1:
            problems.append("--max-files-mb must be at least 1")
        if not args.callback_max_age > 0:
            problems.append("--callback-max-age must be positive")
        allow_networks = tuple(n.strip() for n in (args.callback_allow_networks or "").split(",") if n.strip())
        for network in allow_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                problems.append(f"--callback-allow-networks: {network!r} is not a network (e.g. 10.0.0.0/8)")
        if args.max_image_mb < 1:
            problems.append("--max-image-mb must be at least 1")
        if not args.build_timeout > 0:
            problems.append("--build-timeout must be positive")
        if not 0 < args.orca_release_interval <= 60:
            problems.append("--orca-release-interval must be between 0 and 60 seconds")
        if not 0 <= args.port <= 65535:
            problems.append("--port must be between 0 and 65535")
        jwt_key = args.jwt_key or env.get("BROADWAY_JWT_KEY") or None
        if jwt_key:
            from broadway.auth import JwtKeyError, load_jwt_verifier

            try:
                load_jwt_verifier(jwt_key, args.jwt_audience, args.jwt_issuer)  # a bad key fails the start
            except JwtKeyError as e:
                problems.append(str(e))
        if problems:
            build_parser().error("; ".join(problems))
        return cls(
            host=args.host,
            port=args.port,
            mongo_url=args.mongo_url or env.get("BROADWAY_MONGO_URL") or None,
            data_dir=Path(args.data_dir),
            cluster_token=args.cluster_token or env.get("BROADWAY_CLUSTER_TOKEN") or None,
            client_token=args.client_token or env.get("BROADWAY_CLIENT_TOKEN") or None,
            heartbeat_interval=args.heartbeat_interval,
            worker_timeout=args.worker_timeout,
            max_attempts=args.max_attempts,
            log_level=args.log_level.upper(),
            log_format=args.log_format,
            metrics_token=args.metrics_token or env.get("BROADWAY_METRICS_TOKEN") or None,
            max_body_bytes=args.max_body_mb * MiB,
            store_timeout_s=args.store_timeout,
            poll_hold=args.poll_hold,
            max_stage_timeout=args.max_stage_timeout,
            max_stage_memory_bytes=max_stage_memory,
            callback_secret=args.callback_secret or env.get("BROADWAY_CALLBACK_SECRET") or None,
            callback_max_age_s=args.callback_max_age,
            max_files_bytes=args.max_files_mb * MiB,
            callback_allow_networks=allow_networks,
            jwt_key=jwt_key,
            jwt_audience=args.jwt_audience or None,
            jwt_issuer=args.jwt_issuer or None,
            max_image_bytes=args.max_image_mb * MiB,
            build_timeout_s=args.build_timeout,
            orca_release_interval=args.orca_release_interval,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="broadway",
        description="Broadway API server: stores grading runs and hands their jobs to graders.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8888, help="port to listen on (default 8888)")
    p.add_argument(
        "--mongo-url",
        help="MongoDB URL (env BROADWAY_MONGO_URL); the database name in the URL path is used, "
        "default 'broadway'. Without it the embedded nx-27017 store is started under --data-dir.",
    )
    p.add_argument(
        "--data-dir",
        default="broadway-data",
        help="where the embedded store and generated tokens live (default ./broadway-data)",
    )
    p.add_argument("--cluster-token", help="token graders register with (env BROADWAY_CLUSTER_TOKEN)")
    p.add_argument("--client-token", help="token course staff submit runs with (env BROADWAY_CLIENT_TOKEN)")
    p.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between grader heartbeats")
    p.add_argument(
        "--worker-timeout",
        type=float,
        help="seconds without a heartbeat before a grader is declared dead (default 3x the interval)",
    )
    p.add_argument("--max-attempts", type=int, default=3, help="times a job is tried before it fails")
    p.add_argument("--max-body-mb", type=int, default=16, help="largest request body accepted, in MiB")
    p.add_argument(
        "--store-timeout",
        type=float,
        default=5.0,
        help="seconds to reach the store before answering 503; operations get twice that (default 5)",
    )
    p.add_argument(
        "--poll-hold",
        type=float,
        default=15.0,
        help="seconds a poll without `wait` (the 2018 grader's) is held open before 412 (default 15)",
    )
    p.add_argument(
        "--max-stage-timeout",
        type=float,
        default=3600.0,
        help="largest `timeout` a stage may ask for, in seconds; larger ones are refused (default 3600)",
    )
    p.add_argument(
        "--max-stage-memory",
        default="16g",
        help="largest `memory` a stage may ask for (bytes, or 512m, 2g); larger ones are refused (default 16g)",
    )
    p.add_argument(
        "--max-files-mb", type=int, default=20, help="largest total of one submission's files, in MiB (default 20)"
    )
    p.add_argument(
        "--callback-secret",
        help="secret that signs callbacks (env BROADWAY_CALLBACK_SECRET; default: generated, kept in --data-dir)",
    )
    p.add_argument(
        "--callback-max-age",
        type=float,
        default=24 * 3600.0,
        help="seconds an undelivered callback is retried before it is given up (default 86400)",
    )
    p.add_argument(
        "--callback-allow-networks",
        help="comma-separated networks callbacks may target, e.g. 10.0.0.0/8,192.0.2.0/24 (default: any "
        "but link-local and cloud metadata, which are always refused)",
    )
    p.add_argument(
        "--max-image-mb",
        type=int,
        default=4096,
        help="largest grader image archive (gzip'd docker save) a builder may upload, in MiB (default 4096)",
    )
    p.add_argument(
        "--build-timeout",
        type=float,
        default=1800.0,
        help="seconds a grader image build may stay 'building' before it is queued again, or failed after "
        "--max-attempts (default 1800)",
    )
    p.add_argument(
        "--orca-release-interval",
        type=float,
        default=1.0,
        help="how often Orca jobs whose release delay (their priority) has passed join the queue, in "
        "seconds (default 1)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text, or json: one JSON object a line (time, level, logger, message, run_id/job_id/worker where known)",
    )
    p.add_argument(
        "--metrics-token",
        help="bearer token GET /metrics requires (env BROADWAY_METRICS_TOKEN; default: /metrics is open)",
    )
    p.add_argument(
        "--jwt-key",
        help="accept JWT bearer tokens signed with this: an HS256 secret (32+ characters), or the path of an "
        "RS256/ES256 public key PEM or a JWKS file (env BROADWAY_JWT_KEY); claim tenantId names the course, sub the "
        "subject",
    )
    p.add_argument("--jwt-audience", help="the aud every JWT must carry (default: aud not checked)")
    p.add_argument("--jwt-issuer", help="the iss every JWT must carry (default: iss not checked)")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
    )
    return p
