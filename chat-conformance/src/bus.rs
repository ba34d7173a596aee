//! The [`DeliveryBus`] suite: delivery after `subscribe`, per-publisher
//! order, counted subscriptions, one handler call per node (a group message
//! crosses the bus once per node that holds recipients), the subscriptions
//! of a dead node, and a single handler.
//!
//! Deliveries cross a broker, so they are awaited with a deadline; that a
//! node did *not* receive something is checked after a later envelope from
//! the same publisher to the same node has arrived, plus a short grace.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_core::{
    BusEvent, DeliveryBus, DeviceId, Envelope, EnvelopeHandler, Presence, PresenceStatus, UserId,
};
use futures::future::BoxFuture;

use crate::eventually;

/// How long a delivery may take before the suite calls it lost.
const DELIVERY: Duration = Duration::from_secs(10);
/// Extra wait before concluding that nothing more arrives.
const GRACE: Duration = Duration::from_millis(150);

/// One node of the bus under test.
pub struct TestNode {
    /// The node's bus.
    pub bus: Arc<dyn DeliveryBus>,
    /// Ends the node as a crash would (its broker connection or lease goes
    /// away without an unsubscribe).
    pub kill: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}

impl fmt::Debug for TestNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestNode").field("bus", &self.bus).finish()
    }
}

/// Makes nodes on one shared bus (one hub, one broker and prefix).
#[async_trait]
pub trait BusNodes: Send + Sync {
    /// A new node on the shared bus, with no handler attached yet.
    async fn node(&self) -> TestNode;
}

/// A sample envelope, different for each `n`. The only place the suite
/// builds envelopes, so it does not depend on their fields elsewhere.
pub fn sample_envelope(n: u64) -> Envelope {
    Envelope {
        event: BusEvent::Presence {
            presence: Presence {
                user: UserId::from_bytes((u128::from(n) | (0x5eed << 64)).to_be_bytes()),
                status: PresenceStatus::Online,
                last_active_at: Some(n),
            },
        },
        skip_device: n.is_multiple_of(2).then(DeviceId::new_random),
    }
}

/// A handler that records what it is given.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: Mutex<Vec<(Vec<UserId>, Envelope)>>,
    resyncs: Mutex<usize>,
}

impl Recorder {
    /// Every `(users, envelope)` delivered so far, in order.
    pub fn calls(&self) -> Vec<(Vec<UserId>, Envelope)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How often the bus reported a gap.
    pub fn resyncs(&self) -> usize {
        *self.resyncs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls that carried `envelope`.
    pub fn calls_with(&self, envelope: &Envelope) -> Vec<Vec<UserId>> {
        self.calls()
            .into_iter()
            .filter(|(_, e)| e == envelope)
            .map(|(u, _)| u)
            .collect()
    }

    /// Waits until `envelope` has been delivered at least once; returns
    /// the users of its calls.
    pub async fn wait_for(&self, envelope: &Envelope) -> Vec<Vec<UserId>> {
        eventually(DELIVERY, "an envelope to be delivered", || async {
            let calls = self.calls_with(envelope);
            (!calls.is_empty()).then_some(calls)
        })
        .await
    }
}

impl EnvelopeHandler for Recorder {
    fn deliver(&self, users: &[UserId], envelope: &Envelope) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((users.to_vec(), envelope.clone()));
    }

    fn resync(&self) {
        *self.resyncs.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
}

/// A node with a recorder attached.
struct Attached {
    node: TestNode,
    seen: Arc<Recorder>,
}

async fn attached(nodes: &dyn BusNodes) -> Attached {
    let node = nodes.node().await;
    let seen = Arc::new(Recorder::default());
    node.bus.attach(seen.clone()).await.expect("attach");
    Attached { node, seen }
}

/// Envelope numbers unique within a run of the suite.
fn next_n() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) + rand::random::<u32>() as u64 * 1_000_000
}

/// Publishes a marker from `from` to `marker_user` (subscribed on `to`) and
/// waits for it: what `from` published to `to` before has arrived by then.
async fn settle(from: &Attached, to: &Attached, marker_user: UserId) {
    let marker = sample_envelope(next_n());
    from.node
        .bus
        .publish(&[marker_user], marker.clone())
        .await
        .expect("publish marker");
    to.seen.wait_for(&marker).await;
    tokio::time::sleep(GRACE).await;
}

/// Runs every test of the suite.
pub async fn run_all(nodes: &dyn BusNodes) {
    attach_only_once(nodes).await;
    delivers_after_subscribe(nodes).await;
    keeps_publish_order(nodes).await;
    counts_subscriptions(nodes).await;
    group_crosses_once_per_node(nodes).await;
    user_on_two_nodes_gets_both(nodes).await;
    dead_node_takes_its_subscriptions(nodes).await;
    unknown_users_are_fine(nodes).await;
}

/// A second `attach` fails.
pub async fn attach_only_once(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    assert!(
        a.node
            .bus
            .attach(Arc::new(Recorder::default()))
            .await
            .is_err(),
        "a second attach must fail"
    );
}

/// After `subscribe` returns, an envelope published on another node (and
/// on the same node) reaches the subscribed node once, equal to the one
/// published, and no other node.
pub async fn delivers_after_subscribe(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let (u, v) = (UserId::new_random(), UserId::new_random());
    b.node.bus.subscribe(u).await.expect("subscribe");
    a.node.bus.subscribe(v).await.expect("subscribe");
    for _ in 0..20 {
        let env = sample_envelope(next_n());
        a.node
            .bus
            .publish(&[u], env.clone())
            .await
            .expect("publish");
        assert_eq!(b.seen.wait_for(&env).await, vec![vec![u]]);
    }
    // Published on the subscribed node itself.
    let own = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[v], own.clone())
        .await
        .expect("publish");
    assert_eq!(a.seen.wait_for(&own).await, vec![vec![v]]);
    settle(&a, &b, u).await;
    let stray = a
        .seen
        .calls()
        .into_iter()
        .filter(|(users, _)| users.contains(&u));
    assert_eq!(stray.count(), 0, "the publishing node does not hold u");
    let b_calls = b.seen.calls();
    assert!(
        b_calls.iter().all(|(users, _)| users == &vec![u]),
        "b holds only u: {b_calls:?}"
    );
    // Exactly one call per envelope.
    let mut envs: Vec<_> = b_calls.iter().map(|(_, e)| format!("{e:?}")).collect();
    let before = envs.len();
    envs.sort();
    envs.dedup();
    assert_eq!(envs.len(), before, "an envelope was delivered twice");
}

/// Envelopes from one publisher to one user arrive in publish order.
pub async fn keeps_publish_order(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let u = UserId::new_random();
    b.node.bus.subscribe(u).await.expect("subscribe");
    let sent: Vec<Envelope> = (0..200).map(|_| sample_envelope(next_n())).collect();
    for env in &sent {
        a.node
            .bus
            .publish(&[u], env.clone())
            .await
            .expect("publish");
    }
    let last = sent.last().cloned().expect("some envelopes");
    b.seen.wait_for(&last).await;
    let got: Vec<Envelope> = b.seen.calls().into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, sent, "envelopes arrived out of order or were lost");
}

/// `subscribe` twice needs `unsubscribe` twice.
pub async fn counts_subscriptions(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let (u, marker) = (UserId::new_random(), UserId::new_random());
    b.node.bus.subscribe(marker).await.expect("subscribe");
    b.node.bus.subscribe(u).await.expect("subscribe");
    b.node.bus.subscribe(u).await.expect("subscribe");
    b.node.bus.unsubscribe(u).await.expect("unsubscribe");
    let still = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], still.clone())
        .await
        .expect("publish");
    assert_eq!(
        b.seen.wait_for(&still).await,
        vec![vec![u]],
        "one subscription left"
    );
    b.node.bus.unsubscribe(u).await.expect("unsubscribe");
    let gone = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], gone.clone())
        .await
        .expect("publish");
    settle(&a, &b, marker).await;
    assert!(
        b.seen.calls_with(&gone).is_empty(),
        "delivered after the last unsubscribe"
    );
}

/// One envelope to the 100 members of a group spread over two nodes (and
/// to some users subscribed nowhere) reaches each node in one call naming
/// exactly its own members.
pub async fn group_crosses_once_per_node(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let c = attached(nodes).await;
    let members: Vec<UserId> = (0..100).map(|_| UserId::new_random()).collect();
    let (on_b, on_c) = members.split_at(60);
    for u in on_b {
        b.node.bus.subscribe(*u).await.expect("subscribe");
    }
    for u in on_c {
        c.node.bus.subscribe(*u).await.expect("subscribe");
    }
    let mut to: Vec<UserId> = members.clone();
    to.extend((0..5).map(|_| UserId::new_random()));
    let env = sample_envelope(next_n());
    a.node.bus.publish(&to, env.clone()).await.expect("publish");
    b.seen.wait_for(&env).await;
    c.seen.wait_for(&env).await;
    settle(&a, &b, on_b[0]).await;
    settle(&a, &c, on_c[0]).await;
    let got_b = b.seen.calls_with(&env);
    let got_c = c.seen.calls_with(&env);
    assert_eq!(
        got_b.len(),
        1,
        "b got the envelope in {} calls",
        got_b.len()
    );
    assert_eq!(
        got_c.len(),
        1,
        "c got the envelope in {} calls",
        got_c.len()
    );
    let set = |v: &[UserId]| v.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(set(&got_b[0]), set(on_b));
    assert_eq!(set(&got_c[0]), set(on_c));
    assert!(a.seen.calls_with(&env).is_empty());
}

/// A user subscribed on two nodes gets the envelope on both.
pub async fn user_on_two_nodes_gets_both(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let c = attached(nodes).await;
    let u = UserId::new_random();
    b.node.bus.subscribe(u).await.expect("subscribe");
    c.node.bus.subscribe(u).await.expect("subscribe");
    let env = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], env.clone())
        .await
        .expect("publish");
    assert_eq!(b.seen.wait_for(&env).await, vec![vec![u]]);
    assert_eq!(c.seen.wait_for(&env).await, vec![vec![u]]);
}

/// A node that dies takes its subscriptions with it: publishing to its
/// users still succeeds, and a node that subscribes them later gets what is
/// published from then on.
pub async fn dead_node_takes_its_subscriptions(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let u = UserId::new_random();
    b.node.bus.subscribe(u).await.expect("subscribe");
    let first = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], first.clone())
        .await
        .expect("publish");
    b.seen.wait_for(&first).await;
    let Attached { node, .. } = b;
    (node.kill)().await;
    let lost = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], lost)
        .await
        .expect("publishing to a dead node's user is not an error");
    let c = attached(nodes).await;
    c.node.bus.subscribe(u).await.expect("subscribe");
    let after = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[u], after.clone())
        .await
        .expect("publish");
    assert_eq!(c.seen.wait_for(&after).await, vec![vec![u]]);
}

/// Publishing to users subscribed nowhere, and unsubscribing a user never
/// subscribed, succeed and deliver nothing.
pub async fn unknown_users_are_fine(nodes: &dyn BusNodes) {
    let a = attached(nodes).await;
    let b = attached(nodes).await;
    let (nobody, marker) = (UserId::new_random(), UserId::new_random());
    b.node.bus.subscribe(marker).await.expect("subscribe");
    b.node
        .bus
        .unsubscribe(nobody)
        .await
        .expect("unsubscribe unknown");
    let env = sample_envelope(next_n());
    a.node
        .bus
        .publish(&[nobody], env.clone())
        .await
        .expect("publish");
    a.node
        .bus
        .publish(&[], env.clone())
        .await
        .expect("publish to none");
    settle(&a, &b, marker).await;
    assert!(b.seen.calls_with(&env).is_empty());
    assert!(a.seen.calls_with(&env).is_empty());
}
