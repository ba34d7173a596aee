//! Versioned migrations, applied under an advisory lock.
//!
//! Each [`Migration`] is a version, a name and SQL in which `{schema}`
//! stands for the quoted schema name. A migration is never edited once
//! released: a change to the schema is a new migration with the next
//! version. Every statement here names the schema explicitly (the data
//! statements rely on the connection's `search_path` instead), so the
//! migrations are right whatever a connection's settings.

use chat_core::{Error, Result};

use super::{pg_error, pool_error, Inner, BACKEND};

/// One schema change.
#[derive(Debug, Clone, Copy)]
struct Migration {
    /// Applied in ascending order; recorded in `schema_migrations`.
    version: i32,
    /// What it does, recorded too.
    name: &'static str,
    /// The DDL, `{schema}` standing for the quoted schema name.
    sql: &'static str,
}

/// Every migration this build knows, in version order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages, inbox, cursors, users, friends, channels, members, devices",
        sql: r#"
CREATE TABLE {schema}.messages (
    channel_id    uuid   NOT NULL,
    message_id    bigint NOT NULL, -- u64 id with the sign bit flipped: bigint order = u64 order
    sender        uuid   NOT NULL,
    content       text   NOT NULL,
    created_at    bigint NOT NULL, -- Unix ms
    client_msg_id text   NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (channel_id, message_id),
    CONSTRAINT messages_idempotency_key UNIQUE (sender, client_msg_id)
);

CREATE TABLE {schema}.inbox (
    user_id       uuid   NOT NULL,
    message_id    bigint NOT NULL,
    channel_id    uuid   NOT NULL,
    sender        uuid   NOT NULL,
    content       text   NOT NULL,
    created_at    bigint NOT NULL,
    client_msg_id text   NOT NULL,
    CONSTRAINT inbox_pkey PRIMARY KEY (user_id, message_id)
);

CREATE TABLE {schema}.cursors (
    user_id   uuid   NOT NULL,
    device_id uuid   NOT NULL,
    cursor    bigint NOT NULL,
    CONSTRAINT cursors_pkey PRIMARY KEY (user_id, device_id)
);

CREATE TABLE {schema}.users (
    user_id       uuid   NOT NULL,
    username      text   NOT NULL,
    display_name  text   NOT NULL,
    about         text   NOT NULL,
    created_at    bigint NOT NULL,
    password_hash text   NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (user_id),
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE {schema}.friends (
    user_id   uuid NOT NULL,
    friend_id uuid NOT NULL,
    CONSTRAINT friends_pkey PRIMARY KEY (user_id, friend_id),
    CONSTRAINT friends_not_self CHECK (user_id <> friend_id),
    CONSTRAINT friends_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id),
    CONSTRAINT friends_friend_fk FOREIGN KEY (friend_id) REFERENCES {schema}.users (user_id)
);

CREATE TABLE {schema}.channels (
    channel_id uuid   NOT NULL,
    kind       text   NOT NULL,
    name       text   NOT NULL,
    owner      uuid,
    created_at bigint NOT NULL,
    CONSTRAINT channels_pkey PRIMARY KEY (channel_id),
    CONSTRAINT channels_kind CHECK (kind IN ('direct', 'group')),
    CONSTRAINT channels_owner_fk FOREIGN KEY (owner) REFERENCES {schema}.users (user_id)
);

CREATE TABLE {schema}.channel_members (
    channel_id uuid NOT NULL,
    user_id    uuid NOT NULL,
    CONSTRAINT channel_members_pkey PRIMARY KEY (channel_id, user_id),
    CONSTRAINT channel_members_channel_fk FOREIGN KEY (channel_id) REFERENCES {schema}.channels (channel_id),
    CONSTRAINT channel_members_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id)
);
-- channels_of(user), sorted by channel.
CREATE INDEX channel_members_by_user ON {schema}.channel_members (user_id, channel_id);

CREATE TABLE {schema}.devices (
    user_id    uuid   NOT NULL,
    device_id  uuid   NOT NULL,
    platform   text   NOT NULL,
    push_token text,
    created_at bigint NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (user_id, device_id),
    CONSTRAINT devices_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id)
);
"#,
    },
    Migration {
        version: 2,
        name: "idempotency key scoped to the channel",
        // The key lives with the channel's messages (a sharded history keeps
        // it on the channel's shard); the unique index leads with
        // channel_id like the primary key.
        sql: r#"
ALTER TABLE {schema}.messages DROP CONSTRAINT messages_idempotency_key;
ALTER TABLE {schema}.messages
    ADD CONSTRAINT messages_idempotency_key UNIQUE (channel_id, sender, client_msg_id);
"#,
    },
    Migration {
        version: 3,
        name: "inboxes by position, one atomic commit per message, the history outbox",
        sql: MIGRATION_3,
    },
    Migration {
        version: 4,
        name: "consent: privacy settings, friend requests, invitations, token epochs",
        sql: r#"
ALTER TABLE {schema}.users
    ADD COLUMN who_may_add    text    NOT NULL DEFAULT 'friends',
    ADD COLUMN hide_last_seen boolean NOT NULL DEFAULT false,
    ADD COLUMN token_epoch    bigint  NOT NULL DEFAULT 0,
    ADD CONSTRAINT users_who_may_add CHECK (who_may_add IN ('everyone', 'friends', 'nobody'));

CREATE TABLE {schema}.friend_requests (
    from_user  uuid   NOT NULL,
    to_user    uuid   NOT NULL,
    created_at bigint NOT NULL,
    CONSTRAINT friend_requests_pkey PRIMARY KEY (from_user, to_user),
    CONSTRAINT friend_requests_not_self CHECK (from_user <> to_user),
    CONSTRAINT friend_requests_from_fk FOREIGN KEY (from_user) REFERENCES {schema}.users (user_id),
    CONSTRAINT friend_requests_to_fk FOREIGN KEY (to_user) REFERENCES {schema}.users (user_id)
);
-- Requests a user received, and their count.
CREATE INDEX friend_requests_by_recipient ON {schema}.friend_requests (to_user, from_user);

CREATE TABLE {schema}.invitations (
    user_id    uuid   NOT NULL, -- the invitee
    channel_id uuid   NOT NULL,
    inviter    uuid   NOT NULL,
    created_at bigint NOT NULL,
    CONSTRAINT invitations_pkey PRIMARY KEY (user_id, channel_id),
    CONSTRAINT invitations_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id),
    CONSTRAINT invitations_inviter_fk FOREIGN KEY (inviter) REFERENCES {schema}.users (user_id),
    CONSTRAINT invitations_channel_fk FOREIGN KEY (channel_id) REFERENCES {schema}.channels (channel_id)
);
-- Invitations a user sent, and their count.
CREATE INDEX invitations_by_inviter ON {schema}.invitations (inviter, user_id, channel_id);

CREATE TABLE {schema}.revoked_sessions (
    user_id    uuid   NOT NULL,
    session_id bigint NOT NULL, -- the u64 session id's bits
    until      bigint NOT NULL, -- Unix ms; the record may go after this
    CONSTRAINT revoked_sessions_pkey PRIMARY KEY (user_id, session_id),
    CONSTRAINT revoked_sessions_user_fk FOREIGN KEY (user_id) REFERENCES {schema}.users (user_id)
);

-- Groups a user owns (the owned-groups cap).
CREATE INDEX channels_by_owner ON {schema}.channels (owner);
"#,
    },
    Migration {
        version: 5,
        name: "replies (reply_to on messages, inbox entries and the outbox) and blocks",
        sql: MIGRATION_5,
    },
    Migration {
        version: 6,
        name: "message numbers, read and delivered markers",
        sql: super::receipts::MIGRATION_6,
    },
    Migration {
        version: 7,
        name: "edits, deletions and reactions (edited_at, deleted, change entries, reactions)",
        sql: MIGRATION_7,
    },
    Migration {
        version: 8,
        name: "attachments: the attachments table, attachments on messages, inbox entries and the outbox",
        sql: MIGRATION_8,
    },
    Migration {
        version: 9,
        name: "search: a full-text GIN index on message content",
        sql: r#"
CREATE INDEX messages_search ON {schema}.messages USING gin (to_tsvector('simple', content));
"#,
    },
];

/// Edits, deletions and reactions (see `change.rs`).
///
/// * `edited_at` and `deleted` on messages and inbox entries: a message's
///   state (a deleted message keeps its row as a tombstone, content `''`).
/// * `inbox_entries.change`: the JSON `Change` of a change entry, `NULL`
///   for the entry of a new message.
/// * `reactions`: one row per user, message and emoji, keyed by the
///   message first (a message's reactions, and one user's among them, are
///   each one index range). Emojis compare by their bytes (`COLLATE "C"`),
///   as every backend sorts them.
///
/// The added columns have constant defaults, so no table is rewritten.
const MIGRATION_7: &str = r#"
ALTER TABLE {schema}.messages
    ADD COLUMN edited_at bigint,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false;
ALTER TABLE {schema}.inbox_entries
    ADD COLUMN edited_at bigint,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false,
    ADD COLUMN change text;

CREATE TABLE {schema}.reactions (
    channel_id uuid   NOT NULL,
    message_id bigint NOT NULL,
    user_id    uuid   NOT NULL,
    emoji      text   COLLATE "C" NOT NULL,
    CONSTRAINT reactions_pkey PRIMARY KEY (channel_id, message_id, user_id, emoji)
);
"#;

/// Attachments. The `attachments` table holds one row per upload (its
/// reference, uploader, blob ids and, once shared, its channel); messages,
/// inbox entries and outbox entries get `attachments`, the JSON array of
/// the message's references (`NULL` for none); and `commit_messages` gets
/// one more array, `p_attachments`: the 8-argument function commits the
/// batch, then the new messages with attachments get them, in the same
/// transaction (messages without write nothing more). The 8-argument
/// function stays for servers of the previous version during an upgrade.
const MIGRATION_8: &str = r#"
CREATE TABLE {schema}.attachments (
    attachment_id uuid    NOT NULL PRIMARY KEY,
    uploader      uuid    NOT NULL,
    name          text    NOT NULL,
    size          bigint  NOT NULL,
    content_type  text    NOT NULL,
    width         integer,
    height        integer,
    blob_id       uuid    NOT NULL,
    thumbnail_id  uuid,
    channel_id    uuid,
    created_at    bigint  NOT NULL
);
ALTER TABLE {schema}.messages ADD COLUMN attachments text;
ALTER TABLE {schema}.inbox_entries ADD COLUMN attachments text;
ALTER TABLE {schema}.sends ADD COLUMN attachments text;

CREATE FUNCTION {schema}.commit_messages(
    p_channels uuid[], p_senders uuid[], p_keys text[], p_contents text[],
    p_created bigint[], p_proposed bigint[], p_outbox boolean[], p_replies bigint[],
    p_attachments text[])
RETURNS TABLE (idx integer, status text, message_id bigint, created_at bigint,
               users uuid[], seqs bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    v_attachments text;
BEGIN
    FOR r IN SELECT * FROM {schema}.commit_messages(p_channels, p_senders, p_keys, p_contents,
                                                    p_created, p_proposed, p_outbox, p_replies) LOOP
        v_attachments := p_attachments[r.idx + 1];
        IF r.status = 'new' AND v_attachments IS NOT NULL THEN
            IF p_outbox[r.idx + 1] THEN
                UPDATE {schema}.sends s SET attachments = v_attachments
                    WHERE s.channel_id = p_channels[r.idx + 1] AND s.sender = p_senders[r.idx + 1]
                      AND s.client_msg_id = p_keys[r.idx + 1];
            ELSE
                UPDATE {schema}.messages m SET attachments = v_attachments
                    WHERE m.channel_id = p_channels[r.idx + 1] AND m.message_id = r.message_id;
            END IF;
            UPDATE {schema}.inbox_entries e SET attachments = v_attachments
                FROM unnest(r.users, r.seqs) AS u(user_id, seq)
                WHERE e.user_id = u.user_id AND e.seq = u.seq;
        END IF;
        idx := r.idx;
        status := r.status;
        message_id := r.message_id;
        created_at := r.created_at;
        users := r.users;
        seqs := r.seqs;
        RETURN NEXT;
    END LOOP;
END
$fn$;
"#;

/// Replies and blocks.
///
/// * `reply_to` (a stored message id, like `message_id`) on messages,
///   inbox entries and outbox entries.
/// * `blocks`: `(blocker, blocked)`. A block locks the direct channel of
///   the two (if it exists) like a membership change, so it is serialized
///   with the commits to that channel.
/// * `commit_messages` with one more array, `p_replies`: it locks the
///   batch's channels (in the version-3 function's order), refuses the
///   messages of senders blocked by the other member of a direct channel
///   (status `blocked`), has the version-3 function commit the rest, then
///   gives the replies among the new messages their `reply_to`, all in the
///   same transaction (plain messages write nothing more). The 7-argument
///   function stays for servers of the previous version during an upgrade.
const MIGRATION_5: &str = r#"
ALTER TABLE {schema}.messages ADD COLUMN reply_to bigint;
ALTER TABLE {schema}.inbox_entries ADD COLUMN reply_to bigint;
ALTER TABLE {schema}.sends ADD COLUMN reply_to bigint;

CREATE TABLE {schema}.blocks (
    blocker uuid NOT NULL,
    blocked uuid NOT NULL,
    CONSTRAINT blocks_pkey PRIMARY KEY (blocker, blocked),
    CONSTRAINT blocks_not_self CHECK (blocker <> blocked),
    CONSTRAINT blocks_blocker_fk FOREIGN KEY (blocker) REFERENCES {schema}.users (user_id),
    CONSTRAINT blocks_blocked_fk FOREIGN KEY (blocked) REFERENCES {schema}.users (user_id)
);

CREATE FUNCTION {schema}.commit_messages(
    p_channels uuid[], p_senders uuid[], p_keys text[], p_contents text[],
    p_created bigint[], p_proposed bigint[], p_outbox boolean[], p_replies bigint[])
RETURNS TABLE (idx integer, status text, message_id bigint, created_at bigint,
               users uuid[], seqs bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n integer := coalesce(array_length(p_channels, 1), 0);
    r record;
    v_reply bigint;
    v_blocked integer[];
    -- v_keep[k]: the index (from 1) in the batch of the k-th message sent on.
    v_keep integer[];
    v_i integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM {schema}.channels c WHERE c.channel_id = ANY (p_channels)
        ORDER BY c.channel_id FOR NO KEY UPDATE;
    -- Members of direct channels whose other member blocks them.
    SELECT coalesce(array_agg(t.i::integer ORDER BY t.i), '{}') INTO v_blocked
        FROM unnest(p_channels, p_senders) WITH ORDINALITY AS t(ch, sender, i)
        JOIN {schema}.channels c ON c.channel_id = t.ch AND c.kind = 'direct'
        WHERE EXISTS (SELECT 1 FROM {schema}.channel_members m
                      WHERE m.channel_id = t.ch AND m.user_id = t.sender)
          AND EXISTS (SELECT 1 FROM {schema}.channel_members m
                      JOIN {schema}.blocks b ON b.blocker = m.user_id AND b.blocked = t.sender
                      WHERE m.channel_id = t.ch AND m.user_id <> t.sender);
    IF cardinality(v_blocked) = 0 THEN
        v_keep := ARRAY(SELECT generate_series(1, n));
    ELSE
        FOREACH v_i IN ARRAY v_blocked LOOP
            idx := v_i - 1;
            status := 'blocked';
            message_id := NULL;
            created_at := NULL;
            users := NULL;
            seqs := NULL;
            RETURN NEXT;
        END LOOP;
        v_keep := ARRAY(SELECT k FROM generate_series(1, n) AS k
                        WHERE k <> ALL (v_blocked) ORDER BY k);
        IF cardinality(v_keep) = 0 THEN
            RETURN;
        END IF;
        p_channels := ARRAY(SELECT p_channels[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_senders := ARRAY(SELECT p_senders[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_keys := ARRAY(SELECT p_keys[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_contents := ARRAY(SELECT p_contents[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_created := ARRAY(SELECT p_created[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_proposed := ARRAY(SELECT p_proposed[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_outbox := ARRAY(SELECT p_outbox[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
        p_replies := ARRAY(SELECT p_replies[k] FROM unnest(v_keep) WITH ORDINALITY AS x(k, o) ORDER BY o);
    END IF;
    FOR r IN SELECT * FROM {schema}.commit_messages(p_channels, p_senders, p_keys, p_contents,
                                                    p_created, p_proposed, p_outbox) LOOP
        v_reply := p_replies[r.idx + 1];
        IF r.status = 'new' AND v_reply IS NOT NULL THEN
            IF p_outbox[r.idx + 1] THEN
                UPDATE {schema}.sends s SET reply_to = v_reply
                    WHERE s.channel_id = p_channels[r.idx + 1] AND s.sender = p_senders[r.idx + 1]
                      AND s.client_msg_id = p_keys[r.idx + 1];
            ELSE
                UPDATE {schema}.messages m SET reply_to = v_reply
                    WHERE m.channel_id = p_channels[r.idx + 1] AND m.message_id = r.message_id;
            END IF;
            UPDATE {schema}.inbox_entries e SET reply_to = v_reply
                FROM unnest(r.users, r.seqs) AS u(user_id, seq)
                WHERE e.user_id = u.user_id AND e.seq = u.seq;
        END IF;
        idx := v_keep[r.idx + 1] - 1;
        status := r.status;
        message_id := r.message_id;
        created_at := r.created_at;
        users := r.users;
        seqs := r.seqs;
        RETURN NEXT;
    END LOOP;
END
$fn$;
"#;

/// Inboxes ordered by positions assigned at commit, and the function that
/// commits a batch of messages in one statement (see `commit.rs`).
///
/// * `users.inbox_head`: the last position of the user's inbox.
/// * `channels.last_message_id`: the largest id committed to the channel.
/// * `inbox_entries`: `(user_id, seq)` → the message. The old `inbox`
///   (keyed by message id) is copied with positions 1, 2, ... in id order,
///   and each cursor becomes the number of the user's entries at or below
///   it (cursors are now plain positions, not flipped ids).
/// * `messages.position_users`/`position_seqs`: where a committed message
///   went, answered to a retry (NULL for rows from before, and for
///   messages appended as given).
/// * `sends`: the idempotency records and the outbox of fan-out commits,
///   for a deployment whose history lives in other databases.
const MIGRATION_3: &str = r#"
ALTER TABLE {schema}.users ADD COLUMN inbox_head bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}.channels ADD COLUMN last_message_id bigint;
ALTER TABLE {schema}.messages ADD COLUMN position_users uuid[];
ALTER TABLE {schema}.messages ADD COLUMN position_seqs bigint[];

CREATE TABLE {schema}.inbox_entries (
    user_id       uuid   NOT NULL,
    seq           bigint NOT NULL,
    channel_id    uuid   NOT NULL,
    message_id    bigint NOT NULL,
    sender        uuid   NOT NULL,
    content       text   NOT NULL,
    created_at    bigint NOT NULL,
    client_msg_id text   NOT NULL,
    CONSTRAINT inbox_entries_pkey PRIMARY KEY (user_id, seq)
);
INSERT INTO {schema}.inbox_entries
    SELECT i.user_id, row_number() OVER (PARTITION BY i.user_id ORDER BY i.message_id),
           i.channel_id, i.message_id, i.sender, i.content, i.created_at, i.client_msg_id
    FROM {schema}.inbox i;
UPDATE {schema}.users u SET inbox_head = n.entries
    FROM (SELECT i.user_id, count(*) AS entries FROM {schema}.inbox i GROUP BY i.user_id) n
    WHERE u.user_id = n.user_id;
UPDATE {schema}.cursors c SET cursor = (
    SELECT count(*) FROM {schema}.inbox i WHERE i.user_id = c.user_id AND i.message_id <= c.cursor
);
UPDATE {schema}.channels ch SET last_message_id = (
    SELECT max(m.message_id) FROM {schema}.messages m WHERE m.channel_id = ch.channel_id
);
DROP TABLE {schema}.inbox;

CREATE TABLE {schema}.sends (
    channel_id     uuid        NOT NULL,
    sender         uuid        NOT NULL,
    client_msg_id  text        NOT NULL,
    message_id     bigint      NOT NULL,
    created_at     bigint      NOT NULL,
    content        text,       -- NULL once drained: it lives in history then
    position_users uuid[]      NOT NULL,
    position_seqs  bigint[]    NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT now(),
    drained        boolean     NOT NULL DEFAULT false,
    CONSTRAINT sends_pkey PRIMARY KEY (channel_id, sender, client_msg_id)
);
-- outbox_done by id; the drain's scan of what is left.
CREATE INDEX sends_by_id ON {schema}.sends (channel_id, message_id);
CREATE INDEX sends_undrained ON {schema}.sends (committed_at) WHERE NOT drained;

-- Commits a batch of messages in one statement (one round trip, one
-- transaction). Element i of every array is one message; the answer has
-- one row per message, `idx` from 0. Statuses: new, duplicate (same key
-- and content), drained (a duplicate of a fan-out commit whose content
-- moved to history), conflict, no_channel, forbidden, stale (the proposed id
-- is not above the channel's last, answered in message_id).
--
-- Set-based, so a batch costs a handful of statements whatever its size:
-- the locks, one query deciding each message (against stored state and
-- the batch's earlier messages), then one statement that hands out
-- positions (each member's head plus the rank of the message among the
-- batch's messages to that member) and writes the inbox entries, the
-- messages (or outbox entries), the heads and the channels' last ids.
CREATE FUNCTION {schema}.commit_messages(
    p_channels uuid[], p_senders uuid[], p_keys text[], p_contents text[],
    p_created bigint[], p_proposed bigint[], p_outbox boolean[])
RETURNS TABLE (idx integer, status text, message_id bigint, created_at bigint,
               users uuid[], seqs bigint[])
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    n integer := coalesce(array_length(p_channels, 1), 0);
    v_status text[];
    v_last bigint[];
    v_ok integer[];
    v_keyed integer[];
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    -- Locks in one order, channels then users, each by id: concurrent
    -- batches never deadlock, and a membership change (which locks its
    -- channel FOR UPDATE) and a commit to that channel are serialized.
    PERFORM 1 FROM {schema}.channels c WHERE c.channel_id = ANY (p_channels)
        ORDER BY c.channel_id FOR NO KEY UPDATE;
    PERFORM 1 FROM {schema}.users u
        WHERE u.user_id IN (SELECT m.user_id FROM {schema}.channel_members m
                            WHERE m.channel_id = ANY (p_channels))
        ORDER BY u.user_id FOR NO KEY UPDATE;

    -- Each message against stored state (the channel, membership, its key)
    -- and against the batch's earlier messages: a key sent twice is
    -- answered like a stored key (after the writes below), and an id must
    -- be above the channel's last and above every earlier proposal to the
    -- channel in this batch (even one refused for another reason: that only
    -- costs a sender a new proposal, never an id out of order).
    SELECT array_agg(q.s ORDER BY q.i),
           array_agg(q.last ORDER BY q.i),
           coalesce(array_agg(q.i::integer) FILTER (WHERE q.s = 'ok'), '{}'),
           coalesce(array_agg(q.i::integer) FILTER (WHERE q.s = 'keyed'), '{}')
        INTO v_status, v_last, v_ok, v_keyed
        FROM (
            SELECT b.i,
                   CASE WHEN b.s <> 'ok' THEN b.s
                        WHEN b.dup > 1 THEN 'keyed'
                        WHEN greatest(b.chlast, b.earlier) >= b.proposed THEN 'stale'
                        ELSE 'ok' END AS s,
                   greatest(b.chlast, b.earlier) AS last
            FROM (
                SELECT t.i, t.proposed, c.last_message_id AS chlast,
                       max(t.proposed) OVER (PARTITION BY t.ch ORDER BY t.i
                                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                           AS earlier,
                       row_number() OVER (PARTITION BY t.ch, t.sender, t.key ORDER BY t.i) AS dup,
                       CASE WHEN c.channel_id IS NULL THEN 'no_channel'
                            WHEN NOT EXISTS (SELECT 1 FROM {schema}.channel_members m
                                             WHERE m.channel_id = t.ch AND m.user_id = t.sender)
                                 THEN 'forbidden'
                            WHEN EXISTS (SELECT 1 FROM {schema}.messages m
                                         WHERE NOT t.outbox AND m.channel_id = t.ch
                                           AND m.sender = t.sender AND m.client_msg_id = t.key)
                              OR EXISTS (SELECT 1 FROM {schema}.sends s
                                         WHERE t.outbox AND s.channel_id = t.ch
                                           AND s.sender = t.sender AND s.client_msg_id = t.key)
                                 THEN 'keyed'
                            ELSE 'ok' END AS s
                FROM unnest(p_channels, p_senders, p_keys, p_outbox, p_proposed) WITH ORDINALITY
                     AS t(ch, sender, key, outbox, proposed, i)
                LEFT JOIN {schema}.channels c ON c.channel_id = t.ch
            ) b
        ) q;

    -- The writes, in one statement: positions are each member's head plus
    -- the rank of the message among this batch's messages to them (in batch
    -- order, which is id order within a channel).
    IF array_length(v_ok, 1) IS NOT NULL THEN
        RETURN QUERY
        WITH ok AS (
            SELECT o.i FROM unnest(v_ok) AS o(i)
        ), pairs AS (
            SELECT ok.i, m.user_id FROM ok
            JOIN {schema}.channel_members m ON m.channel_id = p_channels[ok.i]
        ), ranked AS (
            SELECT p.i, p.user_id, row_number() OVER (PARTITION BY p.user_id ORDER BY p.i) AS k
            FROM pairs p
        ), counts AS (
            SELECT p.user_id, count(*) AS cnt FROM pairs p GROUP BY p.user_id
        ), bumped AS (
            UPDATE {schema}.users u SET inbox_head = u.inbox_head + c.cnt
            FROM counts c WHERE u.user_id = c.user_id
            RETURNING u.user_id, u.inbox_head - c.cnt AS base
        ), placed AS (
            SELECT r.i, r.user_id, b.base + r.k AS seq
            FROM ranked r JOIN bumped b ON b.user_id = r.user_id
        ), inboxed AS (
            INSERT INTO {schema}.inbox_entries
                (user_id, seq, channel_id, message_id, sender, content, created_at, client_msg_id)
            SELECT pl.user_id, pl.seq, p_channels[pl.i], p_proposed[pl.i], p_senders[pl.i],
                   p_contents[pl.i], p_created[pl.i], p_keys[pl.i]
            FROM placed pl
            RETURNING 1
        ), per_message AS (
            SELECT pl.i, array_agg(pl.user_id ORDER BY pl.user_id) AS us,
                   array_agg(pl.seq ORDER BY pl.user_id) AS ss
            FROM placed pl GROUP BY pl.i
        ), stored AS (
            INSERT INTO {schema}.messages (channel_id, message_id, sender, content, created_at,
                                           client_msg_id, position_users, position_seqs)
            SELECT p_channels[pm.i], p_proposed[pm.i], p_senders[pm.i], p_contents[pm.i],
                   p_created[pm.i], p_keys[pm.i], pm.us, pm.ss
            FROM per_message pm WHERE NOT p_outbox[pm.i]
            RETURNING 1
        ), outboxed AS (
            INSERT INTO {schema}.sends (channel_id, sender, client_msg_id, message_id, created_at,
                                        content, position_users, position_seqs)
            SELECT p_channels[pm.i], p_senders[pm.i], p_keys[pm.i], p_proposed[pm.i],
                   p_created[pm.i], p_contents[pm.i], pm.us, pm.ss
            FROM per_message pm WHERE p_outbox[pm.i]
            RETURNING 1
        ), lasts AS (
            UPDATE {schema}.channels c SET last_message_id = x.top
            FROM (SELECT p_channels[ok.i] AS ch, max(p_proposed[ok.i]) AS top
                  FROM ok GROUP BY 1) x
            WHERE c.channel_id = x.ch
            RETURNING 1
        )
        SELECT pm.i - 1, 'new'::text, p_proposed[pm.i], p_created[pm.i], pm.us, pm.ss
        FROM per_message pm;
    END IF;

    -- Keys already stored (or stored just above, for a key sent twice):
    -- the original answers, and its content decides duplicate or conflict.
    IF array_length(v_keyed, 1) IS NOT NULL THEN
        RETURN QUERY
        SELECT k.i - 1,
               CASE WHEN e.drained THEN 'drained'
                    WHEN e.content = p_contents[k.i] THEN 'duplicate'
                    ELSE 'conflict' END,
               e.id, e.created, e.us, e.ss
        FROM unnest(v_keyed) AS k(i)
        CROSS JOIN LATERAL (
            SELECT m.message_id AS id, m.created_at AS created, m.content, false AS drained,
                   m.position_users AS us, m.position_seqs AS ss
            FROM {schema}.messages m
            WHERE NOT p_outbox[k.i] AND m.channel_id = p_channels[k.i]
              AND m.sender = p_senders[k.i] AND m.client_msg_id = p_keys[k.i]
            UNION ALL
            SELECT s.message_id, s.created_at, s.content, s.drained,
                   s.position_users, s.position_seqs
            FROM {schema}.sends s
            WHERE p_outbox[k.i] AND s.channel_id = p_channels[k.i]
              AND s.sender = p_senders[k.i] AND s.client_msg_id = p_keys[k.i]
        ) e;
    END IF;

    -- The rest: refusals that wrote nothing.
    RETURN QUERY
    SELECT r.i::integer - 1, v_status[r.i],
           CASE WHEN v_status[r.i] = 'stale' THEN v_last[r.i] END,
           NULL::bigint, NULL::uuid[], NULL::bigint[]
    FROM generate_series(1, n) AS r(i)
    WHERE v_status[r.i] IN ('no_channel', 'forbidden', 'stale');
END
$fn$;
"#;

/// The newest version this build knows.
pub(super) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every pending migration, in one transaction that holds a
/// transaction-scoped advisory lock keyed by the schema name: servers
/// starting at once apply each migration exactly once, the others wait and
/// then find nothing to do. Then checks that pooled connections resolve
/// unqualified names in the schema (their `search_path`).
pub(super) async fn migrate(inner: &Inner) -> Result<()> {
    let schema = inner.schema.as_str();
    let quoted = quote_ident(schema);
    let mut client = inner.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    // Waiting for another server's migration, and migrations themselves,
    // may take longer than an ordinary statement: they get
    // `migration_timeout`, which also bounds the whole step client-side.
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        inner.migration_statement_ms
    ))
    .await
    .map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("chat_store.migrations.{schema}")],
    )
    .await
    .map_err(pg_error)?;

    // Create the schema only if missing: CREATE SCHEMA needs a privilege
    // on the database that a deployment with a provisioned schema may not
    // grant, even with IF NOT EXISTS.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(pg_error)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {quoted}"))
            .await
            .map_err(pg_error)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
             version    integer     NOT NULL PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    ))
    .await
    .map_err(pg_error)?;

    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {quoted}.schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(pg_error)?;
    let latest = latest_version();
    if let Some(newest) = applied.iter().copied().find(|v| *v > latest) {
        return Err(Error::backend(
            BACKEND,
            format!(
                "schema {schema} is at version {newest}, newer than this build's {latest}: \
                 upgrade this server"
            ),
        ));
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(
            schema,
            version = m.version,
            name = m.name,
            "applying migration"
        );
        tx.batch_execute(&m.sql.replace("{schema}", &quoted))
            .await
            .map_err(pg_error)?;
        tx.execute(
            &format!("INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .await
        .map_err(pg_error)?;
    }

    // The data statements name no schema: they rely on the search_path the
    // connection was opened with. A pooler that drops startup options
    // would silently point them elsewhere; refuse instead.
    let current: Option<String> = tx
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    if current.as_deref() != Some(schema) {
        return Err(Error::backend(
            BACKEND,
            format!(
                "connections resolve names in schema {current:?}, not {schema:?}: the \
                 search_path startup option was not applied (a connection pooler in front?)"
            ),
        ));
    }
    tx.commit().await.map_err(pg_error)
}

/// A quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_strictly_ascending_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(MIGRATIONS.iter().all(|m| m.version > 0));
        assert_eq!(latest_version(), MIGRATIONS[MIGRATIONS.len() - 1].version);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("chat"), "\"chat\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

/// Migration 3 on a real server (`CHAT_TEST_PG_URL`, as `tests/postgres.rs`
/// and `plans.rs`): a schema at version 2 with inbox rows and cursors keyed
/// by message ids is upgraded to positions.
#[cfg(test)]
mod upgrade {
    use chat_core::{DeviceId, Inbox, Seq, UserId};
    use tokio_postgres::NoTls;

    use super::super::{id_to_sql, PostgresConfig, PostgresStore};
    use super::{quote_ident, MIGRATIONS};

    fn url() -> String {
        std::env::var("CHAT_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_2_schema_gets_inbox_positions() {
        let schema = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let quoted = quote_ident(&schema);
        let (admin, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {quoted}; CREATE TABLE {quoted}.schema_migrations (
                     version integer NOT NULL PRIMARY KEY, name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .unwrap();
        for m in &MIGRATIONS[..2] {
            admin
                .batch_execute(&m.sql.replace("{schema}", &quoted))
                .await
                .unwrap();
            admin
                .execute(
                    &format!(
                        "INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"
                    ),
                    &[&m.version, &m.name],
                )
                .await
                .unwrap();
        }
        let (alice, bob) = (UserId::new_random(), UserId::new_random());
        let (phone, laptop) = (DeviceId::new_random(), DeviceId::new_random());
        let ids = [1u64 << 40, (1 << 40) + 7, 1 << 41];
        for user in [alice, bob] {
            admin
                .execute(
                    &format!("INSERT INTO {quoted}.users VALUES ($1, $2, 'x', '', 0, 'h')"),
                    &[&user.0, &user.0.simple().to_string()],
                )
                .await
                .unwrap();
            for id in ids {
                admin
                    .execute(
                        &format!(
                            "INSERT INTO {quoted}.inbox VALUES ($1, $2, gen_random_uuid(), $1, 'm', 0, 'k')"
                        ),
                        &[&user.0, &id_to_sql(chat_core::MessageId(id))],
                    )
                    .await
                    .unwrap();
            }
        }
        for (user, device, cursor) in [
            (alice, phone, ids[1]),
            (alice, laptop, ids[1] + 1),
            (bob, phone, 5),
        ] {
            admin
                .execute(
                    &format!("INSERT INTO {quoted}.cursors VALUES ($1, $2, $3)"),
                    &[&user.0, &device.0, &id_to_sql(chat_core::MessageId(cursor))],
                )
                .await
                .unwrap();
        }

        let store = PostgresStore::connect(PostgresConfig::new(url()).with_schema(&schema))
            .await
            .unwrap();
        for user in [alice, bob] {
            let page = store.read(user, Seq::ZERO, 10, usize::MAX).await.unwrap();
            let got: Vec<(u64, u64)> = page
                .items
                .iter()
                .map(|e| (e.seq.0, e.message.id.0))
                .collect();
            assert_eq!(got, vec![(1, ids[0]), (2, ids[1]), (3, ids[2])]);
        }
        assert_eq!(store.cursor(alice, phone).await.unwrap(), Seq(2));
        assert_eq!(store.cursor(alice, laptop).await.unwrap(), Seq(2));
        assert_eq!(store.cursor(bob, phone).await.unwrap(), Seq::ZERO);
        drop(store);
        admin
            .batch_execute(&format!("DROP SCHEMA {quoted} CASCADE"))
            .await
            .unwrap();
    }

    /// Migration 6 on a schema at version 5 with messages: they are
    /// numbered per channel in id order, the channel's head follows, and
    /// the next commit takes the next number and moves its sender's
    /// marker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_5_schema_gets_message_numbers() {
        use chat_core::{
            ChannelId, ClientMsgId, Marker, MarkerKind, MessageId, MessageStore, NewMessage,
            Receipts,
        };
        let schema = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let quoted = quote_ident(&schema);
        let (admin, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {quoted}; CREATE TABLE {quoted}.schema_migrations (
                     version integer NOT NULL PRIMARY KEY, name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .unwrap();
        for m in &MIGRATIONS[..5] {
            admin
                .batch_execute(&m.sql.replace("{schema}", &quoted))
                .await
                .unwrap();
            admin
                .execute(
                    &format!(
                        "INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)"
                    ),
                    &[&m.version, &m.name],
                )
                .await
                .unwrap();
        }
        let (alice, bob) = (UserId::new_random(), UserId::new_random());
        let channel = ChannelId::direct(alice, bob);
        for user in [alice, bob] {
            admin
                .execute(
                    &format!(
                        "INSERT INTO {quoted}.users (user_id, username, display_name, about, \
                         created_at, password_hash) VALUES ($1, $2, 'x', '', 0, 'h')"
                    ),
                    &[&user.0, &user.0.simple().to_string()],
                )
                .await
                .unwrap();
        }
        let ids = [1u64 << 40, (1 << 40) + 7, 1 << 41];
        admin
            .execute(
                &format!(
                    "INSERT INTO {quoted}.channels (channel_id, kind, name, owner, created_at, \
                     last_message_id) VALUES ($1, 'direct', '', NULL, 0, $2)"
                ),
                &[&channel.0, &id_to_sql(MessageId(ids[2]))],
            )
            .await
            .unwrap();
        for user in [alice, bob] {
            admin
                .execute(
                    &format!("INSERT INTO {quoted}.channel_members VALUES ($1, $2)"),
                    &[&channel.0, &user.0],
                )
                .await
                .unwrap();
        }
        for id in ids {
            admin
                .execute(
                    &format!(
                        "INSERT INTO {quoted}.messages (channel_id, message_id, sender, content, \
                         created_at, client_msg_id) VALUES ($1, $2, $3, 'm', 0, gen_random_uuid()::text)"
                    ),
                    &[&channel.0, &id_to_sql(MessageId(id)), &alice.0],
                )
                .await
                .unwrap();
        }

        let store = PostgresStore::connect(PostgresConfig::new(url()).with_schema(&schema))
            .await
            .unwrap();
        assert_eq!(
            store.heads(&[channel]).await.unwrap(),
            vec![Some(Marker {
                id: MessageId(ids[2]),
                number: 3
            })]
        );
        let up = store
            .set_marker(bob, channel, MarkerKind::Read, MessageId(ids[1]))
            .await
            .unwrap();
        assert_eq!(up.marker.number, 2, "the second message is number 2");
        let next = store
            .commit(NewMessage {
                id: MessageId(ids[2] + 1),
                channel_id: channel,
                sender: alice,
                content: "after".into(),
                created_at: 1,
                client_msg_id: ClientMsgId::new_random(),
                reply_to: None,
                attachments: Vec::new(),
                timeout: std::time::Duration::from_secs(30),
            })
            .await
            .unwrap();
        let receipt = store.receipts(&[(alice, channel)]).await.unwrap()[0];
        assert_eq!(
            receipt.read,
            Some(Marker {
                id: next.message.id,
                number: 4
            }),
            "the next commit takes number 4 and is read by its sender"
        );
        drop(store);
        admin
            .batch_execute(&format!("DROP SCHEMA {quoted} CASCADE"))
            .await
            .unwrap();
    }
}
