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
