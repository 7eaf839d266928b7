"""Session store contract (issue 8): the same tests against memory://, sqlite:// and redis://.

Redis is the real ``redis-server`` (Debian package), started here on 127.0.0.1 with a temporary
directory; if it is missing the tests fail (never skip): run ``bash scripts/setup.sh``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from d2tls.bench.store import bench_store
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.session import MemorySessionStore, Session, SessionStore
from d2tls.core.errors import ConfigurationError
from d2tls.core.store import StoreKeys, open_store, parse_key_text, write_key_file
from d2tls.core.store.codec import SessionCodec
from d2tls.core.store.redis_store import RedisSessionStore
from d2tls.core.store.sqlite_store import SQLiteSessionStore
from d2tls.lab.redis_server import RedisServer, RedisServerMissing

KEYS = StoreKeys.generate()
OTHER_KEYS = StoreKeys.generate()
CERT = bytes(range(256)) * 2  # stands for a DER certificate: the store does not parse it
StoreFactory = Callable[..., SessionStore]


def start_redis() -> RedisServer:
    """A real redis-server; a missing binary fails the test run loudly."""
    try:
        server = RedisServer()
    except RedisServerMissing as exc:
        pytest.fail(f"{exc} — the store tests need it (no fake Redis)", pytrace=False)
    server.start()
    return server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


def make_session(
    lifetime: float = 3600.0,
    *,
    server_name: str | None = "localhost",
    psk_identity: bytes | None = None,
    certificates: tuple[bytes, ...] = (CERT,),
) -> Session:
    return Session(
        session_id=os.urandom(32),
        master_secret=bytearray(os.urandom(48)),
        cipher_suite=CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        extended_master_secret=True,
        server_name=server_name,
        peer_certificates=certificates,
        psk_identity=psk_identity,
        lifetime=lifetime,
    )


def same(a: Session, b: Session) -> bool:
    return (
        a.session_id == b.session_id
        and bytes(a.master_secret) == bytes(b.master_secret)
        and a.cipher_suite == b.cipher_suite
        and a.extended_master_secret == b.extended_master_secret
        and a.server_name == b.server_name
        and tuple(a.peer_certificates) == tuple(b.peer_certificates)
        and a.psk_identity == b.psk_identity
        and abs(a.created_at - b.created_at) < 1e-6
        and a.lifetime == b.lifetime
    )


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url()}?prefix=test-{uuid.uuid4().hex}:&retry_interval=0.1"


@pytest.fixture
def factory(store_url: str) -> Iterator[StoreFactory]:
    """Opens stores on the same backend (each call: a new instance, as another server)."""
    opened: list[SessionStore] = []
    shared: list[SessionStore] = []

    def open_one(keys: StoreKeys = KEYS) -> SessionStore:
        if store_url == "memory://":  # one process: "another instance" shares the object
            if not shared:
                shared.append(open_store(store_url, None))
            return shared[0]
        store = open_store(store_url, None, keys=keys)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        close = getattr(store, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- contract


def test_put_get_roundtrip_keeps_every_field(factory: StoreFactory) -> None:
    store = factory()
    session = make_session(psk_identity=b"device-1")
    store.put(session)
    got = store.get(session.session_id)
    assert got is not None and same(got, session)
    # Another server instance on the same store sees it too (SQLite/Redis: decrypted copy).
    other = factory().get(session.session_id)
    assert other is not None and same(other, session)


def test_unknown_session_is_a_miss(factory: StoreFactory) -> None:
    assert factory().get(os.urandom(32)) is None


def test_delete_and_count(factory: StoreFactory) -> None:
    store = factory()
    before = store.count()
    sessions = [make_session() for _ in range(5)]
    for session in sessions:
        store.put(session)
    assert store.count() == before + 5
    store.delete(sessions[0].session_id)
    store.delete(os.urandom(32))  # unknown: no error
    assert store.get(sessions[0].session_id) is None
    assert store.count() == before + 4


def test_overwrite_keeps_the_newest(factory: StoreFactory) -> None:
    store = factory()
    first = make_session()
    store.put(first)
    second = make_session()
    second.session_id = first.session_id
    store.put(second)
    got = store.get(first.session_id)
    assert got is not None and bytes(got.master_secret) == bytes(second.master_secret)


def test_sessions_expire(factory: StoreFactory) -> None:
    store = factory()
    short = make_session(lifetime=0.4)
    long = make_session()
    dead = make_session(lifetime=1.0)
    dead.created_at -= 2.0  # already expired: never stored
    for session in (short, long, dead):
        store.put(session)
    assert store.get(short.session_id) is not None
    assert store.get(dead.session_id) is None
    count = store.count()
    time.sleep(0.6)
    assert store.get(short.session_id) is None
    assert store.get(long.session_id) is not None
    assert store.count() == count - 1


def test_redis_expiry_is_a_redis_ttl(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url(), None, keys=KEYS)
    assert isinstance(store, RedisSessionStore)
    session = make_session(lifetime=30.0)
    store.put(session)
    ttl = store.client.pttl(f"d2tls:session:{session.session_id.hex()}")
    assert isinstance(ttl, int) and 25_000 < ttl <= 30_000
    store.delete(session.session_id)
    store.close()


def test_concurrent_writers_from_threads(factory: StoreFactory) -> None:
    store = factory()
    before = store.count()
    errors: list[BaseException] = []
    written: list[list[Session]] = [[] for _ in range(8)]

    def writer(index: int) -> None:
        try:
            for _ in range(40):
                session = make_session()
                store.put(session)
                written[index].append(session)
                got = store.get(session.session_id)
                assert got is not None and same(got, session)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert store.count() == before + 8 * 40
    for session in (s for batch in written for s in batch):
        got = store.get(session.session_id)
        assert got is not None and same(got, session)


def _sqlite_writer(url: str, key_hex: str, index: int, count: int) -> None:
    """Child process: write ``count`` sessions with IDs derived from ``index``."""
    store = open_store(url, None, keys=StoreKeys((bytes.fromhex(key_hex),)))
    assert isinstance(store, SQLiteSessionStore)
    for n in range(count):
        session = make_session()
        session.session_id = bytes([index]) * 28 + n.to_bytes(4, "big")
        session.master_secret = bytearray([index]) * 48
        store.put(session)
        assert store.get(session.session_id) is not None
    if store.stats["errors"]:
        raise SystemExit(3)


def test_sqlite_concurrent_writers_from_two_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    parent = open_store(url, None, keys=KEYS)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_sqlite_writer, args=(url, KEYS.keys[0].hex(), i, 150))
        for i in (1, 2)
    ]
    for child in children:
        child.start()
    reads = 0
    while any(child.is_alive() for child in children):  # read while they write
        parent.count()
        reads += 1
        time.sleep(0.01)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert parent.count() == 300
    for index in (1, 2):
        for n in (0, 149):
            got = parent.get(bytes([index]) * 28 + n.to_bytes(4, "big"))
            assert got is not None and bytes(got.master_secret) == bytes([index]) * 48
    assert isinstance(parent, SQLiteSessionStore) and parent.stats["errors"] == 0
    mode = sqlite3.connect(tmp_path / "shared.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    session = make_session()
    first = open_store(url, None, keys=KEYS)
    first.put(session)
    assert isinstance(first, SQLiteSessionStore)
    first.close()
    again = open_store(url, None, keys=KEYS)
    got = again.get(session.session_id)
    assert got is not None and same(got, session)
    assert (tmp_path / "restart.db").stat().st_mode & 0o077 == 0


# --------------------------------------------------------------------------- sealed entries

SEALED = ["sqlite", "redis"]


def raw_entries(store: SessionStore) -> dict[bytes, bytes]:
    """Session ID -> stored bytes, read behind the store's back."""
    if isinstance(store, SQLiteSessionStore):
        rows = sqlite3.connect(store.path).execute("SELECT session_id, entry FROM d2tls_sessions")
        return {bytes(sid): bytes(entry) for sid, entry in rows}
    assert isinstance(store, RedisSessionStore)
    out = {}
    prefix = store._prefix
    for key in store.client.scan_iter(match=prefix + b"*"):
        value = store.client.get(key)
        assert isinstance(key, bytes) and isinstance(value, bytes)
        out[bytes.fromhex(key[len(prefix) :].decode())] = value
    return out


def write_raw(store: SessionStore, session_id: bytes, entry: bytes) -> None:
    if isinstance(store, SQLiteSessionStore):
        with sqlite3.connect(store.path) as db:
            db.execute(
                "INSERT OR REPLACE INTO d2tls_sessions VALUES (?, ?, ?)",
                (session_id, time.time() + 3600, entry),
            )
        return
    assert isinstance(store, RedisSessionStore)
    store.client.set(store._prefix + session_id.hex().encode(), entry, px=3_600_000)


@pytest.mark.parametrize("kind", SEALED)
@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: entry[:-1] + bytes([entry[-1] ^ 1]),  # one bit of the tag
        lambda entry: entry[:20] + bytes([entry[20] ^ 0x80]) + entry[21:],  # one ciphertext bit
        lambda entry: entry[:10],  # truncated
        lambda entry: b"",  # empty
        lambda entry: os.urandom(len(entry)),  # garbage
        lambda entry: b"\x07" + entry[1:],  # unknown format version
    ],
    ids=["tag", "ciphertext", "truncated", "empty", "garbage", "version"],
)
def test_corrupt_entries_are_a_logged_miss(
    factory: StoreFactory, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    store = factory()
    session = make_session()
    store.put(session)
    entry = raw_entries(store)[session.session_id]
    write_raw(store, session.session_id, damage(entry))
    with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
        assert store.get(session.session_id) is None
    assert "unusable entry" in caplog.text
    assert bytes(session.master_secret).hex() not in caplog.text
    assert store.stats["corrupt"] == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", SEALED)
def test_entry_moved_to_another_session_id_does_not_open(
    factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """AAD = session ID: an entry copied under another ID (e.g. to give one client's session,
    and its identity, to another session ID) is refused."""
    store = factory()
    victim, attacker = make_session(), make_session()
    store.put(victim)
    store.put(attacker)
    write_raw(store, attacker.session_id, raw_entries(store)[victim.session_id])
    with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
        assert store.get(attacker.session_id) is None
    assert "does not authenticate" in caplog.text
    assert store.get(victim.session_id) is not None


@pytest.mark.parametrize("kind", SEALED)
def test_wrong_key_is_a_logged_miss_and_rotation_works(
    factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    session = make_session()
    factory(KEYS).put(session)
    with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
        assert factory(OTHER_KEYS).get(session.session_id) is None
    assert "not one of this store's keys" in caplog.text
    # Rotation: the new key first seals, the old one still opens.
    rotated = factory(StoreKeys((OTHER_KEYS.keys[0], KEYS.keys[0])))
    got = rotated.get(session.session_id)
    assert got is not None and same(got, session)


@pytest.mark.parametrize("kind", SEALED)
def test_no_secret_in_the_clear_in_sqlite_file_or_redis_values(
    factory: StoreFactory, kind: str, redis_server: RedisServer
) -> None:
    store = factory()
    identity = os.urandom(200)  # a client certificate: sealed too
    sessions = [make_session(certificates=(identity,)) for _ in range(20)]
    for session in sessions:
        store.put(session)
    if isinstance(store, SQLiteSessionStore):
        blobs = [
            p.read_bytes()
            for p in store.path.parent.iterdir()
            if p.name.startswith(store.path.name)  # the database, -wal and -shm
        ]
    else:
        assert isinstance(store, RedisSessionStore)
        blobs = list(raw_entries(store).values())
        blobs.append(redis_server.log.read_bytes())
    data = b"".join(blobs)
    assert len(data) > 0
    for session in sessions:
        secret = bytes(session.master_secret)
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            assert form not in data
    assert identity not in data
    assert all(store.get(s.session_id) is not None for s in sessions)


# --------------------------------------------------------------------------- Redis outage


def test_redis_outage_is_a_miss_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    server = start_redis()
    try:
        url = f"{server.url()}?retry_interval=0.2&socket_timeout=0.2"
        store = open_store(url, None, keys=KEYS)
        other_instance = open_store(url, None, keys=KEYS)
        assert isinstance(store, RedisSessionStore)
        before = make_session()
        store.put(before)
        assert other_instance.get(before.session_id) is not None
        server.stop(kill=True)
        with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
            started = time.monotonic()
            assert store.get(before.session_id) is None  # miss: the client falls back
            during = make_session()
            store.put(during)  # no exception: kept locally
            assert other_instance.get(during.session_id) is None
            assert time.monotonic() - started < 1.0
            assert not store.available
            got = store.get(during.session_id)  # this instance can still resume it
            assert got is not None and same(got, during)
            assert isinstance(store.count(), int)
            store.delete(os.urandom(32))
        assert "unavailable" in caplog.text
        server.start()  # same port, empty (no persistence)
        time.sleep(0.3)
        with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
            assert store.get(before.session_id) is None  # Redis forgot it
            assert store.available
        assert "reachable again" in caplog.text
        # Sessions kept locally during the outage were copied to Redis on recovery.
        shared = other_instance.get(during.session_id)
        assert shared is not None and same(shared, during)
        again = make_session()
        store.put(again)
        assert other_instance.get(again.session_id) is not None
        for secret in (before, during, again):
            assert bytes(secret.master_secret).hex() not in caplog.text
    finally:
        server.close()


def test_redis_never_reachable_is_not_fatal() -> None:
    from d2tls.lab.redis_server import free_tcp_port

    store = open_store(f"redis://127.0.0.1:{free_tcp_port()}/0?socket_timeout=0.1", None, keys=KEYS)
    session = make_session()
    store.put(session)
    assert store.get(os.urandom(32)) is None
    assert store.get(session.session_id) is not None  # local fallback
    assert store.count() == 1


# --------------------------------------------------------------------------- configuration


def test_sqlite_and_redis_need_a_key_file(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'x.db'}", "redis://127.0.0.1:6379/0"):
        with pytest.raises(ConfigurationError, match="--store-key-file"):
            open_store(url, None)
    assert isinstance(open_store("memory://", None), MemorySessionStore)
    assert isinstance(
        open_store("memory://?max_sessions=5", tmp_path / "unused"), MemorySessionStore
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("zz" * 32, "not hex"),
        ("ab" * 16, "16 bytes, expected 32"),
        ("ab" * 33, "33 bytes"),
    ],
)
def test_bad_key_files_are_configuration_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", path)


def test_key_file_format(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigurationError, match="cannot read store key file"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", missing)
    path = tmp_path / "store.key"
    keys = write_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert parse_key_text(path.read_text()) == keys
    two = parse_key_text(f"# current\n{'11' * 32}\n\n{'22' * 32}  # old\n")
    assert two.keys == (b"\x11" * 32, b"\x22" * 32)
    assert "11" * 32 not in repr(two)
    store = open_store(f"sqlite:///{tmp_path / 'k.db'}", path)
    session = make_session()
    store.put(session)
    assert store.get(session.session_id) is not None


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/db",
        "sqlite://relative.db",
        "sqlite:///",
        "redis://127.0.0.1:6379/notanumber",
        "redis://127.0.0.1:6379/0?unknown=1",
        "memory://?max_sessions=many",
        "nothing",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url, None, keys=KEYS)


def test_redis_password_is_not_shown() -> None:
    store = open_store("redis://user:s3cret@127.0.0.1:1/0", None, keys=KEYS)
    assert "s3cret" not in repr(store)


def test_codec_never_unpickles() -> None:
    """Even a correctly sealed pickle is refused: records are CBOR maps with explicit fields."""
    import pickle

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from d2tls.core.store.codec import CorruptEntry, key_id

    codec = SessionCodec(KEYS)
    session = make_session()
    assert codec.open(session.session_id, codec.seal(session)).session_id == session.session_id
    header = bytes([1]) + key_id(KEYS.keys[0])
    nonce = os.urandom(12)
    payload = pickle.dumps({"id": session.session_id, "ms": b"x" * 48})
    sealed = AESGCM(KEYS.keys[0]).encrypt(
        nonce, payload, SessionCodec._aad(header, session.session_id)
    )
    with pytest.raises(CorruptEntry, match=r"not valid CBOR|not a map|field"):
        codec.open(session.session_id, header + nonce + sealed)


# --------------------------------------------------------------------------- benchmark


def test_bench_store_reports_figures(kind: str, store_url: str) -> None:
    result = bench_store(store_url, 50, keys=KEYS, handshakes=3)
    for name in ("put_per_s", "get_per_s", "bytes_per_session", "resumptions_per_s"):
        assert result[name] > 0, result
    assert result["get_hits"] == 50
    assert result["resumptions_ok"] == 3
    if kind != "memory":
        assert result["entry_bytes"] > 48
    # The benchmark cleans up after itself.
    assert open_store(store_url, None, keys=KEYS).count() == 0
