-- The email delivery queue. Times are Unix milliseconds (UTC).
-- state: queued | sending | retrying | sent | failed.
CREATE TABLE email_messages (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    sender TEXT NOT NULL,
    brand TEXT,
    content TEXT NOT NULL,
    -- Attempts started, and how many of them a crash cut short (those do
    -- not count against maxAttempts).
    attempts INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    -- When a queued or retrying message is due.
    next_attempt_at INTEGER NOT NULL,
    -- While sending: when another worker may take the message over.
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER,
    last_reply TEXT,
    -- `EmailProvider/NAME` or `default`: the provider of the last attempt.
    provider TEXT
);
CREATE UNIQUE INDEX email_messages_idempotency ON email_messages (org, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX email_messages_due ON email_messages (state, next_attempt_at);
CREATE INDEX email_messages_lease ON email_messages (state, lease_until);
CREATE INDEX email_messages_org_state ON email_messages (org, state);

-- Each delivery attempt with the SMTP reply.
-- outcome: NULL while running | sent | transient | permanent | interrupted.
CREATE TABLE email_attempts (
    message_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    outcome TEXT,
    reply TEXT,
    provider TEXT,
    PRIMARY KEY (message_id, number)
);

-- Brand sender domains: the verification token and where DNS validation stands.
CREATE TABLE email_domains (
    org TEXT NOT NULL,
    name TEXT NOT NULL,
    domain TEXT NOT NULL,
    record_name TEXT NOT NULL,
    token TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    polling_since INTEGER NOT NULL,
    checked_at INTEGER,
    verified_at INTEGER,
    PRIMARY KEY (org, name)
);

-- A message's delivery events are read by subject.
CREATE INDEX system_log_org_subject ON system_log (org, subject, id);
