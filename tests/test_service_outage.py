"""PostgreSQL goes away while the API serves: requests get 503 with Retry-After,
the process does not crash, and it recovers by itself when the database is back.
The outage is a TCP proxy in front of the shared PostgreSQL that this test stops
and restarts on the same port (the shared server itself is never touched)."""

from __future__ import annotations

import socket
import threading
import time

from fastapi.testclient import TestClient

from fflab import accounts
from fflab.db import session_scope
from fflab.db.migrate import upgrade_database
from fflab.settings import Settings
from service_helpers import free_port, wait_for

pytest_plugins = ["service_support"]


class Proxy:
    """127.0.0.1:port -> 127.0.0.1:5432; stop() drops the listener and every connection."""

    def __init__(self, port: int, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.port, self.target = port, target
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.sockets.clear()


def behind_proxy(pg_database, tmp_path) -> tuple[Proxy, Settings, str]:
    """A new database with a user, the started proxy in front of it, the settings
    of an API that reaches the database through the proxy, and the user's key."""
    direct = pg_database()
    upgrade_database(direct)
    with session_scope(direct) as session:
        key = accounts.issue_key(session, accounts.create_user(session, "alice"))
    proxy = Proxy(free_port())
    proxy.start()
    via_proxy = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    return proxy, Settings(var_dir=tmp_path / "var", database_url=via_proxy), key


def test_database_outage_is_503_with_retry_after_and_recovers(pg_database, tmp_path) -> None:
    from api.main import create_app

    proxy, settings, key = behind_proxy(pg_database, tmp_path)
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"},
                        raise_server_exceptions=False) as client:
            assert client.get("/v1/users/me").status_code == 200
            proxy.stop()  # the fault: PostgreSQL unreachable
            started = time.monotonic()
            for path in ("/v1/users/me", "/v1/experiments", "/v1/experiments/0123"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert int(response.headers["retry-after"]) > 0
                assert "database is unavailable" in response.json()["message"]
                assert response.json()["code"] == "unavailable"
            assert client.post("/v1/experiments", json={"preset": "quick"}).status_code == 503
            assert client.get("/healthz").status_code == 200  # the process is alive
            assert client.get("/readyz").status_code == 503
            assert time.monotonic() - started < 30
            proxy.start()  # back on the same port: no restart of the API
            wait_for(lambda: client.get("/v1/users/me").status_code == 200, 20, "the API to recover", 0.2)
            assert client.get("/v1/experiments").status_code == 200
    finally:
        proxy.stop()


def test_pooled_connections_are_pinged_only_after_sitting_idle(pg_database, tmp_path, monkeypatch) -> None:
    """Under load a status poll makes no ping round trip; a connection idle longer than
    PING_AFTER_IDLE_S is pinged first, and one the database dropped meanwhile is
    replaced, for reads and writes alike; a read-only trip retries a connection
    found broken without the ping."""
    from api.main import create_app
    from fflab.db import get_engine
    from fflab.db import session as db_session

    proxy, settings, key = behind_proxy(pg_database, tmp_path)
    dialect = get_engine(settings.resolved_database_url).dialect
    pings: list[int] = []
    real_ping = dialect.do_ping
    monkeypatch.setattr(dialect, "do_ping", lambda connection: pings.append(1) or real_ping(connection))
    try:
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"},
                        raise_server_exceptions=False) as client:
            experiment = client.post("/v1/experiments", json={"preset": "quick", "seeds": [0]}).json()["id"]
            pings.clear()
            for _ in range(20):  # back to back: the connection never sits idle
                assert client.get(f"/v1/experiments/{experiment}").status_code == 200
                assert client.get("/v1/users/me").status_code == 200
            assert pings == []
            monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.05)
            time.sleep(0.1)
            assert client.get("/v1/users/me").status_code == 200
            assert len(pings) == 1
            # The database drops every connection; after a pause, a write-capable session
            # gets a new connection from the ping instead of an error.
            proxy.stop()
            proxy.start()
            time.sleep(0.1)
            assert client.get("/v1/users/me").status_code == 200
            assert client.patch(f"/v1/experiments/{experiment}", json={"name": "renamed"}).status_code == 200
            # Dropped again and used at once, before any ping: the read-only trip retries.
            monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 60.0)
            proxy.stop()
            proxy.start()
            polled = client.get(f"/v1/experiments/{experiment}")
            assert polled.status_code == 200, polled.text
            assert polled.json()["name"] == "renamed"
    finally:
        proxy.stop()
