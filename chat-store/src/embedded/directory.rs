//! [`Directory`] for [`EmbeddedStore`].

use std::collections::BTreeSet;
use std::ops::Bound;

use async_trait::async_trait;
use chat_core::directory::{Contact, FriendOutcome, InviteOutcome, Limits, TokenState};
use chat_core::rules::{
    apply_membership, check_cap, check_friend_pair, check_groups_joined, check_invite_caps,
    check_new_group_caps, decide_friend_request, decide_invite, revoked_after,
    validate_new_channel, validate_new_user, FriendPair,
};
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Directory, Error, FriendRequest, Invitation,
    Privacy, Profile, Result, User, UserId, UserRecord,
};
use fjall::PartitionHandle;
use serde::{Deserialize, Serialize};

use super::locks::{Kind, StripeKey};
use super::{commit, db, decode, encode, keys, EmbeddedStore, Inner};

/// Longest username looked up. fjall keys are at most 64 KiB (its journal
/// stores key lengths in 16 bits, silently truncating longer ones); created
/// usernames are far shorter (`validate_new_user`), and lookups of longer
/// names must not reach fjall either.
const MAX_USERNAME_KEY: usize = 4_096;

/// The value of a `memberships` entry: what the channel is to the member,
/// so the per-user group caps count without reading channels. Entries
/// written before the tags existed are empty and read the channel.
const DIRECT: &[u8] = b"d";
const GROUP: &[u8] = b"g";
const OWNED: &[u8] = b"o";

/// The value of the `users` partition ([`UserRecord`] is not serde).
#[derive(Serialize, Deserialize)]
struct StoredUser {
    user: User,
    password_hash: String,
    /// Absent in users stored before privacy settings existed: the default.
    #[serde(default)]
    privacy: Privacy,
    /// Absent in users stored before token epochs existed: 0.
    #[serde(default)]
    token_epoch: u64,
}

impl From<StoredUser> for UserRecord {
    fn from(s: StoredUser) -> Self {
        UserRecord {
            user: s.user,
            password_hash: s.password_hash,
        }
    }
}

/// The stripe of a user: every write that counts toward one of the user's
/// caps, or changes the user's record, holds it.
fn user_stripe(user: UserId) -> StripeKey {
    StripeKey::new(Kind::User, user.as_bytes())
}

fn channel_stripe(channel: ChannelId) -> StripeKey {
    StripeKey::new(Kind::Channel, channel.as_bytes())
}

/// The membership tag of `member` in `channel`.
fn membership_tag(channel: &Channel, member: UserId) -> &'static [u8] {
    match channel.kind {
        ChannelKind::Group if channel.owner == Some(member) => OWNED,
        ChannelKind::Group => GROUP,
        _ => DIRECT,
    }
}

impl Inner {
    fn load_user(&self, id: UserId) -> Result<Option<StoredUser>> {
        match self.users.get(id.as_bytes()).map_err(db)? {
            Some(v) => decode(&v, "user").map(Some),
            None => Ok(None),
        }
    }

    fn require_stored(&self, id: UserId) -> Result<StoredUser> {
        self.load_user(id)?.ok_or(Error::not_found("user"))
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

    /// Entries under a 16-byte prefix (bounded by the caps that the callers
    /// count against).
    fn count(partition: &PartitionHandle, prefix: &[u8; 16]) -> Result<usize> {
        let mut n = 0;
        for kv in partition.prefix(prefix) {
            kv.map_err(db)?;
            n += 1;
        }
        Ok(n)
    }

    /// Pending requests `user` has sent: friend requests and invitations.
    fn sent(&self, user: UserId) -> Result<usize> {
        Ok(Self::count(&self.friend_requests, user.as_bytes())?
            + Self::count(&self.invitations_sent, user.as_bytes())?)
    }

    /// Pending requests `user` has received: friend requests and invitations.
    fn received(&self, user: UserId) -> Result<usize> {
        Ok(Self::count(&self.friend_requests_in, user.as_bytes())?
            + Self::count(&self.invitations, user.as_bytes())?)
    }

    /// `(groups joined, groups owned)` of `user`, from the membership tags.
    fn group_counts(&self, user: UserId) -> Result<(usize, usize)> {
        let (mut joined, mut owned) = (0, 0);
        for kv in self.memberships.prefix(user.as_bytes()) {
            let (key, tag) = kv.map_err(db)?;
            let tag: &[u8] = match &*tag {
                t @ (DIRECT | GROUP | OWNED) => t,
                _ => {
                    // An untagged entry from an older store: read the channel.
                    let id = ChannelId::from_bytes(keys::pair_second(&key)?);
                    let channel = self
                        .load_channel(id)?
                        .ok_or_else(|| keys::corrupt("membership", "its channel is missing"))?;
                    membership_tag(&channel, user)
                }
            };
            match tag {
                OWNED => {
                    joined += 1;
                    owned += 1;
                }
                GROUP => joined += 1,
                _ => {}
            }
        }
        Ok((joined, owned))
    }

    fn create_user(&self, record: UserRecord) -> Result<User> {
        validate_new_user(&record)?;
        let UserRecord {
            user,
            password_hash,
        } = record;
        let _guards = self.stripes.lock(&[
            StripeKey::new(Kind::Username, user.username.as_bytes()),
            user_stripe(user.id),
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
            privacy: Privacy::default(),
            token_epoch: 0,
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

    /// Read-modify-write of a user record under the user's stripe.
    fn update_user<T>(&self, id: UserId, change: impl FnOnce(&mut StoredUser) -> T) -> Result<T> {
        let _guards = self.stripes.lock(&[user_stripe(id)]);
        let mut stored = self.require_stored(id)?;
        let out = change(&mut stored);
        let mut batch = self.batch();
        batch.insert(&self.users, *id.as_bytes(), encode(&stored)?);
        commit(batch)?;
        Ok(out)
    }

    fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        let (users, revoked) = self.snapshots(&self.users, &self.revoked_sessions);
        let value = users
            .get(user.as_bytes())
            .map_err(db)?
            .ok_or(Error::not_found("user"))?;
        let stored: StoredUser = decode(&value, "user")?;
        Ok(TokenState {
            epoch: stored.token_epoch,
            revoked: revoked
                .contains_key(keys::session(user, session))
                .map_err(db)?,
        })
    }

    fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        let _guards = self.stripes.lock(&[user_stripe(user)]);
        let mut stored = self.require_stored(user)?;
        let mut kept = Vec::new();
        for kv in self.revoked_sessions.prefix(user.as_bytes()) {
            let (key, value) = kv.map_err(db)?;
            kept.push((
                keys::parse_session(&key)?,
                keys::parse_u64(&value, "revoked session")?,
            ));
        }
        let mut batch = self.batch();
        match revoked_after(kept.iter().copied(), session, until, now) {
            Some(live) => {
                let live_ids: BTreeSet<u64> = live.iter().map(|(s, _)| *s).collect();
                for (s, _) in kept.iter().filter(|(s, _)| !live_ids.contains(s)) {
                    batch.remove(&self.revoked_sessions, keys::session(user, *s));
                }
                batch.insert(
                    &self.revoked_sessions,
                    keys::session(user, session),
                    until.to_be_bytes(),
                );
            }
            None => {
                stored.token_epoch += 1;
                batch.insert(&self.users, *user.as_bytes(), encode(&stored)?);
                for (s, _) in &kept {
                    batch.remove(&self.revoked_sessions, keys::session(user, *s));
                }
            }
        }
        commit(batch)
    }

    fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        let _guards = self.stripes.lock(&[user_stripe(user)]);
        let mut stored = self.require_stored(user)?;
        stored.token_epoch += 1;
        let mut batch = self.batch();
        batch.insert(&self.users, *user.as_bytes(), encode(&stored)?);
        for kv in self.revoked_sessions.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            batch.remove(&self.revoked_sessions, key);
        }
        commit(batch)?;
        Ok(stored.token_epoch)
    }

    fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        check_friend_pair(from, to)?;
        self.require_user(from)?;
        self.require_user(to)?;
        let _guards = self.stripes.lock(&[user_stripe(from), user_stripe(to)]);
        let (from_to, to_from) = (
            keys::pair(from.as_bytes(), to.as_bytes()),
            keys::pair(to.as_bytes(), from.as_bytes()),
        );
        // `block` takes the same two stripes: the check and the request's
        // write are one step with respect to it.
        if self.blocks.contains_key(to_from).map_err(db)? {
            return Err(Error::Blocked);
        }
        let pair = FriendPair {
            friends: self.friends.contains_key(from_to).map_err(db)?,
            requested: self.friend_requests.contains_key(from_to).map_err(db)?,
            incoming: self.friend_requests.contains_key(to_from).map_err(db)?,
            from_friends: Self::count(&self.friends, from.as_bytes())?,
            to_friends: Self::count(&self.friends, to.as_bytes())?,
            from_sent: self.sent(from)?,
            to_received: self.received(to)?,
        };
        let outcome = decide_friend_request(&pair, limits)?;
        let mut batch = self.batch();
        match outcome {
            FriendOutcome::Accepted => {
                batch.remove(&self.friend_requests, to_from);
                batch.remove(&self.friend_requests_in, from_to);
                batch.insert(&self.friends, from_to, []);
                batch.insert(&self.friends, to_from, []);
            }
            FriendOutcome::Requested => {
                batch.insert(&self.friend_requests, from_to, now.to_be_bytes());
                batch.insert(&self.friend_requests_in, to_from, []);
            }
            FriendOutcome::AlreadyFriends | FriendOutcome::AlreadyRequested => {}
        }
        commit(batch)?;
        Ok(outcome)
    }

    fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        let _guards = self.stripes.lock(&[user_stripe(a), user_stripe(b)]);
        let ab = keys::pair(a.as_bytes(), b.as_bytes());
        let ba = keys::pair(b.as_bytes(), a.as_bytes());
        let mut batch = self.batch();
        for key in [ab, ba] {
            if self.friends.contains_key(key).map_err(db)? {
                batch.remove(&self.friends, key);
            }
            if self.friend_requests.contains_key(key).map_err(db)? {
                batch.remove(&self.friend_requests, key);
            }
            if self.friend_requests_in.contains_key(key).map_err(db)? {
                batch.remove(&self.friend_requests_in, key);
            }
        }
        commit(batch)
    }

    fn block(&self, user: UserId, target: UserId) -> Result<()> {
        if user == target {
            return Err(Error::invalid("a user cannot block themselves"));
        }
        self.require_stored(user)?;
        self.require_stored(target)?;
        // Serialized with `request_friend` of the two (same stripes).
        let _guards = self.stripes.lock(&[user_stripe(user), user_stripe(target)]);
        let mut batch = self.batch();
        batch.insert(
            &self.blocks,
            keys::pair(user.as_bytes(), target.as_bytes()),
            [],
        );
        commit(batch)
    }

    fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        let key = keys::pair(user.as_bytes(), target.as_bytes());
        if !self.blocks.contains_key(key).map_err(db)? {
            return Ok(());
        }
        let mut batch = self.batch();
        batch.remove(&self.blocks, key);
        commit(batch)
    }

    fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        self.blocks
            .prefix(user.as_bytes())
            .map(|kv| {
                let (key, _) = kv.map_err(db)?;
                Ok(UserId::from_bytes(keys::pair_second(&key)?))
            })
            .collect()
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

    fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        let (out, inc) = self.snapshots(&self.friend_requests, &self.friend_requests_in);
        let mut requests = Vec::new();
        for kv in out.prefix(user.as_bytes()) {
            let (key, value) = kv.map_err(db)?;
            requests.push(FriendRequest {
                from: user,
                to: UserId::from_bytes(keys::pair_second(&key)?),
                created_at: keys::parse_u64(&value, "friend request")?,
            });
        }
        for kv in inc.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            let from = UserId::from_bytes(keys::pair_second(&key)?);
            let value = out
                .get(keys::pair(from.as_bytes(), user.as_bytes()))
                .map_err(db)?
                .ok_or_else(|| keys::corrupt("friend request index", "its request is missing"))?;
            requests.push(FriendRequest {
                from,
                to: user,
                created_at: keys::parse_u64(&value, "friend request")?,
            });
        }
        requests.sort_by_key(|r| (r.from, r.to));
        Ok(requests)
    }

    fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        let instant = self.keyspace.instant();
        let friends = self.friends.snapshot_at(instant);
        let memberships = self.memberships.snapshot_at(instant);
        let channels = self.channels.snapshot_at(instant);
        let users = self.users.snapshot_at(instant);
        let blocks = self.blocks.snapshot_at(instant);
        let mut known = BTreeSet::new();
        for kv in friends.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            known.insert(UserId::from_bytes(keys::pair_second(&key)?));
        }
        for kv in memberships.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            let value = channels
                .get(keys::pair_second(&key)?)
                .map_err(db)?
                .ok_or_else(|| keys::corrupt("membership", "its channel is missing"))?;
            let channel: Channel = decode(&value, "channel")?;
            known.extend(channel.members);
        }
        known.remove(&user);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for u in among.iter().copied() {
            if !known.contains(&u) || !seen.insert(u) {
                continue;
            }
            if blocks
                .contains_key(keys::pair(u.as_bytes(), user.as_bytes()))
                .map_err(db)?
            {
                continue;
            }
            let value = users
                .get(u.as_bytes())
                .map_err(db)?
                .ok_or_else(|| keys::corrupt("friend or member", "its user is missing"))?;
            let stored: StoredUser = decode(&value, "user")?;
            out.push(Contact {
                user: u,
                privacy: stored.privacy,
            });
        }
        Ok(out)
    }

    fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        let channel = validate_new_channel(&channel)?;
        for member in &channel.members {
            self.require_user(*member)?;
        }
        let mut stripes = vec![channel_stripe(channel.id)];
        if channel.kind == ChannelKind::Group {
            stripes.extend(channel.members.iter().map(|m| user_stripe(*m)));
        }
        let _guards = self.stripes.lock(&stripes);
        if let Some(existing) = self.load_channel(channel.id)? {
            return match channel.kind {
                ChannelKind::Direct => Ok(existing),
                _ => Err(Error::AlreadyExists { what: "channel" }),
            };
        }
        if channel.kind == ChannelKind::Group {
            let owned = match channel.owner {
                Some(owner) => self.group_counts(owner)?.1,
                None => 0,
            };
            let joined = channel
                .members
                .iter()
                .map(|m| Ok(self.group_counts(*m)?.0))
                .collect::<Result<Vec<usize>>>()?;
            check_new_group_caps(&channel, owned, &joined, limits)?;
        }
        let mut batch = self.batch();
        batch.insert(&self.channels, *channel.id.as_bytes(), encode(&channel)?);
        for member in &channel.members {
            batch.insert(
                &self.memberships,
                keys::pair(member.as_bytes(), channel.id.as_bytes()),
                membership_tag(&channel, *member),
            );
        }
        commit(batch)?;
        Ok(channel)
    }

    /// Removes `user`'s invitation to `channel` in `batch`, if there is one.
    /// The caller holds the channel's stripe.
    fn drop_invitation(
        &self,
        batch: &mut super::Batch<'_>,
        channel: ChannelId,
        user: UserId,
    ) -> Result<bool> {
        let key = keys::pair(user.as_bytes(), channel.as_bytes());
        let Some(value) = self.invitations.get(key).map_err(db)? else {
            return Ok(false);
        };
        let invitation: Invitation = decode(&value, "invitation")?;
        batch.remove(&self.invitations, key);
        batch.remove(
            &self.invitations_sent,
            keys::triple(
                invitation.inviter.as_bytes(),
                user.as_bytes(),
                channel.as_bytes(),
            ),
        );
        Ok(true)
    }

    /// `add_member`, `remove_member` and `accept_invitation`: under the
    /// channel's and the user's stripes, so the group's size and the
    /// user's joined groups are read and written atomically.
    fn change_membership(
        &self,
        channel: ChannelId,
        user: UserId,
        add: bool,
        limits: &Limits,
        need_invitation: bool,
    ) -> Result<Channel> {
        if add {
            self.require_user(user)?;
        }
        let _guards = self
            .stripes
            .lock(&[channel_stripe(channel), user_stripe(user)]);
        if need_invitation
            && !self
                .invitations
                .contains_key(keys::pair(user.as_bytes(), channel.as_bytes()))
                .map_err(db)?
        {
            return Err(Error::not_found("invitation"));
        }
        let current = self
            .load_channel(channel)?
            .ok_or(Error::not_found("channel"))?;
        let mut batch = self.batch();
        let Some(updated) = apply_membership(&current, user, add, limits.group_members)? else {
            if add {
                self.drop_invitation(&mut batch, channel, user)?;
                commit(batch)?;
            }
            return Ok(current);
        };
        let membership = keys::pair(user.as_bytes(), channel.as_bytes());
        batch.insert(&self.channels, *channel.as_bytes(), encode(&updated)?);
        if add {
            check_groups_joined(self.group_counts(user)?.0, limits)?;
            batch.insert(
                &self.memberships,
                membership,
                membership_tag(&updated, user),
            );
            self.drop_invitation(&mut batch, channel, user)?;
        } else {
            batch.remove(&self.memberships, membership);
        }
        commit(batch)?;
        Ok(updated)
    }

    fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        let (memberships, channels) = self.snapshots(&self.memberships, &self.channels);
        let lower = match after {
            Some(c) => Bound::Excluded(keys::pair(user.as_bytes(), c.as_bytes())),
            None => Bound::Included(keys::pair(user.as_bytes(), &[0; 16])),
        };
        let upper = Bound::Included(keys::pair(user.as_bytes(), &[0xff; 16]));
        let mut out = Vec::new();
        for kv in memberships.range((lower, upper)).take(limit) {
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

    fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome> {
        self.require_user(user)?;
        self.require_user(inviter)?;
        let _guards = self.stripes.lock(&[
            channel_stripe(channel),
            user_stripe(user),
            user_stripe(inviter),
        ]);
        let group = self
            .load_channel(channel)?
            .ok_or(Error::not_found("channel"))?;
        let key = keys::pair(user.as_bytes(), channel.as_bytes());
        let invited = self.invitations.contains_key(key).map_err(db)?;
        if let Some(outcome) = decide_invite(&group, user, invited)? {
            return Ok(outcome);
        }
        check_invite_caps(self.sent(inviter)?, self.received(user)?, limits)?;
        let invitation = Invitation {
            channel,
            group_name: group.name,
            inviter,
            invitee: user,
            created_at: now,
        };
        let mut batch = self.batch();
        batch.insert(&self.invitations, key, encode(&invitation)?);
        batch.insert(
            &self.invitations_sent,
            keys::triple(inviter.as_bytes(), user.as_bytes(), channel.as_bytes()),
            [],
        );
        commit(batch)?;
        Ok(InviteOutcome::Invited)
    }

    fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        let (received, sent) = self.snapshots(&self.invitations, &self.invitations_sent);
        let mut out = Vec::new();
        for kv in received.prefix(user.as_bytes()) {
            let (_, value) = kv.map_err(db)?;
            out.push(decode(&value, "invitation")?);
        }
        for kv in sent.prefix(user.as_bytes()) {
            let (key, _) = kv.map_err(db)?;
            let (invitee, channel) = keys::triple_tail(&key)?;
            let value = received
                .get(keys::pair(&invitee, &channel))
                .map_err(db)?
                .ok_or_else(|| keys::corrupt("invitation index", "its invitation is missing"))?;
            out.push(decode(&value, "invitation")?);
        }
        out.sort_by_key(|i: &Invitation| (i.invitee, i.channel));
        Ok(out)
    }

    fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        let _guards = self
            .stripes
            .lock(&[channel_stripe(channel), user_stripe(user)]);
        let mut batch = self.batch();
        let removed = self.drop_invitation(&mut batch, channel, user)?;
        commit(batch)?;
        Ok(removed)
    }

    fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        self.require_user(device.user)?;
        let key = keys::pair(device.user.as_bytes(), device.id.as_bytes());
        let _guards = self
            .stripes
            .lock(&[StripeKey::new(Kind::Device, &key), user_stripe(device.user)]);
        if !self.devices.contains_key(key).map_err(db)? {
            check_cap(
                Self::count(&self.devices, device.user.as_bytes())?,
                limits.devices,
                "devices of a user",
            )?;
        }
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
        self.blocking(move |s| {
            s.update_user(id, |u| {
                u.user.profile = profile;
                u.user.clone()
            })
        })
        .await
    }

    async fn privacy(&self, user: UserId) -> Result<Privacy> {
        self.blocking(move |s| Ok(s.require_stored(user)?.privacy))
            .await
    }

    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy> {
        self.blocking(move |s| s.update_user(user, |u| u.privacy = privacy))
            .await?;
        Ok(privacy)
    }

    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        self.blocking(move |s| s.token_state(user, session)).await
    }

    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        self.blocking(move |s| s.revoke_session(user, session, until, now))
            .await
    }

    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        self.blocking(move |s| s.revoke_all_sessions(user)).await
    }

    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        let limits = *limits;
        self.blocking(move |s| s.request_friend(from, to, now, &limits))
            .await
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        self.blocking(move |s| s.remove_friend(a, b)).await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        self.blocking(move |s| s.friends(user)).await
    }

    async fn block(&self, user: UserId, target: UserId) -> Result<()> {
        self.blocking(move |s| s.block(user, target)).await
    }

    async fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        self.blocking(move |s| s.unblock(user, target)).await
    }

    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        self.blocking(move |s| s.blocked(user)).await
    }

    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        self.blocking(move |s| s.friend_requests(user)).await
    }

    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        let among = among.to_vec();
        self.blocking(move |s| s.contacts(user, &among)).await
    }

    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        let limits = *limits;
        self.blocking(move |s| s.create_channel(channel, &limits))
            .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        self.blocking(move |s| s.load_channel(id)).await
    }

    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        let limits = *limits;
        self.blocking(move |s| s.change_membership(channel, user, true, &limits, false))
            .await
    }

    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        let limits = Limits {
            group_members: usize::MAX,
            ..Limits::default()
        };
        self.blocking(move |s| s.change_membership(channel, user, false, &limits, false))
            .await
    }

    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        self.blocking(move |s| s.channels_of(user, after, limit))
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
        self.blocking(move |s| s.invite(channel, user, inviter, now, &limits))
            .await
    }

    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        self.blocking(move |s| s.invitations(user)).await
    }

    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        let limits = *limits;
        self.blocking(move |s| s.change_membership(channel, user, true, &limits, true))
            .await
    }

    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        self.blocking(move |s| s.remove_invitation(channel, user))
            .await
    }

    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        let limits = *limits;
        self.blocking(move |s| s.register_device(device, &limits))
            .await
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
