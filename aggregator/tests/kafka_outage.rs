//! The shared Kafka broker killed -9 and restarted under a running
//! aggregator. In a test binary of its own, apart from `it`: cargo runs test
//! binaries one at a time, so no other test sees the broker go away.

use std::time::Duration;

use feedback_tests::aggregator::*;
use feedback_tests::Restart;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_killed_and_restarted_mid_stream_the_aggregator_resumes_and_counts_everything_once() {
    let scenario = Scenario::new().await;
    // Enough before the outage that the aggregator is still at work when the
    // broker dies: it is killed as soon as the first batches are committed.
    let events = random_events(21, 24_000, 10, 300);
    let (before, after) = events.split_at(20_000);
    let aggregator = scenario.spawn_process(env!("CARGO_BIN_EXE_aggregator"));

    produce(&scenario.topic, before).await;
    // Killed while the aggregator is still committing `before` (librdkafka
    // has likely fetched all of it already: its commits, the group's
    // coordinator and the advisory offsets meet the dead broker).
    let at_kill = committed_past(&scenario, 0).await;
    // The guard starts the broker again even if this test fails half-way.
    let restart = Restart::kill("kafka").await;
    assert!(
        at_kill < before.len() as i64,
        "killed while committing: {at_kill} of {} committed",
        before.len()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    restart.start().await;
    produce(&scenario.topic, after).await;

    assert_counted(&scenario.mysql_url, &events, Duration::from_secs(120)).await;
    // Filled after the outage, the hashes must then follow the live deltas.
    fill_all(&scenario).await;
    let more = random_events(22, 300, 10, 300);
    assert_eq!(
        produce_more_and_settle(&scenario, &events, &more, Duration::from_secs(60)).await,
        10
    );
    aggregator.terminate();
}
