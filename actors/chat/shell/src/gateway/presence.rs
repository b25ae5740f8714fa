//! The gateway's side of presence (`troupe_chat::presence`): this node's sessions
//! counted per user, one digest published per tick on the system's presence topic,
//! the other nodes' digests folded into a view, and a node's users taken offline at
//! its member-down event.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use troupe_chat::frames::UserPresence;
use troupe_chat::presence::{Digest, Local, View};
use troupe_runtime::Node;
use troupe_runtime::pubsub::PubSub;
use troupe_runtime::wire::introspect::MemberState;

/// Users one presence request may ask about.
pub const QUERY_MAX: usize = 100;

pub struct Presence {
    node: String,
    local: Mutex<Local>,
    view: Mutex<View>,
    /// A gateway runs its tasks (digests heard): the view means something.
    live: std::sync::atomic::AtomicBool,
}

impl Presence {
    pub fn new(node: &str) -> Presence {
        Presence {
            node: node.to_string(),
            local: Mutex::new(Local::default()),
            view: Mutex::new(View::default()),
            live: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This node's presence (one per node, shared by its gateway and conversations).
    pub fn of(node: &Node) -> Arc<Presence> {
        let made: Result<Arc<Presence>, std::convert::Infallible> = node.extension(|| Ok(Presence::new(node.name())));
        match made {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }

    /// Whether a gateway on this node keeps the view up to date.
    pub fn is_live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the view as kept (a gateway started) or not (it stopped).
    pub fn set_live(&self, live: bool) {
        self.live.store(live, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `user` has a session on any gateway, as this node knows.
    pub fn is_online(&self, user: &str) -> bool {
        self.local.lock().is_online(user) || self.view.lock().query(user).0
    }

    /// A session of `user` opened here; the guard closes it.
    pub fn connect(self: &Arc<Self>, user: &str) -> Online {
        self.local.lock().connect(user);
        Online { presence: self.clone(), user: user.to_string() }
    }

    /// Users online on this node.
    pub fn online_here(&self) -> usize {
        self.local.lock().online()
    }

    pub fn query(&self, users: &[String]) -> Vec<UserPresence> {
        let local = self.local.lock();
        let view = self.view.lock();
        users
            .iter()
            .take(QUERY_MAX)
            .map(|u| {
                let (elsewhere, last_seen_ms) = view.query(u);
                UserPresence { user: u.clone(), online: local.is_online(u) || elsewhere, last_seen_ms }
            })
            .collect()
    }

    /// Starts the tasks: the digest every `every`, the other nodes' digests, the
    /// member-down events. Abort them when the gateway stops.
    pub fn start(self: &Arc<Self>, node: &Node, system: &str, every: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let topic = troupe_chat::ids::presence_topic(system);
        let mut tasks = Vec::new();
        let me = self.clone();
        let (n, t) = (node.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = super::now_ms();
                let digest = me.local.lock().tick(&me.node, now);
                let max_age = 3 * troupe_chat::presence::FULL_EVERY * every.as_millis() as u64;
                me.view.lock().expire(now, max_age);
                if let Some(d) = digest {
                    let _ = crate::system_publisher(&n).publish(&t, &d).await;
                }
            }
        }));
        let me = self.clone();
        let mut sub = PubSub::of(node).subscribe(&topic);
        tasks.push(tokio::spawn(async move {
            while let Some(p) = sub.recv().await {
                match p.decode::<Digest>() {
                    Ok(d) if d.node != me.node => me.view.lock().apply(&d, super::now_ms()),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "undecodable presence digest"),
                }
            }
        }));
        if let Some(mut events) = node.member_events() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(change) = events.next().await {
                    if let troupe_runtime::Change::Changed(ev) = change
                        && ev.state == MemberState::Down
                    {
                        me.view.lock().node_down(&ev.name, super::now_ms());
                    }
                }
            }));
        }
        tasks
    }
}

/// A session counted online; dropping it counts it off.
pub struct Online {
    presence: Arc<Presence>,
    user: String,
}

impl Drop for Online {
    fn drop(&mut self) {
        self.presence.local.lock().disconnect(&self.user, super::now_ms());
    }
}
