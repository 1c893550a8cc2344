//! The per-message costs of the hot path, each measured alone: frame and parse a request,
//! encode a delivery, build a big login ack, route to a live session (presence lookup plus the
//! channel hop to its reactor; the waker is left out, as reactors coalesce wake-ups).

use std::hint::black_box;
use std::sync::Arc;

use chat::proto::codec::{Decoded, Decoder};
use chat::proto::message::{ChatMessage, Target};
use chat::proto::reply::{self, LoginData};
use chat::proto::request::{parse, parse_body, parse_envelope, Limits};
use chat::{Delivery, Loc, Presence};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CHAT: &[u8] =
    br#"{"msgid":6,"id":1,"name":"alice","toid":2,"msg":"hello there, how are you?","time":"2026-11-23 10:00:00"}"#;
const LIMITS: Limits = Limits { max_msg: 16 * 1024 };

/// Frames, parses and validates every request in `buf` as the reactor does; returns how many.
fn parse_all(buf: &[u8]) -> usize {
    let mut dec = Decoder::new(64 * 1024);
    let (mut at, mut n) = (0, 0);
    while let Ok(Decoded::Frame { start, end }) = dec.decode(&buf[at..]) {
        black_box(parse(&buf[at + start..at + end], LIMITS).unwrap());
        at += end;
        n += 1;
    }
    n
}

/// The general path every request other than a chat takes: a `Value`, then envelope and body.
fn parse_general(frame: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(frame).unwrap();
    let env = parse_envelope(value).unwrap();
    black_box(parse_body(env.msgid, env.fields, LIMITS).unwrap());
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let one = [CHAT, b"\n"].concat();
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse one chat request", |b| b.iter(|| parse_all(black_box(&one))));
    g.bench_function("parse one chat request, general path", |b| b.iter(|| parse_general(black_box(CHAT))));
    let many: Vec<u8> = (0..64).flat_map(|_| one.clone()).collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("parse 64 pipelined chat requests", |b| b.iter(|| parse_all(black_box(&many))));
    g.finish();
}

fn delivery(c: &mut Criterion) {
    let chat = ChatMessage {
        from: 1,
        name: "alice".into(),
        to: Target::User(2),
        msg: "hello there, how are you?".into(),
        time: "2026-11-23 10:00:00".into(),
        ts: 1_795_429_769_401,
        mid: Some(90_001),
        cid: None,
    };
    c.bench_function("encode one delivery", |b| b.iter(|| black_box(&chat).encode()));
}

fn login_ack(c: &mut Criterion) {
    let friends: Vec<String> = (1..=100).map(|i| reply::friend_entry(i, &format!("friend{i}"), i % 3 == 0)).collect();
    let members: Vec<String> =
        (1..=10).map(|i| reply::member_entry(i, &format!("member{i}"), i % 2 == 0, i == 1)).collect();
    c.bench_function("build a login ack: 100 friends, 20 groups of 10", |b| {
        b.iter(|| {
            let groups: Vec<String> =
                (1..=20).map(|g| reply::group_entry(g, &format!("group{g}"), "a group", &members)).collect();
            let data = LoginData {
                id: 1,
                name: Arc::from("alice"),
                friends: friends.clone(),
                groups,
                offline: Vec::new(),
                acks: false,
            };
            reply::login_ok(black_box(&data), None)
        })
    });
}

fn route(c: &mut Criterion) {
    let presence = Presence::default();
    for user in 1..=10_000 {
        presence.insert_if_absent(
            user,
            Loc { reactor: (user % 2) as usize, token: user as usize, conn: u64::from(user) },
            false,
        );
    }
    let (tx, rx) = crossbeam_channel::unbounded::<Delivery>();
    let (name, msg, time) = ("a".into(), "hi".into(), "t".into());
    let msg: Arc<str> =
        ChatMessage { from: 1, name, to: Target::User(2), msg, time, ts: 0, mid: Some(1), cid: None }.encode();
    let mut user = 0;
    c.bench_function("route to a live session (presence + channel hop)", |b| {
        b.iter(|| {
            user = user % 10_000 + 1;
            presence.with(user, |to| tx.send(Delivery { to, user, msg: msg.clone() }).unwrap());
            black_box(rx.try_recv().unwrap())
        })
    });
}

criterion_group!(benches, codec, delivery, login_ack, route);
criterion_main!(benches);
