//! Wiring: builds the registry, the store and the actor tree from a [`Config`], serves
//! HTTP on a bound listener, and drains on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;

use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMessage};
use crate::backend::{Backend, Local, Remote, Via};
use crate::broker::Broker;
use crate::config::{Config, secs};
use crate::node::consumer::Consumers;
use crate::outbox::Outbox;
use crate::pool_shared::PoolShared;
pub use crate::state::{AppState, Role};
use crate::store::TaskStore;
use crate::task::Registry;

/// A started celeriac: the actor tree is up and every worker has loaded its tasks.
pub struct App {
    state: Arc<AppState>,
    supervisor: ActorRef<SupervisorMessage>,
    /// Ends when the supervisor does: only at shutdown, unless it gave up on a pool.
    supervisor_done: Option<tokio::task::JoinHandle<()>>,
    consumers: Option<Consumers>,
}

/// A boxed future. `App`'s entry points return one, so that the code under them (the
/// actor tree, the server, warp's filters) is compiled once, in this crate: a caller
/// that awaited an `async fn` of ours would compile all of it again for its own
/// binary (the `celeriac` binary did, in a minute of every clean build, and so did
/// each test binary).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl App {
    /// Validates the config, loads every task and starts the actor tree. Loading
    /// errors name the task and the model or setting.
    pub fn start(config: Config) -> BoxFuture<anyhow::Result<App>> {
        Self::start_as(config, Role::Serve)
    }

    /// [`App::start`] for a given role. A `worker` needs a broker.
    #[inline(never)]
    pub fn start_as(config: Config, role: Role) -> BoxFuture<anyhow::Result<App>> {
        Box::pin(Self::starting(config, role))
    }

    async fn starting(config: Config, role: Role) -> anyhow::Result<App> {
        config.validate()?;
        if role == Role::Worker && config.broker.url.is_none() {
            anyhow::bail!(
                "`celeriac worker` takes its work from a broker: set [broker] url or CELERIAC_BROKER_URL"
            );
        }
        let broker = match &config.broker.url {
            Some(_) => {
                let queues = config
                    .pools
                    .iter()
                    .map(|(name, p)| p.queue_name(name))
                    .collect();
                let b = Broker::connect(&config.broker, secs(config.results.ttl_seconds), queues)
                    .await?;
                tracing::info!(broker = %b.url, node = %b.node, "connected to the broker");
                Some(b)
            }
            None => None,
        };
        let pools: Vec<Arc<PoolShared>> = config
            .pools
            .iter()
            .map(|(name, p)| PoolShared::new(name.clone(), p.clone()))
            .collect();
        let index = |name: &str| {
            pools
                .iter()
                .position(|p| p.name == name)
                .expect("validate() checked every route. This is a bug.")
        };
        crate::metrics::install();
        let registry = Arc::new(Registry::from_config(&config, index)?);
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let tasks: Vec<crate::metrics::TaskSeries> = registry
            .names()
            .into_iter()
            .map(|t| {
                let reg = registry.get(t).expect("listed by the registry");
                crate::metrics::TaskSeries {
                    task: t,
                    pool: names[reg.pool],
                    model: reg.factory.pads_batches(),
                    devices: &pools[reg.pool].config.devices,
                }
            })
            .collect();
        crate::metrics::register(&names, &tasks);
        crate::metrics::register_http(crate::http::ROUTES.iter().map(|r| (r.method, r.path)));
        let store = Arc::new(TaskStore::new(secs(config.results.ttl_seconds)));
        {
            let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
            store.on_final(move |f| crate::metrics::finished(&names[f.pool], f));
        }
        let outbox = Outbox::new(store.clone(), broker.is_some());
        let (supervisor, supervisor_done) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                config: config.supervisor.clone(),
                pools: pools.clone(),
                registry: registry.clone(),
                store: store.clone(),
                outbox: outbox.clone(),
                app_config: Arc::new(config.clone()),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting the worker pools")?;
        let pool_actors = ractor::call_t!(supervisor, SupervisorMessage::Pools, 5_000)
            .map_err(|e| anyhow::anyhow!("supervisor did not answer: {e}"))?;
        for p in &pools {
            tracing::info!(pool = %p.name, kind = p.config.kind.as_str(), workers = p.config.size(), "pool started");
        }
        let via = match &broker {
            Some(b) => Via::Remote(Remote::new(b.clone(), config.remote_tasks())),
            None => Via::Local(Local::new(store.clone(), pool_actors.clone())),
        };
        let state = Arc::new(AppState {
            role,
            backend: Backend::new(registry.clone(), pools.clone(), via),
            config,
            store,
            outbox,
            registry,
            pools,
            pool_actors,
        });
        let consumers = broker.map(|b| crate::node::consumer::start(state.clone(), b));
        Ok(App {
            state,
            supervisor,
            supervisor_done: Some(supervisor_done),
            consumers,
        })
    }

    /// The shared state (tests read pool counters through it).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then drains: new submits
    /// get 503, queued and running tasks get up to `server.drain_timeout_seconds` to
    /// finish, then the server and the actor tree stop.
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BoxFuture<anyhow::Result<()>> {
        self.serve_boxed(listener, Box::pin(shutdown))
    }

    #[inline(never)]
    fn serve_boxed(
        self,
        listener: TcpListener,
        shutdown: BoxFuture<()>,
    ) -> BoxFuture<anyhow::Result<()>> {
        Box::pin(self.serving(listener, shutdown))
    }

    async fn serving(
        mut self,
        listener: TcpListener,
        shutdown: BoxFuture<()>,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let sweeper = {
            let store = state.store.clone();
            let every = secs(state.config.results.sweep_interval_seconds);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    store.sweep();
                }
            })
        };
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = warp::serve(crate::http::routes(state.clone()))
            .incoming(listener)
            .graceful(async {
                let _ = http_stopped.await;
            })
            .run();
        let server = tokio::spawn(server);

        let mut supervisor_done = self.supervisor_done.take().expect("serve runs once");
        tokio::select! {
            () = shutdown => {}
            _ = &mut supervisor_done => {
                // A pool kept failing and the supervisor gave up (see
                // `actors::supervisor`): never stay up alive but unable to serve.
                state.backend.stop_accepting();
                let _ = stop_http.send(());
                sweeper.abort();
                anyhow::bail!(
                    "the supervisor stopped (a pool actor kept failing; see the log): exiting so that the process is restarted"
                );
            }
        }
        state.backend.stop_accepting();
        if let Some(c) = self.consumers.as_mut() {
            c.stop_taking().await;
        }
        let drain = secs(state.config.server.drain_timeout_seconds);
        tracing::info!(?drain, "shutting down: draining queued and running tasks");
        let drained = tokio::time::timeout(drain, async {
            while !state.drained() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok();
        if drained {
            tracing::info!("drained: every queued and running task finished");
        } else {
            let left: usize = state
                .pools
                .iter()
                .map(|p| {
                    let s = p.status();
                    p.admitted() + s.busy + s.stopping
                })
                .sum();
            tracing::warn!(
                left,
                "drain timeout reached (server.drain_timeout_seconds); stopping anyway"
            );
        }
        if let Some(c) = &self.consumers {
            // What is still held goes back to the queue for another node; results
            // already computed are written first.
            c.hand_back().await;
            c.offline().await;
        }
        let _ = self.supervisor.cast(SupervisorMessage::ShuttingDown);
        let _ = stop_http.send(());
        // Open long polls end as their tasks are final; don't wait on idle clients.
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        sweeper.abort();
        self.supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await
            .ok();
        tracing::info!("stopped");
        Ok(())
    }
}
