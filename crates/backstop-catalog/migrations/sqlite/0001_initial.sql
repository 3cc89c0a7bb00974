-- Catalog schema, version 1. Timestamps are microseconds since the Unix
-- epoch (UTC); nested lists that are only ever read whole are JSON text.

CREATE TABLE operations (
    id                TEXT PRIMARY KEY NOT NULL,
    description       TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    created_by        TEXT NOT NULL,
    modified_at       INTEGER NOT NULL,
    done              INTEGER NOT NULL DEFAULT 0,
    metadata_type     TEXT NOT NULL,
    metadata_value    BLOB NOT NULL,
    -- Set together when the operation failed; error_code is never 0.
    error_code        INTEGER,
    error_message     TEXT,
    error_details     TEXT,
    -- Set together when the operation succeeded.
    response_type     TEXT,
    response_value    BLOB,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    resource_id       TEXT
);
CREATE INDEX operations_resource ON operations (resource_id, created_at);

CREATE TABLE idempotency_keys (
    subject       TEXT NOT NULL,
    method        TEXT NOT NULL,
    key           TEXT NOT NULL,
    operation_id  TEXT NOT NULL REFERENCES operations (id),
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (subject, method, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE resources (
    compute_instance_id  TEXT PRIMARY KEY NOT NULL,
    resource_id          TEXT NOT NULL UNIQUE,
    folder_id            TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    online               INTEGER NOT NULL DEFAULT 0,
    enabled              INTEGER NOT NULL DEFAULT 1,
    status               INTEGER NOT NULL,
    status_details       TEXT NOT NULL DEFAULT '',
    status_progress      INTEGER NOT NULL DEFAULT 0,
    last_backup_time     INTEGER,
    next_backup_time     INTEGER,
    init_status          INTEGER NOT NULL,
    metadata             TEXT NOT NULL DEFAULT '',
    resource_type        INTEGER NOT NULL,
    agent_version        TEXT NOT NULL DEFAULT '',
    last_heartbeat_at    INTEGER
);
CREATE INDEX resources_folder ON resources (folder_id, created_at);

CREATE TABLE archives (
    id                      TEXT PRIMARY KEY NOT NULL,
    name                    TEXT NOT NULL,
    folder_id               TEXT NOT NULL,
    compute_instance_id     TEXT NOT NULL,
    resource_id             TEXT NOT NULL,
    policy_id               TEXT NOT NULL,
    policy_name             TEXT NOT NULL,
    size                    INTEGER NOT NULL DEFAULT 0,
    compressed_data_size    INTEGER NOT NULL DEFAULT 0,
    data_size               INTEGER NOT NULL DEFAULT 0,
    original_data_size      INTEGER NOT NULL DEFAULT 0,
    logical_size            INTEGER NOT NULL DEFAULT 0,
    format                  INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    last_backup_created_at  INTEGER,
    last_seen_at            INTEGER,
    encrypted               INTEGER NOT NULL DEFAULT 0,
    deleted                 INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX archives_folder ON archives (folder_id);
CREATE INDEX archives_instance ON archives (compute_instance_id);

CREATE TABLE backups (
    id                   TEXT PRIMARY KEY NOT NULL,
    archive_id           TEXT NOT NULL REFERENCES archives (id),
    folder_id            TEXT NOT NULL,
    compute_instance_id  TEXT NOT NULL,
    resource_id          TEXT NOT NULL,
    policy_id            TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    last_seen_at         INTEGER NOT NULL,
    size                 INTEGER NOT NULL,
    deduplicated_size    INTEGER NOT NULL,
    backed_up_data_size  INTEGER NOT NULL,
    original_data_size   INTEGER NOT NULL,
    backup_type          INTEGER NOT NULL,
    disks                TEXT NOT NULL,
    deleted              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX backups_folder ON backups (folder_id, created_at);
CREATE INDEX backups_archive ON backups (archive_id, created_at);
CREATE INDEX backups_instance ON backups (compute_instance_id, created_at);

CREATE TABLE activated_providers (
    folder_id     TEXT NOT NULL,
    name          TEXT NOT NULL,
    activated_at  INTEGER NOT NULL,
    PRIMARY KEY (folder_id, name)
);
