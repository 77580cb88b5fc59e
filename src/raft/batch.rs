//! Group commit: writes that arrive while earlier ones are being committed are proposed together,
//! as one [`SessionCommand::Batch`] log entry.
//!
//! openraft 0.9 appends each client write as its own log entry and waits for that append's fsync
//! before it looks at the next one, so one entry per write caps a node at roughly one write per
//! fsync round. Here every write goes through one queue; a task takes everything waiting (up to
//! [`MAX_BATCH_COMMANDS`] commands or [`MAX_BATCH_BYTES`] of session data), proposes it as one entry
//! and hands each caller its own answer. Under load a batch holds whatever queued up during the
//! previous commit, so the cost of an fsync and of a replication round is shared; a lone write is
//! proposed alone at once, as before. Up to [`MAX_BATCHES_IN_FLIGHT`] batches are committed at
//! the same time. A write that finds nothing queued and nothing being committed is proposed at
//! once by its own task.
//!
//! On a follower the batch is forwarded to the leader as one request. A batch either commits
//! whole or not at all, and every command in it gets the answer it would have got alone: the state
//! machine applies the commands in order, exactly as separate entries.
//!
//! Every session write takes this path: the API's and the session layer's writes, access-time
//! flushes, restores and the leader's expiry. The queue reaches Raft only through [`Proposer`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::raft::{CommandResponse, LogId, PeerResponse, SessionCommand};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::replica::ConsensusError;
use crate::clock::now_ms;
use crate::peer::{PeerAt, PeerError};

/// Most commands in one batch.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// A batch is closed once its commands hold this much session data (a single larger command
/// still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Batches being committed at the same time.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Longest wait for a proposal to be committed before its writers are answered (503, outcome unknown).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Writes waiting to be batched before callers wait to queue theirs.
const QUEUE_CAPACITY: usize = 8 * MAX_BATCH_COMMANDS;

/// What the queue needs of this node's Raft member: who leads, how to propose here, and how to
/// forward to the leader. [`Replica`](super::replica::Replica) is the implementation; the queue
/// decides everything else (batching, stamping, timeouts, which failures are retried).
pub trait Proposer: Send + Sync + 'static {
    /// The leader, when Raft knows one and it is another node.
    fn leader_elsewhere(&self) -> Option<PeerAt>;
    /// The `<sessions max-active>` this node stamps on creates it proposes.
    fn max_active(&self) -> u64;
    /// Why this node has no quorum, when it has none.
    fn quorum_problem(&self) -> Option<String>;
    /// Appends `command` to the log here (if this node leads) and waits until it is applied.
    fn propose(&self, command: SessionCommand) -> impl Future<Output = Proposed> + Send;
    /// Sends `command` to `leader` as one forwarded write.
    fn forward(
        &self,
        leader: &PeerAt,
        command: SessionCommand,
    ) -> impl Future<Output = Result<PeerResponse, PeerError>> + Send;
    /// Drops pooled connections to `leader` after a failed call.
    fn forget(&self, leader: &PeerAt);
}

/// What proposing a command here came to.
#[derive(Debug)]
pub enum Proposed {
    /// Applied at this log index, with this answer.
    Applied(LogId, CommandResponse),
    /// This node does not lead: nothing was appended.
    NotLeader,
    /// Raft refused the command for another reason.
    Refused(String),
    /// Raft stopped (a storage error, or the node is shutting down).
    Stopped(String),
}

/// The outcome of one attempt to commit a command.
#[derive(Debug)]
pub enum Attempt {
    /// Committed at this log index, with this answer.
    Done(LogId, CommandResponse),
    /// Not committed, or not known to be: try again once a leader is known. `uncertain` says why
    /// the command may have been applied without our hearing the answer.
    Retry {
        /// Set when the leader may have applied the command.
        uncertain: Option<String>,
    },
    /// Give up.
    Failed(ConsensusError),
}

/// A write waiting for its batch.
struct Pending {
    command: SessionCommand,
    reply: oneshot::Sender<Attempt>,
}

/// The queue in front of Raft; cheap to clone.
#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<Pending>,
    in_flight: Arc<Semaphore>,
}

/// The receiving end, handed to [`run`].
pub struct WriteQueueReceiver {
    rx: mpsc::Receiver<Pending>,
    in_flight: Arc<Semaphore>,
}

/// A new, empty queue.
pub fn queue() -> (WriteQueue, WriteQueueReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    (
        WriteQueue {
            tx,
            in_flight: in_flight.clone(),
        },
        WriteQueueReceiver { rx, in_flight },
    )
}

impl WriteQueue {
    /// One attempt to commit `command`, in whatever batch it lands in.
    pub async fn attempt<P: Proposer>(&self, proposer: &P, command: SessionCommand) -> Attempt {
        let stopped =
            || Attempt::Failed(ConsensusError::Stopped("write queue stopped".to_string()));
        // Nothing queued and nothing being committed: a batch of one, proposed from this task at
        // once, which saves the hand-offs to the batching task when writes are few.
        if self.tx.capacity() == self.tx.max_capacity()
            && self.in_flight.available_permits() == MAX_BATCHES_IN_FLIGHT
            && let Ok(permit) = self.in_flight.clone().try_acquire_owned()
        {
            let outcome = commit(proposer, vec![command]).await.pop();
            drop(permit);
            return outcome.unwrap_or_else(stopped);
        }
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Pending { command, reply }).await.is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }
}

/// Takes batches off the queue and commits them until `shutdown`.
pub async fn run<P: Proposer>(
    proposer: Arc<P>,
    mut queue: WriteQueueReceiver,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let in_flight = queue.in_flight.clone();
    // A write that did not fit in the previous batch opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                pending = queue.rx.recv() => match pending {
                    Some(pending) => pending,
                    None => return,
                },
            },
        };
        // Waiting for a free slot is what lets the next batch grow.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let mut bytes = first.command.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.rx.try_recv() else {
                break;
            };
            let size = next.command.approx_bytes();
            if bytes + size > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let proposer = proposer.clone();
        tasks.spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|pending| (pending.command, pending.reply))
                .unzip();
            let outcomes = commit(&*proposer, commands).await;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The caller may have given up meanwhile; its command was still proposed.
                let _ = reply.send(outcome);
            }
            drop(permit);
        });
    }
}

/// Proposes `commands` as one entry here, or forwards them to the leader; one outcome per command.
async fn commit<P: Proposer>(proposer: &P, commands: Vec<SessionCommand>) -> Vec<Attempt> {
    let count = commands.len();
    let proposal = if count == 1 {
        commands
            .into_iter()
            .next()
            .unwrap_or(SessionCommand::Batch(Vec::new()))
    } else {
        SessionCommand::Batch(commands)
    };
    // A follower that knows the leader sends the batch there at once; otherwise Raft itself says
    // whether this node leads. The batch is not copied for that: when Raft answers "not the
    // leader", nothing was applied, and the caller's next attempt is forwarded.
    let Some(leader) = proposer.leader_elsewhere() else {
        let mut local = proposal;
        // The leader stamps each write with its own clock just before proposing it.
        local.stamp(now_ms());
        local.limit_creates(proposer.max_active());
        // Without a quorum openraft waits for the commit as long as it takes (a lost majority that
        // comes back after ten minutes commits the entry then): the caller gets an answer sooner.
        let Ok(written) = tokio::time::timeout(COMMIT_TIMEOUT, proposer.propose(local)).await
        else {
            let why = proposer
                .quorum_problem()
                .unwrap_or_else(|| "a majority of voters did not acknowledge it".to_owned());
            return every(count, || {
                Attempt::Failed(ConsensusError::NoQuorum {
                    timeout: COMMIT_TIMEOUT,
                    why: why.clone(),
                })
            });
        };
        return match written {
            Proposed::Applied(log_id, response) => split(count, log_id, response),
            Proposed::NotLeader => every(count, || Attempt::Retry { uncertain: None }),
            Proposed::Refused(reason) => every(count, || {
                Attempt::Failed(ConsensusError::Unknown(reason.clone()))
            }),
            Proposed::Stopped(reason) => every(count, || {
                Attempt::Failed(ConsensusError::Stopped(reason.clone()))
            }),
        };
    };
    let uncertain = match proposer.forward(&leader, proposal).await {
        // No wait for the local apply: every read goes through the read barrier, which waits for
        // this index anyway, and waiting here would cost a commit round trip.
        Ok(PeerResponse::ClientWrite { log_id, response }) => {
            return split(count, log_id, response);
        }
        // Leadership moved on: nothing was applied.
        Ok(PeerResponse::ForwardToLeader { .. }) => None,
        Ok(PeerResponse::WriteRefused(reason)) => {
            return every(count, || {
                Attempt::Failed(ConsensusError::Refused(reason.clone()))
            });
        }
        Ok(PeerResponse::Error(text)) => {
            debug!(error = %text, "forwarded write failed at the leader; retrying");
            Some(text)
        }
        Ok(other) => {
            let reason = format!("unexpected answer to a forwarded write: {other:?}");
            return every(count, || {
                Attempt::Failed(ConsensusError::Unknown(reason.clone()))
            });
        }
        // Nothing was sent: safe to try again once a leader is known.
        Err(err) if err.is_unreachable() => {
            debug!(error = %err, "leader unreachable; retrying");
            proposer.forget(&leader);
            None
        }
        Err(err) => {
            debug!(error = %err, "forwarded write got no answer; retrying on the leader");
            proposer.forget(&leader);
            Some(err.to_string())
        }
    };
    every(count, || Attempt::Retry {
        uncertain: uncertain.clone(),
    })
}

/// One `Done` per command: the answer itself for a lone command, the batch's answers otherwise.
fn split(count: usize, log_id: LogId, response: CommandResponse) -> Vec<Attempt> {
    if count == 1 {
        return vec![Attempt::Done(log_id, response)];
    }
    match response {
        CommandResponse::Batch(responses) if responses.len() == count => responses
            .into_iter()
            .map(|response| Attempt::Done(log_id, response))
            .collect(),
        other => {
            let reason = format!("a batch of {count} writes was answered with {other:?}");
            every(count, || {
                Attempt::Failed(ConsensusError::Unknown(reason.clone()))
            })
        }
    }
}

fn every(count: usize, outcome: impl Fn() -> Attempt) -> Vec<Attempt> {
    (0..count).map(|_| outcome()).collect()
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use proto::raft::SessionId;

    use super::*;

    fn log_id() -> LogId {
        LogId::new(CommittedLeaderId::new(3, 1), 42)
    }

    #[test]
    fn a_batch_answer_is_handed_out_in_command_order() {
        let outcomes = split(
            2,
            log_id(),
            CommandResponse::Batch(vec![CommandResponse::Deleted, CommandResponse::NotFound]),
        );
        assert!(matches!(
            outcomes.as_slice(),
            [
                Attempt::Done(_, CommandResponse::Deleted),
                Attempt::Done(_, CommandResponse::NotFound)
            ]
        ));
    }

    #[test]
    fn a_lone_command_gets_its_answer_unwrapped() {
        let outcomes = split(1, log_id(), CommandResponse::Deleted);
        assert!(matches!(
            outcomes.as_slice(),
            [Attempt::Done(id, CommandResponse::Deleted)] if id.index == 42
        ));
    }

    #[test]
    fn a_batch_answer_of_the_wrong_shape_fails_every_command() {
        let outcomes = split(
            3,
            log_id(),
            CommandResponse::Batch(vec![CommandResponse::Deleted]),
        );
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Attempt::Failed(ConsensusError::Unknown(_))))
        );
    }

    /// Leads, and answers each proposal with what `answer` says; records what it was asked.
    struct FakeLeader {
        proposed: std::sync::Mutex<Vec<SessionCommand>>,
        answer: fn(&SessionCommand) -> Proposed,
    }

    impl Proposer for FakeLeader {
        fn leader_elsewhere(&self) -> Option<PeerAt> {
            None
        }

        fn max_active(&self) -> u64 {
            9
        }

        fn quorum_problem(&self) -> Option<String> {
            None
        }

        async fn propose(&self, command: SessionCommand) -> Proposed {
            let answer = (self.answer)(&command);
            self.proposed.lock().expect("lock").push(command);
            answer
        }

        async fn forward(
            &self,
            _leader: &PeerAt,
            _command: SessionCommand,
        ) -> Result<PeerResponse, PeerError> {
            unreachable!("a leader forwards nothing")
        }

        fn forget(&self, _leader: &PeerAt) {}
    }

    fn create(byte: u8) -> SessionCommand {
        SessionCommand::Create {
            id: SessionId::from_bytes([byte; 16]),
            data: "{}".into(),
            ttl_ms: 5,
            now_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_leader_proposes_one_stamped_limited_entry_and_answers_each_command() {
        let leader = FakeLeader {
            proposed: Default::default(),
            answer: |_| {
                Proposed::Applied(
                    log_id(),
                    CommandResponse::Batch(vec![
                        CommandResponse::AlreadyExists,
                        CommandResponse::Deleted,
                    ]),
                )
            },
        };
        let delete = SessionCommand::Delete {
            id: SessionId::from_bytes([2; 16]),
        };
        let outcomes = commit(&leader, vec![create(1), delete]).await;
        assert!(matches!(
            outcomes.as_slice(),
            [
                Attempt::Done(_, CommandResponse::AlreadyExists),
                Attempt::Done(_, CommandResponse::Deleted)
            ]
        ));
        let proposed = leader.proposed.lock().expect("lock");
        let [SessionCommand::Batch(commands)] = proposed.as_slice() else {
            panic!("one batch entry expected: {proposed:?}");
        };
        assert!(matches!(
            commands[0],
            SessionCommand::CreateWithin { max_active: 9, now_ms, .. } if now_ms > 1
        ));
    }

    #[tokio::test]
    async fn not_leading_is_retried_and_a_stopped_raft_is_not() {
        let follower = FakeLeader {
            proposed: Default::default(),
            answer: |_| Proposed::NotLeader,
        };
        let queue = queue().0;
        assert!(matches!(
            queue.attempt(&follower, create(1)).await,
            Attempt::Retry { uncertain: None }
        ));
        let stopped = FakeLeader {
            proposed: Default::default(),
            answer: |_| Proposed::Stopped("storage error".into()),
        };
        assert!(matches!(
            queue.attempt(&stopped, create(1)).await,
            Attempt::Failed(ConsensusError::Stopped(reason)) if reason == "storage error"
        ));
    }

    #[test]
    fn stamping_a_batch_stamps_every_command_in_it() {
        let id = SessionId::from_bytes([1; 16]);
        let mut batch = SessionCommand::Batch(vec![
            SessionCommand::Create {
                id,
                data: "{}".into(),
                ttl_ms: 5,
                now_ms: 1,
            },
            SessionCommand::Touch {
                touches: vec![(id, 2)],
            },
        ]);
        batch.stamp(77);
        let SessionCommand::Batch(commands) = batch else {
            unreachable!()
        };
        assert!(matches!(
            commands[0],
            SessionCommand::Create { now_ms: 77, .. }
        ));
        assert!(matches!(&commands[1], SessionCommand::Touch { touches } if touches[0].1 == 77));
    }
}
