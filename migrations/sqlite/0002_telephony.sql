-- One-time passcodes delivered through a telephony hook. Only a keyed hash
-- (HMAC-SHA256 over the transaction id and the code) is kept, never the code.
-- Times are Unix milliseconds. Rows leave a day after they expire.
CREATE TABLE otp_transactions (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    hook TEXT NOT NULL,
    code_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    -- delivered | verified | locked
    state TEXT NOT NULL
);
CREATE INDEX otp_transactions_expiry ON otp_transactions (expires_at);

-- Executions of each hook per UTC day: the 30-day window in status.metrics.
CREATE TABLE telephony_hook_days (
    org TEXT NOT NULL,
    hook TEXT NOT NULL,
    -- YYYY-MM-DD (UTC)
    day TEXT NOT NULL,
    executions INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    -- Sum of the durations of successful executions, for the average.
    success_millis INTEGER NOT NULL,
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
