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
CREATE TABLE system_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org TEXT NOT NULL,
    type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    time TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX system_log_org ON system_log (org, id);
CREATE INDEX system_log_org_type ON system_log (org, type, id);
