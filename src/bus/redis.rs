//! The cluster bus: presence and cross-node delivery through Redis.
//!
//! - Each node subscribes, for its whole life, to its own channel `node:{id}`.
//! - Presence is the key `online:{user}` = node id. Login claims it with SET NX; a key whose
//!   node's channel has no subscriber (`PUBSUB NUMSUB`) belongs to a dead node and is taken over
//!   atomically. Logout deletes it only if it is still this node's. `acks:{user}` exists while
//!   the session acknowledges deliveries; it goes with the claim.
//! - Routing is one round trip per batch: a script reads each message's owner, publishes to
//!   its channel and returns the receiver counts; no owner or no receiver means "store offline"
//!   (a stale key is dropped). A sender has many messages in flight, so once one of them is
//!   to be stored, the sender's later ones already on the way are stored too, unpublished
//!   (`fence`): published, they could overtake it.
//!   So does an acks session: its messages are stored first and the session poked, since a
//!   publish Redis accepted may still be lost in a crash before it reaches the node.
//! - A node that stored a message for a user live on another node publishes the user id alone
//!   to that node's channel: the session there fetches its mailbox again (`poke`).
//! - A login asks for the states of all its friends and group members in one `MGET`.
//! - Failed logins and registrations are counted under `attempts:{what}:{who}` (expiring with
//!   their window); one at its limit turns into `block:attempts:…`, expiring with the block.
//! - `group:{id}` holds the version of a group's member list: a random number set by the node
//!   that changed the members (none: 0, so a Redis that lost it invalidates every cached list).
//!   Group messages go many to a script call: for each, in order, it checks the version its
//!   sender read the members under, publishes once per node where members are live,
//!   `*{user},{user},… {message}`, and returns who was missed (offline, acks session, dead
//!   node), for the sender to store.
//!
//! Calls block and run on the pool; a dedicated subscriber thread hands what arrives to the node
//! through [`Inbox`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Client, Connection, Script};

use super::{AttemptRule, Attempts, Bus, BusError, GroupRouting, GroupSend, Inbox, Routing};
use crate::net::Loc;
use crate::{GroupId, UserId};

/// Connect, read and write timeout: a dead Redis turns into errno 10, not a hang.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between reconnection attempts of the subscriber.
const RETRY: Duration = Duration::from_millis(200);

/// KEYS: online, acks. ARGV: node, acks mode ('1', '0', or '' to leave it).
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if not owner or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[2] == '1' then redis.call('SET', KEYS[2], '1') elseif ARGV[2] == '0' then redis.call('DEL', KEYS[2]) end
  return '' end
return owner";
/// KEYS: online, acks. ARGV: node, dead owner, acks mode.
const TAKE_OVER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  if ARGV[3] == '1' then redis.call('SET', KEYS[2], '1') else redis.call('DEL', KEYS[2]) end
  return 1 end
return 0";
/// KEYS: online, acks. ARGV: node.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1]) end
return 0";
/// KEYS: online and acks of each message. ARGV: payload and fence of each. Returns the receiver
/// counts; after a 0, later messages with the same fence are not published (0 too).
const ROUTE: &str = r"
local out, fenced = {}, {}
for i = 1, #ARGV / 2 do
  local n, fence = 0, ARGV[2 * i]
  local owner = not fenced[fence] and redis.call('GET', KEYS[2 * i - 1])
  if owner and redis.call('EXISTS', KEYS[2 * i]) == 0 then
    n = redis.call('PUBLISH', 'node:' .. owner, ARGV[2 * i - 1])
    if n == 0 and redis.call('GET', KEYS[2 * i - 1]) == owner then redis.call('DEL', KEYS[2 * i - 1]) end
  end
  if n == 0 then fenced[fence] = true end
  out[i] = n
end
return out";
/// KEYS: per message, its group's version, then online and acks of each user. ARGV: per
/// message, the version the members were read under, the message, the number of users and
/// the users. Returns per message sent the users missed, comma-separated; at the first stale
/// version, 'stale:' and the version, and nothing after it is sent.
const GROUPS: &str = r"
local out, k, a = {}, 1, 1
while a <= #ARGV do
  local version = redis.call('GET', KEYS[k]) or '0'
  if version ~= ARGV[a] then out[#out + 1] = 'stale:' .. version; return out end
  local msg, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  local missed, by_owner, owners = {}, {}, {}
  for i = 1, n do
    local owner = redis.call('GET', KEYS[k + 2 * i - 1])
    if owner and redis.call('EXISTS', KEYS[k + 2 * i]) == 0 then
      local list = by_owner[owner]
      if not list then list = {}; by_owner[owner] = list; owners[#owners + 1] = owner end
      list[#list + 1] = i
    else missed[#missed + 1] = ARGV[a + 2 + i] end
  end
  for _, owner in ipairs(owners) do
    local list, ids = by_owner[owner], {}
    for j, i in ipairs(list) do ids[j] = ARGV[a + 2 + i] end
    if redis.call('PUBLISH', 'node:' .. owner, '*' .. table.concat(ids, ',') .. ' ' .. msg) == 0 then
      for _, i in ipairs(list) do
        missed[#missed + 1] = ARGV[a + 2 + i]
        if redis.call('GET', KEYS[k + 2 * i - 1]) == owner then redis.call('DEL', KEYS[k + 2 * i - 1]) end
      end
    end
  end
  out[#out + 1] = table.concat(missed, ',')
  k, a = k + 1 + 2 * n, a + 3 + n
end
return out";
/// KEYS: attempt counters. ARGV: limit, window and block (ms) of each. Counts one attempt on
/// each; a counter at its limit becomes a block (`block:{key}`) and starts again.
const COUNT: &str = r"
for i = 1, #KEYS do
  local n = redis.call('INCR', KEYS[i])
  if n == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[3 * i - 1]) end
  if n >= tonumber(ARGV[3 * i - 2]) then
    redis.call('SET', 'block:' .. KEYS[i], '1', 'PX', ARGV[3 * i])
    redis.call('DEL', KEYS[i])
  end
end
return 0";
/// KEYS: attempt counters. Returns the longest time left on their blocks, in ms (0: none),
/// and how many of the counters exist.
const BLOCKED: &str = r"
local longest = 0
for i = 1, #KEYS do
  local left = redis.call('PTTL', 'block:' .. KEYS[i])
  if left > longest then longest = left end
end
return {longest, redis.call('EXISTS', unpack(KEYS))}";
/// A node channel's payload is `{user} {message}`, or `{user}` alone: fetch the mailbox.
const POKE: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return redis.call('PUBLISH', 'node:' .. owner, ARGV[2]) end
return 0";

fn presence_key(user: UserId) -> String {
    format!("online:{user}")
}

fn attempts_key(key: &str) -> String {
    format!("attempts:{key}")
}

fn group_key(group: GroupId) -> String {
    format!("group:{group}")
}

fn acks_key(user: UserId) -> String {
    format!("acks:{user}")
}

fn acks_arg(acks: Option<bool>) -> &'static str {
    match acks {
        Some(true) => "1",
        Some(false) => "0",
        None => "",
    }
}

pub struct RedisBus {
    client: Client,
    node: String,
    /// Idle command connections, reused across pool threads.
    idle: Mutex<Vec<Connection>>,
    scripts: [Script; 8],
    stop: Arc<AtomicBool>,
    subscriber: Mutex<Option<JoinHandle<()>>>,
    /// Routes queued for the publisher thread, which pipelines them.
    publisher: Mutex<Option<(crossbeam_channel::Sender<Route>, JoinHandle<()>)>>,
}

/// One message for the publisher.
struct Route {
    user: UserId,
    msg: Arc<str>,
    from: Loc,
    /// The sender's fence epoch (see [`Fences`]).
    epoch: u32,
}

impl Route {
    fn fence(&self) -> String {
        format!("{}.{}.{}", self.from.reactor, self.from.conn, self.epoch)
    }
}

/// Senders whose message was not received (to be stored), with the epoch it was sent under:
/// their later messages of that epoch, queued before the sender learned of it, are not
/// published either. The sender moves to the next epoch once it knows, and routes again
/// only after storing what failed. Entries are dropped after a minute, far longer than a
/// route waits in the queue.
#[derive(Default)]
struct Fences(std::collections::HashMap<(usize, u64), (u32, std::time::Instant)>);

impl Fences {
    const KEEP: Duration = Duration::from_secs(60);

    /// Whether `r` must not be published: an earlier message of its sender and epoch failed.
    fn holds(&mut self, r: &Route) -> bool {
        let key = (r.from.reactor, r.from.conn);
        match self.0.get(&key) {
            Some(&(epoch, _)) if epoch == r.epoch => true,
            Some(_) => {
                self.0.remove(&key); // a later epoch: the sender knows
                false
            }
            None => false,
        }
    }

    fn close(&mut self, r: &Route, now: std::time::Instant) {
        self.0.insert((r.from.reactor, r.from.conn), (r.epoch, now));
    }

    fn purge(&mut self, now: std::time::Instant) {
        if self.0.len() > 64 {
            self.0.retain(|_, (_, at)| now.duration_since(*at) < Self::KEEP);
        }
    }
}

/// Most members of group messages in one script call (more members: more calls).
const GROUP_CALL_USERS: usize = 8192;

/// Most routes sent in one pipeline.
const MAX_BATCH: usize = 512;

/// The publisher: takes every route queued so far and sends them in one script call, so the
/// cost of a round trip is shared by all messages in flight on the node. FIFO, one connection:
/// routes leave in the order they were handed over, and answers come back in that order.
fn publish_loop(client: Client, rx: crossbeam_channel::Receiver<Route>, inbox: Arc<dyn Inbox>) {
    let script = Script::new(ROUTE);
    let mut con: Option<Connection> = None;
    let mut fences = Fences::default();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let now = std::time::Instant::now();
        fences.purge(now);
        // A sender's fenced routes precede its newer ones in the queue: answering them first
        // keeps each sender's answers in order.
        let (fenced, batch): (Vec<Route>, Vec<Route>) = batch.into_iter().partition(|r| fences.holds(r));
        let mut answers: Vec<_> = fenced.into_iter().map(|r| (r.from, Ok(false))).collect();
        if batch.is_empty() {
            inbox.routed(answers);
            continue;
        }
        let result = (|| -> Result<Vec<i64>, BusError> {
            let c = match con.as_mut() {
                Some(c) => c,
                None => {
                    // Loaded once per connection: a Redis that restarted forgot it, and a
                    // restart always means a new connection.
                    let mut c = connect(&client)?;
                    redis::cmd("SCRIPT").arg("LOAD").arg(ROUTE).query::<String>(&mut c)?;
                    con.insert(c)
                }
            };
            let mut call = redis::cmd("EVALSHA");
            call.arg(script.get_hash()).arg(2 * batch.len());
            for r in &batch {
                call.arg(presence_key(r.user)).arg(acks_key(r.user));
            }
            for r in &batch {
                call.arg(format!("{} {}", r.user, r.msg)).arg(r.fence());
            }
            Ok(call.query(c)?)
        })();
        match result {
            Ok(receivers) if receivers.len() == batch.len() => {
                for (r, n) in batch.into_iter().zip(receivers) {
                    if n == 0 {
                        fences.close(&r, now);
                    }
                    answers.push((r.from, Ok(n > 0)));
                }
            }
            other => {
                con = None; // reconnect for the next batch
                let e = match other {
                    Err(e) => e,
                    Ok(_) => BusError::Protocol("a short pipeline reply"),
                };
                log::error!("redis bus: {} routes failed: {e}", batch.len());
                for r in batch {
                    fences.close(&r, now);
                    answers.push((r.from, Err(e.clone())));
                }
            }
        }
        inbox.routed(answers); // one hand-over for the batch
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("node", &self.node).finish()
    }
}

fn connect(client: &Client) -> Result<Connection, BusError> {
    let con = client.get_connection_with_timeout(TIMEOUT)?;
    con.set_read_timeout(Some(TIMEOUT))?;
    con.set_write_timeout(Some(TIMEOUT))?;
    Ok(con)
}

impl RedisBus {
    /// Connects to `url` (`redis://host:port`) as node `node`; fails at once if Redis cannot be
    /// reached, so a node never starts half-wired.
    pub fn connect(url: &str, node: &str) -> Result<RedisBus, BusError> {
        let at = |source| BusError::Connect { url: url.to_owned(), source: Arc::new(source) };
        let client = Client::open(url).map_err(at)?;
        let mut con = client.get_connection_with_timeout(TIMEOUT).map_err(at)?;
        con.set_read_timeout(Some(TIMEOUT)).map_err(at)?;
        con.set_write_timeout(Some(TIMEOUT)).map_err(at)?;
        redis::cmd("PING").query::<String>(&mut con).map_err(at)?;
        Ok(RedisBus {
            client,
            node: node.to_owned(),
            idle: Mutex::new(vec![con]),
            scripts: [
                Script::new(CLAIM),
                Script::new(TAKE_OVER),
                Script::new(RELEASE),
                Script::new(ROUTE),
                Script::new(POKE),
                Script::new(GROUPS),
                Script::new(COUNT),
                Script::new(BLOCKED),
            ],
            stop: Arc::new(AtomicBool::new(false)),
            subscriber: Mutex::new(None),
            publisher: Mutex::new(None),
        })
    }

    /// Runs `f` on a pooled connection. A pooled connection may have died with a Redis restart:
    /// if it fails at the I/O level it is dropped and `f` tried once more on a fresh one.
    fn with<T>(&self, mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>) -> Result<T, BusError> {
        let pooled = self.idle.lock().pop();
        let (mut con, fresh) = match pooled {
            Some(con) => (con, false),
            None => (connect(&self.client)?, true),
        };
        let mut result = f(&mut con);
        if !fresh && matches!(&result, Err(e) if e.is_io_error() || e.is_connection_dropped()) {
            con = connect(&self.client)?;
            result = f(&mut con);
        }
        if result.is_ok() {
            self.idle.lock().push(con);
        }
        Ok(result?)
    }

    fn subscribers(&self, node: &str) -> Result<i64, BusError> {
        let (_, n): (String, i64) =
            self.with(|c| redis::cmd("PUBSUB").arg("NUMSUB").arg(format!("node:{node}")).query(c))?;
        Ok(n)
    }
}

impl Bus for RedisBus {
    fn claim(&self, user: UserId, acks: Option<bool>) -> Result<bool, BusError> {
        let (key, acks_key, mode) = (presence_key(user), acks_key(user), acks_arg(acks));
        let owner: String =
            self.with(|c| self.scripts[0].key(&key).key(&acks_key).arg(&self.node).arg(mode).invoke(c))?;
        if owner.is_empty() {
            return Ok(true);
        }
        // Held by another node: it is live only if that node still listens.
        if self.subscribers(&owner)? > 0 {
            return Ok(false);
        }
        log::info!("user {user}: taking over from dead node {owner}");
        let taken: i64 = self.with(|c| {
            self.scripts[1]
                .key(&key)
                .key(&acks_key)
                .arg(&self.node)
                .arg(&owner)
                .arg(acks_arg(Some(acks == Some(true))))
                .invoke(c)
        })?;
        Ok(taken == 1)
    }

    fn release(&self, user: UserId) -> Result<(), BusError> {
        self.with(|c| self.scripts[2].key(presence_key(user)).key(acks_key(user)).arg(&self.node).invoke::<i64>(c))?;
        Ok(())
    }

    fn route(&self, user: UserId, msg: &str) -> Result<bool, BusError> {
        let payload = format!("{user} {msg}");
        let receivers: Vec<i64> =
            self.with(|c| self.scripts[3].key(presence_key(user)).key(acks_key(user)).arg(&payload).arg("").invoke(c))?;
        Ok(receivers.first().is_some_and(|&n| n > 0))
    }

    fn route_async(&self, user: UserId, msg: Arc<str>, from: Loc, epoch: u32) -> Routing {
        let publisher = self.publisher.lock();
        match publisher.as_ref() {
            Some((tx, _)) => match tx.send(Route { user, msg, from, epoch }) {
                Ok(()) => Routing::Queued,
                Err(_) => Routing::Done(Err(BusError::Stopped)),
            },
            None => {
                drop(publisher);
                Routing::Done(self.route(user, &msg)) // not started: route in place
            }
        }
    }

    fn poke(&self, user: UserId) -> Result<(), BusError> {
        let key = presence_key(user);
        self.with(|c| self.scripts[4].key(&key).arg(&self.node).arg(user).invoke::<i64>(c))?;
        Ok(())
    }

    fn group_version(&self, group: GroupId) -> Result<u64, BusError> {
        let version: Option<String> = self.with(|c| redis::cmd("GET").arg(group_key(group)).query(c))?;
        version.map_or(Ok(0), |v| v.parse().map_err(|_| BusError::Protocol("a group version that is no number")))
    }

    fn group_changed(&self, group: GroupId) -> Result<(), BusError> {
        let mut bytes = [0; 8];
        getrandom::getrandom(&mut bytes).map_err(|_| BusError::Protocol("no random numbers for a group version"))?;
        // Never 0, the version of a group Redis has no key for.
        let version = u64::from_le_bytes(bytes).max(1);
        self.with(|c| redis::cmd("SET").arg(group_key(group)).arg(version).query::<()>(c))
    }

    fn route_groups(&self, sends: &[GroupSend<'_>]) -> Result<Vec<GroupRouting>, BusError> {
        let mut routed = Vec::with_capacity(sends.len());
        let mut rest = sends;
        while !rest.is_empty() {
            // A script call blocks Redis while it runs: a bounded share of members each.
            let mut take = 1;
            let mut users = rest[0].users.len();
            while take < rest.len() && users + rest[take].users.len() <= GROUP_CALL_USERS {
                users += rest[take].users.len();
                take += 1;
            }
            let (call, after) = rest.split_at(take);
            rest = after;
            let reply: Vec<String> = self.with(|c| {
                let mut invocation = self.scripts[5].prepare_invoke();
                for send in call {
                    invocation.key(group_key(send.group)).arg(send.version).arg(send.msg).arg(send.users.len());
                    for &user in send.users {
                        invocation.key(presence_key(user)).key(acks_key(user)).arg(user);
                    }
                }
                invocation.invoke(c)
            })?;
            let stale = reply.last().is_some_and(|a| a.starts_with("stale:"));
            if reply.len() > call.len() || (reply.len() < call.len() && !stale) {
                return Err(BusError::Protocol("a group route reply that does not match its call"));
            }
            for answer in reply {
                if let Some(version) = answer.strip_prefix("stale:") {
                    let current =
                        version.parse().map_err(|_| BusError::Protocol("a group version that is no number"))?;
                    routed.push(GroupRouting::Stale { current });
                    return Ok(routed);
                }
                let missed: Result<Vec<UserId>, _> =
                    answer.split(',').filter(|u| !u.is_empty()).map(str::parse).collect();
                routed.push(GroupRouting::Routed {
                    missed: missed.map_err(|_| BusError::Protocol("a missed member that is no user id"))?,
                });
            }
        }
        Ok(routed)
    }

    fn attempts(&self, rules: &[AttemptRule]) -> Result<Attempts, BusError> {
        let (left, counted): (i64, i64) = self.with(|c| {
            let mut call = self.scripts[7].prepare_invoke();
            for r in rules {
                call.key(attempts_key(&r.key));
            }
            call.invoke(c)
        })?;
        Ok(Attempts { blocked: (left > 0).then(|| Duration::from_millis(left as u64)), counted: counted > 0 })
    }

    fn count_attempt(&self, rules: &[AttemptRule]) -> Result<(), BusError> {
        self.with(|c| {
            let mut call = self.scripts[6].prepare_invoke();
            for r in rules {
                call.key(attempts_key(&r.key))
                    .arg(r.limit)
                    .arg(r.window.as_millis() as u64)
                    .arg(r.block.as_millis() as u64);
            }
            call.invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn clear_attempts(&self, key: &str) -> Result<(), BusError> {
        self.with(|c| redis::cmd("DEL").arg(attempts_key(key)).query::<i64>(c))?;
        Ok(())
    }

    fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<bool>, BusError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|&u| presence_key(u)).collect();
        let owners: Vec<Option<String>> = self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        if owners.len() != users.len() {
            return Err(BusError::Protocol("a short MGET reply"));
        }
        Ok(owners.into_iter().map(|o| o.is_some_and(|o| o != self.node)).collect())
    }

    /// Returns once this node's channel is subscribed: before that, other nodes would take
    /// this node for dead (`NUMSUB` 0) and take its users over.
    fn start(&self, inbox: Arc<dyn Inbox>) -> std::io::Result<()> {
        let (client, node, stop) = (self.client.clone(), self.node.clone(), self.stop.clone());
        let subscriber_inbox = inbox.clone();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new().name("bus-subscriber".into()).spawn(move || {
            let mut first = true;
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = subscribe(&client, &node, &*subscriber_inbox, &stop, first, &ready_tx) {
                    if first {
                        let _ = ready_tx.try_send(Err(e.clone()));
                    }
                    log::error!("redis bus: {e}; reconnecting");
                    std::thread::sleep(RETRY);
                }
                first = false;
            }
        })?;
        *self.subscriber.lock() = Some(thread);
        let (tx, rx) = crossbeam_channel::unbounded();
        let client = self.client.clone();
        let publisher =
            std::thread::Builder::new().name("bus-publisher".into()).spawn(move || publish_loop(client, rx, inbox))?;
        *self.publisher.lock() = Some((tx, publisher));
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(format!("redis bus: cannot subscribe: {e}"))),
            Err(_) => Err(std::io::Error::other("redis bus: no subscription after 10 s")),
        }
    }

    fn shutdown(&self) {
        if let Some((tx, thread)) = self.publisher.lock().take() {
            drop(tx); // the publisher finishes what is queued, then ends
            if thread.join().is_err() {
                log::error!("the bus publisher panicked");
            }
        }
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.subscriber.lock().take() {
            if t.join().is_err() {
                log::error!("the bus subscriber panicked");
            }
        }
    }
}

/// One subscription, until it fails or the node stops. After a reconnection the node's live
/// sessions claim their keys again (they may have been dropped as stale meanwhile); a session
/// whose key another node took while Redis was away is closed here: that node's is the live one.
fn subscribe(
    client: &Client,
    node: &str,
    inbox: &dyn Inbox,
    stop: &AtomicBool,
    first: bool,
    ready: &crossbeam_channel::Sender<Result<(), BusError>>,
) -> Result<(), BusError> {
    let mut con = connect(client)?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(format!("node:{node}"))?;
    let _ = ready.try_send(Ok(()));
    // Short reads so a stopping node notices.
    pubsub.set_read_timeout(Some(Duration::from_millis(250)))?;
    if !first {
        let mut cmd_con = connect(client)?;
        for user in inbox.local_users() {
            // The acks key is left as it is: a Redis that lost it routes the session's messages
            // through the bus again, where the node stores them first all the same.
            let claimed: Option<String> = Script::new(CLAIM)
                .key(presence_key(user))
                .key(acks_key(user))
                .arg(node)
                .arg("")
                .invoke(&mut cmd_con)
                .ok();
            match claimed.as_deref() {
                Some("") => inbox.drain(user),
                Some(_) => {
                    log::warn!("user {user}: claimed by another node while Redis was away; closing the session here");
                    inbox.evict(user);
                }
                None => log::warn!("user {user}: presence not claimed again"),
            }
        }
        log::info!("redis bus: subscribed again as node {node}");
    }
    while !stop.load(Ordering::Acquire) {
        let msg = match pubsub.get_message() {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e.into()),
        };
        let payload: Vec<u8> = msg.get_payload()?;
        let text = String::from_utf8_lossy(&payload);
        if let Some(group_msg) = text.strip_prefix('*') {
            let parsed = group_msg.split_once(' ').and_then(|(users, m)| {
                let users: Result<Vec<UserId>, _> = users.split(',').map(str::parse).collect();
                users.ok().map(|users| (users, m))
            });
            match parsed {
                Some((users, m)) => inbox.deliver_many(&users, Arc::from(m)),
                None => log::warn!("redis bus: malformed group message on node:{node}"),
            }
            continue;
        }
        let (user, m) = text.split_once(' ').map_or((&*text, None), |(u, m)| (u, Some(m)));
        match (user.parse::<UserId>(), m) {
            (Ok(user), Some(m)) => inbox.deliver(user, Arc::from(m)),
            (Ok(user), None) => inbox.drain(user),
            (Err(_), _) => log::warn!("redis bus: malformed message on node:{node}"),
        }
    }
    Ok(())
}
