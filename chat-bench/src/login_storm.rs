//! `login-storm`: attackers hammer failed logins (each costs the server a
//! full password hash) while one real user logs in at a steady pace from
//! another address. Reports the real user's login latency, what the
//! attackers were answered, and the server's resident memory before, at
//! the end and a few seconds after (issue 9, item 2: 32 attackers took an
//! unbounded hashing pool from 256 MiB to 6.8 GiB, kept, and the real
//! login from 25 ms to 1 s).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::{secs, LoginStormArgs};
use crate::error::{BenchError, Result};
use crate::limits::vm_rss_kib;
use crate::report::TargetInfo;
use crate::setup::{run_prefix, PASSWORD};
use crate::stats::{Latency, LatencySummary};
use crate::target::Target;

/// What `login-storm` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoginStormReport {
    /// Attacking clients.
    pub attackers: usize,
    /// Seconds of attack.
    pub secs: f64,
    /// Attack logins answered, by HTTP status (401 wrong password, 429
    /// rate limited, 503 hashing queue full).
    pub attack_statuses: BTreeMap<u16, u64>,
    /// The real user's logins and how long each took.
    pub real_logins: LatencySummary,
    /// The real user's logins that did not succeed, by HTTP status (0: no
    /// answer).
    pub real_failures: BTreeMap<u16, u64>,
    /// The real user's login latency before the attack, ms.
    pub real_login_idle_ms: f64,
    /// Server resident memory before the attack, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// At the end of the attack, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// Five seconds later, KiB (what the allocator kept).
    pub server_rss_after_kib: Option<u64>,
}

impl LoginStormReport {
    /// Correctness problems: the real user could not log in at all.
    pub fn failures(&self) -> Vec<String> {
        if self.real_logins.count == 0 {
            vec!["the real user never logged in during the attack".into()]
        } else {
            Vec::new()
        }
    }
}

fn login_body(user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ "username": user, "password": password })
}

/// Runs `login-storm` against the server `args` names.
pub async fn login_storm(args: &LoginStormArgs) -> Result<(LoginStormReport, TargetInfo)> {
    let ips = args.load.source_ips()?;
    let (attack_ip, real_ip) = match ips.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let target = Target::start(&args.target).await?;
    let result = run(args, &target, attack_ip, real_ip).await;
    let info = TargetInfo::from(&target);
    target.stop().await;
    Ok((result?, info))
}

fn client(from: Option<IpAddr>) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::setup(format!("HTTP client: {e}")))
}

async fn run(
    args: &LoginStormArgs,
    target: &Target,
    attack_ip: Option<IpAddr>,
    real_ip: Option<IpAddr>,
) -> Result<LoginStormReport> {
    let url = format!("{}/v1/login", target.http_url);
    let rss = || target.pid.and_then(|p| vm_rss_kib(p).ok());
    let prefix = run_prefix();
    let real_name = format!("{prefix}-real");
    // The attackers guess at an account that exists: every guess costs
    // the server a full hash (an unknown username costs one too, now,
    // but only on servers with the decoy check).
    let victim = format!("{prefix}-victim");
    for name in [&real_name, &victim] {
        target
            .client
            .signup(name, PASSWORD, None)
            .await
            .map_err(|e| BenchError::setup(format!("sign-up: {e}")))?;
    }
    let real = client(real_ip)?;
    let idle = Instant::now();
    real.post(&url)
        .json(&login_body(&real_name, PASSWORD))
        .send()
        .await
        .map_err(|e| BenchError::setup(format!("login: {e}")))?;
    let mut report = LoginStormReport {
        attackers: args.attackers,
        secs: args.duration,
        real_login_idle_ms: idle.elapsed().as_secs_f64() * 1e3,
        server_rss_before_kib: rss(),
        ..Default::default()
    };
    let attack = client(attack_ip)?;
    let end = Instant::now() + secs(args.duration);
    let body = login_body(&victim, "wrong-password");
    let attackers = (0..args.attackers).map(|_| {
        let attack = attack.clone();
        let url = url.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let mut statuses = BTreeMap::<u16, u64>::new();
            while Instant::now() < end {
                let status = match attack.post(&url).json(&body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.entry(status).or_default() += 1;
                if status == 429 {
                    // A real attacker would retry at once; one that does
                    // here only measures the load tool's own speed.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            statuses
        })
    });
    let attackers: Vec<_> = attackers.collect();
    let latency = Latency::new();
    let mut buffer = latency.buffer();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while Instant::now() < end {
        let start = Instant::now();
        let status = match real
            .post(&url)
            .json(&login_body(&real_name, PASSWORD))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if status == 200 {
            buffer.record(start.elapsed().as_micros() as u64);
        } else {
            *report.real_failures.entry(status).or_default() += 1;
        }
        tokio::time::sleep(secs(args.real_interval)).await;
    }
    for a in attackers {
        if let Ok(statuses) = a.await {
            for (k, v) in statuses {
                *report.attack_statuses.entry(k).or_default() += v;
            }
        }
    }
    drop(buffer);
    report.real_logins = latency.summary();
    report.server_rss_end_kib = rss();
    tokio::time::sleep(Duration::from_secs(5)).await;
    report.server_rss_after_kib = rss();
    Ok(report)
}
