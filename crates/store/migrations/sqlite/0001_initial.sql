-- buildman's schema, SQLite flavour. A PostgreSQL backend keeps the same tables and columns.
-- Times are unix milliseconds (BIGINT); ids of builds are hyphenated lower-case UUIDs (TEXT);
-- JSON columns hold serde_json text (JSONB on PostgreSQL).

CREATE TABLE builds (
    id              TEXT    NOT NULL PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    repository      TEXT    NOT NULL,
    phase           TEXT    NOT NULL,
    -- JSON of buildman_core::BuildSource.
    source          TEXT    NOT NULL,
    -- JSON array of tag names.
    tags            TEXT    NOT NULL,
    context         TEXT    NOT NULL,
    dockerfile_path TEXT    NOT NULL,
    display_name    TEXT    NOT NULL,
    manual_user     TEXT,
    pull_robot      TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    error           TEXT,
    result_location TEXT,
    -- The highest log sequence number stored from the current attempt's worker, so a line
    -- re-sent after a reconnect is stored once. Reset by each claim (a new worker).
    last_worker_sequence INTEGER
);

-- list_builds: one repository's builds, newest first.
CREATE INDEX builds_by_repository ON builds (namespace, repository, created_at);

CREATE TABLE queue_items (
    id                 INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    -- dockerfilebuild/<namespace>/<repository>/: at most one item per name is processed at once.
    queue_name         TEXT    NOT NULL,
    build_id           TEXT    NOT NULL UNIQUE REFERENCES builds (id) ON DELETE CASCADE,
    namespace          TEXT    NOT NULL,
    available_after    BIGINT  NOT NULL,
    available          BOOLEAN NOT NULL,
    processing_expires BIGINT,
    retries_remaining  INTEGER NOT NULL,
    -- Changes on every claim and return; the compare-and-set token of a claim.
    state_id           TEXT    NOT NULL
);

-- claim: "is another item of this queue name being processed?"
CREATE INDEX queue_items_running ON queue_items (queue_name, available, processing_expires);
-- next_available_after.
CREATE INDEX queue_items_available ON queue_items (available, available_after);
-- create_build's per-namespace limit.
CREATE INDEX queue_items_namespace ON queue_items (namespace);

CREATE TABLE build_logs (
    build_id TEXT   NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    idx      BIGINT NOT NULL,
    -- JSON of buildman_core::LogEntry.
    entry    TEXT   NOT NULL,
    PRIMARY KEY (build_id, idx)
) WITHOUT ROWID;
