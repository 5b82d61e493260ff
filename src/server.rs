//! A node: opens the local cache, the stores and Docker, then runs the agent and the HTTP API
//! until `shutdown` fires. Tests bind `127.0.0.1:0` and run the real node in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentContext};
use crate::api::{self, ApiState};
use crate::archive::ArchiveLimits;
use crate::cache::{Cache, CacheError};
use crate::config::Settings;
use crate::docker::{DockerEngine, DockerError};
use crate::logs::LogHub;
use crate::sources::{FsSourceStore, SourceError};
use crate::store::SqliteStore;

/// How long open connections may finish after the node stopped its builds.
const CONNECTION_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A node could not start. Each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot prepare the source directory: {0}")]
    Sources(#[from] SourceError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A node that is up: its address, and how to stop it and wait for it.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Stops the node and waits until every task has ended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }
}

/// Binds `settings.listen`, starts everything, and returns once the node accepts requests.
pub async fn start(settings: Settings) -> Result<RunningNode, ServeError> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    let serve = run(settings, listener, shutdown.clone()).await?;
    Ok(RunningNode {
        addr,
        shutdown,
        done: tokio::spawn(serve),
    })
}

/// Opens the node's parts and returns the future that serves until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ServeError> {
    let settings = Arc::new(settings);
    let cache = Cache::open(&settings.data_dir)?;
    let store = Arc::new(SqliteStore::new(cache.clone()));
    let sources = Arc::new(FsSourceStore::open(&settings.data_dir.join("sources"))?);
    let docker = Arc::new(DockerEngine::connect(&settings.docker.host).await?);
    let logs = LogHub::new(cache.clone());
    let node = settings.node_id.clone();
    let agent = Agent::new(AgentContext {
        node: node.clone(),
        settings: settings.clone(),
        store: store.clone(),
        sources: sources.clone(),
        docker: docker.clone(),
        logs: logs.clone(),
        cache,
    });
    let state = Arc::new(ApiState {
        node,
        archive_limits: ArchiveLimits {
            max_context_bytes: settings.limits.max_context_bytes.as_u64(),
            max_entries: settings.limits.max_entries,
            max_path_len: settings.limits.max_path_len,
        },
        settings: settings.clone(),
        store,
        sources,
        logs,
        agent: agent.clone(),
        docker,
    });
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        node = %state.node,
        data_dir = %settings.data_dir.display(),
        "slipway node started"
    );
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = warp::serve(api::routes(state))
        .serve_incoming_with_graceful_shutdown(incoming, shutdown.clone().cancelled_owned());
    Ok(async move {
        let mut serving = tokio::spawn(server);
        agent.run(shutdown).await;
        // Graceful shutdown waits for every connection to close, and an idle keep-alive
        // connection (a CLI, a load balancer) may never do so: give them a moment, then drop them.
        if tokio::time::timeout(CONNECTION_CLOSE_GRACE, &mut serving)
            .await
            .is_err()
        {
            tracing::info!("closing connections that stayed open after shutdown");
            serving.abort();
        }
        tracing::info!("slipway node stopped");
    })
}
