//! The cluster build store: one DynamoDB item per build, with the conditional writes of DESIGN.md
//! ("Builds in DynamoDB"). Indexes only say where to look; every decision is a conditional write.
//!
//! Besides the build fields an item carries the keys of sparse indexes: `queue` + `queued_at`
//! exist only while the build is queued, `lease_queue` + `lease_until` only while it runs, and the
//! constant `kind` puts every build into the `recent` listing.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType,
    TableStatus,
};

use super::{
    BuildStore, ExpiredLease, Lease, ListFilter, Outcome, QueuedBuild, Reaped, Renewal, StoreError,
};
use crate::config::AwsSettings;
use crate::model::{Build, BuildId, SourceInfo, Status, Timestamp};

/// Attempts per call, the first included: rides out throttling and brief 5xx without holding a
/// claim or renewal up for longer than a fraction of a lease.
pub const DYNAMO_MAX_ATTEMPTS: u32 = 4;
/// How long `ensure_table` waits for a new table and its indexes to become ACTIVE.
pub const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often `ensure_table` looks while it waits.
const TABLE_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often `request_cancel` re-reads a build that changed state under it before giving up.
const CANCEL_ROUNDS: usize = 8;

/// Sparse index of queued builds, oldest first.
pub const QUEUE_INDEX: &str = "queue";
/// Sparse index of running builds by lease end, for the reaper.
pub const LEASES_INDEX: &str = "leases";
/// An app's builds, newest first.
pub const BY_APP_INDEX: &str = "by_app";
/// All builds, newest first.
pub const RECENT_INDEX: &str = "recent";

/// Value of `queue` while a build is queued (the hash key of the `queue` index).
const QUEUE_VALUE: &str = "queued";
/// Value of `lease_queue` while a build runs (the hash key of the `leases` index).
const LEASE_QUEUE_VALUE: &str = "running";
/// Value of `kind` on every build (the hash key of the `recent` index).
const KIND_VALUE: &str = "build";

type Item = HashMap<String, AttributeValue>;

pub struct DynamoStore {
    client: Client,
    table: String,
}

/// What `ensure_table` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub table: String,
    /// False when the table was already there.
    pub created: bool,
}

impl DynamoStore {
    /// A store on `aws.table`, with region, credentials and endpoint from `sdk_config`.
    pub fn new(sdk_config: &SdkConfig, aws: &AwsSettings) -> Self {
        DynamoStore {
            client: dynamo_client(sdk_config),
            table: aws.table.clone(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A DynamoDB client that retries throttling, 5xx and timeouts itself (standard mode).
pub fn dynamo_client(sdk_config: &SdkConfig) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
        .retry_config(RetryConfig::standard().with_max_attempts(DYNAMO_MAX_ATTEMPTS))
        .build();
    Client::from_conf(config)
}

/// Creates the builds table with its four indexes unless it exists, then waits until the table
/// and every index are ACTIVE. Safe to run again (and concurrently: `slipway setup` on two nodes).
pub async fn ensure_table(client: &Client, table: &str) -> Result<SetupReport, StoreError> {
    let created = match client.describe_table().table_name(table).send().await {
        Ok(found) => {
            let present: Vec<&str> = found
                .table()
                .map(|t| t.global_secondary_indexes())
                .unwrap_or_default()
                .iter()
                .filter_map(|i| i.index_name())
                .collect();
            for index in [QUEUE_INDEX, LEASES_INDEX, BY_APP_INDEX, RECENT_INDEX] {
                if !present.contains(&index) {
                    return Err(StoreError::Unavailable(format!(
                        "table {table} exists without the index {index}: \
                         delete it or create the index by hand"
                    )));
                }
            }
            false
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            create_table(client, table).await?
        }
        Err(e) => return Err(unavailable(e)),
    };
    wait_until_active(client, table).await?;
    Ok(SetupReport {
        table: table.to_string(),
        created,
    })
}

/// True when this call created the table; false when another caller won the race.
async fn create_table(client: &Client, table: &str) -> Result<bool, StoreError> {
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| {
        StoreError::Unavailable(format!("create table request: {e}"))
    };
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(invalid)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(invalid)
    };
    let index = |name: &str, hash: &str, range: &str| -> Result<_, StoreError> {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash)?)
            .key_schema(key(range, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(invalid)
    };
    use ScalarAttributeType::{N, S};
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("id", KeyType::Hash)?)
        .attribute_definitions(attribute("id", S)?)
        .attribute_definitions(attribute("queue", S)?)
        .attribute_definitions(attribute("queued_at", N)?)
        .attribute_definitions(attribute("lease_queue", S)?)
        .attribute_definitions(attribute("lease_until", N)?)
        .attribute_definitions(attribute("app", S)?)
        .attribute_definitions(attribute("kind", S)?)
        .global_secondary_indexes(index(QUEUE_INDEX, "queue", "queued_at")?)
        .global_secondary_indexes(index(LEASES_INDEX, "lease_queue", "lease_until")?)
        .global_secondary_indexes(index(BY_APP_INDEX, "app", "id")?)
        .global_secondary_indexes(index(RECENT_INDEX, "kind", "id")?)
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(unavailable(e)),
    }
}

async fn wait_until_active(client: &Client, table: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(unavailable)?;
        let active = described.table().is_some_and(|t| {
            t.table_status() == Some(&TableStatus::Active)
                && t.global_secondary_indexes()
                    .iter()
                    .all(|i| i.index_status() == Some(&IndexStatus::Active))
        });
        if active {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!(
                "table {table} is not ACTIVE after {}s",
                TABLE_ACTIVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(TABLE_POLL_INTERVAL).await;
    }
}

fn unavailable<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(DisplayErrorContext(&e).to_string())
}

/// True when DynamoDB refused a write because its condition did not hold.
fn condition_failed<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>,
) -> bool {
    e.as_service_error()
        .is_some_and(|e| e.is_conditional_check_failed_exception())
}

/// `#name → name` for every attribute an expression mentions: moto (and DynamoDB) reject
/// reserved words such as `status`, `error` and `source` used bare.
fn names(attributes: &[&str]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|a| (format!("#{a}"), a.to_string()))
        .collect()
}

fn values<const N: usize>(pairs: [(&str, AttributeValue); N]) -> HashMap<String, AttributeValue> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn key(id: BuildId) -> Item {
    HashMap::from([("id".to_string(), s(id.to_string()))])
}

/// The item that stores `build`, with the index keys its status calls for.
fn build_to_item(build: &Build) -> Result<Item, StoreError> {
    let options = serde_json::to_string(&build.options)
        .map_err(|e| StoreError::Corrupt(format!("options do not serialize: {e}")))?;
    let mut item: Item = HashMap::from([
        ("id".to_string(), s(build.id.to_string())),
        ("kind".to_string(), s(KIND_VALUE)),
        ("app".to_string(), s(build.app.as_str())),
        ("status".to_string(), s(build.status.as_str())),
        ("created_at".to_string(), n(build.created_at.millis())),
        ("attempt".to_string(), n(build.attempt)),
        ("source_bytes".to_string(), n(build.source.bytes)),
        ("source_sha256".to_string(), s(&build.source.sha256)),
        ("options".to_string(), s(options)),
        (
            "cancel_requested".to_string(),
            AttributeValue::Bool(build.cancel_requested),
        ),
    ]);
    let optional = [
        ("started_at", build.started_at.map(|t| n(t.millis()))),
        ("finished_at", build.finished_at.map(|t| n(t.millis()))),
        ("node", build.node.as_ref().map(s)),
        ("description", build.description.as_ref().map(s)),
        ("image", build.image.as_ref().map(s)),
        ("digest", build.digest.as_ref().map(s)),
        ("error", build.error.as_ref().map(s)),
        ("cached_steps", build.cached_steps.map(n)),
        ("total_steps", build.total_steps.map(n)),
    ];
    item.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?))),
    );
    if build.status == Status::Queued {
        item.insert("queue".to_string(), s(QUEUE_VALUE));
        item.insert("queued_at".to_string(), n(build.created_at.millis()));
    }
    Ok(item)
}

/// Reads a build back from its item; a missing or malformed field is `Corrupt`, naming it.
fn build_from_item(item: &Item) -> Result<Build, StoreError> {
    let id = item
        .get("id")
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    let corrupt = |what: &str| StoreError::Corrupt(format!("build {id:?}: {what}"));
    let string = |name: &str| -> Result<Option<String>, StoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(corrupt(name)),
        }
    };
    let required = |name: &str| string(name)?.ok_or_else(|| corrupt(name));
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name)),
            Some(_) => Err(corrupt(name)),
        }
    };
    let small = |name: &str| -> Result<Option<u32>, StoreError> {
        number(name)?
            .map(|v| u32::try_from(v).map_err(|_| corrupt(name)))
            .transpose()
    };
    let timestamp = |name: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(number(name)?.map(Timestamp::from_millis))
    };
    Ok(Build {
        id: id.parse().map_err(|_| corrupt("id"))?,
        app: required("app")?.parse().map_err(|_| corrupt("app"))?,
        status: required("status")?.parse().map_err(|_| corrupt("status"))?,
        created_at: timestamp("created_at")?.ok_or_else(|| corrupt("created_at"))?,
        started_at: timestamp("started_at")?,
        finished_at: timestamp("finished_at")?,
        node: string("node")?,
        attempt: small("attempt")?.ok_or_else(|| corrupt("attempt"))?,
        source: SourceInfo {
            bytes: number("source_bytes")?
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt("source_bytes"))?,
            sha256: required("source_sha256")?,
        },
        options: serde_json::from_str(&required("options")?).map_err(|_| corrupt("options"))?,
        description: string("description")?,
        image: string("image")?,
        digest: string("digest")?,
        error: string("error")?,
        cached_steps: small("cached_steps")?,
        total_steps: small("total_steps")?,
        cancel_requested: match item.get("cancel_requested") {
            None => false,
            Some(AttributeValue::Bool(v)) => *v,
            Some(_) => return Err(corrupt("cancel_requested")),
        },
    })
}

fn attributes_to_build(attributes: Option<&Item>) -> Result<Build, StoreError> {
    build_from_item(attributes.ok_or_else(|| {
        StoreError::Corrupt("DynamoDB returned no attributes for an ALL_NEW update".into())
    })?)
}

fn number_of(item: &Item, name: &str) -> Result<i64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("index item without a numeric {name}")))
}

fn id_of(item: &Item) -> Result<BuildId, StoreError> {
    let id = item.get("id").and_then(|v| v.as_s().ok());
    id.and_then(|id| id.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("index item with id {id:?}")))
}

/// A `Query` on one of the indexes.
struct IndexQuery<'a> {
    index: &'a str,
    key_condition: String,
    /// Applied after the key condition: pages may come back short, so paging goes on.
    filter: Option<&'a str>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    newest_first: bool,
    /// Stop once this many items are in; `None` reads every page.
    enough: Option<usize>,
}

impl DynamoStore {
    /// Every item the query yields, following pages until `enough` of them are in.
    async fn query_index(&self, query: IndexQuery<'_>) -> Result<Vec<Item>, StoreError> {
        let IndexQuery {
            index,
            key_condition,
            filter,
            names,
            values,
            newest_first,
            enough,
        } = query;
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(&key_condition)
                .set_filter_expression(filter.map(str::to_string))
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(!newest_first)
                .set_limit(enough.map(|n| n.clamp(1, i32::MAX as usize) as i32))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            let full = enough.is_some_and(|n| items.len() >= n);
            if full || start.is_none() {
                if let Some(n) = enough {
                    items.truncate(n);
                }
                return Ok(items);
            }
        }
    }

    /// One conditional `UpdateItem` on a build: the build as it is afterwards, or `None` when
    /// the condition did not hold (the build moved on, or does not exist).
    async fn update_if(
        &self,
        id: BuildId,
        update: &str,
        condition: &str,
        names: HashMap<String, String>,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Option<Build>, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(updated) => attributes_to_build(updated.attributes()).map(Some),
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// The `SET` half of a requeue: back into the `queue` index at its original place in line.
const REQUEUE: &str = "SET #status = :queued, #queue = :queue, #queued_at = #created_at \
     REMOVE #node, #lease_queue, #lease_until";
const REQUEUE_NAMES: [&str; 7] = [
    "status",
    "queue",
    "queued_at",
    "created_at",
    "node",
    "lease_queue",
    "lease_until",
];
/// The condition every write by a lease holder carries: `attempt` is the fencing token.
const HELD: &str = "#node = :node AND #attempt = :attempt AND #status = :running";

fn lease_values(lease: &Lease) -> [(&'static str, AttributeValue); 3] {
    [
        (":node", s(&lease.node)),
        (":attempt", n(lease.attempt)),
        (":running", s(Status::Running.as_str())),
    ]
}

#[async_trait]
impl BuildStore for DynamoStore {
    async fn create(&self, build: &Build) -> Result<(), StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(build_to_item(build)?))
            .condition_expression("attribute_not_exists(#id)")
            .set_expression_attribute_names(Some(names(&["id"])))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists(build.id))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn get(&self, id: BuildId) -> Result<Option<Build>, StoreError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        found.item().map(build_from_item).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Build>, StoreError> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let (index, mut key_condition, mut attributes, mut vals) = match &filter.app {
            Some(app) => (
                BY_APP_INDEX,
                "#app = :app".to_string(),
                vec!["app"],
                HashMap::from([(":app".to_string(), s(app.as_str()))]),
            ),
            None => (
                RECENT_INDEX,
                "#kind = :kind".to_string(),
                vec!["kind"],
                HashMap::from([(":kind".to_string(), s(KIND_VALUE))]),
            ),
        };
        if let Some(before) = filter.before {
            key_condition.push_str(" AND #id < :before");
            attributes.push("id");
            vals.insert(":before".to_string(), s(before.to_string()));
        }
        let status_filter = filter.status.map(|status| {
            attributes.push("status");
            vals.insert(":status".to_string(), s(status.as_str()));
            "#status = :status"
        });
        let items = self
            .query_index(IndexQuery {
                index,
                key_condition,
                filter: status_filter,
                names: names(&attributes),
                values: vals,
                newest_first: true,
                enough: Some(filter.limit),
            })
            .await?;
        items.iter().map(build_from_item).collect()
    }

    async fn queued(&self, limit: usize) -> Result<Vec<QueuedBuild>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let items = self
            .query_index(IndexQuery {
                index: QUEUE_INDEX,
                key_condition: "#queue = :queue".into(),
                filter: None,
                names: names(&["queue"]),
                values: values([(":queue", s(QUEUE_VALUE))]),
                newest_first: false,
                enough: Some(limit),
            })
            .await?;
        let mut queued = items
            .iter()
            .map(|item| {
                let id = id_of(item)?;
                let attempt = u32::try_from(number_of(item, "attempt")?)
                    .map_err(|_| StoreError::Corrupt(format!("queued build {id}: attempt")))?;
                Ok((number_of(item, "queued_at")?, QueuedBuild { id, attempt }))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Builds queued in the same millisecond: first come (smaller ULID) first served.
        queued.sort_by_key(|(queued_at, q)| (*queued_at, q.id));
        Ok(queued.into_iter().map(|(_, q)| q).collect())
    }

    async fn claim(
        &self,
        candidate: &QueuedBuild,
        node: &str,
        lease_until: Timestamp,
    ) -> Result<Option<Build>, StoreError> {
        self.update_if(
            candidate.id,
            "SET #status = :running, #node = :node, #attempt = #attempt + :one, \
             #lease_queue = :lease_queue, #lease_until = :lease_until, #started_at = :now, \
             #cancel_requested = :false REMOVE #queue, #queued_at",
            "#status = :queued AND #attempt = :seen",
            names(&[
                "status",
                "node",
                "attempt",
                "lease_queue",
                "lease_until",
                "started_at",
                "cancel_requested",
                "queue",
                "queued_at",
            ]),
            values([
                (":running", s(Status::Running.as_str())),
                (":node", s(node)),
                (":one", n(1)),
                (":lease_queue", s(LEASE_QUEUE_VALUE)),
                (":lease_until", n(lease_until.millis())),
                (":now", n(Timestamp::now().millis())),
                (":false", AttributeValue::Bool(false)),
                (":queued", s(Status::Queued.as_str())),
                (":seen", n(candidate.attempt)),
            ]),
        )
        .await
    }

    async fn renew(&self, lease: &Lease, lease_until: Timestamp) -> Result<Renewal, StoreError> {
        let mut vals = values(lease_values(lease));
        vals.insert(":lease_until".to_string(), n(lease_until.millis()));
        let renewed = self
            .update_if(
                lease.id,
                "SET #lease_until = :lease_until",
                HELD,
                names(&["lease_until", "node", "attempt", "status"]),
                vals,
            )
            .await?
            .ok_or_else(|| lease_lost(lease))?;
        Ok(Renewal {
            cancel_requested: renewed.cancel_requested,
        })
    }

    async fn finish(&self, lease: &Lease, outcome: &Outcome) -> Result<(), StoreError> {
        let mut attributes = vec!["status", "finished_at", "node", "attempt"];
        let mut vals = values(lease_values(lease));
        vals.insert(":status".to_string(), s(outcome.status.as_str()));
        vals.insert(":now".to_string(), n(Timestamp::now().millis()));
        let mut sets = vec![
            "#status = :status".to_string(),
            "#finished_at = :now".into(),
        ];
        let mut removes = vec!["#lease_queue".to_string(), "#lease_until".into()];
        attributes.extend(["lease_queue", "lease_until"]);
        // An attempt writes all of its outcome: what it did not produce is removed, not kept.
        let optional = [
            ("image", outcome.image.as_ref().map(s)),
            ("digest", outcome.digest.as_ref().map(s)),
            ("error", outcome.error.as_ref().map(s)),
            ("cached_steps", outcome.cached_steps.map(n)),
            ("total_steps", outcome.total_steps.map(n)),
        ];
        for (name, value) in optional {
            attributes.push(name);
            match value {
                Some(value) => {
                    sets.push(format!("#{name} = :{name}"));
                    vals.insert(format!(":{name}"), value);
                }
                None => removes.push(format!("#{name}")),
            }
        }
        let update = format!("SET {} REMOVE {}", sets.join(", "), removes.join(", "));
        self.update_if(lease.id, &update, HELD, names(&attributes), vals)
            .await?
            .ok_or_else(|| lease_lost(lease))?;
        Ok(())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut attributes = REQUEUE_NAMES.to_vec();
        attributes.push("attempt");
        let mut vals = values(lease_values(lease));
        vals.insert(":queued".to_string(), s(Status::Queued.as_str()));
        vals.insert(":queue".to_string(), s(QUEUE_VALUE));
        self.update_if(lease.id, REQUEUE, HELD, names(&attributes), vals)
            .await?
            .ok_or_else(|| lease_lost(lease))?;
        Ok(())
    }

    async fn request_cancel(&self, id: BuildId) -> Result<Build, StoreError> {
        // Each failed condition means the build changed state under us; look again.
        for _ in 0..CANCEL_ROUNDS {
            let cancelled = self
                .update_if(
                    id,
                    "SET #status = :cancelled, #finished_at = :now, #error = :error \
                     REMOVE #queue, #queued_at",
                    "#status = :queued",
                    names(&["status", "finished_at", "error", "queue", "queued_at"]),
                    values([
                        (":cancelled", s(Status::Cancelled.as_str())),
                        (":now", n(Timestamp::now().millis())),
                        (":error", s("cancelled before it started")),
                        (":queued", s(Status::Queued.as_str())),
                    ]),
                )
                .await?;
            if let Some(build) = cancelled {
                return Ok(build);
            }
            let flagged = self
                .update_if(
                    id,
                    "SET #cancel_requested = :true",
                    "#status = :running",
                    names(&["cancel_requested", "status"]),
                    values([
                        (":true", AttributeValue::Bool(true)),
                        (":running", s(Status::Running.as_str())),
                    ]),
                )
                .await?;
            if let Some(build) = flagged {
                return Ok(build);
            }
            match self.get(id).await? {
                None => return Err(StoreError::NotFound(id)),
                Some(build) if build.status.is_finished() => {
                    return Err(StoreError::AlreadyFinished {
                        id,
                        status: build.status,
                    });
                }
                Some(_) => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "build {id} kept changing state while being cancelled"
        )))
    }

    async fn expired_leases(&self, before: Timestamp) -> Result<Vec<ExpiredLease>, StoreError> {
        let items = self
            .query_index(IndexQuery {
                index: LEASES_INDEX,
                key_condition: "#lease_queue = :lease_queue AND #lease_until < :before".into(),
                filter: None,
                names: names(&["lease_queue", "lease_until"]),
                values: values([
                    (":lease_queue", s(LEASE_QUEUE_VALUE)),
                    (":before", n(before.millis())),
                ]),
                newest_first: false,
                enough: None,
            })
            .await?;
        let mut expired = items
            .iter()
            .map(|item| {
                let id = id_of(item)?;
                Ok(ExpiredLease {
                    id,
                    attempt: u32::try_from(number_of(item, "attempt")?)
                        .map_err(|_| StoreError::Corrupt(format!("running build {id}: attempt")))?,
                    lease_until: Timestamp::from_millis(number_of(item, "lease_until")?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        expired.sort_by_key(|e| e.id);
        Ok(expired)
    }

    async fn reap(&self, expired: &ExpiredLease, max_attempts: u32) -> Result<Reaped, StoreError> {
        let condition = "#attempt = :attempt AND #lease_until = :seen AND #status = :running";
        let mut vals = values([
            (":attempt", n(expired.attempt)),
            (":seen", n(expired.lease_until.millis())),
            (":running", s(Status::Running.as_str())),
        ]);
        let give_up = expired.attempt >= max_attempts;
        let reaped = if give_up {
            vals.insert(":failed".to_string(), s(Status::Failed.as_str()));
            vals.insert(":now".to_string(), n(Timestamp::now().millis()));
            let error = format!(
                "agent lost: the node running this build stopped renewing its lease {} times",
                expired.attempt
            );
            vals.insert(":error".to_string(), s(error));
            self.update_if(
                expired.id,
                "SET #status = :failed, #finished_at = :now, #error = :error \
                 REMOVE #lease_queue, #lease_until",
                condition,
                names(&[
                    "status",
                    "finished_at",
                    "error",
                    "lease_queue",
                    "lease_until",
                    "attempt",
                ]),
                vals,
            )
            .await?
        } else {
            vals.insert(":queued".to_string(), s(Status::Queued.as_str()));
            vals.insert(":queue".to_string(), s(QUEUE_VALUE));
            let mut attributes = REQUEUE_NAMES.to_vec();
            attributes.push("attempt");
            self.update_if(expired.id, REQUEUE, condition, names(&attributes), vals)
                .await?
        };
        Ok(match (reaped, give_up) {
            (None, _) => Reaped::Skipped,
            (Some(_), true) => Reaped::Failed,
            (Some(_), false) => Reaped::Requeued,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        id: lease.id,
        attempt: lease.attempt,
    }
}
