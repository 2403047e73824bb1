"""The browser's STOMP user can listen to the order it was handed and nothing else.

Every shopper's page is handed this user's passcode, so the tests act as a
hostile shopper would with it: over Web STOMP and over AMQP on 5672, on this
session's own vhost (not "/"), as the user deploy/rabbitmq-setup.sh made.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractExchange

from server.push.tokens import PushTokens
from tests.support.stomp import BrowserUser, StompSession, run_setup
from tests.support.waiting import eventually

TOKENS = PushTokens("test secret")
WILDCARDS = ["#", "order.*", "order.#", "*.*", "order.*." + "a" * 32]


def order_key() -> str:
    """A real push token's routing key, as createNative hands it out."""
    return TOKENS.routing_key(uuid.uuid4().hex)


@asynccontextmanager
async def guest_paynotify(amqp_url: str) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, AbstractExchange]]:
    """paypush's side: paynotify on this session's vhost, publishing with confirms."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange("paynotify", aio_pika.ExchangeType.TOPIC, durable=True)
        yield channel, exchange
    finally:
        await connection.close()


async def publish(exchange: AbstractExchange, key: str, body: dict[str, str]) -> None:
    await exchange.publish(aio_pika.Message(json.dumps(body).encode()), routing_key=key)


def queues(vhost: str) -> set[str]:
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "policy"],
                          check=True, capture_output=True, text=True, timeout=60)
    return {line.replace("\t", " ").strip() for line in done.stdout.splitlines()[1:]}


@pytest.mark.gen_test(timeout=30)
async def test_browser_hears_its_order_and_no_other(stomp_user: BrowserUser, amqp_url: str) -> None:
    mine, other = order_key(), order_key()
    async with guest_paynotify(amqp_url) as (_, exchange):
        session = await StompSession.as_user(stomp_user)
        try:
            assert (await session.subscribe(f"/exchange/paynotify/{mine}"))[0] == "RECEIPT"
            await publish(exchange, other, {"for": "other"})
            await publish(exchange, mine, {"for": "mine"})
            # Same publisher, same order: had "other" been routed here, it would come first.
            command, headers, body = await session.receive()
            assert command == "MESSAGE" and json.loads(body) == {"for": "mine"}
            assert headers["destination"] == f"/exchange/paynotify/{mine}"
        finally:
            session.close()


@pytest.mark.parametrize("pattern", WILDCARDS)
@pytest.mark.gen_test(timeout=30)
async def test_wildcard_subscriptions_are_refused(stomp_user: BrowserUser, amqp_url: str, pattern: str) -> None:
    async with guest_paynotify(amqp_url):
        pass  # paynotify exists: a refusal below is about the key, not a missing exchange
    session = await StompSession.as_user(stomp_user)
    try:
        command, headers, _ = await session.subscribe(f"/exchange/paynotify/{pattern}")
        # Refused: an ERROR frame, or the broker ends the STOMP session ("STOMP died").
        assert command in ("ERROR", "CLOSED"), (command, headers)
    finally:
        session.close()
    # The same user, the same way, with an exact key: accepted (the refusal is the key's).
    session = await StompSession.as_user(stomp_user)
    try:
        assert (await session.subscribe(f"/exchange/paynotify/{order_key()}"))[0] == "RECEIPT"
    finally:
        session.close()


@pytest.mark.gen_test(timeout=30)
async def test_over_amqp_the_browser_user_can_bind_only_an_exact_key(stomp_user: BrowserUser,
                                                                     amqp_url: str) -> None:
    """The hoard: a durable stomp-subscription-* queue that keeps collecting
    everybody's events while its owner is offline."""
    mine, other = order_key(), order_key()
    name = f"stomp-subscription-hoard-{uuid.uuid4().hex[:8]}"
    async with guest_paynotify(amqp_url):
        pass  # paynotify exists: a refusal below is about the key, not a missing exchange
    connection = await aio_pika.connect(stomp_user.amqp_url)
    try:
        channel = await connection.channel()
        hoard = await channel.declare_queue(name, durable=True)  # its own queues it may declare
        for pattern in WILDCARDS:
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await (await channel.get_queue(name)).bind("paynotify", pattern)
        # Nor through an exchange of its own bound to paynotify.
        channel = await connection.channel()
        relay = await channel.declare_exchange(f"stomp-subscription-x-{uuid.uuid4().hex[:8]}",
                                               aio_pika.ExchangeType.FANOUT, auto_delete=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await relay.bind("paynotify", "#")
        # Nor publish a fake "paid".
        channel = await connection.channel(publisher_confirms=True)
        paynotify = await channel.get_exchange("paynotify", ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await publish(paynotify, mine, {"status": "paid"})

        channel = await connection.channel()
        hoard = await channel.get_queue(name)
        await hoard.bind("paynotify", mine)  # the one key it was handed: accepted
        async with guest_paynotify(amqp_url) as (_, exchange):
            await publish(exchange, other, {"for": "other"})
            await publish(exchange, mine, {"for": "mine"})
        # Confirmed publishes are enqueued, so the queue holds exactly what was routed to it.
        first = await hoard.get(timeout=5)
        assert json.loads(first.body) == {"for": "mine"}
        assert await hoard.get(fail=False) is None
        await hoard.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_policy_bounds_a_pages_queue(stomp_user: BrowserUser, amqp_url: str) -> None:
    name = f"stomp-subscription-page-{uuid.uuid4().hex[:8]}"
    async with guest_paynotify(amqp_url):
        pass
    session = await StompSession.as_user(stomp_user)
    try:
        # A page's queue as Web STOMP names it, and one named by the subscriber.
        assert (await session.subscribe(f"/exchange/paynotify/{order_key()}"))[0] == "RECEIPT"
        await session.send("SUBSCRIBE", {"id": "sub-1", "destination": f"/exchange/paynotify/{order_key()}",
                                         "x-queue-name": name, "receipt": "named"})
        assert (await session.receive())[0] == "RECEIPT"
        listed = [line.split(" ") for line in queues(stomp_user.vhost) if line.startswith("stomp-subscription-")]
        assert name in {queue for queue, *_ in listed} and len(listed) >= 2, listed
        assert all(policy == ["paypush-stomp-subscriptions"] for _, *policy in listed), listed
    finally:
        session.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_hoarding_queue_is_bounded_and_expires(stomp_user: BrowserUser, amqp_url: str) -> None:
    """A durable queue declared over AMQP and left while its owner is offline."""
    key = order_key()
    name = f"stomp-subscription-offline-{uuid.uuid4().hex[:8]}"
    extra = 3
    async with guest_paynotify(amqp_url) as (_, exchange):
        connection = await aio_pika.connect(stomp_user.amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind("paynotify", key)
            for n in range(stomp_user.queue_max_length + extra):
                await publish(exchange, key, {"n": str(n)})
            declared = await channel.declare_queue(name, passive=True)
            assert declared.declaration_result.message_count == stomp_user.queue_max_length
            # drop-head: the oldest went, so a full queue never refuses paypush's publish.
            assert json.loads((await queue.get(timeout=5)).body) == {"n": str(extra)}
        finally:
            await connection.close()
    # Unused from now on (listing queues does not count as use), it is deleted
    # after the policy's expires.
    await eventually(lambda: not any(line.startswith(f"{name} ") for line in queues(stomp_user.vhost)),
                     within=30, every=0.5, message=f"the unused queue {name} expired by the policy")


async def try_connect(user: BrowserUser) -> StompSession | None:
    try:
        return await StompSession.as_user(user)
    except ConnectionError:
        return None


@pytest.mark.gen_test(timeout=60)
async def test_connections_and_channels_are_capped(stomp_user: BrowserUser) -> None:
    # Channels, across the user's connections: one AMQP connection asking for more.
    connection = await aio_pika.connect(stomp_user.amqp_url)
    try:
        with pytest.raises(aio_pika.exceptions.AMQPError, match="channels"):
            for _ in range(stomp_user.max_channels + 1):
                await connection.channel()
    finally:
        await connection.close()
    # Connections: one more STOMP page than the limit is refused at CONNECT.
    sessions = [await try_connect(stomp_user) for _ in range(stomp_user.max_connections + 1)]
    opened = [s for s in sessions if s is not None]
    try:
        assert opened, "no STOMP connection at all"
        assert len(opened) <= stomp_user.max_connections
    finally:
        for s in opened:
            s.close()
    # The limit frees up again as pages leave (and the tests after this one need it).
    session = await eventually(lambda: try_connect(stomp_user), within=30, every=0.2,
                               message="a STOMP connection accepted again once the others left")
    session.close()


@pytest.mark.gen_test(timeout=30)
async def test_browser_user_cannot_publish_a_fake_paid(stomp_user: BrowserUser, amqp_url: str) -> None:
    victim = order_key()
    async with guest_paynotify(amqp_url) as (channel, exchange):
        listener = await channel.declare_queue(exclusive=True)
        await listener.bind(exchange, victim)
        session = await StompSession.as_user(stomp_user)
        await session.send("SEND", {"destination": f"/exchange/paynotify/{victim}", "receipt": "sent",
                                    "content-type": "application/json"}, '{"status": "paid"}')
        command, _, _ = await session.receive()
        session.close()
        # The broker refuses it: an ERROR frame, or the STOMP connection is closed.
        assert command in ("ERROR", "CLOSED")
        # Positive control: a genuine event after it is the first thing the listener holds.
        await publish(exchange, victim, {"status": "genuine"})
        assert json.loads((await listener.get(timeout=5)).body) == {"status": "genuine"}


@pytest.mark.parametrize("destination", ["/queue/evil", "/amq/queue/orders", "/exchange/amq.topic/x",
                                         "/topic/anything"])
@pytest.mark.gen_test(timeout=30)
async def test_browser_user_cannot_declare_or_read_anything_else(stomp_user: BrowserUser, amqp_url: str,
                                                                 destination: str) -> None:
    session = await StompSession.as_user(stomp_user)
    command, headers, _ = await session.subscribe(destination)
    session.close()
    # Refused: an ERROR frame, or the broker ends the STOMP session ("STOMP died").
    assert command in ("ERROR", "CLOSED"), (command, headers)
    if destination == "/queue/evil":
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue("evil", passive=True)
        finally:
            await connection.close()


@pytest.mark.gen_test(timeout=30)
async def test_wrong_passcode_or_another_vhost_is_refused(stomp_user: BrowserUser) -> None:
    with pytest.raises(ConnectionError):
        await StompSession.connect(stomp_user.login, "not-the-passcode", stomp_user.vhost)
    # The user exists only where paypush publishes: a page naming "/" gets nowhere.
    with pytest.raises(ConnectionError):
        await StompSession.connect(stomp_user.login, stomp_user.passcode, "/")
    (await StompSession.as_user(stomp_user)).close()


@pytest.mark.gen_test(timeout=60)
async def test_setup_script_runs_again_and_refuses_a_vhost_mismatch(stomp_user: BrowserUser,
                                                                    amqp_url: str) -> None:
    async with guest_paynotify(amqp_url):
        pass
    env = stomp_user.setup_env(amqp_url)
    mismatch = run_setup({**env, "RABBITMQ_VHOST": "some-other-vhost"})
    assert mismatch.returncode == 2 and "RABBITMQ_VHOST" in mismatch.stderr
    again = run_setup(env)
    assert again.returncode == 0, again.stderr
    assert f"on vhost {stomp_user.vhost} " in again.stdout
    # Still exactly as before: the exact key is accepted, a wildcard is not.
    session = await StompSession.as_user(stomp_user)
    try:
        assert (await session.subscribe(f"/exchange/paynotify/{order_key()}"))[0] == "RECEIPT"
    finally:
        session.close()
    session = await StompSession.as_user(stomp_user)
    try:
        assert (await session.subscribe("/exchange/paynotify/#"))[0] in ("ERROR", "CLOSED")
    finally:
        session.close()


def test_setup_script_warns_when_the_node_cannot_open_that_many_sockets(stomp_user: BrowserUser,
                                                                        amqp_url: str) -> None:
    """Every STOMP page is a socket of the node: a cap above the node's open-file
    limit is a warning (the limit is set where the node runs), and the user is
    still made."""
    env = stomp_user.setup_env(amqp_url)
    big = f"{stomp_user.login}-big"
    try:
        done = run_setup({**env, "STOMP_LOGIN": big, "STOMP_MAX_CONNECTIONS": str(10**9)})
        assert done.returncode == 0, done.stderr
        assert "warning: STOMP_MAX_CONNECTIONS is 1000000000 but the RabbitMQ node allows" in done.stderr
        assert f"user {big} ready" in done.stdout
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", big], capture_output=True, timeout=120)
    within = run_setup(env)  # the session's user: 10 connections
    assert within.returncode == 0 and "warning" not in within.stderr, within.stderr
