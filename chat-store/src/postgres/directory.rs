//! [`Directory`] for [`PostgresStore`].
//!
//! Every call that checks a cap or changes a friendship, a membership, an
//! invitation or a device first locks the rows of the users it concerns
//! (`FOR NO KEY UPDATE`, in id order, in one statement) and only then
//! counts and writes, in one transaction: whatever other servers do at the
//! same time, a user's caps hold and friend requests, acceptances and
//! invitations are serialised per user. Locks are taken in the order
//! message commits take them (`commit_messages`): a channel's row before
//! any user's, users in id order, so no two transactions wait on each
//! other in a cycle.

use async_trait::async_trait;
use chat_core::directory::{Contact, FriendOutcome, InviteOutcome, Limits, TokenState};
use chat_core::rules::{
    apply_membership, check_cap, check_friend_pair, check_groups_joined, check_invite_caps,
    check_new_group_caps, decide_friend_request, decide_invite, revoked_after,
    validate_new_channel, validate_new_user, FriendPair,
};
use chat_core::types::MAX_USERNAME_LEN;
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, FriendRequest, Invitation,
    Privacy, Profile, Result, User, UserId, UserRecord,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    corrupt, enum_from_text, enum_to_text, limit_to_sql, pg_error, time_from_sql, time_to_sql,
    PostgresStore,
};

const CREATE_USER: &str = "INSERT INTO users \
     (user_id, username, display_name, about, created_at, password_hash) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const USERNAME_TAKEN: &str = "SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)";
const USER: &str =
    "SELECT user_id, username, display_name, about, created_at FROM users WHERE user_id = $1";
const USER_BY_NAME: &str = "SELECT user_id, username, display_name, about, created_at, \
     password_hash FROM users WHERE username = $1";
const UPDATE_PROFILE: &str = "UPDATE users SET display_name = $2, about = $3 WHERE user_id = $1 \
     RETURNING user_id, username, display_name, about, created_at";
/// How many of the users in `$1` exist.
const COUNT_USERS: &str = "SELECT count(*) FROM users WHERE user_id = ANY($1::uuid[])";
/// Locks the rows of the users in `$1` (distinct), in id order; returns
/// those that exist.
const LOCK_USERS: &str = "SELECT user_id FROM users WHERE user_id = ANY($1::uuid[]) \
     ORDER BY user_id FOR NO KEY UPDATE";

const PRIVACY: &str = "SELECT who_may_add, hide_last_seen FROM users WHERE user_id = $1";
const SET_PRIVACY: &str =
    "UPDATE users SET who_may_add = $2, hide_last_seen = $3 WHERE user_id = $1";

/// The epoch and whether session `$2` is revoked, in one snapshot.
const TOKEN_STATE: &str = "SELECT u.token_epoch, EXISTS (SELECT 1 FROM revoked_sessions r \
     WHERE r.user_id = u.user_id AND r.session_id = $2) FROM users u WHERE u.user_id = $1";
const REVOKED: &str = "SELECT session_id, until FROM revoked_sessions WHERE user_id = $1";
const DROP_REVOKED: &str =
    "DELETE FROM revoked_sessions WHERE user_id = $1 AND session_id = ANY($2::bigint[])";
const REVOKE: &str = "INSERT INTO revoked_sessions (user_id, session_id, until) \
     VALUES ($1, $2, $3) ON CONFLICT (user_id, session_id) DO UPDATE SET until = EXCLUDED.until";
/// Moves the epoch and forgets the revoked sessions it covers (the row
/// update serialises concurrent calls).
const BUMP_EPOCH: &str = "WITH bumped AS (\
         UPDATE users SET token_epoch = token_epoch + 1 WHERE user_id = $1 RETURNING token_epoch\
     ), cleared AS (\
         DELETE FROM revoked_sessions WHERE user_id = $1 AND EXISTS (SELECT 1 FROM bumped)\
     ) SELECT token_epoch FROM bumped";

/// What [`decide_friend_request`] needs, in one snapshot taken after the
/// two users' rows are locked.
const FRIEND_PAIR: &str = "SELECT \
     EXISTS (SELECT 1 FROM friends WHERE user_id = $1 AND friend_id = $2), \
     EXISTS (SELECT 1 FROM friend_requests WHERE from_user = $1 AND to_user = $2), \
     EXISTS (SELECT 1 FROM friend_requests WHERE from_user = $2 AND to_user = $1), \
     (SELECT count(*) FROM friends WHERE user_id = $1), \
     (SELECT count(*) FROM friends WHERE user_id = $2), \
     (SELECT count(*) FROM friend_requests WHERE from_user = $1) \
         + (SELECT count(*) FROM invitations WHERE inviter = $1), \
     (SELECT count(*) FROM friend_requests WHERE to_user = $2) \
         + (SELECT count(*) FROM invitations WHERE user_id = $2)";
const ACCEPT_FRIEND: &str = "WITH accepted AS (\
         DELETE FROM friend_requests WHERE from_user = $2 AND to_user = $1\
     ) INSERT INTO friends (user_id, friend_id) VALUES ($1, $2), ($2, $1)";
const INSERT_REQUEST: &str =
    "INSERT INTO friend_requests (from_user, to_user, created_at) VALUES ($1, $2, $3)";
const REMOVE_FRIEND: &str = "WITH requests AS (\
         DELETE FROM friend_requests \
         WHERE (from_user = $1 AND to_user = $2) OR (from_user = $2 AND to_user = $1)\
     ) DELETE FROM friends \
     WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)";
const FRIENDS: &str = "SELECT friend_id FROM friends WHERE user_id = $1 ORDER BY friend_id";
/// Locks the direct channel of a block's two users, if it exists: a block
/// is serialized with the commits to it (`commit_messages` locks it too).
const LOCK_DIRECT: &str = "SELECT 1 FROM channels WHERE channel_id = $1 FOR NO KEY UPDATE";
const BLOCK: &str = "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING";
const UNBLOCK: &str = "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2";
const BLOCKED: &str = "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked";
/// Whether `$1` blocks `$2`.
const IS_BLOCKED: &str = "SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2)";
const FRIEND_REQUESTS: &str = "SELECT from_user, to_user, created_at FROM friend_requests \
     WHERE from_user = $1 OR to_user = $1 ORDER BY from_user, to_user";
/// The users of `$2` who are `$1`'s friends or share a channel with `$1`,
/// in the order given, with their privacy settings (each an index lookup:
/// a friendship key, or a membership of `$1` joined to the other's
/// membership key).
const CONTACTS: &str = "SELECT a.u, u.who_may_add, u.hide_last_seen \
     FROM unnest($2::uuid[]) WITH ORDINALITY AS a (u, i) JOIN users u ON u.user_id = a.u \
     WHERE a.u <> $1 \
       AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.blocker = a.u AND b.blocked = $1) AND (\
         EXISTS (SELECT 1 FROM friends f WHERE f.user_id = $1 AND f.friend_id = a.u) \
         OR EXISTS (SELECT 1 FROM channel_members m1 \
                    JOIN channel_members m2 ON m2.channel_id = m1.channel_id \
                    WHERE m1.user_id = $1 AND m2.user_id = a.u)\
     ) ORDER BY a.i";

const CHANNEL_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM channels WHERE channel_id = $1)";
const INSERT_CHANNEL: &str = "INSERT INTO channels (channel_id, kind, name, owner, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel_id) DO NOTHING";
const INSERT_MEMBERS: &str = "INSERT INTO channel_members (channel_id, user_id) \
     SELECT $1, m FROM unnest($2::uuid[]) AS m ORDER BY m";
/// A channel with its members, sorted, in one statement (one snapshot).
const CHANNEL: &str = "SELECT c.channel_id, c.kind, c.name, c.owner, c.created_at, \
     ARRAY(SELECT m.user_id FROM channel_members m WHERE m.channel_id = c.channel_id \
           ORDER BY m.user_id) \
     FROM channels c WHERE c.channel_id = $1";
/// Locks a channel's row for a membership change. The members are read by
/// a separate statement after the lock is held: a subquery here would use
/// the snapshot taken before waiting for the lock.
const LOCK_CHANNEL: &str = "SELECT channel_id, kind, name, owner, created_at \
     FROM channels WHERE channel_id = $1 FOR UPDATE";
const MEMBERS: &str = "SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id";
const ADD_MEMBER: &str = "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)";
const REMOVE_MEMBER: &str = "DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2";
/// Groups each user of `$1` is a member of.
const GROUPS_JOINED: &str = "SELECT u, (SELECT count(*) FROM channel_members m \
         JOIN channels c ON c.channel_id = m.channel_id \
         WHERE m.user_id = u AND c.kind = 'group') \
     FROM unnest($1::uuid[]) AS u";
const GROUPS_OWNED: &str = "SELECT count(*) FROM channels WHERE owner = $1 AND kind = 'group'";
/// A page of a user's channels with their members, sorted by channel id: a
/// range of `channel_members_by_user`, one statement.
const CHANNELS_OF: &str = "SELECT c.channel_id, c.kind, c.name, c.owner, c.created_at, \
     ARRAY(SELECT m2.user_id FROM channel_members m2 WHERE m2.channel_id = c.channel_id \
           ORDER BY m2.user_id) \
     FROM channel_members m JOIN channels c ON c.channel_id = m.channel_id \
     WHERE m.user_id = $1 ORDER BY m.channel_id LIMIT $2";
const CHANNELS_OF_AFTER: &str = "SELECT c.channel_id, c.kind, c.name, c.owner, c.created_at, \
     ARRAY(SELECT m2.user_id FROM channel_members m2 WHERE m2.channel_id = c.channel_id \
           ORDER BY m2.user_id) \
     FROM channel_members m JOIN channels c ON c.channel_id = m.channel_id \
     WHERE m.user_id = $1 AND m.channel_id > $3 ORDER BY m.channel_id LIMIT $2";

const INVITED: &str =
    "SELECT EXISTS (SELECT 1 FROM invitations WHERE user_id = $1 AND channel_id = $2)";
/// Pending requests `$1` sent and `$2` received (friend requests and
/// invitations).
const PENDING_COUNTS: &str = "SELECT \
     (SELECT count(*) FROM friend_requests WHERE from_user = $1) \
         + (SELECT count(*) FROM invitations WHERE inviter = $1), \
     (SELECT count(*) FROM friend_requests WHERE to_user = $2) \
         + (SELECT count(*) FROM invitations WHERE user_id = $2)";
const INSERT_INVITATION: &str =
    "INSERT INTO invitations (user_id, channel_id, inviter, created_at) \
     VALUES ($1, $2, $3, $4)";
const DROP_INVITATION: &str = "DELETE FROM invitations WHERE user_id = $1 AND channel_id = $2";
const INVITATIONS: &str = "SELECT i.channel_id, c.name, i.inviter, i.user_id, i.created_at \
     FROM invitations i JOIN channels c ON c.channel_id = i.channel_id \
     WHERE i.user_id = $1 OR i.inviter = $1 ORDER BY i.user_id, i.channel_id";

/// Registers or replaces a device (the caller holds the user's row lock).
const REGISTER_DEVICE: &str = "INSERT INTO devices \
     (user_id, device_id, platform, push_token, created_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (user_id, device_id) DO UPDATE SET platform = EXCLUDED.platform, \
     push_token = EXCLUDED.push_token, created_at = EXCLUDED.created_at";
/// Whether device `$2` exists, and how many devices user `$1` has.
const DEVICE_COUNT: &str =
    "SELECT EXISTS (SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2), \
     (SELECT count(*) FROM devices WHERE user_id = $1)";
const DEVICES: &str = "SELECT device_id, user_id, platform, push_token, created_at \
     FROM devices WHERE user_id = $1 ORDER BY device_id";
const REMOVE_DEVICE: &str = "DELETE FROM devices WHERE user_id = $1 AND device_id = $2";
/// Compare-and-clear of a push token: one statement, so no registration
/// can land between the comparison and the write, and a removed device
/// (no row) is not re-created.
const CLEAR_PUSH_TOKEN: &str = "UPDATE devices SET push_token = NULL \
     WHERE user_id = $1 AND device_id = $2 AND push_token = $3";

/// Decodes `user_id, username, display_name, about, created_at`.
fn user_from_row(row: &Row) -> Result<User> {
    Ok(User {
        id: UserId(row.try_get(0).map_err(pg_error)?),
        username: row.try_get(1).map_err(pg_error)?,
        profile: Profile {
            display_name: row.try_get(2).map_err(pg_error)?,
            about: row.try_get(3).map_err(pg_error)?,
        },
        created_at: time_from_sql(row.try_get(4).map_err(pg_error)?),
    })
}

/// Decodes `channel_id, kind, name, owner, created_at` and the members.
fn channel_from_row(row: &Row, members: Vec<Uuid>) -> Result<Channel> {
    let owner: Option<Uuid> = row.try_get(3).map_err(pg_error)?;
    Ok(Channel {
        id: ChannelId(row.try_get(0).map_err(pg_error)?),
        kind: enum_from_text(row.try_get(1).map_err(pg_error)?, "channel")?,
        name: row.try_get(2).map_err(pg_error)?,
        owner: owner.map(UserId),
        members: members.into_iter().map(UserId).collect(),
        created_at: time_from_sql(row.try_get(4).map_err(pg_error)?),
    })
}

/// Decodes a [`CHANNEL`] or [`CHANNELS_OF`] row (members in column 5).
fn channel_with_members(row: &Row) -> Result<Channel> {
    let members: Vec<Uuid> = row.try_get(5).map_err(pg_error)?;
    channel_from_row(row, members)
}

/// Decodes `device_id, user_id, platform, push_token, created_at`.
fn device_from_row(row: &Row) -> Result<Device> {
    Ok(Device {
        id: DeviceId(row.try_get(0).map_err(pg_error)?),
        user: UserId(row.try_get(1).map_err(pg_error)?),
        platform: enum_from_text(row.try_get(2).map_err(pg_error)?, "device")?,
        push_token: row.try_get(3).map_err(pg_error)?,
        created_at: time_from_sql(row.try_get(4).map_err(pg_error)?),
    })
}

/// Reads one channel with its members (on a connection or in a transaction).
async fn load_channel(client: &impl GenericClient, id: ChannelId) -> Result<Option<Channel>> {
    let statement = client.prepare_cached(CHANNEL).await.map_err(pg_error)?;
    client
        .query_opt(&statement, &[&id.0])
        .await
        .map_err(pg_error)?
        .map(|row| channel_with_members(&row))
        .transpose()
}

/// Fails with `NotFound` unless every user in `ids` (distinct) exists.
/// Users are never deleted, so the answer cannot go stale.
async fn require_users(client: &impl GenericClient, ids: &[Uuid]) -> Result<()> {
    let statement = client.prepare_cached(COUNT_USERS).await.map_err(pg_error)?;
    let found: i64 = client
        .query_one(&statement, &[&ids])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    if usize::try_from(found).ok() == Some(ids.len()) {
        Ok(())
    } else {
        Err(Error::not_found("user"))
    }
}

/// Locks the rows of `users` (in a transaction), failing with `NotFound`
/// unless all exist.
async fn lock_users(client: &impl GenericClient, users: &[UserId]) -> Result<()> {
    let mut ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
    ids.sort();
    ids.dedup();
    let statement = client.prepare_cached(LOCK_USERS).await.map_err(pg_error)?;
    let found = client
        .query(&statement, &[&ids])
        .await
        .map_err(pg_error)?
        .len();
    if found == ids.len() {
        Ok(())
    } else {
        Err(Error::not_found("user"))
    }
}

/// Runs `sql` with `params` and reads one `bigint` count or `bool` row.
async fn query_row(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Row> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query_one(&statement, params).await.map_err(pg_error)
}

async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&statement, params).await.map_err(pg_error)
}

/// A `count(*)` as a `usize`.
fn count(row: &Row, column: usize) -> Result<usize> {
    let n: i64 = row.try_get(column).map_err(pg_error)?;
    usize::try_from(n).map_err(|_| corrupt("count", n))
}

/// Groups each of `users` is a member of, in the order given.
async fn groups_joined(client: &impl GenericClient, users: &[Uuid]) -> Result<Vec<usize>> {
    let statement = client
        .prepare_cached(GROUPS_JOINED)
        .await
        .map_err(pg_error)?;
    let rows = client
        .query(&statement, &[&users])
        .await
        .map_err(pg_error)?;
    rows.iter().map(|r| count(r, 1)).collect()
}

/// The u64 session id's bits as stored.
fn session_to_sql(session: u64) -> i64 {
    session as i64
}

impl PostgresStore {
    /// The user ids a one-column `query` of `user` answers (friends, blocks).
    async fn user_ids(&self, query: &'static str, user: UserId) -> Result<Vec<UserId>> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(query).await.map_err(pg_error)?;
                client
                    .query(&statement, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|row| row.try_get(0).map(UserId).map_err(pg_error))
                    .collect()
            })
        })
        .await
    }

    /// `add_member`, `remove_member` and `accept_invitation`: one
    /// transaction holding the channel's row lock and then the user's, so
    /// the group's size and the user's joined groups are checked against
    /// the rows as they are, whatever other servers do at the same time.
    async fn change_membership(
        &self,
        channel: ChannelId,
        user: UserId,
        add: bool,
        limits: Limits,
        need_invitation: bool,
    ) -> Result<Channel> {
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                let lock = tx.prepare_cached(LOCK_CHANNEL).await.map_err(pg_error)?;
                let Some(row) = tx.query_opt(&lock, &[&channel.0]).await.map_err(pg_error)? else {
                    return Err(Error::not_found("channel"));
                };
                if add {
                    lock_users(&tx, &[user]).await?;
                } else {
                    // The user's lock orders this with their other
                    // membership changes; an unknown user simply is no member.
                    let lock = tx.prepare_cached(LOCK_USERS).await.map_err(pg_error)?;
                    tx.query(&lock, &[&vec![user.0]]).await.map_err(pg_error)?;
                }
                if need_invitation {
                    let invited: bool = query_row(&tx, INVITED, &[&user.0, &channel.0])
                        .await?
                        .try_get(0)
                        .map_err(pg_error)?;
                    if !invited {
                        return Err(Error::not_found("invitation"));
                    }
                }
                let members_stmt = tx.prepare_cached(MEMBERS).await.map_err(pg_error)?;
                let members: Vec<Uuid> = tx
                    .query(&members_stmt, &[&channel.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()
                    .map_err(pg_error)?;
                let current = channel_from_row(&row, members)?;
                let Some(updated) = apply_membership(&current, user, add, limits.group_members)?
                else {
                    if add {
                        execute(&tx, DROP_INVITATION, &[&user.0, &channel.0]).await?;
                        tx.commit().await.map_err(pg_error)?;
                    }
                    // Otherwise nothing changes; dropping `tx` rolls back.
                    return Ok(current);
                };
                if add {
                    let joined = groups_joined(&tx, &[user.0]).await?;
                    check_groups_joined(joined.first().copied().unwrap_or(0), &limits)?;
                    execute(&tx, ADD_MEMBER, &[&channel.0, &user.0]).await?;
                    execute(&tx, DROP_INVITATION, &[&user.0, &channel.0]).await?;
                } else {
                    execute(&tx, REMOVE_MEMBER, &[&channel.0, &user.0]).await?;
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(updated)
            })
        })
        .await
    }
}

#[async_trait]
impl Directory for PostgresStore {
    async fn create_user(&self, record: UserRecord) -> Result<User> {
        validate_new_user(&record)?;
        self.run(move |client| {
            Box::pin(async move {
                let UserRecord {
                    user,
                    password_hash,
                } = record;
                let inserted = execute(
                    client,
                    CREATE_USER,
                    &[
                        &user.id.0,
                        &user.username,
                        &user.profile.display_name,
                        &user.profile.about,
                        &time_to_sql(user.created_at),
                        &password_hash,
                    ],
                )
                .await?;
                if inserted == 1 {
                    return Ok(user);
                }
                // The conflicting row is committed and visible now; the
                // username is the refusal callers care about, so it wins.
                let taken: bool = query_row(client, USERNAME_TAKEN, &[&user.username])
                    .await?
                    .try_get(0)
                    .map_err(pg_error)?;
                Err(Error::AlreadyExists {
                    what: if taken { "username" } else { "user" },
                })
            })
        })
        .await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        self.run(move |client| {
            Box::pin(async move {
                let user = client.prepare_cached(USER).await.map_err(pg_error)?;
                client
                    .query_opt(&user, &[&id.0])
                    .await
                    .map_err(pg_error)?
                    .map(|row| user_from_row(&row))
                    .transpose()
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        // No stored username is longer (`validate_new_user`).
        if username.len() > MAX_USERNAME_LEN {
            return Ok(None);
        }
        let username = username.to_owned();
        self.run(move |client| {
            Box::pin(async move {
                let by_name = client
                    .prepare_cached(USER_BY_NAME)
                    .await
                    .map_err(pg_error)?;
                match client
                    .query_opt(&by_name, &[&username])
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => Ok(Some(UserRecord {
                        user: user_from_row(&row)?,
                        password_hash: row.try_get(5).map_err(pg_error)?,
                    })),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        self.run(move |client| {
            Box::pin(async move {
                let update = client
                    .prepare_cached(UPDATE_PROFILE)
                    .await
                    .map_err(pg_error)?;
                match client
                    .query_opt(&update, &[&id.0, &profile.display_name, &profile.about])
                    .await
                    .map_err(pg_error)?
                {
                    Some(row) => user_from_row(&row),
                    None => Err(Error::not_found("user")),
                }
            })
        })
        .await
    }

    async fn privacy(&self, user: UserId) -> Result<Privacy> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(PRIVACY).await.map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .ok_or(Error::not_found("user"))?;
                Ok(Privacy {
                    who_may_add: enum_from_text(row.try_get(0).map_err(pg_error)?, "user")?,
                    hide_last_seen: row.try_get(1).map_err(pg_error)?,
                })
            })
        })
        .await
    }

    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy> {
        let who = enum_to_text(&privacy.who_may_add)?;
        self.run(move |client| {
            Box::pin(async move {
                let n = execute(
                    client,
                    SET_PRIVACY,
                    &[&user.0, &who, &privacy.hide_last_seen],
                )
                .await?;
                if n == 0 {
                    return Err(Error::not_found("user"));
                }
                Ok(privacy)
            })
        })
        .await
    }

    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(TOKEN_STATE).await.map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&user.0, &session_to_sql(session)])
                    .await
                    .map_err(pg_error)?
                    .ok_or(Error::not_found("user"))?;
                let epoch: i64 = row.try_get(0).map_err(pg_error)?;
                Ok(TokenState {
                    epoch: epoch as u64,
                    revoked: row.try_get(1).map_err(pg_error)?,
                })
            })
        })
        .await
    }

    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                lock_users(&tx, &[user]).await?;
                let statement = tx.prepare_cached(REVOKED).await.map_err(pg_error)?;
                let mut kept = Vec::new();
                for row in tx.query(&statement, &[&user.0]).await.map_err(pg_error)? {
                    let s: i64 = row.try_get(0).map_err(pg_error)?;
                    let u: i64 = row.try_get(1).map_err(pg_error)?;
                    kept.push((s as u64, time_from_sql(u)));
                }
                match revoked_after(kept.iter().copied(), session, until, now) {
                    Some(live) => {
                        let expired: Vec<i64> = kept
                            .iter()
                            .filter(|(s, _)| !live.iter().any(|(l, _)| l == s))
                            .map(|(s, _)| session_to_sql(*s))
                            .collect();
                        if !expired.is_empty() {
                            execute(&tx, DROP_REVOKED, &[&user.0, &expired]).await?;
                        }
                        execute(
                            &tx,
                            REVOKE,
                            &[&user.0, &session_to_sql(session), &time_to_sql(until)],
                        )
                        .await?;
                    }
                    None => {
                        query_row(&tx, BUMP_EPOCH, &[&user.0]).await?;
                    }
                }
                tx.commit().await.map_err(pg_error)
            })
        })
        .await
    }

    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(BUMP_EPOCH).await.map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .ok_or(Error::not_found("user"))?;
                let epoch: i64 = row.try_get(0).map_err(pg_error)?;
                Ok(epoch as u64)
            })
        })
        .await
    }

    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        check_friend_pair(from, to)?;
        let limits = *limits;
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                lock_users(&tx, &[from, to]).await?;
                // Under the users' locks, which `block` takes too.
                if query_row(&tx, IS_BLOCKED, &[&to.0, &from.0])
                    .await?
                    .try_get::<_, bool>(0)
                    .map_err(pg_error)?
                {
                    return Err(Error::Blocked);
                }
                let row = query_row(&tx, FRIEND_PAIR, &[&from.0, &to.0]).await?;
                let flag = |i| row.try_get::<_, bool>(i).map_err(pg_error);
                let pair = FriendPair {
                    friends: flag(0)?,
                    requested: flag(1)?,
                    incoming: flag(2)?,
                    from_friends: count(&row, 3)?,
                    to_friends: count(&row, 4)?,
                    from_sent: count(&row, 5)?,
                    to_received: count(&row, 6)?,
                };
                let outcome = decide_friend_request(&pair, &limits)?;
                match outcome {
                    FriendOutcome::Accepted => {
                        execute(&tx, ACCEPT_FRIEND, &[&from.0, &to.0]).await?;
                    }
                    FriendOutcome::Requested => {
                        execute(&tx, INSERT_REQUEST, &[&from.0, &to.0, &time_to_sql(now)]).await?;
                    }
                    FriendOutcome::AlreadyFriends | FriendOutcome::AlreadyRequested => {
                        return Ok(outcome);
                    }
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(outcome)
            })
        })
        .await
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                // Ordered with request_friend of the same users: a decline
                // or cancel never lands between its read and its write.
                let lock = tx.prepare_cached(LOCK_USERS).await.map_err(pg_error)?;
                let mut ids = vec![a.0, b.0];
                ids.sort();
                ids.dedup();
                tx.query(&lock, &[&ids]).await.map_err(pg_error)?;
                execute(&tx, REMOVE_FRIEND, &[&a.0, &b.0]).await?;
                tx.commit().await.map_err(pg_error)
            })
        })
        .await
    }

    async fn block(&self, user: UserId, target: UserId) -> Result<()> {
        if user == target {
            return Err(Error::invalid("a user cannot block themselves"));
        }
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                require_users(&tx, &[user.0, target.0]).await?;
                let direct = chat_core::ChannelId::direct(user, target);
                tx.query(LOCK_DIRECT, &[&direct.0])
                    .await
                    .map_err(pg_error)?;
                // The two users' rows too (after the channel, the order of
                // the commits): serialized with request_friend of the two.
                lock_users(&tx, &[user, target]).await?;
                execute(&tx, BLOCK, &[&user.0, &target.0]).await?;
                tx.commit().await.map_err(pg_error)
            })
        })
        .await
    }

    async fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                execute(client, UNBLOCK, &[&user.0, &target.0]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        self.user_ids(BLOCKED, user).await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.user_ids(FRIENDS, user).await
    }

    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client
                    .prepare_cached(FRIEND_REQUESTS)
                    .await
                    .map_err(pg_error)?;
                client
                    .query(&statement, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|row| {
                        Ok(FriendRequest {
                            from: UserId(row.try_get(0).map_err(pg_error)?),
                            to: UserId(row.try_get(1).map_err(pg_error)?),
                            created_at: time_from_sql(row.try_get(2).map_err(pg_error)?),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        if among.is_empty() {
            return Ok(Vec::new());
        }
        let among: Vec<Uuid> = among.iter().map(|u| u.0).collect();
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(CONTACTS).await.map_err(pg_error)?;
                let mut out: Vec<Contact> = Vec::new();
                for row in client
                    .query(&statement, &[&user.0, &among])
                    .await
                    .map_err(pg_error)?
                {
                    let u = UserId(row.try_get(0).map_err(pg_error)?);
                    if out.iter().any(|c| c.user == u) {
                        continue;
                    }
                    out.push(Contact {
                        user: u,
                        privacy: Privacy {
                            who_may_add: enum_from_text(row.try_get(1).map_err(pg_error)?, "user")?,
                            hide_last_seen: row.try_get(2).map_err(pg_error)?,
                        },
                    });
                }
                Ok(out)
            })
        })
        .await
    }

    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        let channel = validate_new_channel(&channel)?;
        let kind = enum_to_text(&channel.kind)?;
        let limits = *limits;
        self.run(move |client| {
            Box::pin(async move {
                let members: Vec<Uuid> = channel.members.iter().map(|m| m.0).collect();
                let tx = client.transaction().await.map_err(pg_error)?;
                if channel.kind == ChannelKind::Group {
                    lock_users(&tx, &channel.members).await?;
                    let exists: bool = query_row(&tx, CHANNEL_EXISTS, &[&channel.id.0])
                        .await?
                        .try_get(0)
                        .map_err(pg_error)?;
                    if exists {
                        return Err(Error::AlreadyExists { what: "channel" });
                    }
                    let owned = match channel.owner {
                        Some(owner) => count(&query_row(&tx, GROUPS_OWNED, &[&owner.0]).await?, 0)?,
                        None => 0,
                    };
                    let joined = groups_joined(&tx, &members).await?;
                    check_new_group_caps(&channel, owned, &joined, &limits)?;
                } else {
                    require_users(&tx, &members).await?;
                }
                let inserted = execute(
                    &tx,
                    INSERT_CHANNEL,
                    &[
                        &channel.id.0,
                        &kind,
                        &channel.name,
                        &channel.owner.map(|o| o.0),
                        &time_to_sql(channel.created_at),
                    ],
                )
                .await?;
                if inserted == 0 {
                    // The id is taken by a committed channel (the insert
                    // waited for a concurrent creator). Direct channels are
                    // idempotent: return the stored one.
                    if channel.kind != ChannelKind::Direct {
                        return Err(Error::AlreadyExists { what: "channel" });
                    }
                    return load_channel(&tx, channel.id)
                        .await?
                        .ok_or_else(|| corrupt("channel", "conflicting row not found"));
                }
                execute(&tx, INSERT_MEMBERS, &[&channel.id.0, &members]).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(channel)
            })
        })
        .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        self.run(move |client| Box::pin(async move { load_channel(client, id).await }))
            .await
    }

    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        self.change_membership(channel, user, true, *limits, false)
            .await
    }

    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        let limits = Limits {
            group_members: usize::MAX,
            ..Limits::default()
        };
        self.change_membership(channel, user, false, limits, false)
            .await
    }

    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        let limit = limit_to_sql(limit);
        self.run(move |client| {
            Box::pin(async move {
                let rows = match after {
                    Some(after) => {
                        let statement = client
                            .prepare_cached(CHANNELS_OF_AFTER)
                            .await
                            .map_err(pg_error)?;
                        client.query(&statement, &[&user.0, &limit, &after.0]).await
                    }
                    None => {
                        let statement =
                            client.prepare_cached(CHANNELS_OF).await.map_err(pg_error)?;
                        client.query(&statement, &[&user.0, &limit]).await
                    }
                }
                .map_err(pg_error)?;
                rows.iter().map(channel_with_members).collect()
            })
        })
        .await
    }

    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome> {
        let limits = *limits;
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                lock_users(&tx, &[user, inviter]).await?;
                let group = load_channel(&tx, channel)
                    .await?
                    .ok_or(Error::not_found("channel"))?;
                let invited: bool = query_row(&tx, INVITED, &[&user.0, &channel.0])
                    .await?
                    .try_get(0)
                    .map_err(pg_error)?;
                if let Some(outcome) = decide_invite(&group, user, invited)? {
                    return Ok(outcome);
                }
                let counts = query_row(&tx, PENDING_COUNTS, &[&inviter.0, &user.0]).await?;
                check_invite_caps(count(&counts, 0)?, count(&counts, 1)?, &limits)?;
                execute(
                    &tx,
                    INSERT_INVITATION,
                    &[&user.0, &channel.0, &inviter.0, &time_to_sql(now)],
                )
                .await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(InviteOutcome::Invited)
            })
        })
        .await
    }

    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        self.run(move |client| {
            Box::pin(async move {
                let statement = client.prepare_cached(INVITATIONS).await.map_err(pg_error)?;
                client
                    .query(&statement, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|row| {
                        Ok(Invitation {
                            channel: ChannelId(row.try_get(0).map_err(pg_error)?),
                            group_name: row.try_get(1).map_err(pg_error)?,
                            inviter: UserId(row.try_get(2).map_err(pg_error)?),
                            invitee: UserId(row.try_get(3).map_err(pg_error)?),
                            created_at: time_from_sql(row.try_get(4).map_err(pg_error)?),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        self.change_membership(channel, user, true, *limits, true)
            .await
    }

    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                // Ordered with accept_invitation, which reads the
                // invitation under the invitee's lock.
                let lock = tx.prepare_cached(LOCK_USERS).await.map_err(pg_error)?;
                tx.query(&lock, &[&vec![user.0]]).await.map_err(pg_error)?;
                let removed = execute(&tx, DROP_INVITATION, &[&user.0, &channel.0]).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(removed > 0)
            })
        })
        .await
    }

    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        let platform = enum_to_text(&device.platform)?;
        let limits = *limits;
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                lock_users(&tx, &[device.user]).await?;
                let row = query_row(&tx, DEVICE_COUNT, &[&device.user.0, &device.id.0]).await?;
                let exists: bool = row.try_get(0).map_err(pg_error)?;
                if !exists {
                    check_cap(count(&row, 1)?, limits.devices, "devices of a user")?;
                }
                execute(
                    &tx,
                    REGISTER_DEVICE,
                    &[
                        &device.user.0,
                        &device.id.0,
                        &platform,
                        &device.push_token,
                        &time_to_sql(device.created_at),
                    ],
                )
                .await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(device)
            })
        })
        .await
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.run(move |client| {
            Box::pin(async move {
                let devices = client.prepare_cached(DEVICES).await.map_err(pg_error)?;
                client
                    .query(&devices, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(device_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                execute(client, REMOVE_DEVICE, &[&user.0, &device.0]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        let token = token.to_owned();
        self.run(move |client| {
            Box::pin(async move {
                let cleared =
                    execute(client, CLEAR_PUSH_TOKEN, &[&user.0, &device.0, &token]).await?;
                Ok(cleared > 0)
            })
        })
        .await
    }
}
