"""APRO_STATE_STORE=rocksdb with real processes: a sink worker stopped, then SIGKILLed, and restarted each time keeps
its state and recovers it locally, reading only the changelog tail.

Each patient pays an invoice before each restart and one after: GoHighLevel's lifetime value is the sum of all three
only if the restarted worker still had the earlier ones. Faust's recovery log (highwater and "Reading Starts At" per
changelog partition) shows how much of the client_state changelog each restart read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from emulator.server import ThreadedEmulator
from foundations.config import Settings
from foundations.formats import crm_fields
from sinks.agent import changelog_topic_name
from tests.reliability.generator import GeneratedEvent, Person, _Builder, _person
from tests.reliability.harness import (
    StackConfig,
    WorkerProcess,
    next_offsets,
    read_topic,
    wait_committed_to_end,
    wait_until,
)
from tests.reliability.test_crash import ghl_env, post_in_client_order, settle, start_emulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENTS = 8
READY = "Worker ready"


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedEmulator]:
    emu = start_emulator()
    try:
        yield emu
    finally:
        emu.stop()


def invoices(seed: int, rounds: int) -> tuple[_Builder, list[Person], list[list[GeneratedEvent]]]:
    """Every patient created; then `rounds` rounds of one paid invoice each (the first round with the creation)."""
    builder = _Builder(seed)
    people = [_person(builder.rng, n) for n in range(CLIENTS)]
    batches = []
    for round_ in range(rounds):
        first = len(builder.events)
        for person in people:
            if round_ == 0:
                builder.client_event(person)
            builder.invoice(person)
        batches.append(builder.events[first:])
    return builder, people, batches


def recovery_tables(text: str) -> dict[str, dict[tuple[str, int], int]]:
    """Faust's recovery log tables (title -> {(topic, partition): offset}), e.g. "Highwater - Active"."""
    text = text.replace("\\n", "\n").replace("\\u2502", "│").replace("\\u3003", "〃")
    tables: dict[str, dict[tuple[str, int], int]] = {}
    current: dict[tuple[str, int], int] | None = None
    topic = ""
    for line in text.splitlines():
        title = re.search(r"(Highwater|Reading Starts At) - (Active|Standby)", line)
        if title:
            current = tables.setdefault(title.group(0), {})
            continue
        cells = [cell.strip() for cell in re.split(r"[|│]", line)[1:-1]]
        if current is None or len(cells) != 3 or not re.fullmatch(r"-?\d+", cells[2]):
            continue
        topic = topic if cells[0] == "〃" else cells[0]
        current[(topic, int(cells[1]))] = int(cells[2])
    return tables


def read_from(paths: list[Path], sizes: dict[Path, int]) -> str:
    out = []
    for path in paths:
        if path.exists():
            with open(path, "rb") as log_file:
                log_file.seek(sizes.get(path, 0))
                out.append(log_file.read().decode(errors="replace"))
    return "\n".join(out)


def wait_synced(config: StackConfig, group: str, emulator: ThreadedEmulator) -> None:
    for topic in (config.topics.raw, config.topics.normalized):
        wait_committed_to_end(config.bootstrap, group, topic, timeout_s=60,
                              ends=next_offsets(read_topic(config.bootstrap, topic)))
    settle(emulator, quiet_s=1.5, timeout_s=60)


def lifetime_values(emulator: ThreadedEmulator) -> dict[str, Decimal]:
    """Lifetime value per contact email (lower case)."""
    out = {}
    for contact in emulator.snapshot()["contacts"]:
        fields = {key.rsplit(".", 1)[-1]: value for key, value in contact["customFields"].items()}
        email = contact["key"].split("|", 1)[0]
        if email and crm_fields.PATIENT_LIFETIME_VALUE.key in fields:
            out[email] = Decimal(str(fields[crm_fields.PATIENT_LIFETIME_VALUE.key]))
    return out


def test_restarted_rocksdb_worker_keeps_its_state_and_reads_only_the_changelog_tail(
        kafka_bootstrap: str, using_embedded_broker: bool, emulator: ThreadedEmulator, tmp_path: Path) -> None:
    builder, people, batches = invoices(seed=31, rounds=3)
    config = StackConfig.for_broker(kafka_bootstrap, tmp_path, embedded_broker=using_embedded_broker, partitions=2,
                                    extra_env={**ghl_env(emulator), "APRO_STATE_STORE": "rocksdb",
                                               "APRO_LOG_FORMAT": "console", "APRO_LOG_LEVEL": "INFO"})
    config.create_topics()
    changelog = changelog_topic_name(Settings(topic_prefix=config.topic_prefix, _env_file=None))
    producer, worker = config.producer(), config.worker()
    try:
        producer.start()
        worker.start()
        producer.wait_ready()
        worker.wait_ready()
        for batch, how in zip(batches, ("stop", "kill", None)):
            assert set(asyncio.run(post_in_client_order(producer.webhook_url(), batch))) == {202}
            wait_synced(config, worker.worker_id, emulator)
            if how is None:
                break
            written = len(read_topic(config.bootstrap, changelog))
            assert written >= CLIENTS  # at least one state record per patient
            worker.kill() if how == "kill" else worker.stop()
            tables = recovery_tables(restarted(worker))
            highwater, start = tables["Highwater - Active"], tables["Reading Starts At - Active"]
            ours = [tp for tp in highwater if tp[0] == changelog]
            assert len(ours) == config.partitions, tables
            # Only what the local store had not recorded is read; a memory store starts at -1 (everything).
            assert all(start[tp] >= 0 for tp in ours if highwater[tp] >= 0), (how, tables)
            tail = sum(highwater[tp] - start[tp] for tp in ours)
            assert tail < written, (how, tail, written)
            if how == "stop":
                assert tail == 0, tables
    finally:
        worker.stop()
        producer.stop()

    # Each lifetime value sums the invoices of before, between and after the restarts.
    values = lifetime_values(emulator)
    with_email = [person for person in people if person.email]
    assert with_email
    for person in with_email:
        assert person.email is not None
        assert values.get(person.email.strip().lower()) == builder.paid_total[person.client_id], person.client_id


def restarted(worker: WorkerProcess) -> str:
    """Start the worker again on its state directory; its log from this start up to Faust's "Worker ready"."""
    sizes = {path: path.stat().st_size for path in worker.log_files if path.exists()}
    worker.start().wait_ready()

    def ready() -> str | None:
        text = read_from(worker.log_files, sizes)
        return text if READY in text else None

    return wait_until(ready, 60, 0.3, "the restarted worker's recovery")

