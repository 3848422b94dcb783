//! Kind `processes`: a worker's tasks run in a child process, the same executable in
//! its hidden `child` mode (Celery's prefork, one child per worker).
//!
//! **Framing.** The worker's OS thread and its child talk over the child's stdin and a
//! private copy of its stdout (the child points its own fd 1 at stderr, so a stray print
//! cannot corrupt the stream). Each message is a 4-byte little-endian length, then that
//! many bytes of JSON:
//!
//! ```text
//!  worker thread                              child
//!      ── Init {config, pool, context} ──▶    builds the pool's task instances
//!      ◀── Started {outcome, metrics} ─────    Ok, or why not
//!      ── Run {task, inputs} ─────────────▶    one batch, one task
//!      ◀── Done {answers, panics, fatal,     one answer per input
//!               metrics} ──────────────────
//!      ...
//!      stdin closed ──────────────────────▶    exits 0
//! ```
//!
//! **Lifecycle.** The worker's thread starts the child and waits for `Started` before
//! the worker counts as started (a child that cannot build its tasks is a failed start:
//! back-off and budget apply). A child that dies while it holds a batch (a signal,
//! `abort()`, the OOM killer) loses that batch; the thread reaps it, and the worker
//! fails with "child process N was killed by signal ...", so its pool settles the batch
//! with the worker-lost policy (`max_retries`) and starts a new worker. When the pool
//! stops a worker for its time limit, the actor sends the busy child SIGTERM, then
//! SIGKILL after `supervisor.child_kill_grace_ms`. After a batch, a child that ran
//! `max_tasks_per_child` tasks or whose resident memory passed `max_memory_per_child_mb`
//! is replaced by a fresh one before the worker asks for more work: nothing is lost.
//! Metric updates that task code makes in the child (a batch's padding ratio, the
//! model's load time) are captured there and applied by the server
//! ([`crate::metrics::apply_remote`]), so `/metrics` shows them as for other kinds.
//! Children also die with their worker thread (`PR_SET_PDEATHSIG`), so a parent killed
//! with SIGKILL leaves none behind.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Instances, StartedJob, panic_message, record};
use crate::config::Config;
use crate::metrics::RemoteUpdate;
use crate::pool_shared::PoolShared;
use crate::store::TaskStore;
use crate::task::{Registry, WorkerContext};

/// The largest frame either side accepts: a corrupt length fails the stream instead of
/// allocating gigabytes.
const MAX_FRAME: usize = 1 << 30;

/// The executable children run, when not this one.
static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Sets the `celeriac` executable that `processes` pools start as children. By default
/// it is the running executable; an embedder whose executable is not `celeriac` (an
/// integration test's harness) names it once, before the first pool starts. Later
/// calls are ignored.
pub fn set_program(path: impl Into<PathBuf>) {
    let _ = PROGRAM.set(path.into());
}

fn program() -> io::Result<PathBuf> {
    match PROGRAM.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe(),
    }
}

/// Writes one frame: the body's length (u32, little-endian), then the JSON body.
fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> io::Result<()> {
    let body = serde_json::to_vec(message)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame; `None` when the stream ended before one began.
fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// The first frame to a child: what to build.
#[derive(Serialize, Deserialize)]
pub struct Init {
    /// The whole configuration; the child builds the tasks routed to `pool`.
    config: Config,
    /// [`Config::base_dir`], which the config does not serialize.
    base_dir: PathBuf,
    pool: String,
    context: WorkerContext,
}

impl Init {
    /// What a child of the worker described by `context`, in pool `pool`, builds.
    pub fn new(config: &Config, pool: &str, context: WorkerContext) -> Self {
        Init {
            config: config.clone(),
            base_dir: config.base_dir.clone(),
            pool: pool.to_string(),
            context,
        }
    }
}

/// A batch, as the worker's thread writes it.
#[derive(Serialize)]
struct RunOut<'a> {
    task: &'a str,
    inputs: Vec<&'a Value>,
}

/// A batch, as the child reads it.
#[derive(Deserialize)]
struct RunIn {
    task: String,
    inputs: Vec<Value>,
}

/// The child's answer to [`Init`].
#[derive(Serialize, Deserialize)]
struct Started {
    /// Whether it built its tasks.
    outcome: Result<(), String>,
    /// Metric updates made while building (model load times).
    metrics: Vec<RemoteUpdate>,
}

/// The answers to one batch.
#[derive(Serialize, Deserialize)]
struct Done {
    /// One per input; `None` for inputs not answered because `fatal` ended the batch.
    answers: Vec<Option<Result<Value, String>>>,
    /// Instances rebuilt after a panic.
    panics: u32,
    /// The child cannot go on (an instance could not be rebuilt) and exits.
    fatal: Option<String>,
    /// Metric updates made while running the batch.
    metrics: Vec<RemoteUpdate>,
}

/// The `celeriac child` mode: reads [`Init`], builds the tasks, answers batches until
/// its stdin closes. Returns the exit status.
pub fn main(parent: u32) -> i32 {
    crate::task::mark_child_process();
    die_with_parent(parent);
    crate::metrics::install_capture();
    let (mut input, mut output) = match protocol_streams() {
        Ok(streams) => streams,
        Err(e) => {
            tracing::error!("child: cannot set up its streams: {e}");
            return 2;
        }
    };
    let init: Init = match read_frame(&mut input) {
        Ok(Some(init)) => init,
        Ok(None) => return 0,
        Err(e) => {
            tracing::error!("child: bad init frame: {e}");
            return 2;
        }
    };
    crate::task::set_thread_nice(init.context.nice);
    let built =
        std::panic::catch_unwind(|| build(init)).unwrap_or_else(|p| Err(panic_message(p.as_ref())));
    let (outcome, built) = match built {
        Ok(i) => (Ok(()), Some(i)),
        Err(why) => (Err(why), None),
    };
    let started = Started {
        outcome,
        metrics: crate::metrics::take_captured(),
    };
    if write_frame(&mut output, &started).is_err() {
        return 0;
    }
    let Some(mut instances) = built else {
        return 1;
    };
    loop {
        let run: RunIn = match read_frame(&mut input) {
            Ok(Some(run)) => run,
            // The worker closed our stdin: it is done with us.
            Ok(None) => return 0,
            Err(e) => {
                tracing::error!("child: bad frame: {e}");
                return 2;
            }
        };
        let name: Arc<str> = Arc::from(run.task);
        let inputs: Vec<&Value> = run.inputs.iter().collect();
        let mut answers: Vec<Option<Result<Value, String>>> = vec![None; inputs.len()];
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instances.run(&name, &inputs, &[], &mut |i, outcome| {
                answers[i] = Some(outcome)
            })
        }))
        .unwrap_or_else(|p| Err(panic_message(p.as_ref())));
        let (panics, fatal) = match ran {
            Ok(panics) => (panics, None),
            Err(why) => (0, Some(why)),
        };
        let stop = fatal.is_some();
        let done = Done {
            answers,
            panics,
            fatal,
            metrics: crate::metrics::take_captured(),
        };
        if write_frame(&mut output, &done).is_err() || stop {
            return i32::from(stop);
        }
    }
}

/// Builds the task instances of the pool named in `init`.
fn build(init: Init) -> Result<Instances, String> {
    let Init {
        mut config,
        base_dir,
        pool,
        context,
    } = init;
    config.base_dir = base_dir;
    config
        .tasks
        .retain(|_, t| t.pool == pool && t.queue.is_none());
    let registry = Registry::from_config(&config, |_| 0).map_err(|e| e.to_string())?;
    let mut instances =
        Instances::build(registry.for_pool(0), context).map_err(|e| e.to_string())?;
    instances.warm_up().map_err(|e| e.to_string())?;
    Ok(instances)
}

/// The child dies with the thread that started it (and so with the server).
fn die_with_parent(parent: u32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's own death
        // signal; getppid has no preconditions.
        let ppid = unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::getppid()
        };
        // The parent died before the death signal was set: nobody will read us.
        if ppid as u32 != parent {
            std::process::exit(0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}

/// The child's ends of the protocol: stdin, and a private copy of stdout; fd 1 then
/// points at stderr, so anything printed goes to the logs, not into the stream.
fn protocol_streams() -> io::Result<(BufReader<io::Stdin>, BufWriter<std::fs::File>)> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup and dup2 on this process's own standard descriptors, which stay
    // open; nothing else in the process holds the new descriptor.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; fd 1 is replaced by a copy of fd 2.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, open descriptor that nothing else owns or closes.
    let out = unsafe { std::fs::File::from_raw_fd(fd) };
    Ok((BufReader::new(io::stdin()), BufWriter::new(out)))
}

/// A worker's child process as both the worker's thread and its actor see it: the
/// thread starts, feeds and reaps it; the actor kills it on a time limit. Every wait
/// and signal goes through the lock, so a pid is never signalled after it was reaped
/// (and perhaps reused).
pub struct ChildSlot {
    child: Mutex<Option<Child>>,
    /// Whether the child holds a batch now.
    busy: AtomicBool,
    /// SIGTERM → SIGKILL, and close → SIGKILL.
    grace: Duration,
}

impl ChildSlot {
    /// An empty slot.
    pub fn new(grace: Duration) -> Self {
        ChildSlot {
            child: Mutex::new(None),
            busy: AtomicBool::new(false),
            grace,
        }
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Child::id)
    }

    /// If the child holds a batch: SIGTERM now, SIGKILL after the grace (on a thread
    /// of its own). Its worker thread then reads the end of its output, reaps it and
    /// exits.
    pub fn terminate_if_busy(self: &Arc<Self>) {
        if !self.busy.load(Ordering::Acquire) {
            return;
        }
        {
            let mut guard = self.child.lock();
            let Some(child) = guard.as_mut() else { return };
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            tracing::warn!(pid = child.id(), "killing a child process (time limit)");
            // SAFETY: kill(2) on a child that is not reaped (try_wait just said it
            // runs, and reaping needs this lock), so the pid is still ours.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let slot = self.clone();
        let _ = std::thread::Builder::new()
            .name("celeriac-kill".into())
            .spawn(move || slot.kill_after_grace());
    }

    /// Waits up to the grace for the child to exit, then SIGKILLs and reaps it.
    fn kill_after_grace(&self) -> Option<ExitStatus> {
        let deadline = Instant::now() + self.grace;
        loop {
            {
                let mut guard = self.child.lock();
                let child = guard.as_mut()?;
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills (if needed) and reaps the child, and empties the slot; says how it ended.
    fn reap(&self) -> String {
        let mut guard = self.child.lock();
        let Some(mut child) = guard.take() else {
            return "child process gone".into();
        };
        let pid = child.id();
        // Its output ended, so it is exiting or gone; make sure.
        let status = match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => {
                let _ = child.kill();
                child.wait()
            }
        };
        match status {
            Ok(status) => describe(pid, status),
            Err(e) => format!("child process {pid} could not be reaped: {e}"),
        }
    }
}

/// "child process 12 was killed by signal 6 (SIGABRT)", "... exited with status 1".
fn describe(pid: u32, status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("child process {pid} exited with status {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGKILL => " (SIGKILL: the time limit, or the OOM killer)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("child process {pid} was killed by signal {sig}{name}")
        }
        (None, None) => format!("child process {pid} ended ({status})"),
    }
}

/// A running child's pipes.
struct Pipes {
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    pid: u32,
}

/// A `processes` worker's side of its child: runs on the worker's OS thread, hands the
/// child batches, records its answers, recycles it.
pub struct ChildRunner {
    init: Init,
    slot: Arc<ChildSlot>,
    pipes: Option<Pipes>,
    store: Arc<TaskStore>,
    pool: Arc<PoolShared>,
    /// Tasks the current child ran.
    ran: u64,
}

impl ChildRunner {
    /// Starts the first child and waits until it built its tasks.
    pub fn start(
        init: Init,
        slot: Arc<ChildSlot>,
        store: Arc<TaskStore>,
        pool: Arc<PoolShared>,
    ) -> Result<Self, String> {
        let mut runner = ChildRunner {
            init,
            slot,
            pipes: None,
            store,
            pool,
            ran: 0,
        };
        runner.spawn()?;
        Ok(runner)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let program = program().map_err(|e| format!("finding the executable: {e}"))?;
        let mut child = Command::new(&program)
            .arg("child")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let pids = child.id();
        let input = child.stdin.take().expect("stdin is piped");
        let output = child.stdout.take().expect("stdout is piped");
        *self.slot.child.lock() = Some(child);
        let mut pipes = Pipes {
            input: BufWriter::new(input),
            output: BufReader::new(output),
            pid: pids,
        };
        let started = write_frame(&mut pipes.input, &self.init)
            .and_then(|()| read_frame::<Started>(&mut pipes.output));
        match started.map(|s| {
            s.map(|s| {
                crate::metrics::apply_remote(s.metrics);
                s.outcome
            })
        }) {
            Ok(Some(Ok(()))) => {
                tracing::debug!(pool = %self.pool.name, pid = pids, "child process started");
                self.pipes = Some(pipes);
                self.ran = 0;
                Ok(())
            }
            Ok(Some(Err(why))) => {
                drop(pipes);
                self.slot.reap();
                Err(why)
            }
            Ok(None) | Err(_) => {
                drop(pipes);
                Err(format!("{} while starting", self.slot.reap()))
            }
        }
    }

    /// Hands a batch (always of one task) to the child and records its answers.
    /// Returns how many instances the child rebuilt after a panic; an error when the
    /// child is gone (it died, or cannot go on), with what it held unanswered.
    pub fn run_batch(&mut self, batch: Vec<StartedJob>) -> Result<u32, String> {
        let Some(first) = batch.first() else {
            return Ok(0);
        };
        let name = first.job.task.clone();
        let pipes = self
            .pipes
            .as_mut()
            .expect("a worker's thread runs batches only with a child. This is a bug.");
        let t0 = Instant::now();
        let run = RunOut {
            task: &name,
            inputs: batch.iter().map(|s| &*s.job.input).collect(),
        };
        self.slot.busy.store(true, Ordering::Release);
        let done = write_frame(&mut pipes.input, &run)
            .and_then(|()| read_frame::<Done>(&mut pipes.output));
        self.slot.busy.store(false, Ordering::Release);
        let done = match done {
            Ok(Some(done)) => done,
            Ok(None) | Err(_) => {
                self.pipes = None;
                return Err(self.slot.reap());
            }
        };
        crate::metrics::apply_remote(done.metrics);
        for (started, answer) in batch.iter().zip(done.answers) {
            if let Some(outcome) = answer {
                record(&self.store, started, outcome);
            }
        }
        if let Some(why) = done.fatal {
            self.pipes = None;
            self.slot.reap();
            return Err(why);
        }
        crate::metrics::ran_batch(&self.pool, &name, batch.len(), t0.elapsed());
        self.ran += batch.len() as u64;
        self.recycle_if_due()?;
        Ok(done.panics)
    }

    /// Replaces the child by a fresh one if it ran `max_tasks_per_child` tasks or its
    /// resident memory passed `max_memory_per_child_mb`.
    fn recycle_if_due(&mut self) -> Result<(), String> {
        let cfg = &self.pool.config;
        let by_count = cfg.max_tasks_per_child > 0 && self.ran >= cfg.max_tasks_per_child;
        let rss_mb = match (&self.pipes, cfg.max_memory_per_child_mb) {
            (Some(p), limit) if limit > 0 => rss_bytes(p.pid).map(|b| b >> 20),
            _ => None,
        };
        let by_memory = rss_mb.is_some_and(|mb| mb > cfg.max_memory_per_child_mb);
        if !(by_count || by_memory) {
            return Ok(());
        }
        tracing::info!(
            pool = %self.pool.name,
            pid = self.slot.pid(),
            tasks = self.ran,
            rss_mb,
            "recycling a child process ({})",
            if by_count { "max_tasks_per_child" } else { "max_memory_per_child_mb" }
        );
        crate::metrics::restarted(&self.pool.name, crate::metrics::Restart::Recycled, 1);
        self.close();
        self.spawn()
            .map_err(|e| format!("recycling its child process: the new one failed to start: {e}"))
    }

    /// Closes the child's input, so it exits; SIGKILL if it has not after the grace.
    pub fn close(&mut self) {
        if self.pipes.take().is_some() {
            self.slot.kill_after_grace();
            self.slot.child.lock().take();
        }
    }
}

/// Resident memory of a process, from `/proc/PID/status` (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn frames_round_trip_and_a_closed_stream_reads_as_none() {
        let mut buf = Vec::new();
        let inputs = [json!({"text": "a"}), json!([1, 2])];
        write_frame(
            &mut buf,
            &RunOut {
                task: "t",
                inputs: inputs.iter().collect(),
            },
        )
        .unwrap();
        write_frame(&mut buf, &Ok::<(), String>(())).unwrap();
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(
            &buf[4..4 + len],
            br#"{"task":"t","inputs":[{"text":"a"},[1,2]]}"#
        );
        let mut r = &buf[..];
        let run: RunIn = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            (run.task.as_str(), run.inputs.as_slice()),
            ("t", &inputs[..])
        );
        let started: Result<(), String> = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(started, Ok(()));
        assert!(read_frame::<RunIn>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_length_is_an_error_not_an_allocation() {
        let mut r = &u32::MAX.to_le_bytes()[..];
        assert!(read_frame::<RunIn>(&mut r).is_err());
        // A frame cut short is an error too (the child died mid-write).
        let mut buf = Vec::new();
        write_frame(&mut buf, &json!({"k": "v"})).unwrap();
        let mut r = &buf[..buf.len() - 1];
        assert!(read_frame::<Value>(&mut r).is_err());
    }

    #[test]
    fn exit_statuses_are_described() {
        use std::os::unix::process::ExitStatusExt;
        let s = describe(7, ExitStatus::from_raw(libc::SIGABRT));
        assert_eq!(s, "child process 7 was killed by signal 6 (SIGABRT)");
        let s = describe(7, ExitStatus::from_raw(3 << 8));
        assert_eq!(s, "child process 7 exited with status 3");
    }
}
