-- Agent tasks: the work behind backup and recovery operations, version 1.
-- payload is the JSON work description the agent receives.

CREATE TABLE tasks (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id         TEXT NOT NULL REFERENCES operations (id),
    compute_instance_id  TEXT NOT NULL,
    policy_id            TEXT NOT NULL DEFAULT '',
    task_type            INTEGER NOT NULL,
    status               INTEGER NOT NULL,
    progress_current     INTEGER NOT NULL DEFAULT 0,
    progress_total       INTEGER NOT NULL DEFAULT 0,
    enqueued_at          INTEGER NOT NULL,
    started_at           INTEGER,
    updated_at           INTEGER NOT NULL,
    completed_at         INTEGER,
    result_code          INTEGER NOT NULL DEFAULT 0,
    error                TEXT NOT NULL DEFAULT '',
    payload              TEXT NOT NULL
);
CREATE INDEX tasks_instance ON tasks (compute_instance_id, status, id);
CREATE INDEX tasks_operation ON tasks (operation_id);
