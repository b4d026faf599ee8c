"""The `apro-sync` command. Each subcommand imports its module lazily so `--help` stays fast."""

from __future__ import annotations

from typing import Optional

import typer

from foundations.config import Settings, load_settings


def _kafka_settings() -> Settings:
    """Settings for a command that talks to Kafka: refused TLS/SASL credentials stop it with a clear message."""
    from foundations.kafka_admin import check_credentials

    settings = load_settings()
    if settings.kafka_bootstrap_servers:
        check_credentials(settings.kafka)
    return settings


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sync AestheticsPro webhooks into GoHighLevel.")


@app.command()
def dev(
    port: int = typer.Option(8080, help="Port for the webhook producer."),
    emulator_port: int = typer.Option(8090, help="Port for the GoHighLevel emulator (used when no GHL token is set)."),
) -> None:
    """Start the whole stack on embedded defaults: broker, producer, worker, GoHighLevel emulator."""
    from apro_sync.dev import run_dev

    run_dev(load_settings(), port=port, emulator_port=emulator_port)


CONFIG_HELP = ("Configuration: environment variables (APRO_*, KAFKA_BOOTSTRAP_SERVERS) or a .env file in the "
               "working directory; `apro-sync config` lists every setting with its default.")


@app.command()
def config(
    show_defaults_only: bool = typer.Option(False, "--defaults", help="Ignore the environment and .env."),
) -> None:
    """List every setting: its variable, current value (secrets masked) and default."""
    from foundations.config import PROCESS_VARIABLES, Settings, env_name

    current = Settings(_env_file=None) if show_defaults_only else load_settings()
    rows = []
    for name, field in Settings.model_fields.items():
        value, default = getattr(current, name), field.get_default(call_default_factory=True)
        rows.append((env_name(name), _shown(value), _shown(default)))
    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'variable'.ljust(width)}  {'value'.ljust(28)}  default")
    for variable, value, default in rows:
        typer.echo(f"{variable.ljust(width)}  {value.ljust(28)}  {default}")
    typer.echo("\nRead by the processes directly:")
    for variable, meaning in PROCESS_VARIABLES.items():
        typer.echo(f"{variable.ljust(width)}  {meaning}")


def _shown(value: object) -> str:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return "********"
    if isinstance(value, list):
        return f"[{len(value)} item(s)]" if value else "[]"
    return "-" if value is None else str(value)


@app.command(help="Run the webhook intake HTTP service (publishes raw webhooks to Kafka).\n\n" + CONFIG_HELP)
def producer() -> None:
    from producer.server import run

    run(load_settings())


@app.command(help="Run a Faust worker: normalization, state tables and the GoHighLevel sink.\n\n" + CONFIG_HELP)
def worker() -> None:
    from apro_sync.worker import run

    run(load_settings())


@app.command()
def topics(check: bool = typer.Option(False, "--check", help="Only report differences; create nothing.")) -> None:
    """Create apro-sync's topics with their production configs, then report any that differ (exit 1)."""
    from foundations.kafka_admin import check_topics, ensure_topics

    settings = _kafka_settings()
    specs = settings.topic_specs()
    if not check:
        ensure_topics(settings.kafka, specs)
    problems = check_topics(settings.kafka, specs)
    for spec in specs:
        typer.echo(f"{spec.name}: {spec.partitions} partitions, replication {spec.replication}, "
                   + ", ".join(f"{k}={v}" for k, v in sorted(spec.config.items())))
    for problem in problems:
        typer.echo(f"MISMATCH {problem}", err=True)
    raise typer.Exit(1 if problems else 0)


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8090),
    config: Optional[str] = typer.Option(None, help="YAML/JSON file seeding locations, pipelines and workflows."),
) -> None:
    """Run the GoHighLevel API emulator (for development and tests)."""
    from emulator.server import run

    run(host=host, port=port, config_path=config)


@app.command()
def provision(dry_run: bool = typer.Option(False, help="Report what is missing without creating anything.")) -> None:
    """Create missing custom fields in GoHighLevel and check the pipeline and workflows exist."""
    from sinks.provision import run

    raise typer.Exit(run(load_settings(), dry_run=dry_run))


@app.command()
def peek(
    topic: str = typer.Argument("raw", help="raw | quarantine | normalized | skipped | deadletter | shadow, or a "
                                "topic name."),
    show_payload: bool = typer.Option(False, "--show-payload",
                                      help="Also print keys and bodies (patient data: development only)."),
) -> None:
    """List the records of a topic: partition:offset, time, request id, resource, size (and reason on
    quarantine / dead-letter topics). Reads without a consumer group. Uses KAFKA_BOOTSTRAP_SERVERS."""
    from apro_sync.ops import peek
    from apro_sync.ops.kafka_io import OperatorError

    settings = _kafka_settings()
    short = {"raw", "quarantine", "normalized", "skipped", "deadletter", "shadow"}
    name = getattr(settings.topics, topic) if topic in short else topic
    try:
        peek.run(
            settings.kafka if settings.kafka_bootstrap_servers else "localhost:9092", name, show_payload, typer.echo
        )
    except OperatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("lag-exporter")
def lag_exporter(
    port: int = typer.Option(9308, help="Port for the Prometheus /metrics endpoint."),
    host: str = typer.Option("0.0.0.0", help="Address to bind /metrics to."),
    interval: float = typer.Option(15.0, min=1.0, help="Seconds between two reads of the offsets."),
    group: Optional[list[str]] = typer.Option(None, help="Consumer group (repeatable; default: APRO_WORKER_ID)."),
    topic: Optional[list[str]] = typer.Option(
        None, help="Topic (repeatable; default: every topic the group has committed offsets on)."
    ),
) -> None:
    """Export consumer lag (end offset minus committed offset) per group and partition to Prometheus."""
    from apro_sync.ops.lag import run

    run(_kafka_settings(), groups=group or [], topics=topic or [], host=host, port=port, interval_s=interval)


@app.command()
def replay(
    since: str = typer.Option(..., help="Start of the range (inclusive). Accepts ISO 8601 (no offset = UTC), "
                              "relative (30m, 2h, 1d, 1w, 1h30m), epoch seconds or milliseconds, or 'now'."),
    until: Optional[str] = typer.Option(None, help="End of the range (inclusive), same forms; default: now."),
    location: Optional[str] = typer.Option(None, help="Only records of this location (id or name)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be replayed; publish nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    reset_offsets: bool = typer.Option(False, "--reset-offsets", help="Instead of republishing, move the workers' "
                                       "consumer group back to --since (refused while workers run)."),
    group: Optional[str] = typer.Option(None, help="Consumer group for --reset-offsets (default: APRO_WORKER_ID)."),
) -> None:
    """Process the raw webhooks of a time range again.

    Default: copy the selected records back onto the raw topic (same key, value, partition; original headers plus
    apro-replay and apro-replayed-from), safe while workers run: the normalizer lets replays past its dedupe and
    the sync ledger applies each effect once. Times are record timestamps (the embedded broker uses write time).
    --reset-offsets rewinds the workers' group instead; its records are re-read as they are, so the normalizer's
    dedupe window still drops event ids it already passed on.
    """
    from datetime import datetime, timezone

    from apro_sync.ops import replay
    from apro_sync.ops.kafka_io import OperatorError
    from foundations.timeparse import TimeParseError, parse_time

    now = datetime.now(timezone.utc)
    try:
        start = parse_time(since, now)
        end = parse_time(until, now) if until else None
    except TimeParseError as exc:
        raise typer.BadParameter(str(exc)) from None
    if end is not None and start > end:
        raise typer.BadParameter(f"--since ({start.isoformat()}) is after --until ({end.isoformat()})")
    settings = _kafka_settings()
    confirm = (lambda _msg: True) if yes else (lambda msg: typer.confirm(msg, default=False))
    try:
        if reset_offsets:
            if end is not None or location is not None:
                raise OperatorError("--reset-offsets rewinds whole partitions: --until and --location need the "
                                    "default (republish) mode")
            group_id = group or settings.worker_id
            typer.echo(f"consumer group {group_id} on {settings.topics.raw} from {start.isoformat()}:")
            replay.reset_offsets(settings, start, group_id, dry_run, confirm, typer.echo)
            typer.echo("dry run: offsets unchanged" if dry_run else "offsets reset; start the workers")
            return
        summary = replay.republish(settings, replay.ReplayRequest(start, end, location, dry_run), confirm)
    except OperatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    span = f"{start.isoformat()} .. {end.isoformat() if end else 'now'}"
    typer.echo(f"replay of {settings.topics.raw} for {span}" + (f", location {location}" if location else ""))
    for line in summary.lines("republished", dry_run):
        typer.echo(line)


@app.command()
def reconcile(
    location: Optional[str] = typer.Option(None, help="Only this GoHighLevel location (its label or id)."),
    fix: bool = typer.Option(False, "--fix", help="Write the state's values again where GoHighLevel drifted."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
) -> None:
    """Compare what apro-sync owns in GoHighLevel (its custom fields, the opportunity's stage, status and value,
    the patient tag) with the sink's state, and report drift per field as counts. With --fix, re-apply the
    state through the sync executor within the rate budget. Exit 1 when drift remains."""
    from apro_sync.ops.kafka_io import OperatorError
    from apro_sync.ops import reconcile as reconcile_tool
    from sinks.locations import LocationsError

    settings = _kafka_settings()
    try:
        reports = reconcile_tool.run(settings, location=location, fix=fix, show_progress=progress,
                        log=lambda line: typer.echo(line, err=True))
    except (OperatorError, LocationsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in reconcile_tool.iter_lines(reports, fix):
        typer.echo(line)
    remaining = any(r.failed_clients or (r.counts.total and not fix) for r in reports)
    raise typer.Exit(1 if remaining else 0)


@app.command()
def backfill(
    clients: Optional[str] = typer.Option(None, "--clients", help="Clients export (CSV)."),
    appointments: Optional[str] = typer.Option(None, "--appointments", help="Appointments export (CSV)."),
    invoices: Optional[str] = typer.Option(None, "--invoices", help="Invoices export (CSV)."),
    location: Optional[str] = typer.Option(None, help="AestheticsPro location id of rows that name none; rows of "
                                           "another location are left out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print per location what it would create or update."),
    as_of: Optional[str] = typer.Option(None, help="When the export was taken (default: now); same forms as replay."),
    rate_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of each GoHighLevel location's rate budget "
                                     "the backfill is paced to (0: publish unpaced)."),
    budget: int = typer.Option(100, min=1, help="GoHighLevel requests per 10 s per location (GoHighLevel: 100)."),
    daily_limit: int = typer.Option(200_000, min=1, help="GoHighLevel requests per day per location (200,000)."),
    checkpoint_dir: Optional[str] = typer.Option(None, help="Where the resume checkpoint is kept "
                                                 "(default: APRO_STATE_DIR)."),
) -> None:
    """Publish AestheticsPro's CSV exports as historical events (columns: examples/exports/README.md).

    Resumable: re-run the same command after a crash; events already published are not repeated in effect.
    """
    from datetime import datetime, timezone
    from pathlib import Path

    from apro_sync.ops import backfill as backfill_mod
    from apro_sync.ops.backfill_exports import ExportError
    from foundations.timeparse import TimeParseError, parse_time

    if not (clients or appointments or invoices):
        raise typer.BadParameter("give at least one of --clients, --appointments, --invoices")
    try:
        taken = parse_time(as_of, datetime.now(timezone.utc)) if as_of else None
    except TimeParseError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = load_settings() if dry_run else _kafka_settings()
    request = backfill_mod.BackfillRequest(
        clients=Path(clients) if clients else None, appointments=Path(appointments) if appointments else None,
        invoices=Path(invoices) if invoices else None, location=location, dry_run=dry_run, as_of=taken,
        rate_share=rate_share, budget_per_10s=budget, daily_limit=daily_limit,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    try:
        prepared = backfill_mod.prepare(request, settings)
        target = backfill_mod.ghl_target_of(settings)
        plan = backfill_mod.budget_for(prepared.by_client, target, rate_share, budget, daily_limit,
                                       1.0 - settings.ghl_live_reserve)
        for line in backfill_mod.summary_lines(prepared, plan):
            typer.echo(line)
        if dry_run:
            for label, counts in sorted(backfill_mod.dry_run(prepared, settings, target).items()):
                typer.echo(f"location {label}: {counts.line()}")
            typer.echo("dry run: nothing published (counts assume no contact exists yet in GoHighLevel)")
            return
        result = backfill_mod.publish(prepared, settings, request, target=target)
    except (ExportError, backfill_mod.BackfillError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {result.published} events ({result.skipped_by_checkpoint} already published by an "
               f"earlier run) of {result.total}")
    if prepared.export.rejects:
        raise typer.Exit(2)


dlq_app = typer.Typer(
    no_args_is_help=True, help="Inspect and redrive dead-letter records (headers only, never payloads)."
)
app.add_typer(dlq_app, name="dlq")

_STAGES = ("intake", "normalize", "sync")


def _check_stage(stage: Optional[str]) -> Optional[str]:
    if stage is not None and stage not in _STAGES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(_STAGES)}")
    return stage


@dlq_app.command("list")
def dlq_list(
    stage: Optional[str] = typer.Option(None, help="intake | normalize | sync"),
    limit: Optional[int] = typer.Option(None, min=1, help="Show at most this many records."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    pending: bool = typer.Option(False, "--pending", help="Hide records already redriven."),
    quarantine: bool = typer.Option(False, "--quarantine", help="List the producer's quarantine topic instead."),
) -> None:
    """List dead-letter records: id (topic:partition:offset), stage, reason, event id, location, attempts, time,
    and whether it was redriven. Reads the whole topic without a consumer group; never prints a payload."""
    from apro_sync.ops import dlq
    from apro_sync.ops.kafka_io import OperatorError

    _check_stage(stage)
    try:
        entries = dlq.list_entries(_kafka_settings(), quarantine=quarantine, stage=stage, limit=limit,
                                 include_redriven=not pending)
    except OperatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not entries and not as_json:
        typer.echo("no records")
        return
    typer.echo(dlq.format_json(entries) if as_json else dlq.format_table(entries))


@dlq_app.command("redrive")
def dlq_redrive(
    record_ids: Optional[list[str]] = typer.Option(None, "--id", help="Record id from `dlq list` (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Every record not redriven yet."),
    stage: Optional[str] = typer.Option(None, help="Only records of this stage: intake | normalize | sync."),
    force: bool = typer.Option(False, "--force", help="Redrive records again even if already redriven."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be redriven; publish nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    quarantine: bool = typer.Option(
        False, "--quarantine", help="Redrive from the quarantine topic (to the raw topic)."
    ),
) -> None:
    """Publish dead-letter records back to their source topic (same key and partition; dead-letter headers
    removed; apro-dlq-attempts + 1) and wait for the broker's acknowledgement.

    Each acknowledged record gets a marker in the compacted topic `<dead-letter topic>.redriven` keyed by its id:
    `dlq list` shows it as redriven and `--all` does not send it twice. No store outside Kafka is needed.
    """
    from apro_sync.ops import dlq
    from apro_sync.ops.kafka_io import OperatorError

    _check_stage(stage)
    confirm = (lambda _msg: True) if yes else (lambda msg: typer.confirm(msg, default=False))
    try:
        summary = dlq.redrive(_kafka_settings(), ids=record_ids or [], all_=all_, stage=stage, quarantine=quarantine,
                            force=force, dry_run=dry_run, confirm=confirm)
    except OperatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in summary.lines(dry_run):
        typer.echo(line)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
