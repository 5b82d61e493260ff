//! ECR credentials and repositories against moto_server: its fixed authorization token decodes
//! to user `AWS`, and ensuring a repository is idempotent.

mod common;

use slipway::config::AwsSettings;
use slipway::model::AppName;
use slipway::registry::EcrAuth;

/// moto's `GetAuthorizationToken` always hands out this password (for account 123456789012).
const MOTO_PASSWORD: &str = "123456789012-auth-token";

#[tokio::test]
async fn credentials_are_user_aws_with_the_token_password_for_the_configured_endpoint() {
    let settings = AwsSettings {
        registry_endpoint: "127.0.0.1:5055".into(),
        ..AwsSettings::default()
    };
    let ecr = EcrAuth::new(&common::moto_sdk_config().await, &settings);

    let credentials = ecr.credentials().await.unwrap();

    assert_eq!(credentials.username, "AWS");
    assert_eq!(credentials.password, MOTO_PASSWORD);
    assert_eq!(credentials.server, "127.0.0.1:5055");
    assert_eq!(ecr.credentials().await.unwrap(), credentials);
}

#[tokio::test]
async fn without_a_registry_endpoint_the_server_is_the_proxy_endpoint_host() {
    let ecr = EcrAuth::new(&common::moto_sdk_config().await, &AwsSettings::default());

    let credentials = ecr.credentials().await.unwrap();

    assert!(
        credentials.server.ends_with(".amazonaws.com") && !credentials.server.contains('/'),
        "{}",
        credentials.server
    );
}

#[tokio::test]
async fn ensuring_a_repository_twice_is_fine() {
    let sdk = common::moto_sdk_config().await;
    let settings = AwsSettings {
        repo_prefix: "slipway-test/".into(),
        ..AwsSettings::default()
    };
    let ecr = EcrAuth::new(&sdk, &settings);
    let app: AppName = common::unique("app").parse().unwrap();

    let first = ecr.ensure_repository(&app).await.unwrap();
    let second = ecr.ensure_repository(&app).await.unwrap();

    assert_eq!(first, format!("slipway-test/{app}"));
    assert_eq!(second, first);
    let client = aws_sdk_ecr::Client::new(&sdk);
    let described = client
        .describe_repositories()
        .repository_names(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(described.repositories().len(), 1);
    client
        .delete_repository()
        .repository_name(&first)
        .send()
        .await
        .unwrap();
}
