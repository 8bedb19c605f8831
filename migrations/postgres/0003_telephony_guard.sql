-- The abuse guard's recent sends when replicas share this database (on
-- SQLite the guard counts in memory): one row per admitted send and
-- active limit. `key` is a keyed hash (HMAC-SHA256 with --otp-hash-key)
-- of the org, or of the org and the phone number: never a number in
-- clear. `at` is Unix milliseconds; rows leave once they are older than
-- the longest window.
CREATE TABLE telephony_guard_sends (
    key BYTEA NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX telephony_guard_sends_key ON telephony_guard_sends (key, at);
CREATE INDEX telephony_guard_sends_at ON telephony_guard_sends (at);
