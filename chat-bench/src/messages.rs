//! The message scenarios: `one-to-one`, `group` and `baseline`, built on the
//! engine in [`crate::traffic`].

use std::sync::Arc;

use chat_core::DeviceId;

use crate::cli::{secs, BaselineArgs, GroupArgs, LoadArgs, MessageArgs, OneToOneArgs};
use crate::error::{BenchError, Result};
use crate::limits::{check_file_budget, check_ports};
use crate::net::SourceIps;
use crate::progress::Progress;
use crate::relay::Relay;
use crate::report::{Ratio, ServerStats, TargetInfo, TrafficReport};
use crate::setup::{create_groups, open_directs, run_prefix, signup_users};
use crate::stats::Counters;
use crate::target::Target;
use crate::traffic::{self, ConnSpec, SendSpec, SendTo, TrafficOpts, TrafficOutcome, Wire};

fn opts(wire: Wire, load: &LoadArgs, m: &MessageArgs) -> TrafficOpts {
    TrafficOpts {
        wire,
        duration: secs(m.duration),
        window: m.window.max(1),
        size: m.size,
        connect_concurrency: load.connect_concurrency.max(1),
        drain: secs(m.drain),
        connect_timeout: load.connect_timeout(),
    }
}

/// Checks open files and ports for `connections` in this process.
/// Runs chat-protocol traffic against `target` and reads the counters of
/// a server in this process before it is stopped.
async fn send_chat(
    specs: Vec<ConnSpec>,
    load: &LoadArgs,
    m: &MessageArgs,
    counters: &Arc<Counters>,
    target: &Target,
) -> Result<(TrafficOutcome, Option<ServerStats>)> {
    let outcome = traffic::run(specs, &opts(Wire::Chat, load, m), counters.clone()).await?;
    Ok((outcome, target.server().map(ServerStats::of)))
}

/// A report of one workload, `(channels, members, senders)`, without a
/// baseline.
fn report(
    wire: Wire,
    (channels, members, senders): (u64, u64, u64),
    m: &MessageArgs,
    outcome: TrafficOutcome,
    server_stats: Option<ServerStats>,
) -> TrafficReport {
    TrafficReport {
        wire,
        channels,
        members,
        senders,
        target_rate: m.rate,
        window: m.window,
        size: m.size,
        outcome,
        server_stats,
        baseline: None,
        ratio: None,
        two_servers: None,
        two_servers_ratio: None,
    }
}

fn preflight(
    connections: u64,
    fds_per_connection: u64,
    load: &LoadArgs,
) -> Result<Vec<std::net::IpAddr>> {
    let ips = load.source_ips()?;
    check_file_budget(connections, fds_per_connection).map_err(BenchError::Plan)?;
    check_ports(connections, ips.len().max(1)).map_err(BenchError::Plan)?;
    Ok(ips)
}

fn fds_for(target: &crate::target::TargetArgs) -> u64 {
    if target.embedded_server.is_some() {
        2
    } else {
        1
    }
}

fn check_workload(m: &MessageArgs, channels: u64) -> Result<()> {
    if channels == 0 {
        return Err(BenchError::plan("nothing to do: zero pairs or groups"));
    }
    if !(m.duration > 0.0 && m.duration <= 3600.0) {
        return Err(BenchError::plan("--duration must be in (0, 3600] seconds"));
    }
    if m.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(BenchError::plan("--rate must be positive"));
    }
    if m.size > 90_000 {
        return Err(BenchError::plan("--size must be at most 90,000 bytes"));
    }
    Ok(())
}

/// `one-to-one`: P pairs on direct channels; with `--baseline`, the same
/// workload against the bare relay afterwards, and the ratio.
pub async fn one_to_one(args: &OneToOneArgs, quiet: bool) -> Result<(TrafficReport, TargetInfo)> {
    let p = args.pairs;
    check_workload(&args.messages, p)?;
    let mut need = fds_for(&args.target);
    if args.baseline {
        need = need.max(2);
    }
    let ips = preflight(2 * p, need, &args.load)?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "one-to-one", counters.clone());
    progress.phase("starting the server");
    let target = Target::start(&args.target).await?;
    let info = TargetInfo::from(&target);
    let result = async {
        let (users, channels) =
            pairs_on_directs(&target.client, p, &args.load, &counters, &progress).await?;
        let (senders, recipients) = users.split_at(p as usize);
        let pairs: Vec<_> = senders.iter().zip(recipients).collect();
        let at = (target.ws_url.as_str(), target.ws_addr);
        let mut specs = pair_specs(&pairs, &channels, at, at, &ips, args.messages.rate);
        if args.via_route {
            progress.phase("routing");
            // `pair_specs` lists each pair's sender, then its recipient.
            let owners = pairs.iter().flat_map(|(s, r)| [*s, *r]);
            reroute(&mut specs, owners, &args.load, quiet).await?;
        }
        progress.phase("sending");
        send_chat(specs, &args.load, &args.messages, &counters, &target).await
    }
    .await;
    progress.stop();
    target.stop().await;
    let (outcome, server_stats) = result?;
    let mut report = report(Wire::Chat, (p, 2, p), &args.messages, outcome, server_stats);
    if let (Some(nats), Some(store)) = (&args.two_servers_nats, args.target.embedded_server) {
        let two = two_servers_run(args, nats, store, &ips, quiet).await?;
        report.two_servers_ratio = Some(Ratio::of(&two.outcome, &report.outcome));
        report.two_servers = Some(Box::new(two));
    }
    if args.baseline {
        let base = relay_run(p, &args.load, &args.messages, &ips, quiet).await?;
        report.ratio = Some(Ratio::of(&report.outcome, &base.outcome));
        report.baseline = Some(Box::new(base));
    }
    Ok((report, info))
}

/// Signs up `2p` users (senders first, then recipients) and opens the
/// direct channel of each pair.
async fn pairs_on_directs(
    client: &chat_client::ChatClient,
    p: u64,
    load: &LoadArgs,
    counters: &Arc<Counters>,
    progress: &Progress,
) -> Result<(Vec<crate::setup::BenchUser>, Vec<chat_core::ChannelId>)> {
    progress.phase("signing up");
    let users = signup_users(
        client,
        &run_prefix(),
        (2 * p) as usize,
        load.signup_concurrency,
        counters,
    )
    .await?;
    let (senders, recipients) = users.split_at(p as usize);
    let pairs: Vec<_> = senders.iter().zip(recipients).collect();
    progress.phase("opening channels");
    let channels = open_directs(&pairs, load.signup_concurrency).await?;
    Ok((users, channels))
}

/// Points each of `specs` at the server `route` names for its user
/// (`owners`, in the same order), and says how they spread.
async fn reroute<'a>(
    specs: &mut [ConnSpec],
    owners: impl Iterator<Item = &'a crate::setup::BenchUser>,
    load: &LoadArgs,
    quiet: bool,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let timeout = load.connect_timeout();
    let routes: Vec<(String, std::net::SocketAddr)> = futures::stream::iter(owners)
        .map(|u| async move {
            crate::connections::routed(&u.session, timeout)
                .await
                .map_err(|e| BenchError::setup(format!("route: {e}")))
        })
        .buffered(load.connect_concurrency.max(1))
        .try_collect()
        .await?;
    let mut spread = std::collections::BTreeMap::<String, u64>::new();
    for (spec, (url, addr)) in specs.iter_mut().zip(routes) {
        *spread.entry(addr.to_string()).or_default() += 1;
        spec.url = url;
        spec.addr = addr;
    }
    if !quiet {
        eprintln!("chat-bench: connections per server (route): {spread:?}");
    }
    Ok(())
}

/// Connections for pairs on direct channels: each sender at `from`, each
/// recipient at `to` (`(ws_url, addr)`), sharing `rate` over the pairs.
fn pair_specs(
    pairs: &[(&crate::setup::BenchUser, &crate::setup::BenchUser)],
    channels: &[chat_core::ChannelId],
    from: (&str, std::net::SocketAddr),
    to: (&str, std::net::SocketAddr),
    ips: &[std::net::IpAddr],
    rate: Option<f64>,
) -> Vec<ConnSpec> {
    let sources = SourceIps::new(ips.to_vec());
    let rate = rate.map(|r| r / pairs.len().max(1) as f64);
    let mut specs = Vec::with_capacity(2 * pairs.len());
    for (i, ((s, r), ch)) in pairs.iter().zip(channels).enumerate() {
        specs.push(ConnSpec {
            url: crate::wire::chat_url(from.0, DeviceId::new_random(), &s.token),
            addr: from.1,
            source: sources.next(),
            send: Some(SendSpec {
                sender: i as u32,
                to: SendTo::Channel(*ch),
                rate,
            }),
            expects_from: Vec::new(),
        });
        specs.push(ConnSpec {
            url: crate::wire::chat_url(to.0, DeviceId::new_random(), &r.token),
            addr: to.1,
            source: sources.next(),
            send: None,
            expects_from: vec![i as u32],
        });
    }
    specs
}

/// The one-to-one workload on two servers with the bus on NATS between
/// them: senders on one, recipients on the other.
async fn two_servers_run(
    args: &OneToOneArgs,
    nats_url: &str,
    store: crate::target::StoreKind,
    ips: &[std::net::IpAddr],
    quiet: bool,
) -> Result<TrafficReport> {
    let p = args.pairs;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "one-to-one, two servers over NATS", counters.clone());
    progress.phase("starting two servers");
    let two = crate::cluster::TwoServers::start(store, nats_url, &args.target.postgres_url).await?;
    let result = async {
        let (users, channels) =
            pairs_on_directs(&two.client, p, &args.load, &counters, &progress).await?;
        let (senders, recipients) = users.split_at(p as usize);
        let pairs: Vec<_> = senders.iter().zip(recipients).collect();
        let specs = pair_specs(
            &pairs,
            &channels,
            (two.a.ws_url.as_str(), two.a.ws_addr),
            (two.b.ws_url.as_str(), two.b.ws_addr),
            ips,
            args.messages.rate,
        );
        progress.phase("sending");
        let outcome = traffic::run(
            specs,
            &opts(Wire::Chat, &args.load, &args.messages),
            counters.clone(),
        )
        .await?;
        Ok::<_, BenchError>((outcome, ServerStats::of(&two.a.server)))
    }
    .await;
    progress.stop();
    two.stop().await;
    let (outcome, stats) = result?;
    Ok(report(
        Wire::Chat,
        (p, 2, p),
        &args.messages,
        outcome,
        Some(stats),
    ))
}

/// `baseline`: the one-to-one workload against the bare relay.
pub async fn baseline(args: &BaselineArgs, quiet: bool) -> Result<TrafficReport> {
    check_workload(&args.messages, args.pairs)?;
    let ips = preflight(2 * args.pairs, 2, &args.load)?;
    relay_run(args.pairs, &args.load, &args.messages, &ips, quiet).await
}

async fn relay_run(
    p: u64,
    load: &LoadArgs,
    m: &MessageArgs,
    ips: &[std::net::IpAddr],
    quiet: bool,
) -> Result<TrafficReport> {
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "baseline relay", counters.clone());
    let relay = Relay::start().await?;
    let sources = SourceIps::new(ips.to_vec());
    let rate = m.rate.map(|r| r / p as f64);
    let mut specs = Vec::with_capacity(2 * p as usize);
    for i in 0..p as u32 {
        specs.push(ConnSpec {
            url: relay.url(i),
            addr: relay.addr(),
            source: sources.next(),
            send: Some(SendSpec {
                sender: i,
                to: SendTo::Peer(p as u32 + i),
                rate,
            }),
            expects_from: Vec::new(),
        });
        specs.push(ConnSpec {
            url: relay.url(p as u32 + i),
            addr: relay.addr(),
            source: sources.next(),
            send: None,
            expects_from: vec![i],
        });
    }
    progress.phase("sending");
    let result = traffic::run(specs, &opts(Wire::Relay, load, m), counters).await;
    progress.stop();
    relay.stop().await;
    Ok(report(Wire::Relay, (p, 2, p), m, result?, None))
}

/// `group`: G groups of M members, S senders in each; every other member
/// receives every message.
pub async fn group(args: &GroupArgs, quiet: bool) -> Result<(TrafficReport, TargetInfo)> {
    let (g, m) = (args.groups, args.members);
    check_workload(&args.messages, g)?;
    if m < 2 {
        return Err(BenchError::plan("--members must be at least 2"));
    }
    let s = args.senders.clamp(1, m);
    let ips = preflight(g * m, fds_for(&args.target), &args.load)?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(quiet, "group", counters.clone());
    progress.phase("starting the server");
    let target = Target::start(&args.target).await?;
    let info = TargetInfo::from(&target);
    let result = async {
        progress.phase("signing up");
        let prefix = run_prefix();
        let users = signup_users(
            &target.client,
            &prefix,
            (g * m) as usize,
            args.load.signup_concurrency,
            &counters,
        )
        .await?;
        progress.phase("creating groups");
        let slices: Vec<&[crate::setup::BenchUser]> = users.chunks(m as usize).collect();
        let channels = create_groups(&slices, &prefix, args.load.signup_concurrency).await?;
        let sources = SourceIps::new(ips.clone());
        let rate = args.messages.rate.map(|r| r / (g * s) as f64);
        let mut specs = Vec::with_capacity((g * m) as usize);
        for (gi, (members, ch)) in slices.iter().zip(&channels).enumerate() {
            let group_senders: Vec<u32> = (0..s).map(|k| (gi as u64 * s + k) as u32).collect();
            for (mi, user) in members.iter().enumerate() {
                let me = (mi as u64) < s;
                let sender_id = (gi as u64 * s + mi as u64) as u32;
                specs.push(ConnSpec {
                    url: crate::wire::chat_url(&target.ws_url, DeviceId::new_random(), &user.token),
                    addr: target.ws_addr,
                    source: sources.next(),
                    send: me.then_some(SendSpec {
                        sender: sender_id,
                        to: SendTo::Channel(*ch),
                        rate,
                    }),
                    expects_from: group_senders
                        .iter()
                        .copied()
                        .filter(|x| !(me && *x == sender_id))
                        .collect(),
                });
            }
        }
        progress.phase("sending");
        send_chat(specs, &args.load, &args.messages, &counters, &target).await
    }
    .await;
    progress.stop();
    target.stop().await;
    let (outcome, server_stats) = result?;
    Ok((
        report(
            Wire::Chat,
            (g, m, g * s),
            &args.messages,
            outcome,
            server_stats,
        ),
        info,
    ))
}
