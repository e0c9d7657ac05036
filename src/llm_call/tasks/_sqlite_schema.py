"""The task store's SQLite schema (tables, indexes, version), created, checked or migrated at open.

Versions: 1, the first; 2 adds ``tasks.tenant`` (the API key a task was submitted with, as a
hash) and makes idempotency keys unique per tenant. A version 1 file is migrated in place when
it is opened (a column added, one index replaced); its tasks have no tenant.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "init_schema"]

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    route TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    owner TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress TEXT,
    result TEXT,
    error TEXT,
    event_seq INTEGER NOT NULL DEFAULT 0,
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(priority DESC, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS tasks_running ON tasks(worker) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status, seq);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events(
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers(
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    claims TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


_TENANT_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency_per_tenant
    ON tasks(coalesce(tenant, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_tenant ON tasks(tenant, seq) WHERE tenant IS NOT NULL
"""


def init_schema(conn: sqlite3.Connection) -> str | None:
    """Create, check or migrate the schema inside the opening transaction; a reason if it is unusable."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        return f"schema version {row[0]} is newer than this llm_call ({SCHEMA_VERSION})"
    columns = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    if "tenant" not in columns:  # version 1: idempotency keys were global
        conn.execute("ALTER TABLE tasks ADD COLUMN tenant TEXT")
    conn.execute("DROP INDEX IF EXISTS tasks_idempotency")
    for statement in _TENANT_INDEXES.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return None
