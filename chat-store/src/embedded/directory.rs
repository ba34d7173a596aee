//! [`Directory`] for [`EmbeddedStore`].

use async_trait::async_trait;
use chat_core::rules::{apply_membership, validate_new_channel, validate_new_user};
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, Profile, Result, User,
    UserId, UserRecord,
};
use serde::{Deserialize, Serialize};

use super::locks::{Kind, StripeKey};
use super::{commit, db, decode, encode, keys, EmbeddedStore, Inner};

/// Longest username looked up. fjall keys are at most 64 KiB (its journal
/// stores key lengths in 16 bits, silently truncating longer ones); created
/// usernames are far shorter (`validate_new_user`), and lookups of longer
/// names must not reach fjall either.
const MAX_USERNAME_KEY: usize = 4_096;

/// The value of the `users` partition ([`UserRecord`] is not serde).
#[derive(Serialize, Deserialize)]
struct StoredUser {
    user: User,
    password_hash: String,
}

impl From<StoredUser> for UserRecord {
    fn from(s: StoredUser) -> Self {
        UserRecord {
            user: s.user,
            password_hash: s.password_hash,
        }
    }
}

impl Inner {
    fn load_user(&self, id: UserId) -> Result<Option<StoredUser>> {
        match self.users.get(id.as_bytes()).map_err(db)? {
            Some(v) => decode(&v, "user").map(Some),
            None => Ok(None),
        }
    }

    /// Users are never deleted, so an existence check needs no lock.
    fn require_user(&self, id: UserId) -> Result<()> {
        if self.users.contains_key(id.as_bytes()).map_err(db)? {
            Ok(())
        } else {
            Err(Error::not_found("user"))
        }
    }

    fn load_channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        match self.channels.get(id.as_bytes()).map_err(db)? {
            Some(v) => decode(&v, "channel").map(Some),
            None => Ok(None),
        }
    }

    fn create_user(&self, record: UserRecord) -> Result<User> {
        validate_new_user(&record)?;
        let UserRecord {
            user,
            password_hash,
        } = record;
        let _guards = self.stripes.lock(&[
            StripeKey::new(Kind::Username, user.username.as_bytes()),
            StripeKey::new(Kind::User, user.id.as_bytes()),
        ]);
        if self
            .usernames
            .contains_key(user.username.as_bytes())
            .map_err(db)?
        {
            return Err(Error::AlreadyExists { what: "username" });
        }
        if self.users.contains_key(user.id.as_bytes()).map_err(db)? {
            return Err(Error::AlreadyExists { what: "user" });
        }
        let stored = StoredUser {
            user,
            password_hash,
        };
        let mut batch = self.batch();
        batch.insert(&self.users, *stored.user.id.as_bytes(), encode(&stored)?);
        batch.insert(
            &self.usernames,
            stored.user.username.as_bytes(),
            *stored.user.id.as_bytes(),
        );
        commit(batch)?;
        Ok(stored.user)
    }

    fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        if username.len() > MAX_USERNAME_KEY {
            return Ok(None);
        }
        let (usernames, users) = self.snapshots(&self.usernames, &self.users);
        let Some(id) = usernames.get(username.as_bytes()).map_err(db)? else {
            return Ok(None);
        };
        let id = keys::parse_id16(&id, "username index")?;
        let value = users
            .get(id)
            .map_err(db)?
            .ok_or_else(|| keys::corrupt("username index", "its user is missing"))?;
        let stored: StoredUser = decode(&value, "user")?;
        Ok(Some(stored.into()))
    }

    fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::User, id.as_bytes())]);
        let mut stored = self.load_user(id)?.ok_or(Error::not_found("user"))?;
        stored.user.profile = profile;
        let mut batch = self.batch();
        batch.insert(&self.users, *id.as_bytes(), encode(&stored)?);
        commit(batch)?;
        Ok(stored.user)
    }

    fn add_friend(&self, a: UserId, b: UserId) -> Result<()> {
        if a == b {
            return Err(Error::invalid("a user cannot befriend themselves"));
        }
        self.require_user(a)?;
        self.require_user(b)?;
        let ab = keys::pair(a.as_bytes(), b.as_bytes());
        let ba = keys::pair(b.as_bytes(), a.as_bytes());
        // Both keys are written by one batch; if both are visible, the
        // friendship is already stored (and durable).
        if self.friends.contains_key(ab).map_err(db)?
            && self.friends.contains_key(ba).map_err(db)?
        {
            return Ok(());
        }
        let mut batch = self.batch();
        batch.insert(&self.friends, ab, []);
        batch.insert(&self.friends, ba, []);
        commit(batch)
    }

    fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        let ab = keys::pair(a.as_bytes(), b.as_bytes());
        let ba = keys::pair(b.as_bytes(), a.as_bytes());
        if !self.friends.contains_key(ab).map_err(db)?
            && !self.friends.contains_key(ba).map_err(db)?
        {
            return Ok(());
        }
        let mut batch = self.batch();
        batch.remove(&self.friends, ab);
        batch.remove(&self.friends, ba);
        commit(batch)
    }

    fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.friends
            .prefix(user.as_bytes())
            .map(|kv| {
                let (key, _) = kv.map_err(db)?;
                Ok(UserId::from_bytes(keys::pair_second(&key)?))
            })
            .collect()
    }

    fn create_channel(&self, channel: Channel) -> Result<Channel> {
        let channel = validate_new_channel(&channel)?;
        for member in &channel.members {
            self.require_user(*member)?;
        }
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::Channel, channel.id.as_bytes())]);
        if let Some(existing) = self.load_channel(channel.id)? {
            return match channel.kind {
                ChannelKind::Direct => Ok(existing),
                _ => Err(Error::AlreadyExists { what: "channel" }),
            };
        }
        let mut batch = self.batch();
        batch.insert(&self.channels, *channel.id.as_bytes(), encode(&channel)?);
        for member in &channel.members {
            batch.insert(
                &self.memberships,
                keys::pair(member.as_bytes(), channel.id.as_bytes()),
                [],
            );
        }
        commit(batch)?;
        Ok(channel)
    }

    fn change_membership(
        &self,
        channel: ChannelId,
        user: UserId,
        add: bool,
        max_members: usize,
    ) -> Result<Channel> {
        if add {
            self.require_user(user)?;
        }
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::Channel, channel.as_bytes())]);
        let current = self
            .load_channel(channel)?
            .ok_or(Error::not_found("channel"))?;
        let Some(updated) = apply_membership(&current, user, add, max_members)? else {
            return Ok(current);
        };
        let membership = keys::pair(user.as_bytes(), channel.as_bytes());
        let mut batch = self.batch();
        batch.insert(&self.channels, *channel.as_bytes(), encode(&updated)?);
        if add {
            batch.insert(&self.memberships, membership, []);
        } else {
            batch.remove(&self.memberships, membership);
        }
        commit(batch)?;
        Ok(updated)
    }

    fn channels_of(&self, user: UserId) -> Result<Vec<Channel>> {
        let (memberships, channels) = self.snapshots(&self.memberships, &self.channels);
        let mut out = Vec::new();
        for kv in memberships.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            let id = keys::pair_second(&key)?;
            let value = channels
                .get(id)
                .map_err(db)?
                .ok_or_else(|| keys::corrupt("membership", "its channel is missing"))?;
            out.push(decode(&value, "channel")?);
        }
        Ok(out)
    }

    fn register_device(&self, device: Device) -> Result<Device> {
        self.require_user(device.user)?;
        let key = keys::pair(device.user.as_bytes(), device.id.as_bytes());
        let _guards = self.stripes.lock(&[StripeKey::new(Kind::Device, &key)]);
        let mut batch = self.batch();
        batch.insert(&self.devices, key, encode(&device)?);
        commit(batch)?;
        Ok(device)
    }

    fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.devices
            .prefix(user.as_bytes())
            .map(|kv| {
                let (_, value) = kv.map_err(db)?;
                decode(&value, "device")
            })
            .collect()
    }

    fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        let key = keys::pair(user.as_bytes(), device.as_bytes());
        let _guards = self.stripes.lock(&[StripeKey::new(Kind::Device, &key)]);
        if !self.devices.contains_key(key).map_err(db)? {
            return Ok(());
        }
        let mut batch = self.batch();
        batch.remove(&self.devices, key);
        commit(batch)
    }

    /// Compare-and-clear under the device's stripe, which every device
    /// write takes: between the read and the commit no registration or
    /// removal of this device can land.
    fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        let key = keys::pair(user.as_bytes(), device.as_bytes());
        let _guards = self.stripes.lock(&[StripeKey::new(Kind::Device, &key)]);
        let Some(value) = self.devices.get(key).map_err(db)? else {
            return Ok(false);
        };
        let mut stored: Device = decode(&value, "device")?;
        if stored.push_token.as_deref() != Some(token) {
            return Ok(false);
        }
        stored.push_token = None;
        let mut batch = self.batch();
        batch.insert(&self.devices, key, encode(&stored)?);
        commit(batch)?;
        Ok(true)
    }
}

#[async_trait]
impl Directory for EmbeddedStore {
    async fn create_user(&self, record: UserRecord) -> Result<User> {
        self.blocking(move |s| s.create_user(record)).await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        self.blocking(move |s| Ok(s.load_user(id)?.map(|u| u.user)))
            .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let username = username.to_owned();
        self.blocking(move |s| s.user_by_name(&username)).await
    }

    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        self.blocking(move |s| s.update_profile(id, profile)).await
    }

    async fn add_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.blocking(move |s| s.add_friend(a, b)).await
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.blocking(move |s| s.remove_friend(a, b)).await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.blocking(move |s| s.friends(user)).await
    }

    async fn create_channel(&self, channel: Channel) -> Result<Channel> {
        self.blocking(move |s| s.create_channel(channel)).await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        self.blocking(move |s| s.load_channel(id)).await
    }

    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        max_members: usize,
    ) -> Result<Channel> {
        self.blocking(move |s| s.change_membership(channel, user, true, max_members))
            .await
    }

    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.blocking(move |s| s.change_membership(channel, user, false, usize::MAX))
            .await
    }

    async fn channels_of(&self, user: UserId) -> Result<Vec<Channel>> {
        self.blocking(move |s| s.channels_of(user)).await
    }

    async fn register_device(&self, device: Device) -> Result<Device> {
        self.blocking(move |s| s.register_device(device)).await
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.blocking(move |s| s.devices(user)).await
    }

    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        self.blocking(move |s| s.remove_device(user, device)).await
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        let token = token.to_owned();
        self.blocking(move |s| s.clear_push_token(user, device, &token))
            .await
    }
}
