//! The router: reads the consumer and hands each message to the lane of its
//! partition, holding back while a lane is behind and pausing the whole
//! assignment while MySQL is down or a dead letter cannot be written;
//! rebalances go down every lane's queue.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use shared::shutdown::Stop;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::lane::{self, Lane, LaneInput};
use super::Worker;
use crate::consumer::Rebalanced;
use crate::redis_view::DeltaQueue;

/// What a lane may hold before the router waits for it: tens of batches of
/// typical events, a few when comments run to a few KiB each; librdkafka's
/// own queue holds the next 2 MiB.
const LANE_BYTES: usize = 1 << 20;

/// The lane of a partition.
fn lane_of(partition: i32, lanes: usize) -> usize {
    partition.rem_euclid(lanes as i32) as usize
}

/// Runs the router and the lanes until `stop` is triggered; each lane finishes
/// the batch in hand (or abandons it while MySQL is down), then this returns.
pub(crate) async fn run(
    worker: Arc<Worker>,
    mut rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    stop: Stop,
) {
    let (deltas, redis_task) = worker.redis.spawn_queue();
    let lanes: Vec<Lane> = (0..worker.config.lanes)
        .map(|index| lane::spawn(worker.clone(), index, deltas.clone(), stop.clone()))
        .collect();
    route(&worker, &mut rebalances, &lanes, &stop).await;
    wind_down(&worker, lanes, deltas, redis_task).await;
}

/// Hands messages to the lanes until `stop`, or until a lane ended.
async fn route(
    worker: &Worker,
    rebalances: &mut mpsc::UnboundedReceiver<Rebalanced>,
    lanes: &[Lane],
    stop: &Stop,
) {
    let mut paused = false;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let failing = worker.health.stalled();
        let behind = lanes
            .iter()
            .any(|lane| lane.queued.load(Ordering::Relaxed) >= LANE_BYTES);
        tokio::select! {
            biased;
            () = stop.wait() => break,
            message = worker.consumer.recv(), if failing || !behind => match message {
                Ok(message) => {
                    let message = message.detach();
                    // librdkafka reports rebalances from inside recv(): take
                    // them in before this message, which is of the new assignment.
                    if apply_rebalances(worker, rebalances, lanes) {
                        paused = false;
                    }
                    let lane = &lanes[lane_of(message.partition(), lanes.len())];
                    lane.queued.fetch_add(lane::weight(&message), Ordering::Relaxed);
                    if lane.tx.send(LaneInput::Message(message)).is_err() {
                        break; // the lane ended: shutting down, or it panicked (resumed below)
                    }
                }
                Err(err) => tracing::warn!(%err, "consumer error"),
            },
            _ = tick.tick() => {
                if apply_rebalances(worker, rebalances, lanes) {
                    paused = false;
                }
                worker.advisory.send_when_due(worker);
            }
        }
        if failing != paused {
            paused = failing;
            set_paused(worker, paused);
        }
    }
}

/// Waits for the lanes and then the Redis task to finish, and sends the
/// last advisory offsets.
async fn wind_down(
    worker: &Worker,
    lanes: Vec<Lane>,
    deltas: DeltaQueue,
    redis_task: JoinHandle<()>,
) {
    // The first panic of a lane or of the Redis task, kept until all are done.
    let mut panicked = None;
    let mut keep_panic = |ended: Result<(), JoinError>| {
        if let Err(err) = ended {
            if err.is_panic() && panicked.is_none() {
                panicked = Some(err.into_panic());
            }
        }
    };
    for lane in lanes {
        drop(lane.tx);
        keep_panic(lane.task.await);
    }
    // The lanes' clones are gone with them: the task applies what they queued, then ends.
    drop(deltas);
    keep_panic(redis_task.await);
    worker.advisory.flush(worker);
    // A task that panicked (a bug) ends the process once the others are done:
    // its partitions would otherwise stay assigned to a member that no longer
    // consumes them. MySQL's offsets make the restart safe.
    if let Some(panic) = panicked {
        std::panic::resume_unwind(panic);
    }
}

/// Passes revocations down every lane's queue and keeps `/readyz`'s count.
/// True when partitions were assigned (a new assignment starts unpaused).
fn apply_rebalances(
    worker: &Worker,
    rebalances: &mut mpsc::UnboundedReceiver<Rebalanced>,
    lanes: &[Lane],
) -> bool {
    let mut assigned = false;
    while let Ok(event) = rebalances.try_recv() {
        match event {
            Rebalanced::Revoked(partitions) => {
                let partitions: HashSet<i32> = partitions.into_iter().collect();
                worker.advisory.revoke(&partitions);
                for lane in lanes.iter() {
                    let _ = lane.tx.send(LaneInput::Revoked(partitions.clone()));
                }
                worker.health.set_assigned(0);
            }
            Rebalanced::Assigned(partitions) => {
                worker.health.set_assigned(partitions.len());
                assigned = true;
            }
        }
    }
    assigned
}

/// Pauses or resumes fetching for the whole assignment (MySQL or the DLQ
/// down, or back).
fn set_paused(worker: &Worker, paused: bool) {
    let Ok(assignment) = worker.consumer.assignment() else {
        return;
    };
    let result = if paused {
        worker.consumer.pause(&assignment)
    } else {
        worker.consumer.resume(&assignment)
    };
    match result {
        Ok(()) if paused => {
            tracing::info!("MySQL or the DLQ unavailable: consumption paused")
        }
        Ok(()) => tracing::info!("MySQL and the DLQ available again: consumption resumed"),
        Err(err) => tracing::warn!(%err, paused, "changing the pause state failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn every_partition_has_one_lane_and_every_lane_gets_partitions() {
        let lanes: Vec<usize> = (0..6).map(|p| lane_of(p, 3)).collect();
        assert_eq!(lanes, [0, 1, 2, 0, 1, 2]);
        assert!((0..6).all(|p| lane_of(p, 1) == 0));
        assert_eq!(lane_of(5, 8), 5);
    }
}
