//! Proves the test environment is real: Kafka, Redis and MariaDB from
//! scripts/infra.sh answer real requests.

use std::time::Duration;

use anyhow::Context;
use feedback_tests::{fresh_mysql_database, fresh_redis_database, fresh_topic, kafka_brokers};
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared::domain::{Comment, CourseId, Rating, StudentKey};
use shared::event::FeedbackSubmitted;

#[tokio::test]
async fn an_event_produced_to_kafka_is_consumed_back_with_its_key() -> anyhow::Result<()> {
    let topic = fresh_topic().await?;
    let event = FeedbackSubmitted::new(
        CourseId::parse("INFRA101")?,
        StudentKey::derive(b"k", "infra"),
        Rating::parse(3)?,
        Some(Comment::parse("往返测试")?),
    );
    let producer: FutureProducer = shared::kafka::client_config(&kafka_brokers())
        .set("enable.idempotence", "true")
        .create()?;
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("INFRA101")
                .payload(&event.to_json()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("the broker did not acknowledge")?;

    let consumer: StreamConsumer = shared::kafka::client_config(&kafka_brokers())
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .context("nothing consumed within 30 s")??;
    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    assert_eq!(message.key(), Some(&b"INFRA101"[..]));
    let decoded = FeedbackSubmitted::decode(message.payload().unwrap_or_default())?;
    assert_eq!(decoded, event);
    Ok(())
}

#[tokio::test]
async fn redis_stores_and_returns_a_hash() -> anyhow::Result<()> {
    let url = fresh_redis_database().await?;
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let _: i64 = redis::cmd("HINCRBY")
        .arg("course:INFRA")
        .arg("responses")
        .arg(2)
        .query_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("HINCRBY")
        .arg("course:INFRA")
        .arg("responses")
        .arg(3)
        .query_async(&mut conn)
        .await?;
    let value: i64 = redis::cmd("HGET")
        .arg("course:INFRA")
        .arg("responses")
        .query_async(&mut conn)
        .await?;
    assert_eq!(value, 5);
    Ok(())
}

#[tokio::test]
async fn mariadb_runs_sql_with_utf8mb4() -> anyhow::Result<()> {
    let url = fresh_mysql_database().await?;
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await?;
    conn.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, comment TEXT COLLATE utf8mb4_unicode_ci) \
         CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    .await?;
    conn.exec_drop(
        "INSERT INTO t VALUES (?, ?), (?, ?)",
        (1, "很好 👍", 2, "ok"),
    )
    .await?;
    let rows: Vec<(i32, String)> = conn.query("SELECT id, comment FROM t ORDER BY id").await?;
    assert_eq!(rows, vec![(1, "很好 👍".to_owned()), (2, "ok".to_owned())]);
    let one: Option<i64> = conn.query_first("SELECT 1").await?;
    assert_eq!(one, Some(1));
    drop(conn);
    pool.disconnect().await?;
    Ok(())
}

/// A topic's `retention.ms` as the broker reports it.
async fn retention_ms(topic: &str) -> anyhow::Result<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        shared::kafka::client_config(&kafka_brokers()).create()?;
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await?;
    let resource = described
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|code| anyhow::anyhow!("describing {topic}: {code}"))?;
    let entry = resource.get("retention.ms").context("no retention.ms")?;
    Ok(entry.value.clone().unwrap_or_default())
}

#[tokio::test]
async fn the_feedback_topic_keeps_seven_days_and_dead_letters_stay() -> anyhow::Result<()> {
    let topic = fresh_topic().await?;
    assert_eq!(retention_ms(&topic).await?, "604800000");
    let dlq = shared::kafka::dlq_topic(&topic);
    shared::kafka::ensure_topic(&kafka_brokers(), &dlq, 1, None).await?;
    assert_eq!(retention_ms(&dlq).await?, "-1");
    Ok(())
}
