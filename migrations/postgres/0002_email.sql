-- The email delivery queue, in PostgreSQL's types: the end state of
-- migrations/sqlite 0003_email.sql and 0004_email_due.sql. Times are Unix
-- milliseconds (UTC), BIGINT as every integer the code reads as i64.
-- state: queued | sending | retrying | sent | failed.
CREATE TABLE email_messages (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    sender TEXT NOT NULL,
    brand TEXT,
    -- The message as JSON text (to, cc, subject, text, html), as written:
    -- TEXT rather than JSONB, which refuses a body holding \u0000 and
    -- would fail the whole batch with it. text and html are dropped once
    -- the message is sent or failed.
    content TEXT NOT NULL,
    -- Attempts started, and how many of them a crash cut short (those do
    -- not count against maxAttempts).
    attempts BIGINT NOT NULL DEFAULT 0,
    interrupted BIGINT NOT NULL DEFAULT 0,
    -- When a queued or retrying message is due.
    next_attempt_at BIGINT NOT NULL,
    -- While sending: when another replica may take the message over.
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    last_reply TEXT,
    -- `EmailProvider/NAME` or `default`: the provider of the last attempt.
    provider TEXT,
    -- When the message next needs a dispatcher: the due time of a queued
    -- or retrying message, the lease end of one being sent, NULL once it
    -- is sent or failed.
    due_at BIGINT,
    -- The running attempt's start; an attempt's row in email_attempts is
    -- written when it ends or when its lease runs out.
    attempt_started_at BIGINT
);
-- An idempotency key names one message of an org, whichever replica took it.
CREATE UNIQUE INDEX email_messages_idempotency ON email_messages (org, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Claims and the next wake-up: the messages still in flight.
CREATE INDEX email_messages_due_at ON email_messages (due_at) WHERE due_at IS NOT NULL;
-- Lease expiry: the messages being sent, without the queued backlog
-- before them.
CREATE INDEX email_messages_lease ON email_messages (due_at) WHERE state = 'sending';

-- Each delivery attempt with the SMTP reply.
-- outcome: sent | transient | permanent | interrupted.
CREATE TABLE email_attempts (
    message_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
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
    polling_since BIGINT NOT NULL,
    checked_at BIGINT,
    verified_at BIGINT,
    PRIMARY KEY (org, name)
);
