//! Gossip membership: the only module that talks to chitchat.
//!
//! It publishes this node's keys, watches everyone's heartbeats, decides up/down/left/draining with the
//! phi-accrual detector in [`detector`], records each change once in the [`EventLog`], and publishes an
//! immutable [`MembershipView`] that the rest of the program reads.

pub mod detector;
pub mod transport;
pub mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use proto::gossip::{self, LoadReport, NodeStatus};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::events::{EventKind, EventLog};
pub use detector::DetectorParams;
use detector::HeartbeatHistory;
use transport::CountingTransport;
pub use transport::{GossipTraffic, TrafficSnapshot};
pub use view::{MemberInfo, MemberState, MembershipView};

/// How long dead incarnations and deleted keys stay in chitchat's state before they are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Problems with members' gossip values are logged at most this often.
static GOSSIP_VALUE_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));
/// Distinct gossip problems remembered (so each is logged once) before the memory starts over.
const MAX_REMEMBERED_WARNINGS: usize = 10_000;
/// Gossip entries with impossible names are logged at most this often.
static FOREIGN_NAME_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The gossip socket could not be opened.
    #[error("cannot start gossip on {addr}/udp: {reason}")]
    Bind {
        /// The `--cluster` address.
        addr: SocketAddr,
        /// What the OS said.
        reason: String,
    },
}

/// This node's membership: its gossip server and the view derived from it.
pub struct Membership {
    chitchat: Arc<Mutex<Chitchat>>,
    handle: std::sync::Mutex<Option<ChitchatHandle>>,
    view: Arc<ArcSwap<MembershipView>>,
    changes: watch::Receiver<u64>,
    local: Arc<std::sync::Mutex<LocalState>>,
    gossip_interval: Duration,
    traffic: Arc<GossipTraffic>,
}

/// What this node says about itself.
struct LocalState {
    status: NodeStatus,
    load: Option<LoadReport>,
    raft_id: Option<u64>,
    raft_pristine: Option<bool>,
    /// The applications can be served (the upstream answers).
    ready: bool,
    hop_token: Option<crate::crypto::HopToken>,
    /// The HTTP port accepts connections (no recent accept failure for lack of resources).
    accepting: bool,
}

impl LocalState {
    /// What others are told: ready only when both hold.
    fn published_ready(&self) -> bool {
        self.ready && self.accepting
    }
}

impl Membership {
    /// Joins the cluster on `socket` (bound to `config.me.cluster`): contacts the seeds and starts
    /// the observer task.
    pub async fn start(
        config: &NodeConfig,
        socket: std::net::UdpSocket,
        events: EventLog,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Membership, MembershipError> {
        let gossip_config = &config.cluster.gossip;
        let generation = now_ms();
        let chitchat_id = ChitchatId::new(config.me.name.as_str(), generation, config.me.cluster);
        let chitchat_config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: config.cluster.cluster_id.clone(),
            gossip_interval: gossip_config.interval,
            listen_addr: config.me.cluster,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: gossip_config.phi_threshold,
                sampling_window_size: 1000,
                max_interval: gossip_config.dead_after,
                // Must equal the gossip interval, or new members take seconds longer to be declared dead.
                initial_interval: gossip_config.interval,
                dead_node_grace_period: FORGET_AFTER,
            },
            marked_for_deletion_grace_period: FORGET_AFTER,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial_keys = vec![
            (
                gossip::KEY_WIRE_VERSION.to_string(),
                gossip::WIRE_VERSION.to_string(),
            ),
            (
                gossip::KEY_HTTP_ADDR.to_string(),
                config.me.http.to_string(),
            ),
            (
                gossip::KEY_STATUS.to_string(),
                NodeStatus::Serving.as_str().to_string(),
            ),
        ];
        let traffic = Arc::new(GossipTraffic::default());
        let transport = CountingTransport {
            traffic: traffic.clone(),
            seal: config
                .secrets
                .gossip_key
                .as_ref()
                .map(crate::crypto::GossipSeal::new),
            socket: std::sync::Mutex::new(Some(socket)),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, initial_keys, &transport)
            .await
            .map_err(|err| MembershipError::Bind {
                addr: config.me.cluster,
                reason: format!("{err:#}"),
            })?;
        let chitchat = handle.chitchat();
        let local = Arc::new(std::sync::Mutex::new(LocalState {
            status: NodeStatus::Serving,
            load: None,
            raft_id: None,
            raft_pristine: None,
            ready: true,
            hop_token: None,
            accepting: true,
        }));
        let mut observer = Observer::new(config, generation, events, local.clone());
        let view = Arc::new(ArcSwap::from_pointee(observer.initial_view()));
        let (changes_tx, changes) = watch::channel(0);
        let poll_every = (gossip_config.interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        {
            let chitchat = chitchat.clone();
            let view = view.clone();
            tasks.spawn(async move {
                let mut ticker = tokio::time::interval(poll_every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let observed = observe(&chitchat).await;
                    let (next, structural) = observer.update(observed, Instant::now());
                    view.store(Arc::new(next));
                    if structural {
                        changes_tx.send_modify(|version| *version += 1);
                    }
                }
            });
        }
        info!(
            node = %config.me.name,
            generation,
            seeds = ?config.seeds,
            "gossip started on {}/udp",
            config.me.cluster
        );
        Ok(Membership {
            chitchat,
            handle: std::sync::Mutex::new(Some(handle)),
            view,
            changes,
            local,
            gossip_interval: gossip_config.interval,
            traffic,
        })
    }

    /// The current snapshot.
    pub fn view(&self) -> Arc<MembershipView> {
        self.view.load_full()
    }

    /// Gossip traffic of this node since start.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.traffic.snapshot()
    }

    /// Fires whenever a member's state or address changes (not for every phi update).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Publishes this node's status (serving, draining, leaving) in gossip.
    pub async fn set_status(&self, status: NodeStatus) {
        if let Ok(mut local) = self.local.lock() {
            local.status = status;
        }
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(gossip::KEY_STATUS, status.as_str());
    }

    /// Publishes this node's load figures in gossip.
    pub async fn set_load(&self, load: LoadReport) {
        if let Ok(mut local) = self.local.lock() {
            local.load = Some(load);
        }
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(gossip::KEY_LOAD, load.to_string());
    }

    /// Publishes whether this node can serve its applications; others stop routing to it while not.
    pub async fn set_ready(&self, ready: bool) {
        self.publish_ready(|local| local.ready = ready).await;
    }

    /// Publishes whether this node's HTTP port accepts connections; while it does not (out of file
    /// descriptors), the node is not ready whatever `set_ready` said, so others route around it.
    pub async fn set_accepting(&self, accepting: bool) {
        self.publish_ready(|local| local.accepting = accepting)
            .await;
    }

    async fn publish_ready(&self, change: impl FnOnce(&mut LocalState)) {
        // chitchat's lock first: two changes at once then publish in the order they were made.
        let mut chitchat = self.chitchat.lock().await;
        let ready = match self.local.lock() {
            Ok(mut local) => {
                change(&mut local);
                local.published_ready()
            }
            Err(_) => return,
        };
        chitchat
            .self_node_state()
            .set(gossip::KEY_READY, if ready { "1" } else { "0" });
    }

    /// Publishes this node's Raft id and whether its Raft store is still empty.
    pub async fn set_raft(&self, raft_id: u64, pristine: bool) {
        if let Ok(mut local) = self.local.lock() {
            local.raft_id = Some(raft_id);
            local.raft_pristine = Some(pristine);
        }
        let mut chitchat = self.chitchat.lock().await;
        let state = chitchat.self_node_state();
        state.set(gossip::KEY_RAFT_ID, raft_id);
        let word = if pristine {
            gossip::RAFT_PRISTINE
        } else {
            gossip::RAFT_MEMBER
        };
        state.set(gossip::KEY_RAFT_STATE, word);
    }

    /// Publishes the token this node proves itself with in the hop header (see [`crate::routing`]).
    pub async fn set_hop_token(&self, token: &crate::crypto::HopToken) {
        if let Ok(mut local) = self.local.lock() {
            local.hop_token = Some(token.clone());
        }
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(gossip::KEY_HOP_TOKEN, token.to_wire());
    }

    /// Leaves gracefully: says `leaving`, gives the word two gossip rounds to spread, stops gossip.
    pub async fn leave(&self) {
        self.set_status(NodeStatus::Leaving).await;
        tokio::time::sleep(self.gossip_interval * 3).await;
        let handle = self.handle.lock().ok().and_then(|mut handle| handle.take());
        if let Some(handle) = handle
            && let Err(err) = handle.shutdown().await
        {
            warn!(error = %err, "gossip stopped with an error");
        }
    }
}

/// One chitchat node state, reduced to what we use.
struct Observed {
    id: ChitchatId,
    heartbeat: u64,
    http: Option<String>,
    status: Option<String>,
    load: Option<String>,
    wire_version: Option<String>,
    raft_id: Option<String>,
    raft_state: Option<String>,
    ready: Option<String>,
    hop_token: Option<String>,
}

async fn observe(chitchat: &Mutex<Chitchat>) -> Vec<Observed> {
    let chitchat = chitchat.lock().await;
    chitchat
        .node_states()
        .iter()
        .map(|(id, state)| Observed {
            id: id.clone(),
            heartbeat: state.heartbeat().into(),
            http: state.get(gossip::KEY_HTTP_ADDR).map(str::to_string),
            status: state.get(gossip::KEY_STATUS).map(str::to_string),
            load: state.get(gossip::KEY_LOAD).map(str::to_string),
            wire_version: state.get(gossip::KEY_WIRE_VERSION).map(str::to_string),
            raft_id: state.get(gossip::KEY_RAFT_ID).map(str::to_string),
            raft_state: state.get(gossip::KEY_RAFT_STATE).map(str::to_string),
            ready: state.get(gossip::KEY_READY).map(str::to_string),
            hop_token: state.get(gossip::KEY_HOP_TOKEN).map(str::to_string),
        })
        .collect()
}

/// The state this node last published for a member.
#[derive(Debug, Clone)]
struct Tracked {
    info: MemberInfo,
    /// Whether it was ever up (or draining): the first time is a join, later ones are returns.
    ever_alive: bool,
}

/// Turns chitchat's state into views and events. Owned by the observer task alone.
struct Observer {
    me: crate::config::NodeSpec,
    generation: u64,
    founders: Vec<crate::config::NodeSpec>,
    params: DetectorParams,
    events: EventLog,
    local: Arc<std::sync::Mutex<LocalState>>,
    histories: HashMap<ChitchatId, HeartbeatHistory>,
    tracked: BTreeMap<String, Tracked>,
    self_state: MemberState,
    self_last: Option<MemberInfo>,
    version: u64,
    warned: HashSet<String>,
}

impl Observer {
    fn new(
        config: &NodeConfig,
        generation: u64,
        events: EventLog,
        local: Arc<std::sync::Mutex<LocalState>>,
    ) -> Observer {
        let gossip_config = &config.cluster.gossip;
        Observer {
            me: config.me.clone(),
            generation,
            founders: config.cluster.nodes.clone(),
            params: DetectorParams {
                prior_interval: gossip_config.interval,
                phi_threshold: gossip_config.phi_threshold,
                dead_after: gossip_config.dead_after,
            },
            events,
            local,
            histories: HashMap::new(),
            tracked: BTreeMap::new(),
            self_state: MemberState::Up,
            self_last: None,
            version: 0,
            warned: HashSet::new(),
        }
    }

    fn initial_view(&mut self) -> MembershipView {
        self.update(Vec::new(), Instant::now()).0
    }

    fn self_info(&mut self) -> MemberInfo {
        let (status, load, raft_id, raft_pristine, ready, hop_token) = self
            .local
            .lock()
            .map(|local| {
                (
                    local.status,
                    local.load,
                    local.raft_id,
                    local.raft_pristine,
                    local.published_ready(),
                    local.hop_token.clone(),
                )
            })
            .unwrap_or((NodeStatus::Serving, None, None, None, true, None));
        let state = match status {
            NodeStatus::Serving => MemberState::Up,
            NodeStatus::Draining => MemberState::Draining,
            NodeStatus::Leaving => MemberState::Left,
        };
        if state != self.self_state {
            self.self_state = state;
            let kind = match state {
                MemberState::Draining => Some(EventKind::NodeDraining),
                MemberState::Up => Some(EventKind::NodeUp),
                MemberState::Left => Some(EventKind::NodeLeft),
                MemberState::Down => None,
            };
            if let Some(kind) = kind {
                self.emit(
                    kind,
                    &self.me.name.clone(),
                    format!("this node is now {}", state.as_str()),
                );
            }
        }
        MemberInfo {
            name: self.me.name.clone(),
            http_addr: Some(self.me.http),
            cluster_addr: self.me.cluster,
            state,
            generation: Some(self.generation),
            phi: Some(0.0),
            last_seen_ms: Some(0),
            founder: self
                .founders
                .iter()
                .any(|founder| founder.name == self.me.name),
            is_self: true,
            wire_version: Some(gossip::WIRE_VERSION),
            load,
            raft_id,
            raft_pristine,
            ready,
            hop_token,
        }
    }

    /// Folds one observation into the view; returns it and whether any state or address changed.
    fn update(&mut self, observed: Vec<Observed>, now: Instant) -> (MembershipView, bool) {
        let present: HashSet<&ChitchatId> = observed.iter().map(|node| &node.id).collect();
        self.histories.retain(|id, _| present.contains(id));
        let mut by_name: BTreeMap<String, Vec<&Observed>> = BTreeMap::new();
        for node in &observed {
            if *node.id.node_id == *self.me.name {
                continue;
            }
            // Without a cluster key anyone can gossip; a name no node can have is no member, and
            // is not logged as it is.
            if !crate::config::is_node_name(&node.id.node_id) {
                if let Some(held_back) = FOREIGN_NAME_LOG.allow() {
                    warn!(
                        name = %crate::logging::escape_for_log(&node.id.node_id),
                        held_back,
                        "ignoring a gossip entry whose name is no node name"
                    );
                }
                continue;
            }
            match self.histories.get_mut(&node.id) {
                Some(history) => history.observe(node.heartbeat, now, &self.params),
                None => {
                    self.histories
                        .insert(node.id.clone(), HeartbeatHistory::new(node.heartbeat, now));
                }
            }
            by_name
                .entry(node.id.node_id.to_string())
                .or_default()
                .push(node);
        }

        let me = self.self_info();
        let mut structural = self.self_last.as_ref().is_none_or(|last| {
            (last.state, last.raft_id, last.raft_pristine, last.ready)
                != (me.state, me.raft_id, me.raft_pristine, me.ready)
        });
        self.self_last = Some(me.clone());
        let mut members = vec![me];
        for (name, incarnations) in by_name {
            let Some(info) = self.judge(&name, &incarnations, now) else {
                continue;
            };
            structural |= self.transition(&name, &info);
            members.push(info);
        }
        // Founders never heard from are shown as down, without an event: the operator should see them.
        for founder in &self.founders {
            if founder.name == self.me.name || members.iter().any(|m| m.name == founder.name) {
                continue;
            }
            members.push(MemberInfo {
                founder: true,
                ..MemberInfo::new(
                    founder.name.clone(),
                    Some(founder.http),
                    founder.cluster,
                    MemberState::Down,
                )
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        if structural {
            self.version += 1;
        }
        (
            MembershipView {
                version: self.version,
                members,
            },
            structural,
        )
    }

    /// Decides one member's info from its incarnations, or `None` while a new member is not yet alive.
    fn judge(
        &mut self,
        name: &str,
        incarnations: &[&Observed],
        now: Instant,
    ) -> Option<MemberInfo> {
        let verdict = |node: &Observed| {
            self.histories
                .get(&node.id)
                .map(|history| history.liveness(now, &self.params))
        };
        let tracked_generation = self
            .tracked
            .get(name)
            .and_then(|tracked| tracked.info.generation);
        // The newest live incarnation wins; while none is live, keep the one we were tracking, so a
        // restarting node does not flap through a second "down" before its new incarnation is heard.
        let chosen = incarnations
            .iter()
            .filter(|node| verdict(node).is_some_and(|liveness| liveness.alive))
            .max_by_key(|node| node.id.generation_id)
            .or_else(|| {
                incarnations
                    .iter()
                    .find(|node| Some(node.id.generation_id) == tracked_generation)
            })
            .or_else(|| incarnations.iter().max_by_key(|node| node.id.generation_id))?;
        let liveness = verdict(chosen)?;
        let status = chosen.status.as_deref().map(str::parse::<NodeStatus>);
        let previous = self.tracked.get(name).map(|tracked| tracked.info.state);
        let state = match status {
            Some(Ok(NodeStatus::Leaving)) => MemberState::Left,
            _ if !liveness.alive && previous == Some(MemberState::Left) => MemberState::Left,
            _ if !liveness.alive && previous.is_none() => {
                let founder = self.founders.iter().any(|founder| founder.name == name);
                if !founder {
                    return None;
                }
                MemberState::Down
            }
            _ if !liveness.alive => MemberState::Down,
            Some(Ok(NodeStatus::Draining)) => MemberState::Draining,
            _ => MemberState::Up,
        };
        if let Some(Err(err)) = status {
            self.warn_once(name, format!("{name}: {err}; treating it as serving"));
        }
        let wire_version = chosen.wire_version.as_deref().and_then(|v| v.parse().ok());
        // No version yet just means its keys have not reached us; only a different one is worth a word.
        if wire_version.is_some_and(|version| version != gossip::WIRE_VERSION) {
            self.warn_once(
                name,
                format!(
                    "{name} speaks wire version {}, this node speaks {}",
                    chosen.wire_version.as_deref().unwrap_or("(none)"),
                    gossip::WIRE_VERSION
                ),
            );
        }
        let http_addr = chosen.http.as_deref().and_then(|addr| addr.parse().ok());
        Some(MemberInfo {
            name: name.to_string(),
            http_addr,
            cluster_addr: chosen.id.gossip_advertise_addr,
            state,
            generation: Some(chosen.id.generation_id),
            phi: liveness.phi.map(|phi| (phi * 100.0).round() / 100.0),
            last_seen_ms: Some(liveness.since_last.as_millis() as u64),
            founder: self.founders.iter().any(|founder| founder.name == name),
            is_self: false,
            wire_version,
            load: chosen.load.as_deref().and_then(|load| load.parse().ok()),
            raft_id: chosen.raft_id.as_deref().and_then(|id| id.parse().ok()),
            raft_pristine: match chosen.raft_state.as_deref() {
                Some(gossip::RAFT_PRISTINE) => Some(true),
                Some(gossip::RAFT_MEMBER) => Some(false),
                _ => None,
            },
            ready: chosen.ready.as_deref() != Some("0"),
            hop_token: chosen
                .hop_token
                .as_deref()
                .and_then(crate::crypto::HopToken::from_wire),
        })
    }

    /// Records the member's new info; emits and logs an event when its state changed. Returns whether
    /// anything the balancer cares about (state, addresses, generation) changed.
    fn transition(&mut self, name: &str, info: &MemberInfo) -> bool {
        let alive = matches!(info.state, MemberState::Up | MemberState::Draining);
        let was_alive = self
            .tracked
            .get(name)
            .is_some_and(|tracked| tracked.ever_alive);
        let previous = self.tracked.insert(
            name.to_string(),
            Tracked {
                info: info.clone(),
                ever_alive: was_alive || alive,
            },
        );
        let Some(previous) = previous.map(|tracked| tracked.info) else {
            if info.state == MemberState::Up || info.state == MemberState::Draining {
                self.emit(
                    EventKind::NodeUp,
                    name,
                    format!("joined (generation {})", info.generation.unwrap_or(0)),
                );
            }
            return true;
        };
        let restarted = previous.generation.is_some()
            && info.generation.is_some()
            && previous.generation != info.generation;
        let generations = || {
            format!(
                "generation {} -> {}",
                previous.generation.unwrap_or(0),
                info.generation.unwrap_or(0)
            )
        };
        match (previous.state, info.state) {
            (before, after) if before == after => {
                if restarted && after == MemberState::Up {
                    self.emit(
                        EventKind::NodeUp,
                        name,
                        format!("restarted ({})", generations()),
                    );
                }
            }
            (_, MemberState::Up) => {
                let reason = match previous.state {
                    MemberState::Draining => "stopped draining".to_string(),
                    _ if !was_alive => {
                        format!("joined (generation {})", info.generation.unwrap_or(0))
                    }
                    _ if restarted => format!("restarted ({})", generations()),
                    _ => format!("heartbeats resumed (phi {:.1})", info.phi.unwrap_or(0.0)),
                };
                self.emit(EventKind::NodeUp, name, reason);
            }
            (_, MemberState::Down) => {
                let reason = self
                    .tracked_liveness_reason(info)
                    .unwrap_or_else(|| "unreachable".to_string());
                self.emit(EventKind::NodeDown, name, reason);
            }
            (_, MemberState::Left) => {
                self.emit(
                    EventKind::NodeLeft,
                    name,
                    "announced it is leaving".to_string(),
                );
            }
            (_, MemberState::Draining) => {
                self.emit(
                    EventKind::NodeDraining,
                    name,
                    "asked for no new work".to_string(),
                );
            }
        }
        previous.state != info.state
            || previous.generation != info.generation
            || previous.http_addr != info.http_addr
            || previous.cluster_addr != info.cluster_addr
            || previous.raft_id != info.raft_id
            || previous.raft_pristine != info.raft_pristine
            || previous.ready != info.ready
    }

    fn tracked_liveness_reason(&self, info: &MemberInfo) -> Option<String> {
        let last_seen = Duration::from_millis(info.last_seen_ms?);
        let liveness = detector::Liveness {
            phi: info.phi,
            since_last: last_seen,
            alive: false,
        };
        Some(liveness.reason(&self.params))
    }

    fn emit(&self, kind: EventKind, name: &str, reason: String) {
        let event = self.events.record(kind, name, reason);
        match kind {
            EventKind::NodeDown => {
                warn!(node = %name, seq = event.seq, "{name} down: {}", event.reason)
            }
            _ => info!(
                node = %name,
                seq = event.seq,
                "{name} {}: {}",
                kind.as_str().trim_start_matches("node_"),
                event.reason
            ),
        }
    }

    /// Logs a problem with a member's gossip once per member and problem, and, since without a
    /// cluster key anyone can gossip any number of members and values, through a throttle too, with
    /// the value escaped and the memory of what was logged bounded.
    fn warn_once(&mut self, name: &str, message: String) {
        if self.warned.len() >= MAX_REMEMBERED_WARNINGS {
            self.warned.clear();
        }
        if self.warned.insert(format!("{name}\u{0}{message}"))
            && let Some(held_back) = GOSSIP_VALUE_LOG.allow()
        {
            let message = crate::logging::escape_for_log(&message);
            warn!(node = %name, held_back, "{message}");
        }
    }
}
