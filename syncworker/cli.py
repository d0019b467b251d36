"""The ``syncworker`` command: run | web | worker | check-config | lookup | suppress | unsuppress |
replay | status | quarantine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
import orjson
import redis

from syncworker import __version__
from syncworker import bootstrap as runtime
from syncworker.config import Settings
from syncworker.delivery import deadletters, schedule
from syncworker.errors import ConfigError
from syncworker.events import Kind, address_problem, normalize_email
from syncworker.observability import setup_logging, setup_sentry
from syncworker.ops import erasure
from syncworker.queue import inbox
from syncworker.store.connections import connect_worker
from syncworker.store.keys import CONTACTS, DELIVER, INGEST, QUEUES

log = logging.getLogger("syncworker.cli")

REDIS_RETRY_FIRST_S = 0.5  # first wait of an RQ worker process for an unreachable Redis
REDIS_RETRY_CAP_S = 15.0  # its longest wait between tries


def load_settings(require_redis: bool = True) -> Settings:
    try:
        settings = runtime.load_settings()
        runtime.check(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if require_redis and not settings.redis_url:
        raise click.ClickException("REDIS_URL is not set (`syncworker run` embeds a Redis server)")
    return settings


def load_runtime(destination: str | None = None) -> runtime.Runtime:
    """The worker runtime for a command; with ``destination``, that one must be enabled."""
    settings = load_settings()
    if destination is not None and destination not in settings.destinations:
        enabled = ", ".join(settings.destinations) or "none"
        raise click.ClickException(f"{destination!r} is not enabled (enabled: {enabled})")
    rt = runtime.Runtime.build(settings, connect_worker(settings.redis_url))
    try:
        rt.conn.ping()
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis at REDIS_URL: {exc}") from None
    return rt


def echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.group()
@click.version_option(__version__, prog_name="syncworker", message="%(prog)s %(version)s")
@click.option(
    "--log-level", default=lambda: os.environ.get("LOG_LEVEL", "INFO"), show_default="INFO"
)
def main(log_level: str) -> None:
    """syncworker: ESP hygiene webhooks -> suppression ledger -> every CRM."""
    setup_logging(log_level.upper())


# -- processes ---------------------------------------------------------------------------------


@main.command()
@click.option(
    "--port", type=int, default=lambda: int(os.environ.get("PORT", "8000")), show_default="8000"
)
@click.option("--data-dir", default=".syncworker", show_default=True, help="embedded Redis data")
def run(port: int, data_dir: str) -> None:
    """Web and worker together; with no REDIS_URL, an embedded Redis server too."""
    settings = load_settings(require_redis=False)
    env = dict(os.environ)
    server = None
    if not env.get("REDIS_URL"):
        from syncworker.devkit.redis_server import RedisServer

        server = RedisServer(data_dir=str(Path(data_dir) / "redis"), persist=True).start()
        env["REDIS_URL"] = server.url
        click.echo(f"embedded Redis listening on {server.url} (data in {server.data_dir})")
    bind = settings.bind or f"0.0.0.0:{port}"
    env["SYNCWORKER_BIND"] = bind
    me = [sys.executable, "-m", "syncworker"]
    from syncworker.devkit.supervisor import Supervisor

    stop = threading.Event()
    try:
        # each child leads its own process group: a Ctrl-C or a platform's SIGTERM reaches this
        # process alone, which stops the two in order (an RQ worker gets one SIGTERM, not two)
        with Supervisor(grace=settings.stop_grace_s + 20) as children:

            def on_term(*_: object) -> None:
                stop.set()
                children.signal_all()  # at once: see `worker`

            signal.signal(signal.SIGTERM, on_term)
            children.start("web", [*me, "web"], env=env)
            children.start("worker", [*me, "worker"], env=env)
            click.echo(
                f"web listening on {bind}{_reach(bind)}  (POST /webhooks/<source>, GET /healthz)"
            )
            try:
                exited = children.wait_any(stop)
            except KeyboardInterrupt:
                exited = None
            if exited is not None:
                log.error("%s exited code=%s; stopping", exited.name, exited.returncode)
    finally:
        if server is not None:
            server.stop()


def _reach(bind: str) -> str:
    """How to reach a gunicorn bind address from this machine, when it is a TCP one."""
    if bind.startswith(("unix:", "fd://")):
        return ""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f": http://{host}:{port}"


@main.command()
def web() -> NoReturn:
    """The web process: gunicorn serving the Flask app."""
    load_settings()
    args = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:syncworker.web.gunicorn_config",
        "syncworker.web:create_app()",
    ]  # fmt: skip
    os.execv(sys.executable, args)


@main.command()
@click.option("--queue", "queue_name", type=click.Choice(["ingest", "deliver"]), default=None)
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
def worker(queue_name: str | None, burst: bool) -> None:
    """The worker: RQ worker processes of one queue each (one for ingest, one or more for
    deliver), plus the delivery scheduler."""
    settings = load_settings()
    if queue_name is not None:
        _run_rq_worker(settings, INGEST if queue_name == "ingest" else DELIVER, burst)
        return
    from syncworker.queue.workers import Scheduling, heartbeat_stale_s, rescue_abandoned

    rt = load_runtime()
    me = [sys.executable, "-m", "syncworker", "worker"]
    # RQ worker processes of one queue each; several on the deliver queue, so that a destination
    # whose job sleeps at its rate limit or waits on a hanging request holds only its own
    # process: a destination takes at most its concurrency of jobs, and its first whenever it
    # has none, so with a process per destination every destination's first job finds one free
    queue_of = {"ingest": "ingest"}
    for i in range(2, max(1, settings.ingest_workers) + 1):
        queue_of[f"ingest-{i}"] = "ingest"
    for i in range(1, deliver_processes(settings, len(rt.destinations)) + 1):
        queue_of[f"deliver-{i}"] = "deliver"
    children = {name: subprocess.Popen([*me, "--queue", q]) for name, q in queue_of.items()}
    restarts = {name: Restarts() for name in children}
    scheduling = Scheduling(rt.conn, QUEUES)
    stale_s = heartbeat_stale_s(settings)
    stop = threading.Event()

    def on_term(*_: object) -> None:
        # passed on at once: when the whole process group gets the signal too (a platform's
        # stop), RQ takes a second SIGTERM more than 1 s after the first for a cold stop
        stop.set()
        _signal_all(list(children.values()))

    signal.signal(signal.SIGTERM, on_term)
    ingest = sum(1 for q in queue_of.values() if q == "ingest")
    click.echo(
        f"worker: queues {', '.join(QUEUES)} (ingest processes: {ingest}, "
        f"deliver processes: {len(queue_of) - ingest}); "
        f"destinations {', '.join(rt.destinations) or '-'}"
    )
    try:
        while not stop.is_set():
            try:
                # dead workers' jobs and scheduler locks first: then their retries are due
                rescue_abandoned(rt.conn, QUEUES, stale_s, busy=lambda job: schedule.busy(rt, job))
                scheduling.step()
                inbox.tick(rt.conn, stale_s)  # entries waiting with no ingest job to read them
                schedule.tick(rt)
            except redis.RedisError as exc:
                log.warning("tick failed error=%s", type(exc).__name__)
            for name, child in list(children.items()):
                if child.poll() is not None and not stop.is_set():
                    delay = restarts[name].next_delay()
                    if delay is None:
                        continue
                    log.error(
                        "worker exited queue=%s process=%s code=%s; "
                        "restarting (restart %d, after %.0fs)",
                        queue_of[name],
                        name,
                        child.returncode,
                        restarts[name].count,
                        delay,
                    )
                    children[name] = subprocess.Popen([*me, "--queue", queue_of[name]])
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(list(children.values()), grace=settings.stop_grace_s, signalled=stop.is_set())
        try:
            scheduling.close()
        except redis.RedisError:
            pass  # its lock expires; a live supervisor frees it sooner


def deliver_processes(settings: Settings, destinations: int) -> int:
    """How many RQ worker processes take deliver jobs: ``SYNCWORKER_DELIVER_WORKERS``, or one
    per configured destination when it is 0 (at least one)."""
    return max(1, settings.deliver_workers or destinations)


class Restarts:
    """When to restart a worker process that exited: at once the first time, then after a
    doubling delay (capped), so a worker that cannot start (Redis gone) is not restarted in a
    loop; the delay resets once a worker has run for a while."""

    FIRST_S, CAP_S, STEADY_S = 1.0, 30.0, 60.0

    def __init__(self) -> None:
        self.count = 0
        self.started = time.monotonic()
        self.exited: float | None = None

    def next_delay(self) -> float | None:
        """The delay this restart waits for, once it is due; None while it is not."""
        now = time.monotonic()
        if self.exited is None:
            self.exited = now
            if now - self.started >= self.STEADY_S:
                self.count = 0
        delay = 0.0 if self.count == 0 else min(self.CAP_S, self.FIRST_S * 2 ** (self.count - 1))
        if now - self.exited < delay:
            return None
        self.count += 1
        self.started, self.exited = now, None
        return delay


def _run_rq_worker(settings: Settings, queue_name: str, burst: bool) -> None:
    setup_sentry(settings.sentry_dsn)
    conn = connect_worker(settings.redis_url)
    runtime.configure(runtime.Runtime.build(settings, conn))
    restarts = Restarts()
    while True:
        delay = restarts.next_delay()
        while delay is None:
            time.sleep(0.2)
            delay = restarts.next_delay()
        _wait_for_redis(conn, queue_name)
        # RQ retries a lost connection only while it waits for a job; anywhere else the worker
        # ends (and its teardown may raise). A new one starts here once Redis answers, rather
        # than the supervisor restarting the process over and over while Redis is away
        try:
            if _work(settings, conn, queue_name, burst) or burst:
                return
            log.warning("worker ended without a stop request queue=%s; starting anew", queue_name)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("lost Redis queue=%s error=%s; reconnecting", queue_name, exc)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # RQ's handlers belong to the old worker
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait_for_redis(conn: redis.Redis, queue_name: str) -> None:
    """Return once Redis answers, trying again after a doubling delay (capped)."""
    delay = REDIS_RETRY_FIRST_S
    while True:
        try:
            conn.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning(
                "Redis unreachable queue=%s error=%s; next try in %.1fs", queue_name, exc, delay
            )
        time.sleep(delay)
        delay = min(REDIS_RETRY_CAP_S, delay * 2)


def _work(settings: Settings, conn: redis.Redis, queue_name: str, burst: bool) -> bool:
    """Run one RQ worker until it ends; True if it was asked to stop."""
    from rq.serializers import JSONSerializer

    from syncworker.queue.workers import HEARTBEAT_S, QuickStopSimpleWorker, QuickStopWorker

    options: dict[str, Any] = {
        "connection": conn,
        "serializer": JSONSerializer,
        "default_result_ttl": 0,
        # abandoned jobs (a worker killed mid-job) are found by this sweep; RQ's default is 10 min
        "maintenance_interval": 60,
        # a busy worker's heartbeat: how soon the supervisor sees a worker on another host died
        "job_monitoring_interval": HEARTBEAT_S,
        # an idle worker runs that sweep (and takes over the scheduler lock of a dead worker)
        # only between blocking pops, which last worker_ttl - 15 s: 405 s by default, 20 s here
        "worker_ttl": 35,
    }
    if settings.worker_class == "simple":
        w: QuickStopWorker | QuickStopSimpleWorker = QuickStopSimpleWorker([queue_name], **options)
    else:
        w = QuickStopWorker([queue_name], stop_grace=settings.stop_grace_s, **options)
    w.work(
        burst=burst,
        # a failed or abandoned ingest job is retried after a delay: RQ's scheduler requeues it
        with_scheduler=True,
        logging_level=logging.getLevelName(log.getEffectiveLevel()),
    )
    return w.stopping


def _signal_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)


def _stop_all(
    children: list[subprocess.Popen[bytes]], grace: float = 10.0, signalled: bool = False
) -> None:
    """Ask each child to stop (unless it was already asked) and wait for it: an RQ worker lets
    its job run for up to ``grace`` seconds; past that and a margin, it is killed."""
    if not signalled:
        _signal_all(children)
    deadline = time.monotonic() + grace + 10
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# -- operator commands -------------------------------------------------------------------------


@main.command("check-config")
def check_config() -> None:
    """Validate the configuration and print it, secrets masked."""
    settings = load_settings(require_redis=False)
    width = max(len(k) for k, _ in settings.describe(runtime.PLUGINS))
    for key, value in settings.describe(runtime.PLUGINS):
        click.echo(f"{key.ljust(width)}  {value}")
    click.echo("configuration OK")


@main.command()
@click.argument("email")
def lookup(email: str) -> None:
    """State, reasons, history and per-destination sync status of an address."""
    rt = load_runtime()
    view = rt.ledger.view(email)
    if view is None:
        from syncworker.ledger import address_hash
        from syncworker.store.keys import FORGOTTEN

        if rt.conn.exists(FORGOTTEN + address_hash(email)):
            raise click.ClickException("forgotten; a hashed suppression is kept for it")
        raise click.ClickException("the ledger has no record of this address")
    echo_json(view.as_json())


@main.command()
@click.argument("email")
@click.option("--reason", required=True, help="recorded with the change")
def suppress(email: str, reason: str) -> None:
    """Suppress an address by hand; every destination gets it."""
    _manual(email, reason, suppress=True)


@main.command()
@click.argument("email")
@click.option("--reason", required=True, help="recorded with the change")
def unsuppress(email: str, reason: str) -> None:
    """Clear every reason older than now; later events count again."""
    _manual(email, reason, suppress=False)


def _manual(email: str, reason: str, *, suppress: bool) -> None:
    if address_problem(normalize_email(email)) is not None:
        raise click.BadParameter("not an email address", param_hint="EMAIL")
    rt = load_runtime()
    change = rt.ledger.suppress if suppress else rt.ledger.unsuppress
    result = change(email, reason, source="cli")
    schedule.wake(rt, result.marked)
    state = rt.ledger.state(email)
    verb = "suppressed" if state.suppressed else "active"
    click.echo(
        f"{email}: {verb}; pending for {', '.join(sorted(result.marked)) or 'no destination'}"
    )


@main.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def forget(email: str, yes: bool) -> None:
    """Erase an address (right to erasure); a suppressed one stays suppressed, by hash only."""
    if "@" not in email:
        raise click.BadParameter("not an email address", param_hint="EMAIL")
    if not yes:
        click.confirm(f"Erase everything syncworker holds about {email}?", abort=True)
    suppressed = erasure.forget(load_runtime(), email)
    kept = "its suppression is kept as a hash" if suppressed else "nothing was kept"
    click.echo(f"{email}: forgotten; {kept}")


@main.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option(
    "--kind",
    type=click.Choice([k.value for k in Kind if k is not Kind.RESUBSCRIBE]),
    required=True,
    help="what the listed addresses are",
)
@click.option("--source", default="import", show_default=True, help="recorded as the source")
def import_(csv_file: TextIO, kind: str, source: str) -> None:
    """Seed the ledger from an ESP's suppression export (CSV with an email column)."""
    from syncworker.ops import transfer

    rt = load_runtime()
    try:
        rows = list(transfer.read_rows(csv_file, Kind(kind), source))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with click.progressbar(length=len(rows), label=f"import {kind}") as bar:
        report = transfer.import_rows(rt, rows, on_chunk=bar.update)
    schedule.wake(rt, report.marked)
    click.echo(
        f"{report.applied} applied, {report.duplicates} already imported, "
        f"{len(report.rejected)} rejected"
    )
    for problem in report.rejected[:20]:
        click.echo(f"  {problem}", err=True)


@main.command("export")
@click.option("--all", "everyone", is_flag=True, help="also addresses that are not suppressed")
def export(everyone: bool) -> None:
    """The ledger's suppressions as CSV on standard output."""
    import csv

    from syncworker.ops import transfer

    writer = csv.writer(sys.stdout)
    for row in transfer.export_rows(load_runtime(), everyone=everyone):
        writer.writerow(row)


@main.command()
@click.argument("destination")
def replay(destination: str) -> None:
    """Send a destination's dead letters again."""
    rt = load_runtime(destination)
    n = deadletters.replay_dead(rt, destination)
    click.echo(f"{destination}: {n} dead letter(s) back to pending")


@main.command()
@click.argument("destination")
@click.option("--restart", is_flag=True, help="start over instead of resuming a stopped run")
@click.option("--chunk", default=500, show_default=True, help="addresses per step")
def reconcile(destination: str, restart: bool, chunk: int) -> None:
    """Backfill a (newly added) destination with every suppressed address in the ledger."""
    from syncworker.ops import reconcile as backfill

    rt = load_runtime(destination)
    progress = backfill.start(rt, destination, restart=restart)
    if progress.resumed:
        click.echo(f"resuming: {progress.done} of {progress.total} addresses already walked")
    remaining = max(0, progress.total - progress.done)
    with click.progressbar(length=remaining, label=f"reconcile {destination}") as bar:
        backfill.run(rt, destination, progress, chunk=chunk, on_chunk=bar.update)
    what = "contacts" if rt.destinations[destination].mode.value == "state" else "events"
    click.echo(f"{destination}: {progress.marked} {what} pending; the worker delivers them")


@main.command()
@click.option("--batch", default=500, show_default=True, help="addresses per step")
def migrate(batch: int) -> None:
    """Convert the ledger's old layout (five keys per address) to one compact record per address.

    Each address is converted atomically; interrupting is safe and running again converts what is
    left. Workers may run meanwhile (they convert what they touch); pending deliveries and dead
    letters are not touched."""
    rt = load_runtime()
    started = time.monotonic()
    total = int(rt.conn.scard(CONTACTS))
    click.echo(f"{total} address(es) in the old layout")

    def step(converted: int) -> None:
        rate = converted / max(time.monotonic() - started, 1e-6)
        click.echo(f"  {converted} of {total} converted ({rate:.0f}/s)")

    report = rt.ledger.migrate(batch, on_batch=step)
    click.echo(
        f"{report.converted} converted, {report.left} stale address(es) dropped from the old set; "
        f"{report.records} records in the ledger"
    )


@main.command()
def status() -> None:
    """Queues, pending work, pauses, dead letters and counters."""
    from syncworker.store.stats import overview

    echo_json(overview(load_runtime()))


@main.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True)
@click.pass_context
def quarantine(ctx: click.Context, limit: int) -> None:
    """Show the newest quarantined events (verified requests that failed validation);
    `quarantine replay` parses them again."""
    if ctx.invoked_subcommand is not None:
        return
    from syncworker.store.keys import QUARANTINE

    rt = load_runtime()
    for raw in rt.conn.lrange(QUARANTINE, 0, limit - 1):
        echo_json(orjson.loads(raw))


@quarantine.command("replay")
@click.option("--source", default=None, help="only this source's records")
@click.option("--dry-run", is_flag=True, help="change nothing; report what would happen")
def quarantine_replay(source: str | None, dry_run: bool) -> None:
    """Parse quarantined events again with the current parsers and settings; queue those that
    now validate. Run it after an upgrade or a configuration fix; running it twice is harmless."""
    from syncworker.ops import replay as replaying
    from syncworker.privacy import mask_text
    from syncworker.store.keys import QUARANTINE

    rt = load_runtime()
    if source is not None and source not in rt.settings.sources:
        configured = ", ".join(rt.settings.sources) or "none"
        raise click.ClickException(f"{source!r} is not a configured source ({configured})")
    total = rt.conn.llen(QUARANTINE)
    if total >= replaying.MANY:
        with click.progressbar(length=total, label="replay quarantine") as bar:
            report = replaying.replay(
                rt, source=source, dry_run=dry_run, on_record=lambda: bar.update(1)
            )
    else:
        report = replaying.replay(rt, source=source, dry_run=dry_run)
    for line in report.lines():
        click.echo(mask_text(line))  # a reason may quote a value


# -- demo --------------------------------------------------------------------------------------


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="web port (loopback)")
@click.option("--exit", "exit_after", is_flag=True, help="stop everything after the summary")
def demo(port: int, exit_after: bool) -> None:
    """The whole pipeline on loopback emulators: embedded Redis, HubSpot, Segment and webhook
    emulators, web and worker; posts sample events and shows where they went."""
    from syncworker.devkit.demo import run_demo

    run_demo(port, exit_after=exit_after)
