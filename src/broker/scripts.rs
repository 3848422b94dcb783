//! The Lua scripts that make each broker step one atomic Redis call, one file each in
//! `scripts/`, loaded with `include_str!`. Each file opens with the KEYS and ARGV it
//! takes and what it returns; `tests/broker_scripts.rs` runs each on its own against a
//! real `redis-server`.

/// The depth check, the `PENDING` metas and the pushes of one submit, all or none
/// (`scripts/submit.lua`). Returns -1 when full, else the new depth.
pub const SUBMIT: &str = include_str!("scripts/submit.lua");

/// Takes messages, highest priority first, records each in flight (`unacked`,
/// `unacked_index`) and marks it `STARTED`; drops final, revoked and malformed ones
/// (`scripts/fetch.lua`). Returns a `run`, `done` or `bad` row per message.
pub const FETCH: &str = include_str!("scripts/fetch.lua");

/// Writes results, never over a `SUCCESS`, and acknowledges them
/// (`scripts/finish.lua`). Returns how many were written.
pub const FINISH: &str = include_str!("scripts/finish.lua");

/// Sets a meta only if it still is what the caller read: revoke's compare-and-set
/// (`scripts/replace.lua`). Returns 1 when written.
pub const REPLACE: &str = include_str!("scripts/replace.lua");

/// Removes a task's message from a queue other workers serve and, only if it was there,
/// writes its `REVOKED` meta (`scripts/revoke_queued.lua`). Returns 1 when revoked.
pub const REVOKE_QUEUED: &str = include_str!("scripts/revoke_queued.lua");

/// Pushes a remote-control reply while the client's reply queue is bound
/// (`scripts/reply.lua`). Returns 1 when pushed.
pub const REPLY: &str = include_str!("scripts/reply.lua");

/// Puts in-flight messages back in their queues: those whose lease expired, or the
/// tags given (`scripts/restore.lua`). Returns how many were put back.
pub const RESTORE: &str = include_str!("scripts/restore.lua");

/// The scripts, hashed once per broker (`EVALSHA`, loaded on first use).
pub(crate) struct Scripts {
    pub(crate) submit: redis::Script,
    pub(crate) fetch: redis::Script,
    pub(crate) finish: redis::Script,
    pub(crate) replace: redis::Script,
    pub(crate) restore: redis::Script,
    pub(crate) revoke_queued: redis::Script,
    pub(crate) reply: redis::Script,
}

impl Scripts {
    /// Every script, ready to invoke.
    pub(crate) fn new() -> Scripts {
        Scripts {
            submit: redis::Script::new(SUBMIT),
            fetch: redis::Script::new(FETCH),
            finish: redis::Script::new(FINISH),
            replace: redis::Script::new(REPLACE),
            restore: redis::Script::new(RESTORE),
            revoke_queued: redis::Script::new(REVOKE_QUEUED),
            reply: redis::Script::new(REPLY),
        }
    }
}
