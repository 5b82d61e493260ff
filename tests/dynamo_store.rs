//! The store contract (tests/store_contract) against DynamoStore on moto_server, one fresh table
//! per test; plus the table setup `slipway setup` runs.

mod common;
mod store_contract;

use aws_sdk_dynamodb::Client;
use slipway::config::AwsSettings;
use slipway::store::dynamo::dynamo_client;
use slipway::store::{BuildStore, DynamoStore, SetupReport, ensure_table};

use store_contract::store_contract_tests;

/// A table of its own on moto, deleted by `close`.
struct MotoTable {
    client: Client,
    table: String,
    store: DynamoStore,
}

impl MotoTable {
    fn store(&self) -> &dyn BuildStore {
        &self.store
    }

    async fn close(self) {
        delete_table(&self.client, &self.table).await;
    }
}

async fn delete_table(client: &Client, table: &str) {
    client
        .delete_table()
        .table_name(table)
        .send()
        .await
        .unwrap_or_else(|e| panic!("deleting table {table}: {e:?}"));
}

async fn moto_table() -> MotoTable {
    let sdk = common::moto_sdk_config().await;
    let client = dynamo_client(&sdk);
    let table = common::unique("slipway-builds");
    ensure_table(&client, &table).await.unwrap();
    let settings = AwsSettings {
        table: table.clone(),
        ..AwsSettings::default()
    };
    MotoTable {
        store: DynamoStore::new(&sdk, &settings),
        client,
        table,
    }
}

store_contract_tests!(moto_table);

#[tokio::test]
async fn ensure_table_twice_creates_once() {
    let client = dynamo_client(&common::moto_sdk_config().await);
    let table = common::unique("slipway-setup");
    let first = ensure_table(&client, &table).await.unwrap();
    let second = ensure_table(&client, &table).await.unwrap();
    assert_eq!(
        (first, second),
        (
            SetupReport {
                table: table.clone(),
                created: true
            },
            SetupReport {
                table: table.clone(),
                created: false
            }
        )
    );
    let described = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    let mut indexes: Vec<&str> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["by_app", "leases", "queue", "recent"]);
    delete_table(&client, &table).await;
}

#[tokio::test]
async fn ping_answers_for_an_existing_table_only() {
    let fixture = moto_table().await;
    fixture.store().ping().await.unwrap();
    let sdk = common::moto_sdk_config().await;
    let missing = DynamoStore::new(
        &sdk,
        &AwsSettings {
            table: common::unique("slipway-missing"),
            ..AwsSettings::default()
        },
    );
    assert!(matches!(
        missing.ping().await,
        Err(slipway::store::StoreError::Unavailable(_))
    ));
    fixture.close().await;
}

#[tokio::test]
async fn ensure_table_refuses_a_table_without_the_indexes() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let client = dynamo_client(&common::moto_sdk_config().await);
    let table = common::unique("slipway-bare");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let refused = ensure_table(&client, &table).await;
    assert!(
        matches!(&refused, Err(slipway::store::StoreError::Unavailable(m)) if m.contains("without the index queue")),
        "{refused:?}"
    );
    delete_table(&client, &table).await;
}
