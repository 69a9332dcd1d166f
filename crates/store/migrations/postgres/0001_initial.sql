-- buildman's schema, PostgreSQL flavour: the same tables and columns as the SQLite one
-- (migrations/sqlite/0001_initial.sql). Times are unix milliseconds (BIGINT); ids of builds
-- are hyphenated lower-case UUIDs (TEXT); JSON columns are JSONB.

CREATE TABLE builds (
    id              TEXT    NOT NULL PRIMARY KEY,
    namespace       TEXT    NOT NULL,
    repository      TEXT    NOT NULL,
    phase           TEXT    NOT NULL,
    -- buildman_core::BuildSource.
    source          JSONB   NOT NULL,
    -- Array of tag names.
    tags            JSONB   NOT NULL,
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
    last_worker_sequence INTEGER,
    -- Insertion order (SQLite's rowid): breaks ties between builds of the same millisecond.
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY
);

-- list_builds: one repository's builds, newest first.
CREATE INDEX builds_by_repository ON builds (namespace, repository, created_at, seq);

CREATE TABLE queue_items (
    -- Never reused (like SQLite's AUTOINCREMENT): the order of ids is the queue's order.
    id                 BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- dockerfilebuild/<namespace>/<repository>/: at most one item per name is processed at once.
    queue_name         TEXT    NOT NULL,
    build_id           TEXT    NOT NULL UNIQUE REFERENCES builds (id) ON DELETE CASCADE,
    namespace          TEXT    NOT NULL,
    available_after    BIGINT  NOT NULL,
    available          BOOLEAN NOT NULL,
    processing_expires BIGINT,
    retries_remaining  BIGINT  NOT NULL,
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
    -- buildman_core::LogEntry.
    entry    JSONB  NOT NULL,
    PRIMARY KEY (build_id, idx)
);
