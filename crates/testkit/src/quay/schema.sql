-- The part of Quay's PostgreSQL schema a build manager reads and writes, written from
-- shared/docs/quay-integration.md (sections 2 and 3) for tests: the tables, their columns,
-- types, NULLs, DB-side defaults, unique and plain indexes, and the enum rows Quay's
-- migrations insert. Quay's own Alembic migrations own the real schema; this is a
-- fixture, not a migration. Columns of these tables that buildman never touches are left
-- out (Quay's "user" and "repository" have many more), and so are tables it never reads.
-- Foreign keys have no ON DELETE: Quay deletes dependants in application code.

CREATE TABLE alembic_version (
    version_num varchar(32) NOT NULL PRIMARY KEY
);
-- Quay's upstream head when the doc was written.
INSERT INTO alembic_version (version_num) VALUES ('9fa37f66a9b6');

-- Enum tables, looked up by name (ids fixed only for disablereason).
CREATE TABLE role (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX role_name ON role (name);
INSERT INTO role (name) VALUES ('admin'), ('write'), ('read');

CREATE TABLE accesstokenkind (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX accesstokenkind_name ON accesstokenkind (name);
INSERT INTO accesstokenkind (name) VALUES ('build-worker'), ('pushpull-token');

CREATE TABLE buildtriggerservice (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX buildtriggerservice_name ON buildtriggerservice (name);
INSERT INTO buildtriggerservice (name) VALUES ('github'), ('gitlab'), ('bitbucket'), ('custom-git');

CREATE TABLE disablereason (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX disablereason_name ON disablereason (name);
INSERT INTO disablereason (id, name) VALUES
    (1, 'user_toggled'), (2, 'successive_build_failures'), (3, 'successive_build_internal_errors');
SELECT setval('disablereason_id_seq', 3);

CREATE TABLE externalnotificationevent (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX externalnotificationevent_name ON externalnotificationevent (name);
INSERT INTO externalnotificationevent (name) VALUES
    ('repo_push'), ('build_queued'), ('build_start'), ('build_success'), ('build_failure'),
    ('build_cancelled');

CREATE TABLE externalnotificationmethod (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX externalnotificationmethod_name ON externalnotificationmethod (name);
INSERT INTO externalnotificationmethod (name) VALUES
    ('quay_notification'), ('email'), ('webhook'), ('flowdock'), ('hipchat'), ('slack');

-- Read only (section 3.5).
CREATE TABLE "user" (
    id serial PRIMARY KEY,
    username varchar(255) NOT NULL,
    -- The namespace's cap on queued builds (section 4.1); NULL: none.
    maximum_queued_builds_count integer
);
CREATE UNIQUE INDEX user_username ON "user" (username);

CREATE TABLE repository (
    id serial PRIMARY KEY,
    namespace_user_id integer REFERENCES "user" (id),
    name varchar(255) NOT NULL
);
CREATE UNIQUE INDEX repository_namespace_user_id_name ON repository (namespace_user_id, name);
CREATE INDEX repository_namespace_user_id ON repository (namespace_user_id);

CREATE TABLE accesstoken (
    id serial PRIMARY KEY,
    friendly_name varchar(255),
    token_name varchar(255) NOT NULL,
    token_code varchar(255) NOT NULL,
    repository_id integer NOT NULL REFERENCES repository (id),
    created timestamp without time zone NOT NULL,
    role_id integer NOT NULL REFERENCES role (id),
    temporary boolean NOT NULL,
    kind_id integer REFERENCES accesstokenkind (id)
);
CREATE UNIQUE INDEX accesstoken_token_name ON accesstoken (token_name);
CREATE INDEX accesstoken_repository_id ON accesstoken (repository_id);
CREATE INDEX accesstoken_role_id ON accesstoken (role_id);
CREATE INDEX accesstoken_kind_id ON accesstoken (kind_id);

CREATE TABLE repositorybuildtrigger (
    id serial PRIMARY KEY,
    uuid varchar(255) NOT NULL,
    service_id integer NOT NULL REFERENCES buildtriggerservice (id),
    repository_id integer NOT NULL REFERENCES repository (id),
    connected_user_id integer NOT NULL REFERENCES "user" (id),
    config text NOT NULL,
    write_token_id integer REFERENCES accesstoken (id),
    pull_robot_id integer REFERENCES "user" (id),
    secure_auth_token varchar(255),
    secure_private_key text,
    fully_migrated boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason_id integer REFERENCES disablereason (id),
    disabled_datetime timestamp without time zone,
    successive_failure_count integer NOT NULL DEFAULT 0,
    successive_internal_error_count integer NOT NULL DEFAULT 0
);
CREATE INDEX repositorybuildtrigger_uuid ON repositorybuildtrigger (uuid);
CREATE INDEX repositorybuildtrigger_service_id ON repositorybuildtrigger (service_id);
CREATE INDEX repositorybuildtrigger_repository_id ON repositorybuildtrigger (repository_id);
CREATE INDEX repositorybuildtrigger_connected_user_id ON repositorybuildtrigger (connected_user_id);
CREATE INDEX repositorybuildtrigger_write_token_id ON repositorybuildtrigger (write_token_id);
CREATE INDEX repositorybuildtrigger_pull_robot_id ON repositorybuildtrigger (pull_robot_id);
CREATE INDEX repositorybuildtrigger_disabled_reason_id ON repositorybuildtrigger (disabled_reason_id);
CREATE INDEX repositorybuildtrigger_disabled_datetime ON repositorybuildtrigger (disabled_datetime);

CREATE TABLE repositorybuild (
    id serial PRIMARY KEY,
    uuid varchar(255) NOT NULL,
    repository_id integer NOT NULL REFERENCES repository (id),
    access_token_id integer NOT NULL REFERENCES accesstoken (id),
    resource_key varchar(255),
    job_config text NOT NULL,
    phase varchar(255) NOT NULL,
    started timestamp without time zone NOT NULL,
    display_name varchar(255) NOT NULL,
    trigger_id integer REFERENCES repositorybuildtrigger (id),
    pull_robot_id integer REFERENCES "user" (id),
    logs_archived boolean NOT NULL DEFAULT false,
    queue_id varchar(255)
);
CREATE INDEX repositorybuild_uuid ON repositorybuild (uuid);
CREATE INDEX repositorybuild_repository_id ON repositorybuild (repository_id);
CREATE INDEX repositorybuild_access_token_id ON repositorybuild (access_token_id);
CREATE INDEX repositorybuild_resource_key ON repositorybuild (resource_key);
CREATE INDEX repositorybuild_started ON repositorybuild (started);
CREATE INDEX repositorybuild_trigger_id ON repositorybuild (trigger_id);
CREATE INDEX repositorybuild_pull_robot_id ON repositorybuild (pull_robot_id);
CREATE INDEX repositorybuild_logs_archived ON repositorybuild (logs_archived);
CREATE INDEX repositorybuild_queue_id ON repositorybuild (queue_id);
CREATE INDEX repositorybuild_repository_id_started_phase ON repositorybuild (repository_id, started, phase);
CREATE INDEX repositorybuild_started_logs_archived_phase ON repositorybuild (started, logs_archived, phase);

CREATE TABLE queueitem (
    id serial PRIMARY KEY,
    queue_name varchar(1024) NOT NULL,
    body text NOT NULL,
    available_after timestamp without time zone NOT NULL,
    available boolean NOT NULL,
    processing_expires timestamp without time zone,
    retries_remaining integer NOT NULL,
    state_id varchar(255) NOT NULL DEFAULT ''
);
CREATE INDEX queueitem_queue_name ON queueitem (queue_name);
CREATE UNIQUE INDEX queueitem_state_id ON queueitem (state_id);
CREATE INDEX queueitem_processing_expires_available ON queueitem (processing_expires, available);
CREATE INDEX queueitem_pe_aafter_qname_rremaining_available
    ON queueitem (processing_expires, available_after, queue_name, retries_remaining, available);
CREATE INDEX queueitem_pexpires_aafter_rremaining_available
    ON queueitem (processing_expires, available_after, retries_remaining, available);
CREATE INDEX queueitem_processing_expires_queue_name_available
    ON queueitem (processing_expires, queue_name, available);

CREATE TABLE repositorynotification (
    id serial PRIMARY KEY,
    uuid varchar(255) NOT NULL,
    repository_id integer NOT NULL REFERENCES repository (id),
    event_id integer NOT NULL REFERENCES externalnotificationevent (id),
    method_id integer NOT NULL REFERENCES externalnotificationmethod (id),
    title varchar(255),
    config_json text NOT NULL,
    event_config_json text NOT NULL,
    number_of_failures integer NOT NULL DEFAULT 0,
    last_ran_ms bigint
);
CREATE INDEX repositorynotification_uuid ON repositorynotification (uuid);
CREATE INDEX repositorynotification_repository_id ON repositorynotification (repository_id);
CREATE INDEX repositorynotification_event_id ON repositorynotification (event_id);
CREATE INDEX repositorynotification_method_id ON repositorynotification (method_id);

-- DetermineCachedTag (section 6.4).
CREATE TABLE manifest (
    id serial PRIMARY KEY,
    repository_id integer NOT NULL REFERENCES repository (id),
    digest varchar(255) NOT NULL
);
CREATE UNIQUE INDEX manifest_repository_id_digest ON manifest (repository_id, digest);

CREATE TABLE tag (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL,
    repository_id integer NOT NULL REFERENCES repository (id),
    manifest_id integer REFERENCES manifest (id),
    lifetime_start_ms bigint NOT NULL,
    lifetime_end_ms bigint,
    hidden boolean NOT NULL DEFAULT false
);
CREATE INDEX tag_repository_id ON tag (repository_id);
CREATE INDEX tag_manifest_id ON tag (manifest_id);
CREATE INDEX tag_lifetime_end_ms ON tag (lifetime_end_ms);
CREATE INDEX tag_repository_id_name ON tag (repository_id, name);
