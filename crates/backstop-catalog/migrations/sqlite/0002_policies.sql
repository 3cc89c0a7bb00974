-- Backup policies and the instances they are applied to. Timestamps are
-- microseconds since the Unix epoch (UTC), as in 0001.

CREATE TABLE policies (
    id          TEXT PRIMARY KEY NOT NULL,
    folder_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    -- Encoded yandex.cloud.backup.v1.PolicySettings, format version 1.
    settings    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    -- Deleting a policy sets this flag and keeps the row, so the archives
    -- and backups the policy made can still look up its name and settings.
    deleted     INTEGER NOT NULL DEFAULT 0
);
-- A name is unique within its folder among policies that are not deleted,
-- so the name of a deleted policy can be used again.
CREATE UNIQUE INDEX policies_folder_name ON policies (folder_id, name) WHERE deleted = 0;
CREATE INDEX policies_folder ON policies (folder_id, created_at);

-- No foreign key on compute_instance_id, because an application outlives
-- the resource row of an instance that is unregistered.
CREATE TABLE policy_applications (
    policy_id            TEXT NOT NULL REFERENCES policies (id),
    compute_instance_id  TEXT NOT NULL,
    enabled              INTEGER NOT NULL DEFAULT 1,
    -- A yandex.cloud.backup.v1.PolicyApplication.Status number.
    status               INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (policy_id, compute_instance_id)
);
CREATE INDEX policy_applications_instance ON policy_applications (compute_instance_id);
