-- The tables of schema.sql in SQLite's dialect.
CREATE TABLE IF NOT EXISTS User (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT    NOT NULL UNIQUE,
    password TEXT    NOT NULL,
    state    TEXT    NOT NULL DEFAULT 'offline' CHECK (state IN ('online', 'offline'))
);
CREATE TABLE IF NOT EXISTS Friend (
    userid   INTEGER NOT NULL,
    friendid INTEGER NOT NULL,
    PRIMARY KEY (userid, friendid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS AllGroup (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    groupname TEXT    NOT NULL,
    groupdesc TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS GroupUser (
    groupid   INTEGER NOT NULL,
    userid    INTEGER NOT NULL,
    grouprole TEXT    NOT NULL DEFAULT 'normal' CHECK (grouprole IN ('creator', 'normal')),
    PRIMARY KEY (groupid, userid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS GroupUser_userid ON GroupUser (userid);
CREATE TABLE IF NOT EXISTS OfflineMessage (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    userid  INTEGER NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS OfflineMessage_userid ON OfflineMessage (userid, id);
-- The message log: every accepted chat message once, under its mid (see schema.sql). Few
-- indexes, because a commit writes every page it touched: `conv` is an integer key
-- (`low << 32 | high` for a pair, `-groupid` for a group), and cids have their own small table.
CREATE TABLE IF NOT EXISTS Message (
    mid      INTEGER PRIMARY KEY,
    conv     INTEGER NOT NULL,
    sender   INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    toid     INTEGER,
    groupid  INTEGER,
    msg      TEXT    NOT NULL,
    sendtime TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    cid      TEXT
);
CREATE INDEX IF NOT EXISTS Message_conv ON Message (conv, ts, mid);
-- For the retention: `ts` grows, so a commit touches only this index's last page.
CREATE INDEX IF NOT EXISTS Message_ts ON Message (ts);
-- (sender, cid) of the messages that had one, for deduplication; rows older than a day go.
CREATE TABLE IF NOT EXISTS MessageCid (
    sender INTEGER NOT NULL,
    cid    TEXT    NOT NULL,
    mid    INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (sender, cid)
) WITHOUT ROWID;
-- Mids are never given out twice: a removed last message leaves its mid + 1 here.
CREATE TABLE IF NOT EXISTS MessageSeq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    next INTEGER NOT NULL
);
INSERT OR IGNORE INTO MessageSeq (id, next) VALUES (1, 1);
