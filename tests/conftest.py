"""Fixtures: a real embedded MongoDB (or MONGO_URL), a real server on an unused
port with the simulator mounted, and shoppers speaking HTTP to it."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.web

import settings as settings_mod
from server.composition.container import Services, open_services
from server.composition.listening import Listener
from server.composition.web import PaypushApplication, make_app
from server.infra.embedded_mongo import EmbeddedMongo
from tests.support.config import sandbox_settings
from tests.support.shopper import Shopper
from tests.support.stomp import BrowserUser, prepare_broker
from tests.support.tcp_proxy import TcpProxy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: they are the slowest and need everything else working."""
    items.sort(key=lambda item: "/e2e/" in str(item.fspath))


@pytest.fixture(scope="session")
def embedded_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMongo | None]:
    """The embedded server for the whole session, or None when MONGO_URL is given."""
    if _external_mongo_url():
        yield None
        return
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongo")).start()
    yield server
    server.stop()


def _external_mongo_url() -> str:
    """A real MongoDB given to the test run; the embedded server otherwise."""
    return os.environ.get("MONGO_URL", "")


@pytest.fixture(scope="session")
def mongo_url(embedded_mongo: EmbeddedMongo | None) -> str:
    return embedded_mongo.url if embedded_mongo else _external_mongo_url()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test session's own: its queues (queue.ordertimeout
    above all) are not shared with a paypush running on the same broker."""
    vhost = f"paypush-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def stomp_user(amqp_url: str) -> Iterator[BrowserUser]:
    """The STOMP browser user of this test session, on its vhost, made by
    deploy/rabbitmq-setup.sh from AMQP_URL: concurrent runs on one broker never
    share (or reset) a passcode. Its limits are small so tests can reach them."""
    suffix = amqp_url.rsplit("-", 1)[1]
    # It starts with "-" on purpose: a generated passcode may (token_urlsafe), and
    # the deploy script must hand it to rabbitmqctl as a value, not an option.
    user = BrowserUser(login=f"webguest-{suffix}", passcode="-" + secrets.token_urlsafe(24),
                       vhost=amqp_url.rsplit("/", 1)[1], max_connections=10, max_channels=10,
                       queue_expires_ms=2000, queue_max_length=5)
    prepare_broker(user, amqp_url)
    yield user
    rabbitmqctl("delete_user", user.login)


@pytest.fixture
def test_settings(http_port: int, tmp_path: Path, amqp_url: str) -> settings_mod.Settings:
    """API v2 in sandbox mode; a module overrides this fixture for other settings."""
    return sandbox_settings(http_port, tmp_path, amqp_url)


@pytest.fixture
def extra_settings() -> dict[str, object]:
    """Override in a test module to change settings (dataclass field names)."""
    return {}


@pytest.fixture
def services(io_loop, test_settings, extra_settings, mongo_url) -> Iterator[Services]:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(test_settings, **extra_settings)
    async def start() -> Services:
        svc = await open_services(cfg, mongo_url)
        await svc.start_workers()
        return svc

    svc = io_loop.run_sync(start)
    yield svc
    svc.hub.close_all()
    io_loop.run_sync(lambda: svc.store.client.drop_database(cfg.mongo_db))
    io_loop.run_sync(svc.close)


@pytest.fixture
def app(services: Services) -> tornado.web.Application:
    return make_app(services)


@pytest.fixture
def listener(request, io_loop, _unused_port) -> Iterator[Listener]:  # type: ignore[no-untyped-def]
    """The app behind paypush's own listener, as ``serve`` runs it (a test of a
    handler alone may give an ``app`` fixture of another kind)."""
    app = request.getfixturevalue("app")
    listener = Listener(tornado.httpserver.HTTPServer(app))
    if isinstance(app, PaypushApplication):
        app.connection_opened.add(listener.done)
    listener.add_sockets([_unused_port[0]])
    yield listener
    listener.stop()
    io_loop.run_sync(listener.server.close_all_connections, timeout=30)


@pytest.fixture
def http_server(listener: Listener) -> tornado.httpserver.HTTPServer:
    """pytest-tornado's, served by paypush's listener."""
    return listener.server


@pytest.fixture
def mallory(http_server, base_url: str, io_loop, services: Services) -> Iterator[Shopper]:  # type: ignore[no-untyped-def]
    """Another user, logged in: someone who must not see the demo user's orders."""
    from server.accounts.users import create_user

    async def make() -> Shopper:
        await create_user(services.store, "mallory", "mallory-pass-1")
        return await Shopper.logged_in(base_url, "mallory", "mallory-pass-1")

    s = io_loop.run_sync(make)
    yield s
    io_loop.run_sync(s.close)


@pytest.fixture
def operator(http_server, base_url: str, io_loop, services: Services) -> Iterator[Shopper]:  # type: ignore[no-untyped-def]
    """An operator, logged in: sees every order, refunds, changes the catalog."""
    from server.accounts.users import create_user

    async def make() -> Shopper:
        await create_user(services.store, "olga", "olga-pass-123", operator=True)
        return await Shopper.logged_in(base_url, "olga", "olga-pass-123")

    s = io_loop.run_sync(make)
    yield s
    io_loop.run_sync(s.close)


@pytest.fixture
def shopper(http_server, base_url: str, io_loop) -> Iterator[Shopper]:  # type: ignore[no-untyped-def]
    """The demo user, logged in."""
    s = io_loop.run_sync(lambda: Shopper.logged_in(base_url, "demo", "demo-pass-123"))
    yield s
    io_loop.run_sync(s.close)


@pytest.fixture
def rabbit_proxy(io_loop) -> Iterator[TcpProxy]:  # type: ignore[no-untyped-def]
    """A TCP proxy in front of RabbitMQ that a test can cut or stall (``url_for`` routes a URL through it)."""
    proxy = io_loop.run_sync(lambda: TcpProxy(5672).start())
    yield proxy
    io_loop.run_sync(proxy.close)
