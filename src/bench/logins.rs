//! `logins`: one user with many friends logs in and out over and over, on each node in turn;
//! half of the friends are online, spread over the nodes, so every login ack carries the
//! state of each friend, which a cluster asks of the bus.

use std::io;
use std::time::Instant;

use super::{err, histogram, ChatLink};
use crate::proto::Request;

#[derive(Debug, Clone)]
pub struct LoginPlan {
    pub addrs: Vec<String>,
    pub friends: usize,
    pub logins: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoginReport {
    pub friends: usize,
    pub logins: usize,
    pub seconds: f64,
    pub logins_per_s: f64,
    /// Login request to its ack, and logout to its answer, one cycle.
    pub cycle_p50_us: u64,
    pub cycle_p99_us: u64,
}

const PASSWORD: &str = "bench";

pub fn logins(plan: &LoginPlan) -> io::Result<LoginReport> {
    let tag = format!("l{}", crate::proto::time::now_ms());
    let addr = |i: usize| &plan.addrs[i % plan.addrs.len()];
    // Friends on the nodes in turn; every other one stays logged in while the user cycles.
    let mut online = Vec::new();
    let mut friends = Vec::with_capacity(plan.friends);
    for i in 0..plan.friends {
        let mut c = ChatLink::open(addr(i))?;
        let register = Request::Register { name: format!("{tag}-f{i}"), password: PASSWORD.into() };
        let id = c.request(&register, None)?.id.ok_or_else(|| err("register: no id"))?;
        if i % 2 == 0 {
            c.request(&Request::Login { id, password: PASSWORD.into(), acks: false }, None)?;
            online.push(c);
        }
        friends.push(id);
    }
    let mut c = ChatLink::open(addr(0))?;
    let me = c.sign_up(&format!("{tag}-me"), PASSWORD, false)?;
    for &friendid in &friends {
        c.request(&Request::AddFriend { id: Some(me), friendid }, Some(1))?;
    }
    c.request(&Request::Logout { id: Some(me) }, Some(2))?;
    drop(c);
    let mut cycles = histogram()?;
    let start = Instant::now();
    for k in 0..plan.logins {
        let mut c = ChatLink::open(addr(k))?;
        let t = Instant::now();
        c.request(&Request::Login { id: me, password: PASSWORD.into(), acks: false }, None)?;
        c.request(&Request::Logout { id: Some(me) }, Some(3))?;
        cycles.record(t.elapsed().as_micros() as u64).map_err(|e| err(e.to_string()))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(online);
    Ok(LoginReport {
        friends: plan.friends,
        logins: plan.logins,
        seconds,
        logins_per_s: plan.logins as f64 / seconds.max(1e-9),
        cycle_p50_us: cycles.value_at_quantile(0.5),
        cycle_p99_us: cycles.value_at_quantile(0.99),
    })
}
