-- Instance registration tokens, version 1: a token lets an agent register
-- a new instance in the token's folder until it expires.

CREATE TABLE registration_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    folder_id   TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
