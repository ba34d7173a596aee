//! Backends behind a stopwatch: [`Metered`] wraps the node's message
//! store, directory and delivery bus trait objects and records every
//! storage call's latency by operation and backend, and every publish's. It forwards each call unchanged, so the
//! backends' contracts hold through it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chat_core::{
    Appended, Channel, ChannelId, Committed, Contact, DeliveryBus, Device, DeviceId, Directory,
    Envelope, EnvelopeHandler, FriendOutcome, FriendRequest, Health, HistoryStore, Inbox,
    InboxEntry, Invitation, InviteOutcome, Limits, Message, MessageId, MessageStore, NewMessage,
    Page, Paged, Privacy, Profile, Result, Seq, TokenState, User, UserId, UserRecord,
};

use crate::metrics::{CallLabels, Metrics};

/// A backend whose calls are timed into [`Metrics::storage`].
#[derive(Debug)]
pub(crate) struct Metered<T: ?Sized> {
    inner: Arc<T>,
    backend: Arc<str>,
    metrics: Arc<Metrics>,
}

/// The backend's name for the `backend` label: its type name as its
/// `Debug` output starts (`EmbeddedStore`, `PostgresStore`, `MemoryStore`).
fn backend_name(backend: &dyn std::fmt::Debug) -> Arc<str> {
    let text = format!("{backend:?}");
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if name.is_empty() {
        Arc::from("unknown")
    } else {
        Arc::from(name)
    }
}

impl<T: ?Sized + std::fmt::Debug> Metered<T> {
    pub(crate) fn new(inner: Arc<T>, metrics: Arc<Metrics>) -> Self {
        let backend = backend_name(&inner);
        Self {
            inner,
            backend,
            metrics,
        }
    }

    /// Records a storage call's latency.
    fn record(&self, operation: &'static str, start: Instant) {
        self.observe(&self.metrics.storage, operation, start);
    }

    fn observe(
        &self,
        family: &crate::metrics::Latencies<CallLabels>,
        operation: &'static str,
        start: Instant,
    ) {
        Metrics::observe(
            family,
            &CallLabels {
                backend: self.backend.clone(),
                operation,
            },
            start.elapsed(),
        );
    }
}

/// Forwards `self.inner.$method(args)`, timing it as `$method`.
macro_rules! timed {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let start = Instant::now();
        let result = $self.inner.$method($($arg),*).await;
        $self.record(stringify!($method), start);
        result
    }};
}

#[async_trait]
impl HistoryStore for Metered<dyn MessageStore> {
    async fn append(&self, message: Message) -> Result<Appended> {
        timed!(self.append(message))
    }
    async fn get(&self, channel: ChannelId, id: MessageId) -> Result<Option<Message>> {
        timed!(self.get(channel, id))
    }
    async fn page(&self, channel: ChannelId, page: Page) -> Result<Paged<Message>> {
        timed!(self.page(channel, page))
    }
    async fn reactions(
        &self,
        channel: ChannelId,
        messages: &[MessageId],
        viewer: UserId,
    ) -> Result<Vec<(MessageId, Vec<chat_core::Reactions>)>> {
        timed!(self.reactions(channel, messages, viewer))
    }
}

#[async_trait]
impl Inbox for Metered<dyn MessageStore> {
    async fn read(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Paged<InboxEntry>> {
        timed!(self.read(user, after, limit, max_bytes))
    }
    async fn cursor(&self, user: UserId, device: DeviceId) -> Result<Seq> {
        timed!(self.cursor(user, device))
    }
    async fn advance_cursor(&self, user: UserId, device: DeviceId, cursor: Seq) -> Result<Seq> {
        timed!(self.advance_cursor(user, device, cursor))
    }
}

#[async_trait]
impl chat_core::Receipts for Metered<dyn MessageStore> {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: chat_core::MarkerKind,
        message: MessageId,
    ) -> Result<chat_core::MarkerUpdate> {
        timed!(self.set_marker(user, channel, kind, message))
    }
    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<chat_core::Receipt>> {
        timed!(self.receipts(keys))
    }
    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<chat_core::Marker>>> {
        timed!(self.heads(channels))
    }
}

#[async_trait]
impl MessageStore for Metered<dyn MessageStore> {
    async fn commit(&self, message: NewMessage) -> Result<Committed> {
        timed!(self.commit(message))
    }
    async fn change(&self, change: chat_core::NewChange) -> Result<chat_core::Changed> {
        timed!(self.change(change))
    }
    fn health(&self) -> Health {
        self.inner.health()
    }
}

#[async_trait]
impl Directory for Metered<dyn Directory> {
    async fn create_user(&self, record: UserRecord) -> Result<User> {
        timed!(self.create_user(record))
    }
    async fn user(&self, id: UserId) -> Result<Option<User>> {
        timed!(self.user(id))
    }
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        timed!(self.user_by_name(username))
    }
    async fn update_profile(&self, id: UserId, profile: Profile) -> Result<User> {
        timed!(self.update_profile(id, profile))
    }
    async fn privacy(&self, user: UserId) -> Result<Privacy> {
        timed!(self.privacy(user))
    }
    async fn set_privacy(&self, user: UserId, privacy: Privacy) -> Result<Privacy> {
        timed!(self.set_privacy(user, privacy))
    }
    async fn token_state(&self, user: UserId, session: u64) -> Result<TokenState> {
        timed!(self.token_state(user, session))
    }
    async fn revoke_session(&self, user: UserId, session: u64, until: u64, now: u64) -> Result<()> {
        timed!(self.revoke_session(user, session, until, now))
    }
    async fn revoke_all_sessions(&self, user: UserId) -> Result<u64> {
        timed!(self.revoke_all_sessions(user))
    }
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<FriendOutcome> {
        timed!(self.request_friend(from, to, now, limits))
    }
    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<()> {
        timed!(self.remove_friend(a, b))
    }
    async fn friends(&self, user: UserId) -> Result<Vec<UserId>> {
        timed!(self.friends(user))
    }
    async fn friend_requests(&self, user: UserId) -> Result<Vec<FriendRequest>> {
        timed!(self.friend_requests(user))
    }
    async fn contacts(&self, user: UserId, among: &[UserId]) -> Result<Vec<Contact>> {
        timed!(self.contacts(user, among))
    }
    async fn block(&self, user: UserId, target: UserId) -> Result<()> {
        timed!(self.block(user, target))
    }
    async fn unblock(&self, user: UserId, target: UserId) -> Result<()> {
        timed!(self.unblock(user, target))
    }
    async fn blocked(&self, user: UserId) -> Result<Vec<UserId>> {
        timed!(self.blocked(user))
    }
    async fn create_channel(&self, channel: Channel, limits: &Limits) -> Result<Channel> {
        timed!(self.create_channel(channel, limits))
    }
    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>> {
        timed!(self.channel(id))
    }
    async fn add_member(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        timed!(self.add_member(channel, user, limits))
    }
    async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        timed!(self.remove_member(channel, user))
    }
    async fn channels_of(
        &self,
        user: UserId,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<Vec<Channel>> {
        timed!(self.channels_of(user, after, limit))
    }
    async fn invite(
        &self,
        channel: ChannelId,
        user: UserId,
        inviter: UserId,
        now: u64,
        limits: &Limits,
    ) -> Result<InviteOutcome> {
        timed!(self.invite(channel, user, inviter, now, limits))
    }
    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        timed!(self.invitations(user))
    }
    async fn accept_invitation(
        &self,
        channel: ChannelId,
        user: UserId,
        limits: &Limits,
    ) -> Result<Channel> {
        timed!(self.accept_invitation(channel, user, limits))
    }
    async fn remove_invitation(&self, channel: ChannelId, user: UserId) -> Result<bool> {
        timed!(self.remove_invitation(channel, user))
    }
    async fn register_device(&self, device: Device, limits: &Limits) -> Result<Device> {
        timed!(self.register_device(device, limits))
    }
    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        timed!(self.devices(user))
    }
    async fn remove_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        timed!(self.remove_device(user, device))
    }
    async fn clear_push_token(&self, user: UserId, device: DeviceId, token: &str) -> Result<bool> {
        timed!(self.clear_push_token(user, device, token))
    }
}

#[async_trait]
impl DeliveryBus for Metered<dyn DeliveryBus> {
    async fn attach(&self, handler: Arc<dyn EnvelopeHandler>) -> Result<()> {
        self.inner.attach(handler).await
    }
    async fn subscribe(&self, user: UserId) -> Result<()> {
        self.inner.subscribe(user).await
    }
    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        self.inner.unsubscribe(user).await
    }
    async fn publish(&self, users: &[UserId], envelope: Envelope) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.publish(users, envelope).await;
        self.observe(&self.metrics.bus_publish, "publish", start);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Counters;
    use chat_core::memory::{MemoryDirectory, MemoryStore};

    #[tokio::test]
    async fn calls_pass_through_and_are_timed_by_backend_and_operation() {
        let metrics = Arc::new(Metrics::new(Arc::new(Counters::default())));
        let directory = Arc::new(MemoryDirectory::default());
        let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(directory.clone()));
        let directory: Arc<dyn Directory> = directory;
        let store = Metered::new(store, metrics.clone());
        let directory = Metered::new(directory, metrics.clone());
        let user = UserId::new_random();
        assert_eq!(directory.user(user).await.ok(), Some(None));
        let device = DeviceId::new_random();
        assert_eq!(store.cursor(user, device).await.ok(), Some(Seq::ZERO));
        let text = metrics.render();
        assert!(
            text.contains(
                "chat_storage_duration_seconds_count{backend=\"MemoryDirectory\",operation=\"user\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "chat_storage_duration_seconds_count{backend=\"MemoryStore\",operation=\"cursor\"} 1"
            ),
            "{text}"
        );
    }
}
