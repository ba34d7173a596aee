//! [`MemoryDirectory`]: the directory in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::directory::{
    Contact, Directory, FriendOutcome, InviteOutcome, Limits, TokenState, UserRecord,
};
use crate::error::{Error, Result};
use crate::id::{ChannelId, DeviceId, UserId};
use crate::rules::{
    apply_membership, check_cap, check_friend_pair, check_groups_joined, check_invite_caps,
    check_new_group_caps, decide_friend_request, decide_invite, revoked_after,
    validate_new_channel, validate_new_user, FriendPair,
};
use crate::types::{
    Channel, ChannelKind, Device, FriendRequest, Invitation, Privacy, Profile, User,
};

/// A user and what only the directory keeps about them.
#[derive(Debug)]
struct Account {
    record: UserRecord,
    privacy: Privacy,
    epoch: u64,
    /// Revoked sessions and until when their record is kept.
    revoked: BTreeMap<u64, u64>,
}

#[derive(Debug, Default)]
struct DirectoryState {
    users: HashMap<UserId, Account>,
    by_name: HashMap<String, UserId>,
    friends: HashMap<UserId, BTreeSet<UserId>>,
    /// Pending friend requests by sender: `to → created_at`.
    requests_out: HashMap<UserId, BTreeMap<UserId, u64>>,
    /// Pending friend requests by recipient: the senders.
    requests_in: HashMap<UserId, BTreeSet<UserId>>,
    channels: HashMap<ChannelId, Channel>,
    memberships: HashMap<UserId, BTreeSet<ChannelId>>,
    /// Pending invitations by invitee.
    invitations_in: HashMap<UserId, BTreeMap<ChannelId, Invitation>>,
    /// Pending invitations by inviter: `(invitee, channel)`.
    invitations_out: HashMap<UserId, BTreeSet<(UserId, ChannelId)>>,
    devices: HashMap<UserId, BTreeMap<DeviceId, Device>>,
    /// Blocks by blocker: the users they block.
    blocks: HashMap<UserId, BTreeSet<UserId>>,
}

impl DirectoryState {
    fn require_user(&self, id: UserId) -> Result<()> {
        if self.users.contains_key(&id) {
            Ok(())
        } else {
            Err(Error::not_found("user"))
        }
    }

    fn account(&mut self, id: UserId) -> Result<&mut Account> {
        self.users.get_mut(&id).ok_or(Error::not_found("user"))
    }

    fn friend_count(&self, user: UserId) -> usize {
        self.friends.get(&user).map_or(0, BTreeSet::len)
    }

    fn sent(&self, user: UserId) -> usize {
        self.requests_out.get(&user).map_or(0, BTreeMap::len)
            + self.invitations_out.get(&user).map_or(0, BTreeSet::len)
    }

    fn received(&self, user: UserId) -> usize {
        self.requests_in.get(&user).map_or(0, BTreeSet::len)
            + self.invitations_in.get(&user).map_or(0, BTreeMap::len)
    }

    fn groups_of(&self, user: UserId) -> impl Iterator<Item = &Channel> {
        self.memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|c| self.channels.get(c))
            .filter(|c| c.kind == ChannelKind::Group)
    }

    fn joined(&self, user: UserId) -> usize {
        self.groups_of(user).count()
    }

    fn owned(&self, user: UserId) -> usize {
        self.groups_of(user)
            .filter(|c| c.owner == Some(user))
            .count()
    }

    fn remove_request(&mut self, from: UserId, to: UserId) {
        if let Some(out) = self.requests_out.get_mut(&from) {
            out.remove(&to);
        }
        if let Some(inc) = self.requests_in.get_mut(&to) {
            inc.remove(&from);
        }
    }

    fn drop_invitation(&mut self, channel: ChannelId, user: UserId) -> bool {
        let Some(inv) = self
            .invitations_in
            .get_mut(&user)
            .and_then(|m| m.remove(&channel))
        else {
            return false;
        };
        if let Some(out) = self.invitations_out.get_mut(&inv.inviter) {
            out.remove(&(user, channel));
        }
        true
    }

    /// Applies a membership change, dropping an invitation the new member had.
    fn change_membership(
        &mut self,
        channel: ChannelId,
        user: UserId,
        add: bool,
        limits: &Limits,
    ) -> Result<Channel> {
        let current = self
            .channels
            .get(&channel)
            .ok_or(Error::not_found("channel"))?;
        let Some(updated) = apply_membership(current, user, add, limits.group_members)? else {
            let current = current.clone();
            if add {
                self.drop_invitation(channel, user);
            }
            return Ok(current);
        };
        if add {
            check_groups_joined(self.joined(user), limits)?;
            self.memberships.entry(user).or_default().insert(channel);
            self.drop_invitation(channel, user);
        } else if let Some(m) = self.memberships.get_mut(&user) {
            m.remove(&channel);
        }
        self.channels.insert(channel, updated.clone());
        Ok(updated)
    }
}

/// The directory in memory.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    state: Mutex<DirectoryState>,
}

impl MemoryDirectory {
    /// A channel as it is now, without waiting (for [`MemoryStore`]'s
    /// commits).
    ///
    /// [`MemoryStore`]: super::MemoryStore
    pub(super) fn channel_now(&self, id: ChannelId) -> Option<Channel> {
        lock(&self.state).channels.get(&id).cloned()
    }

    /// Whether `blocker` blocks `user` now (for [`MemoryStore`]'s commits
    /// to direct channels).
    ///
    /// [`MemoryStore`]: super::MemoryStore
    pub(super) fn blocks_now(&self, blocker: UserId, user: UserId) -> bool {
        lock(&self.state)
            .blocks
            .get(&blocker)
            .is_some_and(|b| b.contains(&user))
    }
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn create_user(&self, record: UserRecord) -> Result<User> {
        validate_new_user(&record)?;
        let mut st = lock(&self.state);
        if st.by_name.contains_key(&record.user.username) {
            return Err(Error::AlreadyExists { what: "username" });
        }
        if st.users.contains_key(&record.user.id) {
            return Err(Error::AlreadyExists { what: "user" });
        }
        st.by_name
            .insert(record.user.username.clone(), record.user.id);
        let user = record.user.clone();
        st.users.insert(
            user.id,
            Account {
                record,
                privacy: Privacy::default(),
                epoch: 0,
                revoked: BTreeMap::new(),
            },
        );
        Ok(user)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        Ok(lock(&self.state)
            .users
            .get(&id)
            .map(|a| a.record.user.clone()))
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let st = lock(&self.state);
        Ok(st
            .by_name
            .get(username)
            .and_then(|id| st.users.get(id))
            .map(|a| a.record.clone()))
    }

    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        let mut st = lock(&self.state);
        let account = st.account(id)?;
        account.record.user.profile = profile;
        Ok(account.record.user.clone())
    }

    async fn privacy(&self, user: UserId) -> Result<Privacy> {
        Ok(lock(&self.state).account(user)?.privacy)
    }

    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy> {
        lock(&self.state).account(user)?.privacy = privacy;
        Ok(privacy)
    }

    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        let mut st = lock(&self.state);
        let account = st.account(user)?;
        Ok(TokenState {
            epoch: account.epoch,
            revoked: account.revoked.contains_key(&session),
        })
    }

    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let account = st.account(user)?;
        let kept = account.revoked.iter().map(|(s, u)| (*s, *u));
        match revoked_after(kept, session, until, now) {
            Some(live) => account.revoked = live.into_iter().collect(),
            None => {
                account.epoch += 1;
                account.revoked.clear();
            }
        }
        Ok(())
    }

    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        let mut st = lock(&self.state);
        let account = st.account(user)?;
        account.epoch += 1;
        account.revoked.clear();
        Ok(account.epoch)
    }

    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        check_friend_pair(from, to)?;
        let mut st = lock(&self.state);
        st.require_user(from)?;
        st.require_user(to)?;
        // Under the same lock as `block`: a request that starts after the
        // block returned is refused.
        if st.blocks.get(&to).is_some_and(|b| b.contains(&from)) {
            return Err(Error::Blocked);
        }
        let out =
            |a: UserId, b: UserId| st.requests_out.get(&a).is_some_and(|m| m.contains_key(&b));
        let pair = FriendPair {
            friends: st.friends.get(&from).is_some_and(|f| f.contains(&to)),
            requested: out(from, to),
            incoming: out(to, from),
            from_friends: st.friend_count(from),
            to_friends: st.friend_count(to),
            from_sent: st.sent(from),
            to_received: st.received(to),
        };
        let outcome = decide_friend_request(&pair, limits)?;
        match outcome {
            FriendOutcome::Accepted => {
                st.remove_request(to, from);
                st.friends.entry(from).or_default().insert(to);
                st.friends.entry(to).or_default().insert(from);
            }
            FriendOutcome::Requested => {
                st.requests_out.entry(from).or_default().insert(to, now);
                st.requests_in.entry(to).or_default().insert(from);
            }
            FriendOutcome::AlreadyFriends | FriendOutcome::AlreadyRequested => {}
        }
        Ok(outcome)
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(f) = st.friends.get_mut(&a) {
            f.remove(&b);
        }
        if let Some(f) = st.friends.get_mut(&b) {
            f.remove(&a);
        }
        st.remove_request(a, b);
        st.remove_request(b, a);
        Ok(())
    }

    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        Ok(lock(&self.state)
            .friends
            .get(&user)
            .map(|f| f.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn block(&self, user: UserId, target: UserId) -> Result<()> {
        if user == target {
            return Err(Error::invalid("a user cannot block themselves"));
        }
        let mut st = lock(&self.state);
        st.require_user(user)?;
        st.require_user(target)?;
        st.blocks.entry(user).or_default().insert(target);
        Ok(())
    }

    async fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        if let Some(b) = lock(&self.state).blocks.get_mut(&user) {
            b.remove(&target);
        }
        Ok(())
    }

    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        Ok(lock(&self.state)
            .blocks
            .get(&user)
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        let st = lock(&self.state);
        let mut out: Vec<FriendRequest> = Vec::new();
        for (to, created_at) in st.requests_out.get(&user).into_iter().flatten() {
            out.push(FriendRequest {
                from: user,
                to: *to,
                created_at: *created_at,
            });
        }
        for from in st.requests_in.get(&user).into_iter().flatten() {
            if let Some(created_at) = st.requests_out.get(from).and_then(|m| m.get(&user)) {
                out.push(FriendRequest {
                    from: *from,
                    to: user,
                    created_at: *created_at,
                });
            }
        }
        out.sort_by_key(|r| (r.from, r.to));
        Ok(out)
    }

    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        let st = lock(&self.state);
        let mut known: BTreeSet<UserId> = st.friends.get(&user).cloned().unwrap_or_default();
        for channel in st
            .memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|c| st.channels.get(c))
        {
            known.extend(channel.members.iter().copied());
        }
        known.remove(&user);
        known.retain(|u| !st.blocks.get(u).is_some_and(|b| b.contains(&user)));
        let mut seen = BTreeSet::new();
        Ok(among
            .iter()
            .copied()
            .filter(|u| known.contains(u) && seen.insert(*u))
            .filter_map(|u| {
                st.users.get(&u).map(|a| Contact {
                    user: u,
                    privacy: a.privacy,
                })
            })
            .collect())
    }

    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        let channel = validate_new_channel(&channel)?;
        let mut st = lock(&self.state);
        for m in &channel.members {
            st.require_user(*m)?;
        }
        if let Some(existing) = st.channels.get(&channel.id) {
            return match channel.kind {
                ChannelKind::Direct => Ok(existing.clone()),
                _ => Err(Error::AlreadyExists { what: "channel" }),
            };
        }
        let owned = channel.owner.map_or(0, |o| st.owned(o));
        let joined: Vec<usize> = channel.members.iter().map(|m| st.joined(*m)).collect();
        check_new_group_caps(&channel, owned, &joined, limits)?;
        for m in &channel.members {
            st.memberships.entry(*m).or_default().insert(channel.id);
        }
        st.channels.insert(channel.id, channel.clone());
        Ok(channel)
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        Ok(lock(&self.state).channels.get(&id).cloned())
    }

    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        let mut st = lock(&self.state);
        st.require_user(user)?;
        st.change_membership(channel, user, true, limits)
    }

    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        let limits = Limits {
            group_members: usize::MAX,
            ..Limits::default()
        };
        lock(&self.state).change_membership(channel, user, false, &limits)
    }

    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = lock(&self.state);
        let Some(ids) = st.memberships.get(&user) else {
            return Ok(Vec::new());
        };
        let lower = after.map_or(Unbounded, Excluded);
        Ok(ids
            .range((lower, Unbounded))
            .filter_map(|c| st.channels.get(c).cloned())
            .take(limit)
            .collect())
    }

    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome> {
        let mut st = lock(&self.state);
        st.require_user(user)?;
        st.require_user(inviter)?;
        let group = st
            .channels
            .get(&channel)
            .ok_or(Error::not_found("channel"))?;
        let invited = st
            .invitations_in
            .get(&user)
            .is_some_and(|m| m.contains_key(&channel));
        if let Some(outcome) = decide_invite(group, user, invited)? {
            return Ok(outcome);
        }
        let invitation = Invitation {
            channel,
            group_name: group.name.clone(),
            inviter,
            invitee: user,
            created_at: now,
        };
        check_invite_caps(st.sent(inviter), st.received(user), limits)?;
        st.invitations_in
            .entry(user)
            .or_default()
            .insert(channel, invitation);
        st.invitations_out
            .entry(inviter)
            .or_default()
            .insert((user, channel));
        Ok(InviteOutcome::Invited)
    }

    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        let st = lock(&self.state);
        let mut out: Vec<Invitation> = st
            .invitations_in
            .get(&user)
            .into_iter()
            .flat_map(|m| m.values().cloned())
            .collect();
        for (invitee, channel) in st.invitations_out.get(&user).into_iter().flatten() {
            if let Some(inv) = st.invitations_in.get(invitee).and_then(|m| m.get(channel)) {
                if inv.invitee != user {
                    out.push(inv.clone());
                }
            }
        }
        out.sort_by_key(|i| (i.invitee, i.channel));
        Ok(out)
    }

    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        let mut st = lock(&self.state);
        if !st
            .invitations_in
            .get(&user)
            .is_some_and(|m| m.contains_key(&channel))
        {
            return Err(Error::not_found("invitation"));
        }
        st.change_membership(channel, user, true, limits)
    }

    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        Ok(lock(&self.state).drop_invitation(channel, user))
    }

    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        let mut st = lock(&self.state);
        st.require_user(device.user)?;
        let devices = st.devices.entry(device.user).or_default();
        if !devices.contains_key(&device.id) {
            check_cap(devices.len(), limits.devices, "devices of a user")?;
        }
        devices.insert(device.id, device.clone());
        Ok(device)
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        Ok(lock(&self.state)
            .devices
            .get(&user)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        if let Some(d) = lock(&self.state).devices.get_mut(&user) {
            d.remove(&device);
        }
        Ok(())
    }

    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        let mut st = lock(&self.state);
        let Some(d) = st.devices.get_mut(&user).and_then(|d| d.get_mut(&device)) else {
            return Ok(false);
        };
        if d.push_token.as_deref() != Some(token) {
            return Ok(false);
        }
        d.push_token = None;
        Ok(true)
    }
}
