-- The mini-program's access token (WeChat's stable_token), one row per appid, shared by every
-- function instance and listener (shared/wechat_token.py): one process fetches it, under the named
-- lock 'wechat_token:<appid>', and the others read it here.
--
-- refresh_at: from then on the next caller fetches a new one (5 minutes before expires_at, or half
-- the token's life if that is shorter); until expires_at the stored one still works, so a failed
-- refresh costs nothing. invalidated: a call with this token got 40001/42001; the next fetch asks
-- with force_refresh (rate limited by WeChat), and only while this row still holds that token.
-- Times are the database's clock (UTC), the one every process shares.
CREATE TABLE wechat_tokens (
    appid         VARCHAR(64)   NOT NULL PRIMARY KEY,
    access_token  VARCHAR(1024) NOT NULL,            -- WeChat asks for at least 512 characters of room
    expires_at    DATETIME(3)   NOT NULL,
    refresh_at    DATETIME(3)   NOT NULL,
    invalidated   TINYINT(1)    NOT NULL DEFAULT 0,
    fetched_at    DATETIME(3)   NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
