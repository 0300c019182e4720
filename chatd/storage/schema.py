"""
The durable store's schema, one list of migrations per database; a
database's version is how many of them ran (SQLite's ``user_version``,
PostgreSQL's ``chatd_schema`` table).  Migrations run at start-up, before
chatd listens.

The SQLite list begins with the message log's three migrations, as they
always were, so that a message log's database is migrated into a store.
Both lists end in the same tables:

- ``rooms``: the rooms that last (``last_id``: the id of the room's latest
  message, kept here so that ids never repeat, even once every message is
  pruned);
- ``room_moderators``: the users who moderate a room;
- ``room_lists``: a room's invitations and bans (``c:ID`` or ``u:NAME``);
- ``memberships``: who is a member of which room, and the id of the last
  message they have read there;
- ``messages``: the message log's rows (``kept`` 0: every broadcast and
  direct message, when the log is on) and the lasting rooms' history
  (``kept`` 1, unique by room and id).
"""

from __future__ import annotations

from typing import Any, Sequence

_ROOMS = """
    CREATE TABLE rooms (
        room_id    TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        seq        BIGINT NOT NULL,      -- creation order, the cursor of "list"
        private    INTEGER NOT NULL,
        owner      TEXT NOT NULL,        -- a user
        last_id    BIGINT NOT NULL DEFAULT 0,
        declared   TEXT UNIQUE           -- the config file's name for it, if it declares it
    );
    CREATE TABLE room_moderators (
        room_id   TEXT NOT NULL REFERENCES rooms ON DELETE CASCADE,
        user_name TEXT NOT NULL,
        PRIMARY KEY (room_id, user_name)
    );
    CREATE TABLE room_lists (
        room_id TEXT NOT NULL REFERENCES rooms ON DELETE CASCADE,
        list    TEXT NOT NULL,           -- invited, banned
        entry   TEXT NOT NULL,           -- c:ID, u:NAME
        PRIMARY KEY (room_id, list, entry)
    );
    CREATE TABLE memberships (
        room_id   TEXT NOT NULL REFERENCES rooms ON DELETE CASCADE,
        user_name TEXT NOT NULL,
        last_read BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (room_id, user_name)
    );
    CREATE INDEX memberships_by_user ON memberships (user_name);
"""

_KEPT = """
    CREATE UNIQUE INDEX messages_kept ON messages (room_id, message_id) WHERE kept = 1;
"""

# Every read of messages by room is of the kept ones, which messages_kept
# orders; the message log's rows are never read by room.  One index fewer
# is a third less of the database's work per stored message.
_NO_ROOM_INDEX = """
    DROP INDEX IF EXISTS messages_by_room;
"""

# A cluster's room decisions are ordered by Redis; their writes from
# several nodes may commit in another order.  Each carries the version of
# the room it was decided on, and writes a room's roles and lists only over
# an older one (chatd.backplane.lasting).
_LISTS_VERSION = """
    ALTER TABLE rooms ADD COLUMN lists_v BIGINT NOT NULL DEFAULT 0;
"""

SQLITE: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        seq        INTEGER PRIMARY KEY,  -- order of broadcast
        room_id    TEXT NOT NULL,
        room_name  TEXT NOT NULL,
        message_id INTEGER NOT NULL,     -- the per-room "id" of the broadcast
        client_id  TEXT NOT NULL,
        nick       TEXT,
        body       TEXT NOT NULL,        -- the body, as JSON
        timestamp  TEXT NOT NULL
    );
    CREATE INDEX messages_by_room ON messages (room_id, message_id);
    """,
    # Direct messages: no room (room_id and room_name ""; message_id 0), to
    # whom the sender addressed them.
    """
    ALTER TABLE messages ADD COLUMN direct INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN recipient TEXT;
    """,
    # Retention deletes by age; queries by time too.
    """
    CREATE INDEX messages_by_time ON messages (timestamp);
    """,
    # The rooms that last, and their history.
    """
    ALTER TABLE messages ADD COLUMN user_name TEXT;
    ALTER TABLE messages ADD COLUMN kept INTEGER NOT NULL DEFAULT 0;
    """ + _KEPT + _ROOMS,
    _NO_ROOM_INDEX,
    _LISTS_VERSION,
)

POSTGRESQL: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        seq        BIGSERIAL PRIMARY KEY,
        room_id    TEXT NOT NULL,
        room_name  TEXT NOT NULL,
        message_id BIGINT NOT NULL,
        client_id  TEXT NOT NULL,
        nick       TEXT,
        body       TEXT NOT NULL,
        timestamp  TEXT NOT NULL,
        direct     INTEGER NOT NULL DEFAULT 0,
        recipient  TEXT,
        user_name  TEXT,
        kept       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_by_room ON messages (room_id, message_id);
    CREATE INDEX messages_by_time ON messages (timestamp);
    """ + _KEPT + _ROOMS,
    _NO_ROOM_INDEX,
    _LISTS_VERSION,
)


class SchemaError(Exception):
    """The database's schema is newer than this chatd, or cannot be read."""


def migrate_sqlite(connection: Any) -> int:
    """Bring an SQLite database's schema up to date; the version it is now at."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    _check(version, SQLITE)
    for number in range(version, len(SQLITE)):
        with connection:
            connection.executescript(
                f"BEGIN; {SQLITE[number]} PRAGMA user_version = {number + 1}; COMMIT;")
    return len(SQLITE)


def migrate_postgresql(connection: Any) -> int:
    """The same for PostgreSQL (a psycopg connection), under a lock so that
    nodes starting together migrate once."""
    with connection.transaction():
        cursor = connection.cursor()
        cursor.execute("SELECT pg_advisory_xact_lock(7364)")  # chatd's schema lock
        cursor.execute("CREATE TABLE IF NOT EXISTS chatd_schema (version INTEGER NOT NULL)")
        cursor.execute("SELECT version FROM chatd_schema")
        row = cursor.fetchone()
        version = row[0] if row is not None else 0
        if row is None:
            cursor.execute("INSERT INTO chatd_schema VALUES (0)")
        _check(version, POSTGRESQL)
        for number in range(version, len(POSTGRESQL)):
            cursor.execute(POSTGRESQL[number])
        cursor.execute("UPDATE chatd_schema SET version = %s", (len(POSTGRESQL),))
    return len(POSTGRESQL)


def _check(version: int, migrations: Sequence[str]) -> None:
    if version > len(migrations):
        raise SchemaError(
            f"the database has schema version {version}, newer than this chatd knows ({len(migrations)})")
