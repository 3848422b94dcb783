//! Broker URLs as Celery users write them, against real `redis-server`s started here:
//! `rediss://` with Celery's `ssl_*` options (a CA, server and client certificates made
//! with `openssl`), the same URL in the Python Celery client, a wrong CA, and a Unix
//! socket with Celery's `virtual_host`.

use crate::common;

use std::time::Duration;

use celeriac::app::App;
use celeriac::broker::Broker;
use celeriac::config::{BrokerConfig, Config};
use common::broker::{Certs, Redis, run_python};
use common::{debug_config_in, start};
use serde_json::{Value, json};

/// A debug config (pool and queue `pool`) on the broker at `url`.
fn node_config(pool: &str, url: &str) -> String {
    debug_config_in(
        pool,
        "concurrency = 2",
        &format!("[broker]\nurl = \"{url}\"\nnode_name = \"celeriac@{pool}\"\n"),
    )
}

const CLIENT: &str = r#"
import json, sys
from celery import Celery
app = Celery("client", broker=sys.argv[1], backend=sys.argv[1])
r = app.send_task("debug.echo", kwargs={"over": "tls"}, queue=sys.argv[2])
print(json.dumps({"result": r.get(timeout=30), "state": r.state}))
"#;

/// TLS only, client certificates required, a password: the node serves over
/// `rediss://` with Celery's options, the Python client with the very same URL calls it,
/// and the password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_flow_over_rediss_with_celery_s_ssl_options() {
    let certs = Certs::make("tls-ok");
    let redis = Redis::start_tls(&certs, Some("s3cret-pw"));
    let url = redis.url();
    assert!(url.starts_with("rediss://:s3cret-pw@") && url.contains("ssl_cert_reqs=required"));
    let s = start(&node_config("tlsq", &url)).await;
    let broker = s.state.backend.broker().cloned().expect("a broker node");
    assert!(!broker.url.contains("s3cret-pw"), "{}", broker.url);
    assert!(broker.url.contains(":***@"), "{}", broker.url);

    // The HTTP API, through the TLS broker.
    let r = s
        .post("/v1/tasks/debug.echo?wait=10", &json!({"n": 1}))
        .await;
    assert_eq!(r.body["state"], "SUCCESS", "{}", r.body);
    assert_eq!(r.body["result"], json!({"n": 1}));
    let meta = redis.meta(&r.id()).await;
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
    assert_eq!(meta["worker"], "celeriac@tlsq");

    // Python Celery with the same URL (kombu and redis-py read the same options).
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_python(CLIENT, &[&url, "tlsq"])
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["state"], "SUCCESS", "{out}");
    assert_eq!(out["result"], json!({"over": "tls"}), "{out}");
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    s.shutdown().await;
}

/// A broker at `url` for a client that only submits.
async fn connect(url: &str) -> anyhow::Result<std::sync::Arc<Broker>> {
    let config = BrokerConfig {
        url: Some(url.into()),
        node_name: Some("celeriac@tls-client".into()),
        ..BrokerConfig::default()
    };
    Broker::connect(&config, Duration::from_secs(60), vec!["q".into()]).await
}

/// A server certificate from another CA: the node does not start, and says why; with
/// `ssl_cert_reqs=none` it connects all the same (Celery's `CERT_NONE`); a server that
/// asks for a client certificate refuses a client without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_clear_start_up_error() {
    let certs = Certs::make("tls-server");
    let other = Certs::make("tls-other");
    let redis = Redis::start_tls(&certs, Some("hunter2"));
    let wrong = redis.url().replace(
        &certs.ca.display().to_string(),
        &other.ca.display().to_string(),
    );
    assert_ne!(wrong, redis.url());

    let config = Config::from_toml(
        &node_config("wrongca", &wrong),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
    let err = match App::start(config).await {
        Ok(_) => panic!("a node started against a server its CA does not vouch for"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("TLS certificate could not be verified")
            && err.contains(&other.ca.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password leaked: {err}");

    // CERT_NONE: no verification, as Celery's option says (the client certificate is
    // still sent).
    let none = wrong.replace("ssl_cert_reqs=required", "ssl_cert_reqs=CERT_NONE");
    let b = connect(&none).await.expect("CERT_NONE skips verification");
    assert!(b.is_up());

    // The server requires client certificates: a client without one is refused.
    let anonymous = redis
        .url()
        .split("&ssl_certfile")
        .next()
        .unwrap()
        .to_string();
    let err = match connect(&anonymous).await {
        Ok(_) => panic!("connected without a client certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("cannot reach the broker") && err.contains("asks for a client certificate"),
        "{err}"
    );
}

/// Celery's `redis+socket:///PATH?virtual_host=N`: a Unix-socket-only redis-server,
/// results in database N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_broker_with_celery_s_virtual_host() {
    let redis = Redis::start_unix("sock");
    let url = redis.url_db(3);
    assert!(url.starts_with("redis+socket:///") && url.ends_with("?virtual_host=3"));
    let s = start(&node_config("sockq", &url)).await;
    let r = s
        .post("/v1/tasks/debug.echo?wait=10", &json!({"via": "socket"}))
        .await;
    assert_eq!(r.body["state"], "SUCCESS", "{}", r.body);
    let id = r.id();
    assert_eq!(redis.meta_db(3, &id).await["status"], "SUCCESS");
    assert_eq!(
        redis.meta_db(0, &id).await,
        Value::Null,
        "database 3, not 0"
    );
    s.shutdown().await;
    // `unix:///PATH?db=N`, redis-rs's spelling, reaches the same database.
    let b = connect(
        &url.replace("redis+socket://", "unix://")
            .replace("virtual_host", "db"),
    )
    .await
    .unwrap();
    let view = b.get(&id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(view.result, Some(json!({"via": "socket"})));
}
