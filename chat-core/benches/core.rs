//! Micro-benchmarks of the core: id generation and frame encode/decode.
//!
//! `cargo bench -p chat-core --bench core`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::protocol::{ClientFrame, Event, Request, ServerFrame};
use chat_core::{ChannelId, ClientMsgId, Message, MessageId, Snowflake, UserId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("snowflake");
    g.throughput(Throughput::Elements(1));
    let gen = Snowflake::new(1).expect("node id");
    g.bench_function("generate/1 thread", |b| {
        b.iter(|| black_box(gen.generate()))
    });
    // Two threads hammering one generator: the cost of CAS contention.
    let shared = Arc::new(Snowflake::new(2).expect("node id"));
    g.bench_function("generate/2 threads contended", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let other = {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        black_box(shared.generate());
                    }
                })
            };
            for _ in 0..iters {
                black_box(shared.generate());
            }
            other.join().expect("thread");
            // Both threads made `iters` ids; report time per id.
            start.elapsed() / 2
        })
    });
    g.finish();
}

fn message(len: usize) -> Message {
    Message {
        id: MessageId(384_925_444_228_517_888),
        channel_id: ChannelId::new_random(),
        sender: UserId::new_random(),
        content: "x".repeat(len),
        created_at: 1_764_300_000_000,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    for len in [100usize, 10_000] {
        let event = ServerFrame::Event(Event::Message {
            seq: chat_core::Seq(123_456),
            message: message(len),
        });
        let text = serde_json::to_string(&event).expect("encode");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("encode message event/{len} chars"), |b| {
            b.iter(|| black_box(serde_json::to_string(black_box(&event)).expect("encode")))
        });
        g.bench_function(format!("decode message event/{len} chars"), |b| {
            b.iter(|| {
                black_box(serde_json::from_str::<ServerFrame>(black_box(&text)).expect("decode"))
            })
        });
        let send = ClientFrame {
            id: "r123".into(),
            request: Request::Send {
                channel: ChannelId::new_random(),
                client_msg_id: ClientMsgId::new_random(),
                content: "y".repeat(len),
                reply_to: None,
                attachments: Vec::new(),
            },
        };
        let text = serde_json::to_string(&send).expect("encode");
        g.bench_function(format!("decode send request/{len} chars"), |b| {
            b.iter(|| {
                black_box(serde_json::from_str::<ClientFrame>(black_box(&text)).expect("decode"))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = ids, frames
}
criterion_main!(benches);
