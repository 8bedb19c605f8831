-- The PostgreSQL schema of the tables every installation has: status in
-- `run` mode, the system log, the telephony tables. The email queue's
-- tables are in their own migration. The same tables as migrations/sqlite,
-- in PostgreSQL's types: every integer the code reads as i64 is BIGINT,
-- times are Unix milliseconds or RFC 3339 text as there.

-- Status of objects in `run --manifests` mode (in a cluster, status lives on the objects).
CREATE TABLE object_status (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

-- The org's system log: delivery events, OTP executions, status transitions.
-- Ids are taken when a row is inserted, but transactions of several
-- replicas commit in any order: a reader paging by id (`after`) could pass
-- an id whose transaction commits later. `tx` is the writing transaction;
-- readers see only rows of transactions older than every one still open
-- (`pg_snapshot_xmin`), so a page never skips a row that appears later.
CREATE TABLE system_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org TEXT NOT NULL,
    type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    time TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    tx XID8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX system_log_org ON system_log (org, id);
CREATE INDEX system_log_org_type ON system_log (org, type, id);
CREATE INDEX system_log_org_subject ON system_log (org, subject, id);

-- One-time passcodes delivered through a telephony hook. Only a keyed hash
-- (HMAC-SHA256 over the transaction id and the code) is kept, never the code.
CREATE TABLE otp_transactions (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    hook TEXT NOT NULL,
    code_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    -- delivered | verified | locked
    state TEXT NOT NULL
);
CREATE INDEX otp_transactions_expiry ON otp_transactions (expires_at);

-- Executions of each hook per UTC day: the 30-day window in status.metrics.
CREATE TABLE telephony_hook_days (
    org TEXT NOT NULL,
    hook TEXT NOT NULL,
    day TEXT NOT NULL,
    executions BIGINT NOT NULL,
    successes BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    success_millis BIGINT NOT NULL,
    PRIMARY KEY (org, hook, day)
);

-- The last execution and the last failure of each hook (RFC 3339 times).
CREATE TABLE telephony_hook_last (
    org TEXT NOT NULL,
    hook TEXT NOT NULL,
    last_execution_time TEXT,
    last_failure_time TEXT,
    last_failure_reason TEXT,
    PRIMARY KEY (org, hook)
);
