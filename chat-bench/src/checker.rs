//! The checker: what every device of a run showed, against what the
//! server acknowledged and what channel history holds.
//!
//! A run records into a [`History`]: the channels and their members, the
//! devices, every send attempted (its client message id) and every one
//! acknowledged, every message each device showed (in the order shown, with
//! its inbox position), the device cursor each time it moved, and at the
//! end each channel's history as the server has it. [`History::check`] then
//! verifies:
//!
//! 1. **no loss**: every acknowledged message is shown on every device of
//!    every member, except the device that sent it (its receipt stands for
//!    it), and is in its channel's history;
//! 2. **no duplicate**: no device shows a message twice;
//! 3. **order**: per channel, each device shows messages in id order;
//! 4. **sync covers history**: every message in a channel's history, acked
//!    or not (a send whose answer was lost with its server), is shown on
//!    every member device but the one that sent it;
//! 5. **cursor**: a device's cursor never passes a message of its user's
//!    inbox that the device had not shown by then (or sent itself).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use chat_core::{ChannelId, ClientMsgId, DeviceId, MessageId, Seq, UserId};
use serde::Serialize;

/// A message a device showed.
#[derive(Debug, Clone)]
pub struct Shown {
    /// Its channel.
    pub channel: ChannelId,
    /// Its id.
    pub message: MessageId,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Its position in the device user's inbox.
    pub seq: Seq,
}

/// An acknowledged send.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The device that sent it.
    pub device: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// The id the server gave it.
    pub message: MessageId,
    /// Its idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Its position in the sender's inbox, when the receipt says.
    pub seq: Option<Seq>,
}

/// A message of a channel's history, read from the server at the end.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub message: MessageId,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
}

#[derive(Debug, Clone)]
struct CursorSample {
    cursor: Seq,
    /// How many messages the device had shown when the cursor was read.
    shown: usize,
}

/// Everything a run recorded. See the module docs.
#[derive(Debug, Default)]
pub struct History {
    members: HashMap<ChannelId, Vec<UserId>>,
    devices: BTreeMap<DeviceId, UserId>,
    attempts: HashMap<ClientMsgId, DeviceId>,
    acked: Vec<Acked>,
    shown: HashMap<DeviceId, Vec<Shown>>,
    cursors: HashMap<DeviceId, Vec<CursorSample>>,
    stored: HashMap<ChannelId, Vec<Stored>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A channel and its members.
    pub fn channel(&mut self, channel: ChannelId, members: Vec<UserId>) {
        self.members.insert(channel, members);
    }

    /// A device of `user`.
    pub fn device(&mut self, device: DeviceId, user: UserId) {
        self.devices.insert(device, user);
    }

    /// `device` is about to send with `client_msg_id`.
    pub fn attempt(&mut self, device: DeviceId, client_msg_id: ClientMsgId) {
        self.attempts.insert(client_msg_id, device);
    }

    /// A send was acknowledged.
    pub fn acked(&mut self, acked: Acked) {
        self.attempts
            .insert(acked.client_msg_id.clone(), acked.device);
        self.acked.push(acked);
    }

    /// `device` showed a message.
    pub fn shown(&mut self, device: DeviceId, shown: Shown) {
        self.shown.entry(device).or_default().push(shown);
    }

    /// `device`'s cursor read now (after the messages recorded so far).
    pub fn cursor(&mut self, device: DeviceId, cursor: Seq) {
        let shown = self.shown.get(&device).map_or(0, Vec::len);
        let samples = self.cursors.entry(device).or_default();
        if samples.last().map(|s| s.cursor) != Some(cursor) {
            samples.push(CursorSample { cursor, shown });
        }
    }

    /// `channel`'s history as the server has it.
    pub fn stored(&mut self, channel: ChannelId, messages: Vec<Stored>) {
        self.stored.insert(channel, messages);
    }

    /// The members of `channel` (none if unknown).
    pub fn members_of(&self, channel: ChannelId) -> Vec<UserId> {
        self.members.get(&channel).cloned().unwrap_or_default()
    }

    /// The channels recorded.
    pub fn channels(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.members.keys().copied()
    }

    /// How many messages `device` has shown.
    pub fn shown_count(&self, device: DeviceId) -> usize {
        self.shown.get(&device).map_or(0, Vec::len)
    }

    /// Messages every member device should show, per device: what
    /// [`History::missing`] counts down to zero.
    pub fn expected(&self, device: DeviceId) -> usize {
        let Some(user) = self.devices.get(&device) else {
            return 0;
        };
        self.acked
            .iter()
            .filter(|a| a.device != device)
            .filter(|a| {
                self.members
                    .get(&a.channel)
                    .is_some_and(|m| m.contains(user))
            })
            .count()
    }

    /// Acknowledged messages not yet shown on some member device, in all:
    /// a run waits for this to reach zero before checking.
    pub fn missing(&self) -> usize {
        let shown: HashSet<(DeviceId, MessageId)> = self
            .shown
            .iter()
            .flat_map(|(d, s)| s.iter().map(move |s| (*d, s.message)))
            .collect();
        let mut missing = 0;
        for a in &self.acked {
            for d in self.member_devices(a.channel) {
                if d != a.device && !shown.contains(&(d, a.message)) {
                    missing += 1;
                }
            }
        }
        missing
    }

    fn member_devices(&self, channel: ChannelId) -> Vec<DeviceId> {
        let Some(members) = self.members.get(&channel) else {
            return Vec::new();
        };
        self.devices
            .iter()
            .filter(|(_, u)| members.contains(u))
            .map(|(d, _)| *d)
            .collect()
    }

    /// Verifies every property of the module docs.
    pub fn check(&self) -> CheckReport {
        let mut r = CheckReport {
            channels: self.members.len(),
            devices: self.devices.len(),
            acked: self.acked.len(),
            shown: self.shown.values().map(Vec::len).sum(),
            stored: self.stored.values().map(Vec::len).sum(),
            ..CheckReport::default()
        };
        // How often each device showed each message, and where first.
        let mut counts: HashMap<(DeviceId, MessageId), (usize, usize)> = HashMap::new();
        for (d, list) in &self.shown {
            for (i, s) in list.iter().enumerate() {
                counts.entry((*d, s.message)).or_insert((0, i)).0 += 1;
            }
        }
        let sent_by = |key: &ClientMsgId| self.attempts.get(key).copied();

        // 1. Every acknowledged message on every member device; 2. once.
        let stored_ids: HashSet<MessageId> = self
            .stored
            .values()
            .flat_map(|v| v.iter().map(|s| s.message))
            .collect();
        let acked_ids: HashSet<MessageId> = self.acked.iter().map(|a| a.message).collect();
        for a in &self.acked {
            if !self.stored.is_empty() && !stored_ids.contains(&a.message) {
                r.violation(Property::NotInHistory, a.message, a.device, "acked");
            }
            for d in self.member_devices(a.channel) {
                if d != a.device && !counts.contains_key(&(d, a.message)) {
                    r.violation(Property::Lost, a.message, d, "acked, never shown");
                }
            }
        }
        let mut dup: Vec<_> = counts.iter().filter(|(_, (n, _))| *n > 1).collect();
        dup.sort_by_key(|((d, m), _)| (*d, *m));
        for ((d, m), (n, _)) in dup {
            r.violation(Property::Duplicate, *m, *d, &format!("shown {n} times"));
        }

        // 3. Per channel, id order.
        for (d, list) in &self.shown {
            let mut last: HashMap<ChannelId, MessageId> = HashMap::new();
            for s in list {
                if let Some(prev) = last.get(&s.channel) {
                    if s.message < *prev {
                        r.violation(
                            Property::Order,
                            s.message,
                            *d,
                            &format!("shown after {prev:?}"),
                        );
                    }
                }
                let e = last.entry(s.channel).or_insert(s.message);
                *e = (*e).max(s.message);
            }
        }

        // 4. History reaches every member device (unacked sends too: the
        // acked ones are counted as lost above).
        let mut stored_channels: Vec<_> = self.stored.iter().collect();
        stored_channels.sort_by_key(|(c, _)| **c);
        for (channel, list) in stored_channels {
            for s in list {
                if acked_ids.contains(&s.message) {
                    continue;
                }
                let sender = sent_by(&s.client_msg_id);
                for d in self.member_devices(*channel) {
                    if Some(d) != sender && !counts.contains_key(&(d, s.message)) {
                        r.violation(
                            Property::SyncMissing,
                            s.message,
                            d,
                            "in history, never shown",
                        );
                    }
                }
            }
        }

        // 5. Cursors: the user's inbox as far as anyone saw it.
        let mut inbox: HashMap<UserId, BTreeMap<Seq, (MessageId, ClientMsgId)>> = HashMap::new();
        for (d, list) in &self.shown {
            if let Some(u) = self.devices.get(d) {
                for s in list {
                    inbox
                        .entry(*u)
                        .or_default()
                        .insert(s.seq, (s.message, s.client_msg_id.clone()));
                }
            }
        }
        for a in &self.acked {
            if let (Some(u), Some(seq)) = (self.devices.get(&a.device), a.seq) {
                inbox
                    .entry(*u)
                    .or_default()
                    .insert(seq, (a.message, a.client_msg_id.clone()));
            }
        }
        let mut devices: Vec<_> = self.cursors.iter().collect();
        devices.sort_by_key(|(d, _)| **d);
        for (d, samples) in devices {
            let Some(entries) = self.devices.get(d).and_then(|u| inbox.get(u)) else {
                continue;
            };
            let mut reported = HashSet::new();
            for sample in samples {
                for (seq, (m, key)) in entries.range(..=sample.cursor) {
                    if sent_by(key) == Some(*d) || reported.contains(m) {
                        continue;
                    }
                    let shown_by_then = counts
                        .get(&(*d, *m))
                        .is_some_and(|(_, first)| *first < sample.shown);
                    if !shown_by_then {
                        reported.insert(*m);
                        r.violation(
                            Property::CursorPassed,
                            *m,
                            *d,
                            &format!("cursor {} passed seq {}", sample.cursor.0, seq.0),
                        );
                    }
                }
            }
        }
        r
    }
}

/// Which property a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    /// An acknowledged message a member device never showed.
    Lost,
    /// An acknowledged message missing from its channel's history.
    NotInHistory,
    /// A message a device showed more than once.
    Duplicate,
    /// A message shown before a smaller id of the same channel.
    Order,
    /// A message of a channel's history a member device never showed.
    SyncMissing,
    /// A device cursor past a message the device had not shown.
    CursorPassed,
}

/// One violation: the property, the message, the device.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// What is broken.
    pub property: Property,
    /// The message.
    pub message: u64,
    /// The device.
    pub device: String,
    /// Details.
    pub detail: String,
}

/// What [`History::check`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Channels in the run.
    pub channels: usize,
    /// Devices in the run.
    pub devices: usize,
    /// Acknowledged sends.
    pub acked: usize,
    /// Messages shown, over every device.
    pub shown: usize,
    /// Messages in history at the end.
    pub stored: usize,
    /// Violations per property.
    pub counts: BTreeMap<String, usize>,
    /// The first violations (at most 20).
    pub violations: Vec<Violation>,
}

impl CheckReport {
    fn violation(
        &mut self,
        property: Property,
        message: MessageId,
        device: DeviceId,
        detail: &str,
    ) {
        let name = serde_json::to_value(property)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *self.counts.entry(name).or_default() += 1;
        if self.violations.len() < 20 {
            self.violations.push(Violation {
                property,
                message: message.0,
                device: device.to_string(),
                detail: detail.to_owned(),
            });
        }
    }

    /// Violations of `property`.
    pub fn count(&self, property: Property) -> usize {
        self.violations_named(property)
    }

    fn violations_named(&self, property: Property) -> usize {
        serde_json::to_value(property)
            .ok()
            .and_then(|v| v.as_str().and_then(|n| self.counts.get(n).copied()))
            .unwrap_or(0)
    }

    /// No violation at all.
    pub fn passed(&self) -> bool {
        self.counts.values().all(|n| *n == 0)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checker: {} channels, {} devices, {} acked sends, {} messages shown, {} in history",
            self.channels, self.devices, self.acked, self.shown, self.stored
        )?;
        for p in [
            Property::Lost,
            Property::NotInHistory,
            Property::Duplicate,
            Property::Order,
            Property::SyncMissing,
            Property::CursorPassed,
        ] {
            let name = serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            writeln!(f, "  {name:<15} {}", self.count(p))?;
        }
        for v in &self.violations {
            writeln!(
                f,
                "  ! {:?} message {} device {}: {}",
                v.property, v.message, v.device, v.detail
            )?;
        }
        write!(
            f,
            "  verdict: {}",
            if self.passed() { "PASSED" } else { "FAILED" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        h: History,
        chan: ChannelId,
        alice: (UserId, DeviceId, DeviceId),
        bob: (UserId, DeviceId, DeviceId),
    }

    fn world() -> World {
        let mut h = History::new();
        let chan = ChannelId(uuid::Uuid::new_v4());
        let alice = (
            UserId(uuid::Uuid::new_v4()),
            DeviceId::new_random(),
            DeviceId::new_random(),
        );
        let bob = (
            UserId(uuid::Uuid::new_v4()),
            DeviceId::new_random(),
            DeviceId::new_random(),
        );
        h.channel(chan, vec![alice.0, bob.0]);
        for (u, d1, d2) in [alice, bob] {
            h.device(d1, u);
            h.device(d2, u);
        }
        World {
            h,
            chan,
            alice,
            bob,
        }
    }

    fn key(n: u64) -> ClientMsgId {
        ClientMsgId::new(format!("k{n}")).unwrap_or_else(|_| ClientMsgId::new_random())
    }

    fn shown(chan: ChannelId, id: u64, seq: u64) -> Shown {
        Shown {
            channel: chan,
            message: MessageId(id),
            client_msg_id: key(id),
            seq: Seq(seq),
        }
    }

    /// Alice's first device's send of message `id` acknowledged at inbox
    /// position `seq`.
    fn ack(w: &mut World, id: u64, seq: u64) {
        w.h.attempt(w.alice.1, key(id));
        w.h.acked(Acked {
            device: w.alice.1,
            channel: w.chan,
            message: MessageId(id),
            client_msg_id: key(id),
            seq: Some(Seq(seq)),
        });
    }

    /// Alice's first device sends message `id` (inbox position `seq` for
    /// both users): acked, shown on the three other devices, stored.
    fn deliver(w: &mut World, id: u64, seq: u64) {
        ack(w, id, seq);
        for d in [w.alice.2, w.bob.1, w.bob.2] {
            w.h.shown(d, shown(w.chan, id, seq));
            w.h.cursor(d, Seq(seq));
        }
    }

    fn store(w: &mut World, ids: &[u64]) {
        let list = ids
            .iter()
            .map(|i| Stored {
                message: MessageId(*i),
                client_msg_id: key(*i),
            })
            .collect();
        w.h.stored(w.chan, list);
    }

    #[test]
    fn a_clean_history_passes() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        deliver(&mut w, 20, 2);
        store(&mut w, &[10, 20]);
        let r = w.h.check();
        assert!(r.passed(), "{r}");
        assert_eq!((r.acked, r.shown, r.stored), (2, 6, 2));
        assert_eq!(w.h.missing(), 0);
    }

    #[test]
    fn an_acked_message_a_member_device_never_shows_is_lost() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        ack(&mut w, 20, 2);
        w.h.shown(w.alice.2, shown(w.chan, 20, 2));
        w.h.shown(w.bob.1, shown(w.chan, 20, 2));
        store(&mut w, &[10, 20]);
        assert_eq!(w.h.missing(), 1);
        let r = w.h.check();
        assert_eq!(r.count(Property::Lost), 1, "{r}");
        assert_eq!(r.violations[0].device, w.bob.2.to_string());
        assert!(!r.passed());
    }

    #[test]
    fn an_acked_message_missing_from_history_is_reported() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        deliver(&mut w, 20, 2);
        store(&mut w, &[10]);
        let r = w.h.check();
        assert_eq!(r.count(Property::NotInHistory), 1, "{r}");
        assert_eq!(r.violations[0].message, 20);
    }

    #[test]
    fn a_message_shown_twice_is_a_duplicate() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        w.h.shown(w.bob.1, shown(w.chan, 10, 1));
        store(&mut w, &[10]);
        let r = w.h.check();
        assert_eq!(r.count(Property::Duplicate), 1, "{r}");
        assert_eq!(r.count(Property::Lost), 0);
        // The sender's own device showing its message once (its receipt
        // was cut off) is no duplicate.
        let mut w = world();
        deliver(&mut w, 10, 1);
        w.h.shown(w.alice.1, shown(w.chan, 10, 1));
        store(&mut w, &[10]);
        assert!(w.h.check().passed());
    }

    #[test]
    fn messages_of_a_channel_shown_out_of_id_order_are_reported() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        // Bob's second device shows 30 before 20.
        ack(&mut w, 30, 3);
        ack(&mut w, 20, 2);
        for d in [w.alice.2, w.bob.1] {
            w.h.shown(d, shown(w.chan, 20, 2));
            w.h.shown(d, shown(w.chan, 30, 3));
        }
        w.h.shown(w.bob.2, shown(w.chan, 30, 3));
        w.h.shown(w.bob.2, shown(w.chan, 20, 2));
        store(&mut w, &[10, 20, 30]);
        let r = w.h.check();
        assert_eq!(r.count(Property::Order), 1, "{r}");
        assert_eq!(r.violations[0].device, w.bob.2.to_string());
        assert_eq!(r.violations[0].message, 20);
    }

    #[test]
    fn an_unacked_message_in_history_must_reach_every_member_device() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        // Sent by Alice's first device, stored, answer lost with its
        // server: her other device and Bob's first show it, Bob's second
        // never does.
        w.h.attempt(w.alice.1, key(20));
        w.h.shown(w.alice.2, shown(w.chan, 20, 2));
        w.h.shown(w.bob.1, shown(w.chan, 20, 2));
        store(&mut w, &[10, 20]);
        let r = w.h.check();
        assert_eq!(r.count(Property::SyncMissing), 1, "{r}");
        assert_eq!(r.violations[0].device, w.bob.2.to_string());
        assert_eq!(r.count(Property::Lost), 0);
    }

    #[test]
    fn a_cursor_past_a_message_not_yet_shown_is_reported() {
        let mut w = world();
        deliver(&mut w, 10, 1);
        deliver(&mut w, 20, 2);
        // Bob's first device shows 30 (seq 3); his second device's cursor
        // moves to 3 before it shows 30, then shows it.
        ack(&mut w, 30, 3);
        w.h.shown(w.alice.2, shown(w.chan, 30, 3));
        w.h.shown(w.bob.1, shown(w.chan, 30, 3));
        w.h.cursor(w.bob.2, Seq(3));
        w.h.shown(w.bob.2, shown(w.chan, 30, 3));
        store(&mut w, &[10, 20, 30]);
        let r = w.h.check();
        assert_eq!(r.count(Property::CursorPassed), 1, "{r}");
        assert_eq!(r.violations[0].device, w.bob.2.to_string());
        assert_eq!(r.count(Property::Lost), 0);
        // A sender's cursor passing its own message is fine.
        w.h.cursor(w.alice.1, Seq(3));
        assert_eq!(w.h.check().count(Property::CursorPassed), 1);
    }
}
