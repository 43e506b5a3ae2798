//! Moderation end to end: a comment ingest masked travels flagged through
//! Kafka and the aggregator into the listing and the moderation queue; an
//! admin hides it (gone from the listing and the CSV within 5 s, its rating
//! still counted, logged with the admin's `sub`) and shows it again.

use std::time::Duration;

use feedback_tests::query::admin;
use feedback_tests::stack::{start_aggregator, start_ingest, start_query};
use feedback_tests::{
    eventually, fresh_mysql_database, fresh_redis_database, fresh_topic, student, temp_dir, token,
    Running,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::auth::Role;

/// What the contract gives an admin action to show.
const VISIBLE_WITHIN: Duration = Duration::from_secs(5);

struct Stack {
    client: reqwest::Client,
    ingest: Running,
    aggregator: Running,
    query: Running,
}

impl Stack {
    async fn start() -> Self {
        let topic = fresh_topic()
            .await
            .expect("a topic (is scripts/infra.sh up?)");
        let mysql_url = fresh_mysql_database().await.expect("a MySQL database");
        let redis_url = fresh_redis_database().await.expect("a Redis database");
        Self {
            client: reqwest::Client::new(),
            aggregator: start_aggregator(&topic, &mysql_url, &redis_url).await,
            query: start_query(&mysql_url, &redis_url).await,
            ingest: start_ingest(&topic, &temp_dir("moderation-spool")).await,
        }
    }

    /// Posts a submission as `sub`, with an `Idempotency-Key` when given; the 202's body.
    async fn submit(&self, sub: &str, body: &Value, key: Option<&str>) -> Value {
        let mut request = self
            .client
            .post(format!("{}/v1/feedback", self.ingest.url))
            .bearer_auth(student(sub))
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("ingest answers");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json().await.expect("a JSON answer")
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.query.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("query answers")
    }

    /// GET as an admin, expecting 200 and JSON.
    async fn json(&self, path: &str) -> Value {
        let response = self.get(path, &admin()).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("a JSON body")
    }

    async fn csv(&self, course: &str) -> String {
        let response = self
            .get(&format!("/v1/courses/{course}/feedback.csv"), &admin())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    async fn act(&self, id: &str, action: &str, token: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/feedback/{id}/{action}", self.query.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("query answers")
    }

    /// The listing's item for `id`, if listed.
    async fn listed(&self, course: &str, id: &str, include_hidden: bool) -> Option<Value> {
        let page = self
            .json(&format!(
                "/v1/courses/{course}/feedback?include_hidden={include_hidden}"
            ))
            .await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["feedback_id"] == id)
            .cloned()
    }

    async fn stop(self) {
        self.ingest.stop().await;
        self.aggregator.stop().await;
        self.query.stop().await;
    }
}

fn ids(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["feedback_id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_masked_comment_is_flagged_queued_hidden_and_shown_again_with_its_rating_counted() {
    let stack = Stack::start().await;
    let course = "MOD-E2E";
    let rude = json!({"course_id": course, "rating": 2, "comment": "What the fuck, 老师"});
    let answer = stack.submit("mod-rude", &rude, Some("mod-key-1")).await;
    assert_eq!(answer["flagged"], true, "{answer}");
    let flagged_id = answer["feedback_id"].as_str().unwrap().to_owned();
    // A retry with the key gets the stored answer, which says so too.
    let replay = stack.submit("mod-rude", &rude, Some("mod-key-1")).await;
    assert_eq!(replay, answer);
    let clean = json!({"course_id": course, "rating": 5, "comment": "讲得很清楚"});
    let answer = stack.submit("mod-kind", &clean, None).await;
    assert_eq!(answer["flagged"], false, "{answer}");
    let clean_id = answer["feedback_id"].as_str().unwrap().to_owned();

    // Aggregated: listed flagged (and the clean one not), and queued.
    let listing = eventually(Duration::from_secs(20), "both listed", || async {
        let page = stack.json(&format!("/v1/courses/{course}/feedback")).await;
        Ok((page["items"].as_array().unwrap().len() == 2).then_some(page))
    })
    .await
    .unwrap();
    let items = listing["items"].as_array().unwrap();
    let rude_item = items
        .iter()
        .find(|i| i["feedback_id"] == *flagged_id)
        .unwrap();
    assert_eq!(rude_item["flagged"], true, "{rude_item}");
    assert_eq!(rude_item["comment"], "What the ****, 老师");
    assert!(rude_item.get("hidden").is_none(), "{rude_item}");
    let kind_item = items
        .iter()
        .find(|i| i["feedback_id"] == *clean_id)
        .unwrap();
    assert_eq!(kind_item["flagged"], false, "{kind_item}");
    let queue = stack.json("/v1/moderation").await;
    assert_eq!(ids(&queue), [flagged_id.as_str()], "{queue}");
    assert_eq!(queue["items"][0]["course_id"], course);
    assert_eq!(queue["items"][0]["comment"], "What the ****, 老师");
    assert_eq!(queue["next_cursor"], Value::Null);
    let stats_path = format!("/v1/courses/{course}/stats");
    let stats = stack.json(&stats_path).await;
    assert_eq!(
        (stats["responses"].as_i64(), stats["rating_sum"].as_i64()),
        (Some(2), Some(7))
    );

    // Hidden: out of the listing and the CSV within 5 s, still counted.
    let response = stack
        .act(&flagged_id, "hide", &token("mod-admin", Role::Admin))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let state: Value = response.json().await.unwrap();
    assert_eq!(
        (state["hidden"].as_bool(), state["flagged"].as_bool()),
        (Some(true), Some(true))
    );
    eventually(
        VISIBLE_WITHIN,
        "the hidden comment gone from the listing and CSV",
        || async {
            let listed = stack.listed(course, &flagged_id, false).await;
            let csv = stack.csv(course).await;
            Ok((listed.is_none() && !csv.contains(&flagged_id)).then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(stack.csv(course).await.contains(&clean_id));
    let stats = stack.json(&stats_path).await;
    assert_eq!(
        (stats["responses"].as_i64(), stats["rating_sum"].as_i64()),
        (Some(2), Some(7))
    );
    let shown = stack
        .listed(course, &flagged_id, true)
        .await
        .expect("listed for an admin asking");
    assert_eq!(
        (shown["hidden"].as_bool(), shown["flagged"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(ids(&stack.json("/v1/moderation").await), Vec::<&str>::new());
    let log = stack.json("/v1/moderation/log").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    let entry = &log["items"][0];
    assert_eq!(
        (
            entry["sub"].as_str(),
            entry["feedback_id"].as_str(),
            entry["action"].as_str()
        ),
        (Some("mod-admin"), Some(flagged_id.as_str()), Some("hide"))
    );

    // Shown again: back in the listing and the CSV, still out of the queue.
    let response = stack
        .act(
            &flagged_id,
            "unhide",
            &token("mod-other-admin", Role::Admin),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    eventually(
        VISIBLE_WITHIN,
        "the comment back in the listing and CSV",
        || async {
            let listed = stack.listed(course, &flagged_id, false).await;
            let csv = stack.csv(course).await;
            Ok((listed.is_some() && csv.contains(&flagged_id)).then_some(listed))
        },
    )
    .await
    .unwrap()
    .filter(|item| item.get("hidden").is_none() && item["flagged"] == true)
    .expect("listed flagged, not hidden");
    assert_eq!(ids(&stack.json("/v1/moderation").await), Vec::<&str>::new());
    let log = stack.json("/v1/moderation/log").await;
    let actions: Vec<(&str, &str)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["sub"].as_str().unwrap(), i["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("mod-other-admin", "unhide"), ("mod-admin", "hide")]
    );

    // Only admins moderate; an id no event has is 404.
    let instructor = token("mod-prof", Role::Instructor);
    assert_eq!(
        stack.act(&flagged_id, "hide", &instructor).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        stack.get("/v1/moderation", &instructor).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        stack
            .get("/v1/moderation/log", &student("mod-rude"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let unknown = stack
        .act("01KAZ3G6Y5W4N8Q2R7T9V0X1YZ", "hide", &admin())
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(feedback_tests::error_of(unknown).await["code"], "not_found");
    stack.stop().await;
}
