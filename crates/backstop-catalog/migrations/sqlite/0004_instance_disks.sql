-- Disks each instance's agent reports, in the agent's order, version 1.

CREATE TABLE instance_disks (
    compute_instance_id  TEXT NOT NULL,
    position             INTEGER NOT NULL,
    name                 TEXT NOT NULL,
    size                 INTEGER NOT NULL,
    device_model         TEXT NOT NULL,
    PRIMARY KEY (compute_instance_id, position)
);
