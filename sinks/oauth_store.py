"""Durable, encrypted OAuth tokens per GoHighLevel location in the compacted `<prefix>apro.oauth-tokens` topic.

One partition, so every record (a location's tokens under its id, refresh leases under `<id>#lease`) is in one
total order that every worker folds alike (`TokenLog`, pure): the latest value per key comes from reading the
log in order, never from compaction. Values are Fernet tokens (APRO_OAUTH_TOKEN_KEYS); docs/operations.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

log = logging.getLogger("apro_sync.oauth")

LEASE_SUFFIX = "#lease"
MAX_FINGERPRINTS = 16  # bootstrap tokens already adopted, remembered so an old one is never adopted twice


class TokenKeyError(ValueError):
    """APRO_OAUTH_TOKEN_KEYS is missing or not a list of Fernet keys (the message never holds a key)."""


def cipher(keys: SecretStr | None) -> MultiFernet:
    """Comma-separated Fernet keys: the first encrypts, every one decrypts (rotation: prepend the new key)."""
    raw = [k.strip() for k in (keys.get_secret_value() if keys else "").split(",") if k.strip()]
    if not raw:
        raise TokenKeyError("APRO_OAUTH_TOKEN_KEYS is not set: OAuth locations need a key to encrypt their tokens "
                            "(generate one: python -c 'from cryptography.fernet import Fernet; "
                            "print(Fernet.generate_key().decode())')")
    try:
        return MultiFernet([Fernet(k.encode()) for k in raw])
    except (ValueError, TypeError):
        raise TokenKeyError("APRO_OAUTH_TOKEN_KEYS: each key must be a Fernet key (32 url-safe base64 bytes)") from None


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Tokens:
    """A location's current grant. `gen` grows by one per refresh (and per adopted bootstrap token)."""

    location: str
    gen: int
    refresh_token: str
    access_token: str | None = None
    issued_at: float = 0.0
    expires_at: float = 0.0
    rejected: bool = False  # GoHighLevel refused `refresh_token` (already used or revoked): an operator must act
    adopted: tuple[str, ...] = ()  # fingerprints of bootstrap tokens taken over

    def __repr__(self) -> str:  # never a token
        return f"Tokens(location={self.location!r}, gen={self.gen}, expires_at={self.expires_at:.0f})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tokens", "location": self.location, "gen": self.gen, "refresh_token": self.refresh_token,
                "access_token": self.access_token, "issued_at": self.issued_at, "expires_at": self.expires_at,
                "rejected": self.rejected, "adopted": list(self.adopted)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokens:
        return cls(location=str(data["location"]), gen=int(data["gen"]), refresh_token=str(data["refresh_token"]),
                   access_token=data.get("access_token"), issued_at=float(data.get("issued_at") or 0),
                   expires_at=float(data.get("expires_at") or 0), rejected=bool(data.get("rejected")),
                   adopted=tuple(data.get("adopted") or ()))


@dataclass(frozen=True)
class Lease:
    """A worker's claim to refresh `gen` of a location until `until` (its own clock)."""

    location: str
    gen: int
    owner: str
    at: float
    until: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "lease", "location": self.location, "gen": self.gen, "owner": self.owner, "at": self.at,
                "until": self.until}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(location=str(data["location"]), gen=int(data["gen"]), owner=str(data["owner"]),
                   at=float(data["at"]), until=float(data["until"]))


@dataclass
class TokenLog:
    """The fold of the token topic, record by record in log order (pure).

    Tokens: the record with the highest `gen` wins (a later record of the same gen replaces it: a rejection).
    Leases: a claim is granted when it names the current gen and no other owner's grant on that gen is still
    live at the claim's time; a grant ends with its gen. Every worker reads the same log, so exactly one claim
    per gen and window is granted, whoever wrote it.
    """

    tokens: dict[str, Tokens] = field(default_factory=dict)
    grants: dict[str, Lease] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "tokens":
            new = Tokens.from_dict(record)
            current = self.tokens.get(new.location)
            if current is None or new.gen >= current.gen:
                self.tokens[new.location] = new
                grant = self.grants.get(new.location)
                if grant is not None and grant.gen < new.gen:
                    del self.grants[new.location]
        elif record.get("kind") == "lease":
            claim = Lease.from_dict(record)
            current = self.tokens.get(claim.location)
            if current is None or claim.gen != current.gen:
                return
            grant = self.grants.get(claim.location)
            if grant is None or grant.gen != claim.gen or grant.owner == claim.owner or grant.until <= claim.at:
                self.grants[claim.location] = claim

    def granted(self, location: str, owner: str, gen: int, now: float) -> Lease | None:
        grant = self.grants.get(location)
        if grant is not None and grant.owner == owner and grant.gen == gen and grant.until > now:
            return grant
        return None

    def held_by_other(self, location: str, owner: str, now: float) -> Lease | None:
        grant = self.grants.get(location)
        current = self.tokens.get(location)
        if grant is None or current is None or grant.gen != current.gen or grant.owner == owner or grant.until <= now:
            return None
        return grant


def adopt(current: Tokens | None, location: str, bootstrap: str, now: float) -> Tokens | None:
    """The record that takes over a bootstrap refresh token (an install's), or None when it was adopted before."""
    fp = fingerprint(bootstrap)
    if current is not None and fp in current.adopted:
        return None
    adopted = ((current.adopted if current else ()) + (fp,))[-MAX_FINGERPRINTS:]
    return Tokens(location=location, gen=(current.gen + 1 if current else 1), refresh_token=bootstrap,
                  issued_at=now, adopted=adopted)


class TokenStore:
    """The token topic through aiokafka: one producer (acks=all) and one group-less reader tailing the log."""

    def __init__(self, connection: Any, topic: str, keys: SecretStr | None, client_id: str = "apro-oauth") -> None:
        self.connection = connection
        self.topic = topic
        self.cipher = cipher(keys)
        self.client_id = client_id
        self.log = TokenLog()
        self._producer: Any = None
        self._consumer: Any = None
        self._tp: Any = None
        self._position = 0
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._undecryptable: set[str] = set()

    async def start(self) -> None:
        async with self._start_lock:
            if self._producer is not None:
                return
            from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

            kwargs = self.connection.aiokafka()
            producer = AIOKafkaProducer(**kwargs, client_id=self.client_id, acks="all")
            consumer = AIOKafkaConsumer(**kwargs, client_id=self.client_id, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="earliest", fetch_max_wait_ms=50)
            await producer.start()
            try:
                await consumer.start()
            except BaseException:
                await producer.stop()
                raise
            self._tp = TopicPartition(self.topic, 0)
            consumer.assign([self._tp])
            await consumer.seek_to_beginning(self._tp)
            self._producer, self._consumer = producer, consumer
        await self.catch_up()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        consumer, self._consumer = self._consumer, None
        for client in (consumer, producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # noqa: BLE001 - shutting down
                    log.debug("oauth store stop failed (%s)", type(exc).__name__)

    def _decode(self, key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            return json.loads(self.cipher.decrypt(value))
        except (InvalidToken, ValueError):
            name = (key or b"?").decode(errors="replace")
            if name not in self._undecryptable:
                self._undecryptable.add(name)
                log.error("oauth: a stored token record of %s cannot be decrypted with APRO_OAUTH_TOKEN_KEYS "
                          "(a key was removed before every record was rewritten?)", name)
            return None

    async def catch_up(self, timeout_s: float = 30.0) -> None:
        """Fold every record written so far (up to the end offset as of now)."""
        async with self._lock:
            consumer, tp = self._consumer, self._tp
            end = (await asyncio.wait_for(consumer.end_offsets([tp]), timeout_s))[tp]
            deadline = time.monotonic() + timeout_s
            while self._position < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"oauth token topic not read to offset {end} within {timeout_s:.0f}s")
                batch = await consumer.getmany(tp, timeout_ms=200)
                for record in batch.get(tp, []):
                    if record.offset < self._position:
                        continue
                    self._position = record.offset + 1
                    data = self._decode(record.key, record.value)
                    if data is not None:
                        self.log.apply(data)

    async def write(self, record: dict[str, Any]) -> None:
        """Append and wait for the broker's acknowledgement (acks=all), then fold it in. Compaction keeps the last
        record per key, so that must be the newest generation: an older tokens record is not written, and one
        that lost a race is followed by the newest again."""
        if record["kind"] == "tokens":
            await self.catch_up()
            current = self.tokens(record["location"])
            if current is not None and record["gen"] < current.gen:
                return
        await self._send(record)
        await self.catch_up()
        if record["kind"] == "tokens":
            current = self.tokens(record["location"])
            if current is not None and current.gen > record["gen"]:
                await self._send(current.to_dict())  # a newer one raced ours: make it the last again

    async def _send(self, record: dict[str, Any]) -> None:
        key = record["location"] + (LEASE_SUFFIX if record["kind"] == "lease" else "")
        value = self.cipher.encrypt(json.dumps(record, separators=(",", ":")).encode())
        await self._producer.send_and_wait(self.topic, value=value, key=key.encode(), partition=0)

    def tokens(self, location: str) -> Tokens | None:
        return self.log.tokens.get(location)
