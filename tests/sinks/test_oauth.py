"""OAuth token provider: refresh arithmetic and the token log's lease rules (pure, fake clock), then the provider
against the real broker and the emulator's OAuth endpoints (fake clock on both sides, no wall-clock asserts)."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY
from pydantic import SecretStr

from foundations.config import Settings
from foundations.kafka_admin import ensure_topics
from emulator.config import EmulatorConfig
from emulator.server import EmulatorServer
from sinks.ghl.client import GhlClient
from sinks.ghl.errors import GhlPermanentError
from sinks.locations import GhlTarget, OAuthCredentials
from sinks.oauth import OAuthAuth, OAuthManager, RefreshPolicy
from sinks.oauth_store import Lease, TokenKeyError, TokenLog, Tokens, adopt, cipher

LOCATION = "emuLocation000000001"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tokens(gen: int, issued: float = 0.0, lifetime: float = 100.0, **kw: object) -> Tokens:
    return Tokens(location=LOCATION, gen=gen, refresh_token=f"r{gen}", access_token=f"a{gen}", issued_at=issued,
                  expires_at=issued + lifetime, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ pure


def test_refresh_is_due_at_the_configured_share_of_the_lifetime() -> None:
    policy = RefreshPolicy(refresh_at=0.8, expiry_skew_s=1.0)
    t = tokens(1, issued=1000.0, lifetime=86400.0)
    assert policy.due_at(t) == 1000.0 + 69120.0
    assert not policy.due(t, 1000.0 + 69119.0) and policy.due(t, 1000.0 + 69120.0)
    assert policy.usable(t, 1000.0 + 86398.9) and not policy.usable(t, 1000.0 + 86399.0)
    assert policy.due(Tokens(LOCATION, 1, "r"), 0.0) and not policy.usable(Tokens(LOCATION, 1, "r"), 0.0)
    assert not policy.may_replace(t, 1000.0 + 59.0) and policy.may_replace(t, 1000.0 + 60.0)  # a minute at most
    short = tokens(1, issued=0.0, lifetime=4.0)
    assert not policy.may_replace(short, 0.39) and policy.may_replace(short, 0.4)  # a tenth of the life
    half = RefreshPolicy(refresh_at=0.5)
    assert half.due_at(tokens(1, issued=10.0, lifetime=4.0)) == 12.0


def test_one_lease_per_generation_until_it_ends() -> None:
    fold = TokenLog()
    fold.apply(tokens(1).to_dict())
    fold.apply(Lease(LOCATION, 1, "w1", at=10.0, until=70.0).to_dict())
    fold.apply(Lease(LOCATION, 1, "w2", at=11.0, until=71.0).to_dict())  # w1's lease is live: not granted
    assert fold.granted(LOCATION, "w1", 1, now=12.0) and not fold.granted(LOCATION, "w2", 1, now=12.0)
    assert fold.held_by_other(LOCATION, "w2", now=12.0) is not None
    assert fold.held_by_other(LOCATION, "w2", now=70.0) is None  # expired
    fold.apply(Lease(LOCATION, 1, "w2", at=70.5, until=130.0).to_dict())  # after w1's lease ended
    assert fold.granted(LOCATION, "w2", 1, now=71.0) and not fold.granted(LOCATION, "w1", 1, now=71.0)
    fold.apply(Lease(LOCATION, 0, "w3", at=72.0, until=200.0).to_dict())  # names a stale generation
    assert fold.grants[LOCATION].owner == "w2"
    fold.apply(tokens(2).to_dict())  # the refresh result ends the lease
    assert LOCATION not in fold.grants and fold.tokens[LOCATION].gen == 2
    fold.apply(tokens(1).to_dict())  # a late record of an older generation changes nothing
    assert fold.tokens[LOCATION].gen == 2
    fold.apply(tokens(2, rejected=True).to_dict())  # a rejection of the same generation does
    assert fold.tokens[LOCATION].rejected
    fold.apply(Lease("other", 1, "w1", at=1.0, until=2.0).to_dict())  # no tokens for that location: ignored
    assert "other" not in fold.grants


def test_bootstrap_token_is_adopted_once() -> None:
    first = adopt(None, LOCATION, "install-1", now=5.0)
    assert first is not None and first.gen == 1 and first.access_token is None
    refreshed = Tokens(LOCATION, 2, "r2", "a2", 6.0, 106.0, adopted=first.adopted)
    assert adopt(refreshed, LOCATION, "install-1", now=7.0) is None  # an old install token: never again
    second = adopt(refreshed, LOCATION, "install-2", now=8.0)
    assert second is not None and second.gen == 3 and second.refresh_token == "install-2"
    assert len(second.adopted) == 2


def test_token_keys_are_required_and_checked() -> None:
    with pytest.raises(TokenKeyError, match="APRO_OAUTH_TOKEN_KEYS is not set"):
        cipher(None)
    with pytest.raises(TokenKeyError) as bad:
        cipher(SecretStr("not-a-key"))
    assert "not-a-key" not in str(bad.value)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = cipher(SecretStr(old)).encrypt(b"x")
    assert cipher(SecretStr(f"{new},{old}")).decrypt(sealed) == b"x"  # rotation: the old key still decrypts


# ------------------------------------------------------------------------------------------------ broker + emulator


@pytest.fixture
def oauth_settings(settings: Settings) -> Settings:
    ensure_topics(settings.kafka_bootstrap_servers or "", settings.topic_specs())
    return settings.model_copy(update={"oauth_token_keys": SecretStr(Fernet.generate_key().decode()),
                                       "ghl_timeout_s": 5.0, "oauth_lease_s": 30.0})


async def install(emu: EmulatorServer) -> str:
    """The Marketplace install: a code, exchanged for the location's first token pair (the operator's step)."""
    app = emu.config.oauth
    async with httpx.AsyncClient(base_url=emu.base_url) as http:
        code = (await http.post("/_emulator/oauth/authorize", json={"locationId": LOCATION})).json()["code"]
        answer = await http.post("/oauth/token", data={"client_id": app.client_id, "client_secret": app.client_secret,
                                                       "grant_type": "authorization_code", "code": code})
    return answer.json()["refresh_token"]


def target(emu: EmulatorServer, bootstrap: str | None) -> GhlTarget:
    app = emu.config.oauth
    return GhlTarget(ghl_location_id=LOCATION, token=None, label="clinic", oauth=OAuthCredentials(
        app.client_id, SecretStr(app.client_secret), SecretStr(bootstrap) if bootstrap else None))


async def api_ok(emu: EmulatorServer, manager: OAuthManager, tgt: GhlTarget) -> int:
    async with GhlClient(emu.base_url, None, LOCATION, auth=manager.auth_for(tgt), max_retries=1) as client:
        return len(await client.list_custom_fields())


async def api_ok_status(emu: EmulatorServer, manager: OAuthManager, tgt: GhlTarget) -> int:
    try:
        await api_ok(emu, manager, tgt)
    except GhlPermanentError as exc:
        return exc.status or 0
    return 200


@pytest.mark.broker_neutral
async def test_provider_refreshes_before_expiry_and_after_a_401(oauth_settings: Settings) -> None:
    clock = FakeClock()
    async with EmulatorServer(EmulatorConfig()) as emu:
        emu.emulator.oauth.clock = clock
        counts = emu.emulator.oauth.counts
        tgt = target(emu, await install(emu))
        manager = OAuthManager(oauth_settings.model_copy(update={"ghl_base_url": emu.base_url}), clock=clock)
        try:
            provider = manager.provider(tgt)
            first = await provider.access_token()  # adopts the install token, then refreshes: no access token yet
            assert counts["refresh_token"] == 1 and provider.current().gen == 2  # type: ignore[union-attr]
            assert await api_ok(emu, manager, tgt) == 0
            clock.now += 86399 * 0.8 - 1
            assert await provider.access_token() == first and counts["refresh_token"] == 1
            clock.now += 2
            second = await provider.access_token()
            assert second != first and counts["refresh_token"] == 2

            # GoHighLevel revokes a token early: the 401 triggers one refresh and one retry, once the token is
            # old enough to blame (a 401 on a brand-new token is not about the token).
            emu.emulator.oauth.access.pop(second)
            assert await api_ok_status(emu, manager, tgt) == 401
            assert counts["refresh_token"] == 2
            clock.now += 86399 * 0.1
            assert await api_ok(emu, manager, tgt) == 0
            assert counts["refresh_token"] == 3
            statuses = [r["status"] for r in emu.requests() if r["path"] == "/locations/{locationId}/customFields"]
            assert statuses == [200, 401, 401, 200]

            # A worker restarted on the same topic reads the latest tokens: no refresh, no bootstrap again.
            restarted = OAuthManager(oauth_settings.model_copy(update={"ghl_base_url": emu.base_url}), clock=clock)
            try:
                again = restarted.provider(tgt)
                assert await again.access_token() == provider.current().access_token  # type: ignore[union-attr]
                assert counts["refresh_token"] == 3
            finally:
                await restarted.aclose()
        finally:
            await manager.aclose()


async def test_two_workers_refresh_each_generation_once(oauth_settings: Settings) -> None:
    clock = FakeClock()
    async with EmulatorServer(EmulatorConfig()) as emu:
        emu.emulator.oauth.clock = clock
        counts = emu.emulator.oauth.counts
        tgt = target(emu, await install(emu))
        settings = oauth_settings.model_copy(update={"ghl_base_url": emu.base_url})
        workers = [OAuthManager(settings, clock=clock) for _ in range(2)]
        try:
            providers = [w.provider(tgt) for w in workers]

            for _round in range(3):
                got = await asyncio.gather(*(p.access_token() for p in providers for _ in range(4)))
                await asyncio.gather(*(p.store.catch_up() for p in providers))
                assert len({p.current().gen for p in providers}) == 1  # type: ignore[union-attr]
                assert all(emu.emulator.oauth.location_for(token) == LOCATION for token in got)  # all live
                clock.now += 86399 * 0.9
            assert counts["refresh_token"] == 3  # one per generation, whichever worker did it
            assert counts.get("refresh_rejected_reused", 0) == 0
        finally:
            for w in workers:
                await w.aclose()


@pytest.mark.broker_neutral
async def test_a_spent_refresh_token_fails_loudly_and_a_new_install_recovers(
        oauth_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    async with EmulatorServer(EmulatorConfig()) as emu:
        emu.emulator.oauth.clock = clock
        oauth = emu.emulator.oauth
        tgt = target(emu, await install(emu))
        settings = oauth_settings.model_copy(update={"ghl_base_url": emu.base_url})
        manager = OAuthManager(settings, clock=clock)
        try:
            provider = manager.provider(tgt)
            await provider.access_token()
            stored = provider.current()
            assert stored is not None
            # The answer of a refresh is lost (a crash after GoHighLevel answered): the stored token is spent.
            oauth.refresh[stored.refresh_token].used = True
            clock.now += 86399 * 0.85
            with caplog.at_level(logging.ERROR, logger="apro_sync.oauth"):
                assert await provider.access_token() == stored.access_token  # still valid: sync goes on
            assert any("REJECTED its stored OAuth refresh token" in r.getMessage() and LOCATION in r.getMessage()
                       for r in caplog.records)
            assert provider.current().rejected  # type: ignore[union-attr]
            assert stored.refresh_token not in caplog.text
            assert REGISTRY.get_sample_value("apro_ghl_oauth_refresh_rejected", {"location": "clinic"}) == 1
            clock.now += 86399 * 0.2
            with pytest.raises(GhlPermanentError) as exc:
                await provider.access_token()
            assert exc.value.status == 401 and "reinstall" in exc.value.reason
            assert oauth.counts["refresh_rejected_reused"] == 1  # tried once, not in a loop
        finally:
            await manager.aclose()
        # The operator reinstalls and sets the new refresh token: the next worker takes it over.
        recovered = OAuthManager(settings, clock=clock)
        try:
            fresh = recovered.provider(target(emu, await install(emu)))
            assert await fresh.access_token()
            assert not fresh.current().rejected  # type: ignore[union-attr]
            assert REGISTRY.get_sample_value("apro_ghl_oauth_refresh_rejected", {"location": "clinic"}) == 0
        finally:
            await recovered.aclose()


async def test_stored_tokens_are_encrypted(oauth_settings: Settings) -> None:
    from tests.reliability.harness import read_topic

    clock = FakeClock()
    async with EmulatorServer(EmulatorConfig()) as emu:
        emu.emulator.oauth.clock = clock
        bootstrap = await install(emu)
        manager = OAuthManager(oauth_settings.model_copy(update={"ghl_base_url": emu.base_url}), clock=clock)
        try:
            provider = manager.provider(target(emu, bootstrap))
            access = await provider.access_token()
            refresh = provider.current().refresh_token  # type: ignore[union-attr]
        finally:
            await manager.aclose()
    records = read_topic(oauth_settings.kafka_bootstrap_servers or "", oauth_settings.topics.oauth_tokens)
    assert {r.key for r in records} == {LOCATION.encode(), f"{LOCATION}#lease".encode()}
    for record in records:
        for secret in (bootstrap, access, refresh):
            assert secret.encode() not in (record.value or b"")
    # With another key, the records cannot be read: the provider says so instead of using anything.
    other = OAuthManager(
        oauth_settings.model_copy(update={"oauth_token_keys": SecretStr(Fernet.generate_key().decode())})
    )
    try:
        await other.store.start()
        assert other.store.tokens(LOCATION) is None
    finally:
        await other.aclose()


def test_oauth_auth_is_async_only() -> None:
    auth = OAuthAuth(provider=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        next(auth.sync_auth_flow(httpx.Request("GET", "http://127.0.0.1/")))


async def test_an_answer_the_topic_did_not_take_is_kept_and_written_later(oauth_settings: Settings) -> None:
    clock = FakeClock()
    async with EmulatorServer(EmulatorConfig()) as emu:
        emu.emulator.oauth.clock = clock
        tgt = target(emu, await install(emu))
        manager = OAuthManager(oauth_settings.model_copy(update={"ghl_base_url": emu.base_url}), clock=clock)
        try:
            provider = manager.provider(tgt)
            await provider.access_token()
            store = provider.store
            real_write = store.write
            failures = []

            async def flaky_write(record: dict) -> None:
                if record["kind"] == "tokens" and not failures:
                    failures.append(record["gen"])
                    raise ConnectionError("broker unreachable")
                await real_write(record)

            store.write = flaky_write  # type: ignore[method-assign]
            clock.now += 86399 * 0.9
            fresh = await provider.access_token()  # refreshed; the write failed; used from memory
            assert failures == [3] and provider.current().gen == 3  # type: ignore[union-attr]
            assert store.tokens(LOCATION).gen == 2  # type: ignore[union-attr]
            assert emu.emulator.oauth.location_for(fresh) == LOCATION
            assert await provider.access_token() == fresh  # the next call writes it first
            assert store.tokens(LOCATION).gen == 3 and store.tokens(LOCATION).access_token == fresh  # type: ignore[union-attr]
        finally:
            await manager.aclose()


@pytest.mark.broker_neutral
async def test_company_install_buys_location_tokens_and_stores_only_the_company_grant(
        oauth_settings: Settings) -> None:
    from emulator.config import LocationConfig

    clock = FakeClock()
    second = "emuLocation000000002"
    config = EmulatorConfig(locations=[LocationConfig(id=LOCATION, token="pit-1"),
                                       LocationConfig(id=second, token="pit-2")])
    async with EmulatorServer(config) as emu:
        oauth = emu.emulator.oauth
        oauth.clock = clock
        app = emu.config.oauth
        async with httpx.AsyncClient(base_url=emu.base_url) as http:
            code = (await http.post("/_emulator/oauth/authorize", json={"userType": "Company"})).json()["code"]
            company_refresh = (await http.post("/oauth/token", data={
                "client_id": app.client_id, "client_secret": app.client_secret, "grant_type": "authorization_code",
                "code": code, "user_type": "Company"})).json()["refresh_token"]

        def company_target(location: str) -> GhlTarget:
            return GhlTarget(ghl_location_id=location, token=None, label=location, oauth=OAuthCredentials(
                app.client_id, SecretStr(app.client_secret), SecretStr(company_refresh), user_type="Company",
                company_id=app.company_id))

        async def calls(manager: OAuthManager) -> list[int]:
            out = []
            for location in (LOCATION, second):
                async with GhlClient(emu.base_url, None, location, auth=manager.auth_for(company_target(location)),
                                     max_retries=1) as client:
                    out.append(len(await client.list_custom_fields()))
            return out

        settings = oauth_settings.model_copy(update={"ghl_base_url": emu.base_url})
        manager = OAuthManager(settings, clock=clock)
        try:
            assert await calls(manager) == [0, 0]
            assert (oauth.counts["refresh_token"], oauth.counts["location_token"]) == (1, 2)
            clock.now += 86399 * 0.9
            assert await calls(manager) == [0, 0]
            assert (oauth.counts["refresh_token"], oauth.counts["location_token"]) == (2, 4)
            bought = manager.provider(company_target(LOCATION))
            oauth.access.pop(await bought.access_token())  # revoked early: a 401, then a new one is bought
            clock.now += 86399 * 0.1
            assert await calls(manager) == [0, 0]
            assert (oauth.counts["refresh_token"], oauth.counts["location_token"]) == (2, 5)
            assert manager.store.tokens(LOCATION) is None  # location tokens are never stored
            assert manager.store.tokens(f"company:{app.company_id}").gen == 3  # type: ignore[union-attr]
        finally:
            await manager.aclose()
        restarted = OAuthManager(settings, clock=clock)
        try:
            assert await calls(restarted) == [0, 0]
            assert (oauth.counts["refresh_token"], oauth.counts["location_token"]) == (2, 7)
        finally:
            await restarted.aclose()


async def test_the_newest_generation_stays_the_last_record(oauth_settings: Settings) -> None:
    """Compaction keeps the last record per key: it must always be the newest generation."""
    from tests.reliability.harness import read_topic

    first, second = OAuthManager(oauth_settings), OAuthManager(oauth_settings)
    try:
        store, other = first.store, second.store
        await store.start()
        await other.start()
        await store.write(tokens(1).to_dict())
        await store.write(tokens(3).to_dict())
        await store.write(tokens(2).to_dict())  # older than what was read: not written
        real_send = store._send  # noqa: SLF001

        async def raced(record: dict) -> None:  # another worker writes a newer generation just before ours lands
            if record["gen"] == 4:
                await other.write(tokens(5).to_dict())
            await real_send(record)

        store._send = raced  # type: ignore[method-assign]  # noqa: SLF001
        await store.write(tokens(4).to_dict())
        records = [r for r in read_topic(oauth_settings.kafka_bootstrap_servers or "",
                                         oauth_settings.topics.oauth_tokens) if r.key == LOCATION.encode()]
        gens = [json.loads(store.cipher.decrypt(r.value or b""))["gen"] for r in records]
        assert gens == [1, 3, 5, 4, 5]  # the raced record is followed by the newest again
        assert store.tokens(LOCATION).gen == 5  # type: ignore[union-attr]
    finally:
        await first.aclose()
        await second.aclose()
