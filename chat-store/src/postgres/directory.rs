//! [`Directory`] for [`PostgresStore`].

use async_trait::async_trait;
use chat_core::rules::{apply_membership, validate_new_channel, validate_new_user};
use chat_core::types::MAX_USERNAME_LEN;
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, Profile, Result, User,
    UserId, UserRecord,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    corrupt, enum_from_text, enum_to_text, pg_error, time_from_sql, time_to_sql, PostgresStore,
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

/// Both rows of a friendship, if both users exist; returns how many of the
/// two users exist (one statement, one snapshot).
const ADD_FRIEND: &str = "WITH known AS (\
         SELECT count(*) AS n FROM users WHERE user_id IN ($1, $2)\
     ), added AS (\
         INSERT INTO friends (user_id, friend_id) \
         SELECT a, b FROM (VALUES ($1::uuid, $2::uuid), ($2::uuid, $1::uuid)) AS pair (a, b), known \
         WHERE known.n = 2 \
         ON CONFLICT DO NOTHING\
     ) SELECT n FROM known";
const REMOVE_FRIEND: &str = "DELETE FROM friends \
     WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)";
const FRIENDS: &str = "SELECT friend_id FROM friends WHERE user_id = $1 ORDER BY friend_id";

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
/// A user's channels with their members, sorted by channel id: a range of
/// `channel_members_by_user`, one statement.
const CHANNELS_OF: &str = "SELECT c.channel_id, c.kind, c.name, c.owner, c.created_at, \
     ARRAY(SELECT m2.user_id FROM channel_members m2 WHERE m2.channel_id = c.channel_id \
           ORDER BY m2.user_id) \
     FROM channel_members m JOIN channels c ON c.channel_id = m.channel_id \
     WHERE m.user_id = $1 ORDER BY c.channel_id";

/// Registers or replaces a device, if its user exists (no row otherwise).
const REGISTER_DEVICE: &str = "INSERT INTO devices \
     (user_id, device_id, platform, push_token, created_at) \
     SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM users WHERE user_id = $1) \
     ON CONFLICT (user_id, device_id) DO UPDATE SET platform = EXCLUDED.platform, \
     push_token = EXCLUDED.push_token, created_at = EXCLUDED.created_at \
     RETURNING device_id";
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

impl PostgresStore {
    /// `add_member` and `remove_member`: one transaction holding the
    /// channel's row lock, so the member limit is checked against the
    /// members as they are, whatever other servers do at the same time.
    async fn change_membership(
        &self,
        channel: ChannelId,
        user: UserId,
        add: bool,
        max_members: usize,
    ) -> Result<Channel> {
        self.run(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await.map_err(pg_error)?;
                if add {
                    require_users(&tx, &[user.0]).await?;
                }
                let lock = tx.prepare_cached(LOCK_CHANNEL).await.map_err(pg_error)?;
                let Some(row) = tx.query_opt(&lock, &[&channel.0]).await.map_err(pg_error)? else {
                    return Err(Error::not_found("channel"));
                };
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
                let Some(updated) = apply_membership(&current, user, add, max_members)? else {
                    // Nothing changes; dropping `tx` rolls the read back.
                    return Ok(current);
                };
                let change = if add { ADD_MEMBER } else { REMOVE_MEMBER };
                let change = tx.prepare_cached(change).await.map_err(pg_error)?;
                tx.execute(&change, &[&channel.0, &user.0])
                    .await
                    .map_err(pg_error)?;
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
                let insert = client.prepare_cached(CREATE_USER).await.map_err(pg_error)?;
                let inserted = client
                    .execute(
                        &insert,
                        &[
                            &user.id.0,
                            &user.username,
                            &user.profile.display_name,
                            &user.profile.about,
                            &time_to_sql(user.created_at),
                            &password_hash,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                if inserted == 1 {
                    return Ok(user);
                }
                // The conflicting row is committed and visible now; the
                // username is the refusal callers care about, so it wins.
                let taken = client
                    .prepare_cached(USERNAME_TAKEN)
                    .await
                    .map_err(pg_error)?;
                let taken: bool = client
                    .query_one(&taken, &[&user.username])
                    .await
                    .map_err(pg_error)?
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

    async fn add_friend(&self, a: UserId, b: UserId) -> Result<()> {
        if a == b {
            return Err(Error::invalid("a user cannot befriend themselves"));
        }
        self.run(move |client| {
            Box::pin(async move {
                let add = client.prepare_cached(ADD_FRIEND).await.map_err(pg_error)?;
                let known: i64 = client
                    .query_one(&add, &[&a.0, &b.0])
                    .await
                    .map_err(pg_error)?
                    .try_get(0)
                    .map_err(pg_error)?;
                if known == 2 {
                    Ok(())
                } else {
                    Err(Error::not_found("user"))
                }
            })
        })
        .await
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.run(move |client| {
            Box::pin(async move {
                let remove = client
                    .prepare_cached(REMOVE_FRIEND)
                    .await
                    .map_err(pg_error)?;
                client
                    .execute(&remove, &[&a.0, &b.0])
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.run(move |client| {
            Box::pin(async move {
                let friends = client.prepare_cached(FRIENDS).await.map_err(pg_error)?;
                client
                    .query(&friends, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|row| row.try_get(0).map(UserId).map_err(pg_error))
                    .collect()
            })
        })
        .await
    }

    async fn create_channel(&self, channel: Channel) -> Result<Channel> {
        let channel = validate_new_channel(&channel)?;
        let kind = enum_to_text(&channel.kind)?;
        self.run(move |client| {
            Box::pin(async move {
                let members: Vec<Uuid> = channel.members.iter().map(|m| m.0).collect();
                let tx = client.transaction().await.map_err(pg_error)?;
                require_users(&tx, &members).await?;
                let insert = tx.prepare_cached(INSERT_CHANNEL).await.map_err(pg_error)?;
                let inserted = tx
                    .execute(
                        &insert,
                        &[
                            &channel.id.0,
                            &kind,
                            &channel.name,
                            &channel.owner.map(|o| o.0),
                            &time_to_sql(channel.created_at),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
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
                let insert_members = tx.prepare_cached(INSERT_MEMBERS).await.map_err(pg_error)?;
                tx.execute(&insert_members, &[&channel.id.0, &members])
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                Ok(channel)
            })
        })
        .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        self.run(move |client| {
            Box::pin(async move {
                let channel = client.prepare_cached(CHANNEL).await.map_err(pg_error)?;
                client
                    .query_opt(&channel, &[&id.0])
                    .await
                    .map_err(pg_error)?
                    .map(|row| channel_with_members(&row))
                    .transpose()
            })
        })
        .await
    }

    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        max_members: usize,
    ) -> Result<Channel> {
        self.change_membership(channel, user, true, max_members)
            .await
    }

    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.change_membership(channel, user, false, usize::MAX)
            .await
    }

    async fn channels_of(&self, user: UserId) -> Result<Vec<Channel>> {
        self.run(move |client| {
            Box::pin(async move {
                let channels_of = client.prepare_cached(CHANNELS_OF).await.map_err(pg_error)?;
                client
                    .query(&channels_of, &[&user.0])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(channel_with_members)
                    .collect()
            })
        })
        .await
    }

    async fn register_device(&self, device: Device) -> Result<Device> {
        let platform = enum_to_text(&device.platform)?;
        self.run(move |client| {
            Box::pin(async move {
                let register = client
                    .prepare_cached(REGISTER_DEVICE)
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(
                        &register,
                        &[
                            &device.user.0,
                            &device.id.0,
                            &platform,
                            &device.push_token,
                            &time_to_sql(device.created_at),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                match row {
                    Some(_) => Ok(device),
                    None => Err(Error::not_found("user")),
                }
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
                let remove = client
                    .prepare_cached(REMOVE_DEVICE)
                    .await
                    .map_err(pg_error)?;
                client
                    .execute(&remove, &[&user.0, &device.0])
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
        })
        .await
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        let token = token.to_owned();
        self.run(move |client| {
            Box::pin(async move {
                let clear = client
                    .prepare_cached(CLEAR_PUSH_TOKEN)
                    .await
                    .map_err(pg_error)?;
                let cleared = client
                    .execute(&clear, &[&user.0, &device.0, &token])
                    .await
                    .map_err(pg_error)?;
                Ok(cleared > 0)
            })
        })
        .await
    }
}
