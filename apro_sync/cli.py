"""The `apro-sync` command. Each subcommand imports its module lazily so `--help` stays fast."""

from __future__ import annotations

from typing import Optional

import typer

from apro_sync.config import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sync AestheticsPro webhooks into GoHighLevel.")


@app.command()
def dev(
    port: int = typer.Option(8080, help="Port for the webhook producer."),
    emulator_port: int = typer.Option(8090, help="Port for the GoHighLevel emulator (used when no GHL token is set)."),
) -> None:
    """Start the whole stack on embedded defaults: broker, producer, worker, GoHighLevel emulator."""
    from apro_sync.dev import run_dev

    run_dev(load_settings(), port=port, emulator_port=emulator_port)


@app.command()
def producer() -> None:
    """Run the webhook intake HTTP service (publishes raw webhooks to Kafka)."""
    from producer.server import run

    run(load_settings())


@app.command()
def worker() -> None:
    """Run a Faust worker: normalization, state tables and the GoHighLevel sink."""
    from streams.worker import run

    run(load_settings())


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8090),
    config: Optional[str] = typer.Option(None, help="YAML/JSON file seeding locations, pipelines and workflows."),
) -> None:
    """Run the GoHighLevel API emulator (for development and tests)."""
    from sinks.emulator.server import run

    run(host=host, port=port, config_path=config)


@app.command()
def provision(dry_run: bool = typer.Option(False, help="Report what is missing without creating anything.")) -> None:
    """Create missing custom fields in GoHighLevel and check the pipeline and workflows exist."""
    from sinks.provision import run

    raise typer.Exit(run(load_settings(), dry_run=dry_run))


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
    from apro_sync.lag import run

    run(load_settings(), groups=group or [], topics=topic or [], host=host, port=port, interval_s=interval)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
