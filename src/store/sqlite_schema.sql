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
