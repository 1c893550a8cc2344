-- Chat service schema for MySQL / MariaDB. Idempotent: `mysql chat < schema.sql`.
-- Canonical table and column names, with keys that forbid duplicate rows, an ordered mailbox,
-- room for password hashes, utf8mb4 and an index for every lookup.

CREATE TABLE IF NOT EXISTS User (
    id       INT UNSIGNED NOT NULL AUTO_INCREMENT,
    name     VARCHAR(50)  NOT NULL,
    password VARCHAR(255) NOT NULL COMMENT 'argon2id PHC string',
    state    ENUM('online', 'offline') NOT NULL DEFAULT 'offline' COMMENT 'informational only',
    PRIMARY KEY (id),
    UNIQUE KEY uk_user_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS Friend (
    userid   INT UNSIGNED NOT NULL,
    friendid INT UNSIGNED NOT NULL,
    PRIMARY KEY (userid, friendid),
    KEY idx_friend_friendid (friendid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS AllGroup (
    id        INT UNSIGNED NOT NULL AUTO_INCREMENT,
    groupname VARCHAR(50)  NOT NULL,
    groupdesc VARCHAR(200) NOT NULL DEFAULT '',
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS GroupUser (
    groupid   INT UNSIGNED NOT NULL,
    userid    INT UNSIGNED NOT NULL,
    grouprole ENUM('creator', 'normal') NOT NULL DEFAULT 'normal',
    PRIMARY KEY (groupid, userid),
    KEY idx_groupuser_userid (userid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS OfflineMessage (
    id      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    userid  INT UNSIGNED    NOT NULL,
    message TEXT            NOT NULL,
    PRIMARY KEY (id),
    KEY idx_offline_userid (userid, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The message log (protocol version 2): every accepted chat message once, group messages once
-- for all members, under its cluster-wide mid. `conv` is `low << 32 | high` for a one-to-one
-- conversation and `-groupid` for a group's; `name` is the sender's name when sent. Few
-- indexes: each commit writes every index page it touches.
CREATE TABLE IF NOT EXISTS Message (
    mid      BIGINT UNSIGNED NOT NULL,
    conv     BIGINT          NOT NULL,
    sender   INT UNSIGNED    NOT NULL,
    name     VARCHAR(50)     NOT NULL,
    toid     INT UNSIGNED    NULL,
    groupid  INT UNSIGNED    NULL,
    msg      MEDIUMTEXT      NOT NULL,
    sendtime VARCHAR(64)     NOT NULL,
    ts       BIGINT UNSIGNED NOT NULL COMMENT 'server receive time, Unix ms',
    cid      VARCHAR(64)     NULL COMMENT 'the sender''s id for the message',
    PRIMARY KEY (mid),
    KEY idx_message_conv (conv, ts, mid),
    KEY idx_message_ts (ts)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- (sender, cid) of the messages that had one, for deduplication; rows older than a day go.
CREATE TABLE IF NOT EXISTS MessageCid (
    sender INT UNSIGNED    NOT NULL,
    cid    VARCHAR(64)     NOT NULL,
    mid    BIGINT UNSIGNED NOT NULL,
    ts     BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (sender, cid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The next mid: every node reserves a batch's mids here, in the batch's transaction.
CREATE TABLE IF NOT EXISTS MessageSeq (
    id   TINYINT UNSIGNED NOT NULL,
    next BIGINT UNSIGNED  NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB;

INSERT IGNORE INTO MessageSeq (id, next) VALUES (1, 1);
