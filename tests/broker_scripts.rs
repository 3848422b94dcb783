//! The broker's Lua scripts (`src/broker/scripts/*.lua`), each on its own against a real
//! `redis-server` (started here on a free port): called with explicit KEYS and ARGV as
//! `Broker` calls them, checked by their answer and by what they left in Redis.
//! `scripts/test-deps.sh` installs redis-server.

use crate::common;

use std::time::Duration;

use celeriac::broker::{celery, scripts};
use common::broker::Redis;
use redis::{Commands, Connection, Script};
use serde_json::{Value, json};

const QUEUE: &str = "q";
const TTL: u64 = 600;

/// A fresh Redis and a connection to it.
fn redis() -> (Redis, Connection) {
    let redis = Redis::start();
    let conn = redis.client().get_connection().unwrap();
    (redis, conn)
}

fn keys() -> [String; 4] {
    celery::priority_keys(QUEUE)
}

/// A task message for `QUEUE` as celeriac sends it; returns (id, raw, delivery tag).
fn message(task: &str, input: Value) -> (String, String, String) {
    let id = uuid::Uuid::new_v4();
    let raw = celery::task_message(&id, task, &input, QUEUE, Some(60.0), "test");
    let tag = serde_json::from_str::<Value>(&raw).unwrap()["properties"]["delivery_tag"]
        .as_str()
        .unwrap()
        .to_string();
    (id.to_string(), raw, tag)
}

fn meta_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// A meta as Celery's result backend writes it.
fn meta(id: &str, status: &str, extra: Value) -> String {
    let mut m = json!({"status": status, "result": null, "traceback": null, "children": [],
                       "date_done": null, "task_id": id, "name": "debug.echo"});
    if let (Value::Object(m), Value::Object(extra)) = (&mut m, extra) {
        m.extend(extra);
    }
    m.to_string()
}

fn get_meta(conn: &mut Connection, id: &str) -> Option<Value> {
    let raw: Option<String> = conn.get(meta_key(id)).unwrap();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

fn list(conn: &mut Connection, key: &str) -> Vec<String> {
    conn.lrange(key, 0, -1).unwrap()
}

/// What `run` returns, and the first message it published on `channel` (a script's
/// `PUBLISH`, which wakes the long-polls).
fn published<T>(redis: &Redis, channel: &str, run: impl FnOnce() -> T) -> (T, String) {
    let mut conn = redis.client().get_connection().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sub = conn.as_pubsub();
    sub.subscribe(channel).unwrap();
    let out = run();
    let payload = sub.get_message().unwrap().get_payload().unwrap();
    (out, payload)
}

/// SUBMIT as `Broker::submit_to` calls it.
fn submit(conn: &mut Connection, capacity: usize, tasks: &[(String, String, String)]) -> i64 {
    let script = Script::new(scripts::SUBMIT);
    let mut inv = script.prepare_invoke();
    for k in keys() {
        inv.key(k);
    }
    inv.key("_kombu.binding.celery")
        .arg(capacity)
        .arg(TTL)
        .arg(celery::binding_member(QUEUE));
    for (id, meta, raw) in tasks {
        inv.arg(meta_key(id)).arg(meta).arg(raw);
    }
    inv.invoke(conn).unwrap()
}

const NOW: f64 = 1_800_000_000.5;
const NOW_RFC: &str = "2027-01-15T08:00:00.500000Z";
const NODE: &str = "celeriac@test";

/// FETCH as `Broker::fetch` calls it; the rows as strings.
fn fetch(conn: &mut Connection, max: usize) -> Vec<Vec<String>> {
    let script = Script::new(scripts::FETCH);
    let mut inv = script.prepare_invoke();
    for k in keys() {
        inv.key(k);
    }
    inv.key("unacked")
        .key("unacked_index")
        .key(format!("{QUEUE}.celeriac-dead-letter"))
        .arg(max)
        .arg(NOW)
        .arg(NOW_RFC)
        .arg(NODE)
        .arg(QUEUE)
        .arg(TTL)
        .arg(4242);
    inv.invoke(conn).unwrap()
}

/// RESTORE with mode `mode` ('expired' or 'tags') and `args`.
fn restore(conn: &mut Connection, mode: &str, args: &[&str]) -> i64 {
    let script = Script::new(scripts::RESTORE);
    let mut inv = script.prepare_invoke();
    inv.key("unacked")
        .key("unacked_index")
        .key("unacked_mutex")
        .arg(mode);
    for a in args {
        inv.arg(*a);
    }
    inv.invoke(conn).unwrap()
}

/// Records `raw` in flight under `tag` with lease time `at`, as FETCH (and kombu) do.
fn hold(conn: &mut Connection, tag: &str, raw: &str, at: f64) {
    let _: () = conn
        .hset("unacked", tag, format!("[{raw},\"\",\"{QUEUE}\"]"))
        .unwrap();
    let _: () = conn.zadd("unacked_index", tag, at).unwrap();
}

fn in_flight(conn: &mut Connection, tag: &str) -> (bool, bool) {
    let h: bool = conn.hexists("unacked", tag).unwrap();
    let z: Option<f64> = conn.zscore("unacked_index", tag).unwrap();
    (h, z.is_some())
}

#[test]
fn submit_writes_pending_metas_and_pushes_all_or_none() {
    let (_redis, mut conn) = redis();
    let a = message("debug.echo", json!({"x": 1}));
    let b = message("debug.echo", json!({"x": 2}));
    let tasks: Vec<_> = [&a, &b]
        .iter()
        .map(|(id, raw, _)| (id.clone(), meta(id, "PENDING", json!({})), raw.clone()))
        .collect();
    assert_eq!(submit(&mut conn, 3, &tasks), 2);
    // Pushed on the step-0 key, oldest at the end consumers pop.
    assert_eq!(list(&mut conn, QUEUE), vec![b.1.clone(), a.1.clone()]);
    for (id, meta, _) in &tasks {
        let stored: String = conn.get(meta_key(id)).unwrap();
        assert_eq!(&stored, meta);
        let ttl: i64 = conn.ttl(meta_key(id)).unwrap();
        assert!(ttl > 0 && ttl <= TTL as i64, "ttl {ttl}");
    }
    let bound: bool = conn
        .sismember("_kombu.binding.celery", celery::binding_member(QUEUE))
        .unwrap();
    assert!(bound, "the queue is bound for Python clients");

    // Two more would make 4 > 3: refused, nothing written.
    let c = message("debug.echo", json!({"x": 3}));
    let d = message("debug.echo", json!({"x": 4}));
    let more: Vec<_> = [&c, &d]
        .iter()
        .map(|(id, raw, _)| (id.clone(), meta(id, "PENDING", json!({})), raw.clone()))
        .collect();
    assert_eq!(submit(&mut conn, 3, &more), -1);
    assert_eq!(list(&mut conn, QUEUE).len(), 2);
    assert!(get_meta(&mut conn, &c.0).is_none());
    assert!(get_meta(&mut conn, &d.0).is_none());

    // The depth counts every priority key.
    let _: () = conn.lpush(&keys()[2], "other").unwrap();
    assert_eq!(submit(&mut conn, 3, &more[..1]), -1);
    assert_eq!(submit(&mut conn, 4, &more[..1]), 4);
    assert_eq!(list(&mut conn, QUEUE).len(), 3);
}

#[test]
fn fetch_takes_highest_priority_first_records_it_in_flight_and_marks_it_started() {
    let (_redis, mut conn) = redis();
    let low = message("debug.echo", json!({"x": "low"}));
    let high = message("debug.echo", json!({"x": "high"}));
    let submitted = "2027-01-15T07:59:00.000000Z";
    for (id, _, _) in [&low, &high] {
        let m = meta(id, "PENDING", json!({"date_submitted": submitted}));
        let _: () = conn.set(meta_key(id), m).unwrap();
    }
    // `low` on the step-3 key, `high` on the step-0 key (read first).
    let _: () = conn.lpush(&keys()[1], &low.1).unwrap();
    let _: () = conn.lpush(QUEUE, &high.1).unwrap();

    let rows = fetch(&mut conn, 1);
    assert_eq!(
        rows,
        vec![vec![
            "run".to_string(),
            high.1.clone(),
            high.0.clone(),
            high.2.clone(),
            submitted.to_string(),
            "0".to_string(),
            "0".to_string(),
        ]]
    );
    assert_eq!(list(&mut conn, QUEUE).len(), 0);
    assert_eq!(
        list(&mut conn, &keys()[1]),
        vec![low.1.clone()],
        "max is kept"
    );

    // In flight where kombu's restore finds it, with the lease starting now.
    let entry: String = conn.hget("unacked", &high.2).unwrap();
    assert_eq!(entry, format!("[{},\"\",\"{QUEUE}\"]", high.1));
    let score: f64 = conn.zscore("unacked_index", &high.2).unwrap();
    assert_eq!(score, NOW);

    let m = get_meta(&mut conn, &high.0).unwrap();
    assert_eq!(m["status"], "STARTED");
    assert_eq!(m["result"], json!({"pid": 4242, "hostname": NODE}));
    assert_eq!(m["worker"], NODE);
    assert_eq!(m["queue"], QUEUE);
    assert_eq!(m["retries"], 0);
    assert_eq!(m["date_started"], NOW_RFC);
    assert_eq!(m["date_submitted"], submitted, "the submit time is kept");
    let ttl: i64 = conn.ttl(meta_key(&high.0)).unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64);

    let rows = fetch(&mut conn, 5);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "run");
    assert_eq!(rows[0][2], low.0);
    assert!(fetch(&mut conn, 5).is_empty(), "nothing left");
}

#[test]
fn fetch_counts_a_redelivery_and_stamps_a_message_without_a_meta() {
    let (_redis, mut conn) = redis();
    let again = message("debug.echo", json!(1));
    let bare = message("debug.echo", json!(2));
    // A node held `again` before (STARTED, once retried): this is its third hand-out.
    let _: () = conn
        .set(
            meta_key(&again.0),
            meta(&again.0, "STARTED", json!({"retries": 1})),
        )
        .unwrap();
    let _: () = conn.lpush(QUEUE, &again.1).unwrap();
    let _: () = conn.lpush(QUEUE, &bare.1).unwrap();
    let rows = fetch(&mut conn, 2);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][2], again.0);
    assert_eq!(rows[0][5], "2");
    assert_eq!(rows[0][6], "1", "redelivered");
    assert_eq!(get_meta(&mut conn, &again.0).unwrap()["retries"], 2);
    // No meta (a Python client that sent it): submitted is now.
    assert_eq!(rows[1][2], bare.0);
    assert_eq!(rows[1][4], NOW_RFC);
    assert_eq!(rows[1][5], "0");
    assert_eq!(rows[1][6], "0");
    assert_eq!(get_meta(&mut conn, &bare.0).unwrap()["status"], "STARTED");
}

#[test]
fn fetch_drops_finished_and_revoked_tasks_without_holding_them() {
    let (_redis, mut conn) = redis();
    let done = message("debug.echo", json!(1));
    let revoked = message("debug.echo", json!(2));
    let success = meta(&done.0, "SUCCESS", json!({"result": 7}));
    let _: () = conn.set(meta_key(&done.0), &success).unwrap();
    let _: () = conn
        .set(meta_key(&revoked.0), meta(&revoked.0, "PENDING", json!({})))
        .unwrap();
    // Celery's revoked set, as `celery control revoke` leaves it.
    let _: () = conn
        .set(format!("celeriac-revoked-{}", revoked.0), 1)
        .unwrap();
    let _: () = conn.lpush(QUEUE, &done.1).unwrap();
    let _: () = conn.lpush(QUEUE, &revoked.1).unwrap();

    let rows = fetch(&mut conn, 10);
    assert_eq!(
        rows,
        vec![
            vec![
                "done".to_string(),
                done.1.clone(),
                done.0.clone(),
                "SUCCESS".to_string()
            ],
            vec![
                "done".to_string(),
                revoked.1.clone(),
                revoked.0.clone(),
                "REVOKED".to_string()
            ],
        ]
    );
    let kept: String = conn.get(meta_key(&done.0)).unwrap();
    assert_eq!(kept, success, "a SUCCESS is left as it was");
    let m = get_meta(&mut conn, &revoked.0).unwrap();
    assert_eq!(m["status"], "REVOKED");
    assert_eq!(m["result"]["exc_type"], "TaskRevokedError");
    assert_eq!(m["date_done"], NOW_RFC);
    assert_eq!(list(&mut conn, QUEUE).len(), 0);
    assert!(!in_flight(&mut conn, &done.2).0 && !in_flight(&mut conn, &revoked.2).0);
    let held: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(held, 0);
}

#[test]
fn fetch_dead_letters_what_is_not_a_task_message_and_fails_non_uuid_ids() {
    let (_redis, mut conn) = redis();
    let dead = format!("{QUEUE}.celeriac-dead-letter");
    let _: () = conn.lpush(QUEUE, "not json").unwrap();
    let no_tag = json!({"headers": {"id": uuid::Uuid::new_v4().to_string(), "task": "t"},
                        "properties": {}})
    .to_string();
    let _: () = conn.lpush(QUEUE, &no_tag).unwrap();
    let odd = json!({"headers": {"id": "order-17", "task": "debug.echo"},
                     "properties": {"delivery_tag": "t1"}})
    .to_string();
    let _: () = conn.lpush(QUEUE, &odd).unwrap();

    let rows = fetch(&mut conn, 10);
    assert_eq!(
        rows,
        vec![
            vec!["bad".to_string(), "not json".to_string()],
            vec!["bad".to_string(), no_tag.clone()],
            vec!["bad".to_string(), odd.clone()],
        ]
    );
    // The first two are kept for a person to read, newest first; the third failed
    // where its sender looks.
    assert_eq!(list(&mut conn, &dead), vec![no_tag, "not json".to_string()]);
    let m = get_meta(&mut conn, "order-17").unwrap();
    assert_eq!(m["status"], "FAILURE");
    assert_eq!(m["result"]["exc_type"], "TaskError");
    let why = m["result"]["exc_message"][0].as_str().unwrap();
    assert!(why.contains("UUID") && why.contains("order-17"), "{why}");
    let held: i64 = conn.hlen("unacked").unwrap();
    assert_eq!(held, 0);
}

/// FINISH with one `(id, meta, tag, ack)` per result.
fn finish(conn: &mut Connection, results: &[(&str, &str, &str, bool)]) -> i64 {
    let script = Script::new(scripts::FINISH);
    let mut inv = script.prepare_invoke();
    inv.key("unacked").key("unacked_index").arg(TTL);
    for (id, meta, tag, ack) in results {
        inv.arg(meta_key(id))
            .arg(*meta)
            .arg(*tag)
            .arg(if *ack { "1" } else { "0" });
    }
    inv.invoke(conn).unwrap()
}

#[test]
fn finish_writes_and_publishes_results_and_acknowledges_them() {
    let (redis, mut conn) = redis();
    let (a, raw_a, tag_a) = message("debug.echo", json!(1));
    let (b, raw_b, tag_b) = message("debug.echo", json!(2));
    hold(&mut conn, &tag_a, &raw_a, NOW);
    hold(&mut conn, &tag_b, &raw_b, NOW);
    let done = meta(&a, "SUCCESS", json!({"result": [1]}));
    let retry = meta(&b, "RETRY", json!({}));
    // `a` is final (acknowledged); `b` goes back to a local queue (kept in flight).
    let (wrote, sent) = published(&redis, &meta_key(&a), || {
        finish(
            &mut conn,
            &[(&a, &done, &tag_a, true), (&b, &retry, &tag_b, false)],
        )
    });
    assert_eq!(wrote, 2);
    assert_eq!(sent, done);
    let stored: String = conn.get(meta_key(&a)).unwrap();
    assert_eq!(stored, done);
    let ttl: i64 = conn.ttl(meta_key(&a)).unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64);
    assert_eq!(in_flight(&mut conn, &tag_a), (false, false));
    assert_eq!(in_flight(&mut conn, &tag_b), (true, true));
    assert_eq!(get_meta(&mut conn, &b).unwrap()["status"], "RETRY");
}

#[test]
fn finish_never_overwrites_a_success_but_still_acknowledges() {
    let (_redis, mut conn) = redis();
    let (id, raw, tag) = message("debug.echo", json!(1));
    hold(&mut conn, &tag, &raw, NOW);
    let success = meta(&id, "SUCCESS", json!({"result": "first"}));
    let _: () = conn.set(meta_key(&id), &success).unwrap();
    let late = meta(&id, "FAILURE", json!({"result": {"exc_type": "TaskError"}}));
    assert_eq!(finish(&mut conn, &[(&id, &late, &tag, true)]), 0);
    let kept: String = conn.get(meta_key(&id)).unwrap();
    assert_eq!(kept, success);
    assert_eq!(in_flight(&mut conn, &tag), (false, false));
    // Anything else is overwritten; an empty tag acknowledges nothing.
    let started = meta(&id, "STARTED", json!({}));
    let _: () = conn.set(meta_key(&id), &started).unwrap();
    hold(&mut conn, &tag, &raw, NOW);
    assert_eq!(finish(&mut conn, &[(&id, &late, "", true)]), 1);
    assert_eq!(get_meta(&mut conn, &id).unwrap()["status"], "FAILURE");
    assert_eq!(in_flight(&mut conn, &tag), (true, true));
}

fn replace(conn: &mut Connection, id: &str, expected: &str, new: &str) -> i64 {
    Script::new(scripts::REPLACE)
        .key(meta_key(id))
        .arg(expected)
        .arg(new)
        .arg(TTL)
        .invoke(conn)
        .unwrap()
}

#[test]
fn replace_sets_a_meta_only_if_it_is_what_the_caller_read() {
    let (redis, mut conn) = redis();
    let id = uuid::Uuid::new_v4().to_string();
    let pending = meta(&id, "PENDING", json!({}));
    let started = meta(&id, "STARTED", json!({}));
    let revoked = meta(&id, "REVOKED", json!({}));
    // '' expects no meta.
    assert_eq!(replace(&mut conn, &id, "", &pending), 1);
    let stored: String = conn.get(meta_key(&id)).unwrap();
    assert_eq!(stored, pending);
    let ttl: i64 = conn.ttl(meta_key(&id)).unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64);
    assert_eq!(replace(&mut conn, &id, "", &revoked), 0);
    // A node started it since the caller read PENDING: left alone.
    let _: () = conn.set(meta_key(&id), &started).unwrap();
    assert_eq!(replace(&mut conn, &id, &pending, &revoked), 0);
    let stored: String = conn.get(meta_key(&id)).unwrap();
    assert_eq!(stored, started);
    let (wrote, sent) = published(&redis, &meta_key(&id), || {
        replace(&mut conn, &id, &started, &revoked)
    });
    assert_eq!((wrote, sent), (1, revoked.clone()));
    let stored: String = conn.get(meta_key(&id)).unwrap();
    assert_eq!(stored, revoked);
}

fn revoke_queued(conn: &mut Connection, id: &str, meta: &str) -> i64 {
    let script = Script::new(scripts::REVOKE_QUEUED);
    let mut inv = script.prepare_invoke();
    for k in keys() {
        inv.key(k);
    }
    inv.key(meta_key(id)).arg(id).arg(meta).arg(TTL);
    inv.invoke(conn).unwrap()
}

#[test]
fn revoke_queued_removes_only_that_task_s_message_and_records_it() {
    let (redis, mut conn) = redis();
    let (a, raw_a, _) = message("debug.echo", json!(1));
    let (b, raw_b, _) = message("debug.echo", json!(2));
    // `c`'s input names `b`'s id: found by the text search, but not `b`'s message.
    let (c, raw_c, _) = message("debug.echo", json!({"about": b}));
    let _: () = conn.lpush(QUEUE, &raw_a).unwrap();
    let _: () = conn.lpush(QUEUE, &raw_c).unwrap();
    let _: () = conn.lpush(&keys()[2], &raw_b).unwrap();
    let revoked = meta(
        &b,
        "REVOKED",
        json!({"result": {"exc_type": "TaskRevokedError"}}),
    );
    let (removed, sent) = published(&redis, &meta_key(&b), || {
        revoke_queued(&mut conn, &b, &revoked)
    });
    assert_eq!((removed, sent), (1, revoked.clone()));
    let stored: String = conn.get(meta_key(&b)).unwrap();
    assert_eq!(stored, revoked);
    assert!(list(&mut conn, &keys()[2]).is_empty());
    assert_eq!(list(&mut conn, QUEUE), vec![raw_c.clone(), raw_a.clone()]);

    // No longer queued (a worker took it): nothing written.
    let other = meta(&a, "REVOKED", json!({}));
    let _: Option<String> = conn.rpop(QUEUE, None).unwrap();
    assert_eq!(list(&mut conn, QUEUE), vec![raw_c.clone()]);
    assert_eq!(revoke_queued(&mut conn, &a, &other), 0);
    assert!(get_meta(&mut conn, &a).is_none());
    assert_eq!(list(&mut conn, QUEUE), vec![raw_c]);
    assert!(get_meta(&mut conn, &c).is_none());
}

fn reply(conn: &mut Connection, payload: &str) -> i64 {
    let exchange = "reply.celery.pidbox";
    let queue = format!("oid1.{exchange}");
    Script::new(scripts::REPLY)
        .key(format!("_kombu.binding.{exchange}"))
        .key(&queue)
        .arg(format!("oid1\x06\x16\x06\x16{queue}"))
        .arg(payload)
        .invoke(conn)
        .unwrap()
}

#[test]
fn reply_pushes_only_while_the_client_waits_and_expires() {
    let (_redis, mut conn) = redis();
    let queue = "oid1.reply.celery.pidbox";
    assert_eq!(reply(&mut conn, "early"), 0);
    let exists: bool = conn.exists(queue).unwrap();
    assert!(!exists, "no queue is made for a client that is not waiting");
    // The client binds its reply queue, as kombu does when it declares it.
    let _: () = conn
        .sadd(
            "_kombu.binding.reply.celery.pidbox",
            format!("oid1\x06\x16\x06\x16{queue}"),
        )
        .unwrap();
    assert_eq!(reply(&mut conn, "pong"), 1);
    assert_eq!(list(&mut conn, queue), vec!["pong".to_string()]);
    let ttl: i64 = conn.ttl(queue).unwrap();
    assert!(ttl > 0 && ttl <= 300, "ttl {ttl}");
}

#[test]
fn restore_puts_expired_messages_back_unless_a_python_worker_is_restoring() {
    let (_redis, mut conn) = redis();
    let (_, old_raw, old_tag) = message("debug.echo", json!(1));
    let (_, new_raw, new_tag) = message("debug.echo", json!(2));
    let (_, waiting, _) = message("debug.echo", json!(3));
    let _: () = conn.lpush(QUEUE, &waiting).unwrap();
    hold(&mut conn, &old_tag, &old_raw, NOW - 100.0);
    hold(&mut conn, &new_tag, &new_raw, NOW);
    let cutoff = (NOW - 10.0).to_string();

    // kombu's restore mutex: a Python worker is restoring; leave it to it.
    let _: () = conn.set("unacked_mutex", "token").unwrap();
    assert_eq!(restore(&mut conn, "expired", &[&cutoff]), 0);
    assert_eq!(in_flight(&mut conn, &old_tag), (true, true));
    let _: () = conn.del("unacked_mutex").unwrap();

    assert_eq!(restore(&mut conn, "expired", &[&cutoff]), 1);
    // Byte for byte, at the end consumers pop next (before the one that waited).
    assert_eq!(
        list(&mut conn, QUEUE),
        vec![waiting.clone(), old_raw.clone()]
    );
    let next: Option<String> = conn.rpop(QUEUE, None).unwrap();
    assert_eq!(next.as_deref(), Some(old_raw.as_str()));
    assert_eq!(in_flight(&mut conn, &old_tag), (false, false));
    assert_eq!(
        in_flight(&mut conn, &new_tag),
        (true, true),
        "lease still valid"
    );
}

#[test]
fn restore_by_tag_puts_back_the_tags_given_and_reads_kombu_s_entries() {
    let (_redis, mut conn) = redis();
    let (_, ours, our_tag) = message("debug.echo", json!(1));
    let (_, theirs, their_tag) = message("debug.echo", json!(2));
    hold(&mut conn, &our_tag, &ours, NOW);
    // Python's json.dumps separators: `[message, "", "q"]` with spaces.
    let _: () = conn
        .hset(
            "unacked",
            &their_tag,
            format!("[{theirs}, \"\", \"{QUEUE}\"]"),
        )
        .unwrap();
    let _: () = conn.zadd("unacked_index", &their_tag, NOW).unwrap();
    // A tag whose entry is gone (acknowledged meanwhile): forgotten, not counted.
    let _: () = conn.zadd("unacked_index", "ghost", NOW).unwrap();

    assert_eq!(
        restore(&mut conn, "tags", &[&our_tag, &their_tag, "ghost"]),
        2
    );
    assert_eq!(list(&mut conn, QUEUE), vec![ours, theirs]);
    for tag in [&our_tag, &their_tag, &"ghost".to_string()] {
        assert_eq!(in_flight(&mut conn, tag), (false, false), "{tag}");
    }
}

#[test]
fn a_message_survives_submit_fetch_restore_fetch_finish() {
    let (_redis, mut conn) = redis();
    let (id, raw, tag) = message("debug.echo", json!({"text": "héllo \"quoted\""}));
    let pending = meta(
        &id,
        "PENDING",
        json!({"date_submitted": "2027-01-15T07:00:00Z"}),
    );
    assert_eq!(
        submit(&mut conn, 10, &[(id.clone(), pending, raw.clone())]),
        1
    );
    let first = fetch(&mut conn, 1);
    assert_eq!(first[0][0], "run");
    assert_eq!(restore(&mut conn, "tags", &[&tag]), 1);
    let second = fetch(&mut conn, 1);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0][1], raw, "the message came back byte for byte");
    assert_eq!(second[0][4], "2027-01-15T07:00:00Z");
    assert_eq!((second[0][5].as_str(), second[0][6].as_str()), ("1", "1"));
    let done = meta(&id, "SUCCESS", json!({"result": "ok"}));
    assert_eq!(finish(&mut conn, &[(&id, &done, &tag, true)]), 1);
    assert_eq!(in_flight(&mut conn, &tag), (false, false));
    // A late redelivery of it is dropped.
    let _: () = conn.lpush(QUEUE, &raw).unwrap();
    assert_eq!(fetch(&mut conn, 1)[0][0], "done");
}
