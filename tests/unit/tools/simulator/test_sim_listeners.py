"""Real listeners on 127.0.0.1: `refuse` closes the API port, the control port stays up."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.tools.simulator import Simulator, build_simulator

LOCALHOST = "127.0.0.1"


@pytest.fixture
async def served(clock, settings) -> AsyncIterator[Simulator]:
    sim = build_simulator(settings, clock=clock, rng=random.Random(1))
    await sim.start((LOCALHOST, 0), control_listen=(LOCALHOST, 0))
    yield sim
    await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client_session:
        yield client_session


def url(address, path):
    host, port = address
    return f"http://{host}:{port}{path}"


async def connects(address) -> bool:
    """Whether a TCP connection to `address` is accepted (False on ECONNREFUSED)."""
    try:
        _, writer = await asyncio.open_connection(*address)
    except ConnectionRefusedError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def add_fault(session, sim, **rule):
    async with session.post(url(sim.control_address, "/_sim/faults"), json=rule) as response:
        assert 201 == response.status
        return (await response.json())["id"]


async def test_refuse_closes_the_api_port_until_the_rule_is_deleted(served, session):
    """During refuse, connecting gives ECONNREFUSED; deleting the rule reopens the same port."""
    rule_id = await add_fault(session, served, kind="refuse")
    refused = not await connects(served.api_address)
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await session.post(url(served.api_address, "/accessToken"))

    async with session.delete(url(served.control_address, f"/_sim/faults/{rule_id}")) as response:
        assert 200 == response.status
    async with session.get(url(served.api_address, "/_sim/health")) as response:
        recovered = response.status

    assert refused
    assert errno.ECONNREFUSED == caught.value.os_error.errno
    assert 200 == recovered


async def test_control_listener_stays_up_during_refuse(served, session):
    """The control listener answers while the API listener is closed."""
    await add_fault(session, served, kind="refuse")

    async with session.get(url(served.control_address, "/_sim/ledger")) as response:
        ledger = await response.json()

    assert 200 == response.status
    assert 1 == ledger["counters"]["faults_hit"]["refuse"]
    assert not served.api_listening


async def test_refuse_window_follows_the_clock(served, clock):
    """A refuse rule with after_s/duration_s closes and reopens the port at those times."""
    served.platform.add_fault({"kind": "refuse", "after_s": 5, "duration_s": 10})

    states = []
    for step in (0, 5, 9.9, 0.1):
        clock.advance(step)
        await served.sync_listener()
        states.append(await connects(served.api_address))

    assert [True, False, False, True] == states


async def test_refuse_window_is_applied_by_the_background_watcher(served, clock):
    """Advancing the clock past a window boundary is enough: the watcher closes the port."""
    served.platform.add_fault({"kind": "refuse", "after_s": 5})
    await served.faults_changed()

    clock.advance(5)
    for _ in range(200):
        if not served.api_listening:
            break
        await asyncio.sleep(0.005)

    assert not await connects(served.api_address)


async def test_refuse_drops_open_keep_alive_connections(served, session):
    """A pooled connection opened before the outage does not survive it."""
    health = url(served.api_address, "/_sim/health")
    async with session.get(health) as response:
        assert 200 == response.status
    await add_fault(session, served, kind="refuse")

    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(health) as response:
            await response.read()


async def test_reset_reopens_a_refused_port(served, session):
    """POST /_sim/reset clears the refuse rule and the API port accepts connections again."""
    await add_fault(session, served, kind="refuse")

    async with session.post(url(served.control_address, "/_sim/reset")) as response:
        assert 200 == response.status

    assert await connects(served.api_address)


async def test_outage_scenario_refuses_between_its_times(clock, settings, session):
    """--scenario outage:after=2,down=3 closes the port from t=2 to t=5 after start."""
    sim = build_simulator(settings, clock=clock, scenario="outage:after=2,down=3")
    await sim.start((LOCALHOST, 0))
    try:
        states = []
        for step in (0, 2, 3):
            clock.advance(step)
            await sim.sync_listener()
            states.append(await connects(sim.api_address))
    finally:
        await sim.stop()

    assert [True, False, True] == states


async def test_flapping_scenario_installs_bounded_refuse_windows(served, session):
    """POST /_sim/scenarios/flapping with cycles=3 adds three refuse rules, down/up in turn."""
    async with session.post(
        url(served.control_address, "/_sim/scenarios/flapping"),
        json={"after": 1, "down": 2, "up": 4, "cycles": 3},
    ) as response:
        created = (response.status, await response.json())
    async with session.get(url(served.control_address, "/_sim/faults")) as response:
        rules = (await response.json())["faults"]

    assert (201, 3) == (created[0], len(created[1]["ids"]))
    assert [(1.0, 2.0), (7.0, 2.0), (13.0, 2.0)] == [
        (rule["after_s"], rule["duration_s"]) for rule in rules
    ]


async def test_unknown_scenario_is_rejected_with_400(served, session):
    """An unknown scenario name is a 400 naming the known ones."""
    async with session.post(url(served.control_address, "/_sim/scenarios/meltdown")) as response:
        body = await response.json()

    assert 400 == response.status
    assert "outage" in body["error"]


async def test_an_own_token_host_serves_tokens_and_the_api_refuses_them(clock, settings, session):
    """With a token listener, tokens come from there; the API answers /accessToken 404 and counts
    it."""
    sim = build_simulator(settings, clock=clock, rng=random.Random(1), own_token_host=True)
    await sim.start((LOCALHOST, 0), control_listen=(LOCALHOST, 0), token_listen=(LOCALHOST, 0))
    try:
        assert sim.token_address is not None
        form = {
            "client_id": settings.app_key,
            "client_secret": settings.app_secret,
            "grant_type": "client_credentials",
        }
        async with session.post(url(sim.api_address, "/accessToken"), data=form) as response:
            assert 404 == response.status
        async with session.post(url(sim.token_address, "/accessToken"), data=form) as response:
            body = await response.json()
        async with session.get(url(sim.control_address, "/_sim/ledger")) as response:
            counters = (await response.json())["counters"]
    finally:
        await sim.stop()
    assert "access_token" in body
    assert (1, 1, 1) == (
        counters["token_calls_to_api_host"],
        counters["token_calls"],
        counters["tokens_issued"],
    )
