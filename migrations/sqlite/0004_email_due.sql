-- One small index for the dispatcher instead of three.
--
-- due_at: when a message next needs the dispatcher: the due time of a
-- queued or retrying message, the lease end of one being sent, NULL once it
-- is sent or failed. Claims, lease expiry and the next wake-up are range
-- scans of a partial index holding only the messages still in flight, and
-- a finished message leaves the index.
--
-- attempt_started_at: the running attempt's start; an attempt's row in
-- email_attempts is written when it ends or when its lease runs out.
ALTER TABLE email_messages ADD COLUMN due_at INTEGER;
ALTER TABLE email_messages ADD COLUMN attempt_started_at INTEGER;
UPDATE email_messages SET due_at = CASE
    WHEN state IN ('queued', 'retrying') THEN next_attempt_at
    WHEN state = 'sending' THEN lease_until
END;
DROP INDEX email_messages_due;
DROP INDEX email_messages_lease;
DROP INDEX email_messages_org_state;
CREATE INDEX email_messages_due_at ON email_messages (due_at) WHERE due_at IS NOT NULL;

-- Marks the rows one claim took, so that they are read back in one row.
ALTER TABLE email_messages ADD COLUMN claim_token INTEGER;
