//! Property tests of request validation: every field of every request message, through the code
//! the server runs on it, without starting anything.
//!
//! - Start: `convert::start_request`, then `Config::check_request` (everything `Worker::start`
//!   checks before it creates anything), on nodes with any maxima.
//! - List: `convert::list_query`. Stop, GetStatus, Wait, Remove, StreamOutput: `convert::job_id`.
//!   StreamOutput's streams: `convert::stream_filter`; its offset is the output reader's to
//!   judge (see the library's output log properties).
//!
//! Properties: nothing panics; a request is accepted exactly when it is within every bound that
//! jobworker.proto documents; a refusal is INVALID_ARGUMENT (through `convert::to_status`, as the
//! server answers it) with a short message naming the field and its bound, never a host path or
//! "the server failed"; each bound itself is accepted and one past it refused.
//!
//! The bounds below are restated from jobworker.proto, not imported from the code: they hold the
//! code to the document.
//!
//! Each property runs proptest's 256 cases by default, as CI does; `PROPTEST_CASES=1000000` is
//! the long mode (see "Property tests" in docs/benchmarks.md).

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use jobworker::{Config, Error, Limits, OutputError, StateKind, StreamFilter};
use jobworker_api::identity::Identity;
use jobworker_api::pb;
use jobworkerd::convert;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseResult;
use tonic::{Code, Status};

// StartRequest, as jobworker.proto documents it.
/// `command`: "1 to 4095 bytes, no NUL".
const COMMAND_BYTES: usize = 4095;
/// `args`: "At most 4096 arguments".
const ARGS: usize = 4096;
/// Each argument "shorter than 128 KiB".
const ARG_BYTES: usize = 128 * 1024 - 1;
/// `env`: "At most 1024 variables".
const ENV_VARS: usize = 1024;
/// "each NAME=VALUE shorter than 128 KiB".
const ENV_ENTRY_BYTES: usize = 128 * 1024 - 1;
/// "Command, arguments and environment together: at most 1 MiB", each string with its NUL.
const TOTAL_BYTES: usize = 1 << 20;
/// `working_dir`: "at most 4095 bytes".
const WORKING_DIR_BYTES: usize = 4095;
/// `cpus`: "0.01 up to the server's maximum".
const MIN_CPUS: f64 = 0.01;
/// `memory_bytes`: "4 MiB up to the server's maximum".
const MIN_MEMORY: u64 = 4 << 20;
/// `pids`: "2 ... up to the server's maximum".
const MIN_PIDS: u64 = 2;
/// Disk IO limits: "at least 1, at most 2^62".
const IO: (u64, u64) = (1, 1 << 62);
/// `page_size`: "1 to 1000; 0 means 100".
const MAX_PAGE_SIZE: u32 = 1000;

/// Part of every host path of the node under test: no message may show one to a caller.
const HOST_MARK: &str = "host-only-c0ffee";

/// What the daemon's configuration holds besides limits: host paths, marked.
static BASE: LazyLock<Config> = LazyLock::new(|| Config {
    state_dir: format!("/var/lib/{HOST_MARK}").into(),
    init_program: Some(format!("/usr/libexec/{HOST_MARK}/init").into()),
    cgroup_parent: format!("/{HOST_MARK}.slice").into(),
    secrets: vec![format!("/etc/{HOST_MARK}/server.key").into()],
    ..Config::default()
});

/// A node's maxima, anything `jobworkerd serve --max-*` may set.
#[derive(Debug, Clone)]
struct Node {
    cpus: f64,
    memory: u64,
    pids: u64,
    output: u64,
}

fn node() -> impl Strategy<Value = Node> {
    (
        prop_oneof![select(vec![MIN_CPUS, 1.0, 1.75, 1024.0]), MIN_CPUS..=1024.0],
        prop_oneof![
            select(vec![MIN_MEMORY, 1 << 30, 1 << 62]),
            MIN_MEMORY..=1 << 62
        ],
        prop_oneof![select(vec![MIN_PIDS, 1024, 4 << 20]), MIN_PIDS..=4 << 20],
        prop_oneof![select(vec![0, 1 << 30, 1 << 62]), 0..=1u64 << 62],
    )
        .prop_map(|(cpus, memory, pids, output)| Node {
            cpus,
            memory,
            pids,
            output,
        })
}

impl Node {
    /// Its configuration, with the defaults the daemon derives from its maxima when no
    /// `--default-*` flag is given.
    fn config(&self) -> Config {
        Config {
            max_limits: Limits {
                cpus: Some(self.cpus),
                memory_bytes: Some(self.memory),
                pids: Some(self.pids),
                output_bytes: Some(self.output),
                ..Limits::default()
            },
            default_limits: self.defaults(),
            ..BASE.clone()
        }
    }

    fn defaults(&self) -> Limits {
        Limits {
            cpus: Some(self.cpus.min(1.0)),
            memory_bytes: Some(self.memory.min(512 << 20)),
            pids: Some(self.pids.min(1024)),
            output_bytes: Some(self.output),
            ..Limits::default()
        }
    }
}

/// A character of 1, 2, 3 or 4 bytes: bounds are in bytes, not characters.
fn filler() -> impl Strategy<Value = char> {
    select(vec!['x', 'é', '€', '𝄞'])
}

/// A string of exactly `len` bytes: `fill` repeated, topped up with 'x'; with a NUL in it at
/// `nul` if given.
fn sized(len: usize, fill: char, nul: Option<Index>) -> String {
    let run = |n: usize| {
        let mut text = fill.to_string().repeat(n / fill.len_utf8());
        text.push_str(&"x".repeat(n - text.len()));
        text
    };
    match nul.filter(|_| len > 0) {
        None => run(len),
        Some(at) => {
            let at = at.index(len);
            format!("{}\0{}", run(at), run(len - at - 1))
        }
    }
}

/// Text right around a bound: `last - 2 ..= last + 1` bytes, `last` being the longest allowed.
fn around(last: usize) -> impl Strategy<Value = String> {
    (
        last - 2..=last + 1,
        filler(),
        prop::option::weighted(0.1, any::<Index>()),
    )
        .prop_map(|(len, fill, nul)| sized(len, fill, nul))
}

/// Short text of any kind: empty, plain, or any characters at all (NUL, '=', '/', '.', controls).
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_./=-]{1,12}",
        "\\PC{0,3}\0\\PC{0,3}",
        any::<String>(),
    ]
}

fn command() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,8}|/[a-z/]{1,20}",
        2 => short_text(),
        1 => around(COMMAND_BYTES),
    ]
}

fn args() -> impl Strategy<Value = Vec<String>> {
    let arg = prop_oneof![8 => short_text(), 1 => around(ARG_BYTES)];
    prop_oneof![
        12 => prop::collection::vec(arg, 0..6),
        1 => (ARGS - 1..=ARGS + 1).prop_map(|n| vec!["a".to_owned(); n]),
    ]
}

fn env() -> impl Strategy<Value = HashMap<String, String>> {
    let name = prop_oneof![
        4 => "[A-Z_][A-Z0-9_]{0,8}",
        1 => Just("PATH".to_owned()),
        2 => short_text(),
    ];
    prop_oneof![
        12 => prop::collection::hash_map(name, short_text(), 0..5),
        1 => (ENV_VARS - 1..=ENV_VARS + 1)
            .prop_map(|n| (0..n).map(|i| (format!("V{i}"), String::new())).collect()),
        // "K=" and the value: the entry's bound is the value's plus two.
        1 => around(ENV_ENTRY_BYTES - 2).prop_map(|value| HashMap::from([("K".to_owned(), value)])),
    ]
}

/// Arguments and environment that take, with `command`, exactly `total` bytes as the proto
/// counts them (each string with its NUL), in strings well within their own bounds;
/// `env_percent` of it in the environment.
fn filling(
    command: &str,
    total: usize,
    env_percent: usize,
) -> (Vec<String>, HashMap<String, String>) {
    const PIECE: usize = 100_000;
    let mut left = total - (command.len() + 1);
    let mut env_left = left * env_percent / 100;
    let mut env = HashMap::new();
    while env_left > 0 {
        let name = format!("E{}", env.len());
        // The name, '=', the value and a NUL.
        let overhead = name.len() + 2;
        let piece = env_left.min(PIECE);
        if piece < overhead {
            break;
        }
        env.insert(name, "e".repeat(piece - overhead));
        env_left -= piece;
        left -= piece;
    }
    let mut args = Vec::new();
    while left > 0 {
        let piece = left.min(PIECE);
        args.push("a".repeat(piece - 1));
        left -= piece;
    }
    (args, env)
}

fn working_dir() -> impl Strategy<Value = String> {
    let part = select(vec![
        "tmp", "a b", ".", "..", "", ".x", "x.", "...", "é", "\0",
    ]);
    prop_oneof![
        3 => Just(String::new()),
        6 => (any::<bool>(), prop::collection::vec(part, 0..5)).prop_map(|(absolute, parts)| {
            format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
        }),
        2 => short_text(),
        1 => around(WORKING_DIR_BYTES - 1).prop_map(|name| format!("/{name}")),
    ]
}

/// CPUs: valid ones, the node's maximum and the values either side of it and of the minimum,
/// and floats no one should send.
fn cpus(max: f64) -> impl Strategy<Value = f64> {
    let edges = vec![
        MIN_CPUS,
        MIN_CPUS.next_down(),
        max,
        max.next_up(),
        max.next_down(),
        1024.0_f64.next_up(),
        0.0,
        -0.0,
        -1.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    prop_oneof![
        2 => MIN_CPUS..=max,
        1 => select(edges),
        1 => any::<f64>(),
    ]
}

/// A count between `min` and `max`, the values either side of each, and any other.
fn amount(min: u64, max: u64) -> impl Strategy<Value = u64> {
    let edges = vec![
        0,
        1,
        min.saturating_sub(1),
        min,
        max,
        max.saturating_add(1),
        IO.1,
        IO.1 + 1,
        u64::MAX,
    ];
    prop_oneof![2 => min..=max, 1 => select(edges), 1 => any::<u64>()]
}

fn limits(node: &Node) -> impl Strategy<Value = pb::Limits> + use<> {
    use prop::option::of;
    (
        of(cpus(node.cpus)),
        of(amount(MIN_MEMORY, node.memory)),
        of(amount(IO.0, IO.1)),
        of(amount(IO.0, IO.1)),
        of(amount(IO.0, IO.1)),
        of(amount(IO.0, IO.1)),
        of(amount(MIN_PIDS, node.pids)),
        of(amount(0, node.output)),
    )
        .prop_map(
            |(
                cpus,
                memory_bytes,
                io_read_bps,
                io_write_bps,
                io_read_iops,
                io_write_iops,
                pids,
                output_bytes,
            )| {
                pb::Limits {
                    cpus,
                    memory_bytes,
                    io_read_bps,
                    io_write_bps,
                    io_read_iops,
                    io_write_iops,
                    pids,
                    output_bytes,
                }
            },
        )
}

/// A Start request; shown shortened, since its strings may be a megabyte long.
#[derive(Clone)]
struct Start(pb::StartRequest);

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |text: &str| -> String {
            let shown: String = text.chars().take(24).collect();
            if shown.len() == text.len() {
                format!("{text:?}")
            } else {
                format!("{shown:?}… ({} bytes)", text.len())
            }
        };
        let req = &self.0;
        let mut env: Vec<_> = req.env.iter().collect();
        env.sort();
        f.debug_struct("StartRequest")
            .field("command", &short(&req.command))
            .field(
                "args",
                &(
                    req.args.len(),
                    req.args
                        .iter()
                        .take(4)
                        .map(|a| short(a))
                        .collect::<Vec<_>>(),
                ),
            )
            .field(
                "env",
                &(
                    env.len(),
                    env.iter()
                        .take(4)
                        .map(|(k, v)| (short(k), short(v)))
                        .collect::<Vec<_>>(),
                ),
            )
            .field("working_dir", &short(&req.working_dir))
            .field("limits", &req.limits)
            .finish()
    }
}

/// A node and a Start request to it: any request, many near a bound.
fn start_case() -> impl Strategy<Value = (Node, Start)> {
    node().prop_flat_map(|node| {
        let plain = (command(), args(), env(), working_dir());
        // Requests that fill the 1 MiB bound within a few bytes either way.
        let full = (
            command(),
            TOTAL_BYTES - 2..=TOTAL_BYTES + 1,
            0..=100usize,
            working_dir(),
        )
            .prop_map(|(command, total, env_percent, dir)| {
                let (args, env) = filling(&command, total.max(command.len() + 1), env_percent);
                (command, args, env, dir)
            });
        let fields = prop_oneof![12 => plain, 1 => full];
        let limits = prop::option::of(limits(&node));
        (
            Just(node),
            (fields, limits).prop_map(|((command, args, env, working_dir), limits)| {
                Start(pb::StartRequest {
                    command,
                    args,
                    env,
                    working_dir,
                    limits,
                })
            }),
        )
    })
}

/// A field of a Start request that a message may have to name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Command,
    Args,
    Env,
    Total,
    WorkingDir,
    Cpus,
    Memory,
    IoReadBps,
    IoWriteBps,
    IoReadIops,
    IoWriteIops,
    Pids,
    Output,
}

impl Field {
    /// The words by which a message names this field.
    fn words(self) -> &'static str {
        match self {
            Field::Command => "the command",
            Field::Args => "argument",
            Field::Env => "environment variable",
            Field::Total => "command, arguments and environment",
            Field::WorkingDir => "working directory",
            Field::Cpus => "cpus",
            Field::Memory => "memory",
            Field::IoReadBps => "io read bps",
            Field::IoWriteBps => "io write bps",
            Field::IoReadIops => "io read iops",
            Field::IoWriteIops => "io write iops",
            Field::Pids => "pids",
            Field::Output => "output",
        }
    }
}

/// A documented bound a request breaks: the field, and what a message about it must say (the
/// bound's number, or the rule).
#[derive(Debug, Clone, PartialEq)]
struct Fault {
    field: Field,
    says: String,
}

impl Fault {
    fn named_in(&self, message: &str) -> bool {
        message.contains(self.field.words()) && message.contains(&self.says)
    }
}

/// Every bound of jobworker.proto that `req` breaks on `node`.
fn faults(req: &pb::StartRequest, node: &Node) -> Vec<Fault> {
    let mut faults = Vec::new();
    let mut fault = |field, says: &str| {
        faults.push(Fault {
            field,
            says: says.to_owned(),
        })
    };
    let command = &req.command;
    if command.is_empty() {
        fault(Field::Command, "empty");
    }
    if command.len() > COMMAND_BYTES {
        fault(Field::Command, &COMMAND_BYTES.to_string());
    }
    if command.contains('\0') {
        fault(Field::Command, "NUL");
    }
    if req.args.len() > ARGS {
        fault(Field::Args, &ARGS.to_string());
    }
    for arg in &req.args {
        if arg.len() > ARG_BYTES {
            fault(Field::Args, &ARG_BYTES.to_string());
        }
        if arg.contains('\0') {
            fault(Field::Args, "NUL");
        }
    }
    if req.env.len() > ENV_VARS {
        fault(Field::Env, &ENV_VARS.to_string());
    }
    for (name, value) in &req.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            fault(Field::Env, "'='");
        }
        if value.contains('\0') {
            fault(Field::Env, "NUL");
        }
        if name.len() + 1 + value.len() > ENV_ENTRY_BYTES {
            fault(Field::Env, &ENV_ENTRY_BYTES.to_string());
        }
    }
    let total = command.len()
        + 1
        + req.args.iter().map(|a| a.len() + 1).sum::<usize>()
        + req
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if total > TOTAL_BYTES {
        fault(Field::Total, &TOTAL_BYTES.to_string());
    }
    let dir = &req.working_dir;
    if !dir.is_empty() {
        if dir.len() > WORKING_DIR_BYTES {
            fault(Field::WorkingDir, &WORKING_DIR_BYTES.to_string());
        }
        if dir.contains('\0') {
            fault(Field::WorkingDir, "NUL");
        }
        if !dir.starts_with('/') || dir.split('/').any(|part| part == "." || part == "..") {
            fault(Field::WorkingDir, "absolute");
        }
    }
    let limits = effective_limits(req, node);
    if let Some(cpus) = limits.cpus {
        if cpus > node.cpus {
            fault(Field::Cpus, &format!("maximum of {} CPUs", node.cpus));
        } else if cpus.is_nan() || cpus < MIN_CPUS {
            fault(Field::Cpus, &MIN_CPUS.to_string());
        }
    }
    if let Some(memory) = limits.memory_bytes {
        if memory > node.memory {
            fault(Field::Memory, &format!("maximum of {} bytes", node.memory));
        } else if memory < MIN_MEMORY {
            fault(Field::Memory, "4 MiB");
        }
    }
    let io = [
        (Field::IoReadBps, limits.io_read_bps),
        (Field::IoWriteBps, limits.io_write_bps),
        (Field::IoReadIops, limits.io_read_iops),
        (Field::IoWriteIops, limits.io_write_iops),
    ];
    for (field, value) in io {
        match value {
            Some(0) => fault(field, "between 1 and"),
            Some(v) if v > IO.1 => fault(field, &IO.1.to_string()),
            _ => {}
        }
    }
    if let Some(pids) = limits.pids {
        if pids > node.pids {
            fault(Field::Pids, &format!("maximum of {}", node.pids));
        } else if pids < MIN_PIDS {
            fault(Field::Pids, "between 2");
        }
    }
    if let Some(output) = limits.output_bytes
        && output > node.output
    {
        fault(Field::Output, &format!("maximum of {} bytes", node.output));
    }
    faults
}

/// The limits a job started by `req` runs with: the request's, the node's defaults for the
/// rest ("Unset fields take the server's defaults").
fn effective_limits(req: &pb::StartRequest, node: &Node) -> Limits {
    let asked = req.limits.unwrap_or_default();
    let defaults = node.defaults();
    Limits {
        cpus: asked.cpus.or(defaults.cpus),
        memory_bytes: asked.memory_bytes.or(defaults.memory_bytes),
        io_read_bps: asked.io_read_bps,
        io_write_bps: asked.io_write_bps,
        io_read_iops: asked.io_read_iops,
        io_write_iops: asked.io_write_iops,
        pids: asked.pids.or(defaults.pids),
        output_bytes: asked.output_bytes.or(defaults.output_bytes),
    }
}

/// What the server answers to a Start request before it would create anything.
fn check_start(req: &pb::StartRequest, node: &Node) -> Result<Limits, Status> {
    let (spec, limits) = convert::start_request(req.clone());
    node.config()
        .check_request(&spec, limits)
        .map_err(convert::to_status)
}

/// A refusal a caller can act on: INVALID_ARGUMENT, with a short message that shows nothing of
/// the host and does not blame the server.
fn clear_refusal(status: &Status) -> TestCaseResult {
    let message = status.message();
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{}", message);
    prop_assert!(!message.is_empty(), "an empty message");
    prop_assert!(
        message.len() <= 1024,
        "a message of {} bytes: {}",
        message.len(),
        message
    );
    prop_assert!(!message.contains(HOST_MARK), "a host path: {}", message);
    prop_assert!(!message.contains("the server failed"), "{}", message);
    Ok(())
}

proptest! {
    #[test]
    fn a_start_request_is_accepted_exactly_when_within_every_documented_bound(
        (node, Start(req)) in start_case()
    ) {
        let faults = faults(&req, &node);
        match check_start(&req, &node) {
            Ok(limits) => {
                prop_assert!(faults.is_empty(), "accepted, but breaks {:?}", faults);
                prop_assert_eq!(limits, effective_limits(&req, &node), "the limits in force");
            }
            Err(status) => {
                clear_refusal(&status)?;
                prop_assert!(!faults.is_empty(), "refused within every bound: {}", status.message());
                prop_assert!(
                    faults.iter().any(|f| f.named_in(status.message())),
                    "{:?} names none of {:?}",
                    status.message(),
                    faults
                );
            }
        }
    }
}

/// Text that is, or is almost, a job id: all spellings of UUIDs, near misses, anything.
fn job_id_text() -> impl Strategy<Value = String> {
    let uuid = any::<u128>().prop_map(uuid::Uuid::from_u128);
    prop_oneof![
        uuid.clone().prop_map(|u| u.hyphenated().to_string()),
        uuid.clone()
            .prop_map(|u| u.hyphenated().to_string().to_uppercase()),
        uuid.clone().prop_map(|u| u.simple().to_string()),
        uuid.clone().prop_map(|u| u.braced().to_string()),
        uuid.prop_map(|u| u.urn().to_string()),
        "[0-9a-fA-F-]{36}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11}[g-zé\0 ]",
        short_text(),
    ]
}

/// "8-4-4-4-12 hex digits": the one spelling of a job id (in either case).
fn is_job_id(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

proptest! {
    #[test]
    fn a_job_id_is_accepted_in_its_one_spelling_only(text in job_id_text(), force in any::<bool>()) {
        // Every request that names a job, each through the one conversion the handlers use.
        let named = [
            pb::StopRequest { job_id: text.clone() }.job_id,
            pb::GetStatusRequest { job_id: text.clone() }.job_id,
            pb::WaitRequest { job_id: text.clone() }.job_id,
            pb::RemoveRequest { job_id: text.clone(), force }.job_id,
            pb::StreamOutputRequest { job_id: text.clone(), ..Default::default() }.job_id,
        ];
        for job_id in named {
            match convert::job_id(&job_id) {
                Ok(id) => {
                    prop_assert!(is_job_id(&text), "accepted {:?}", text);
                    prop_assert_eq!(id.to_string(), text.to_ascii_lowercase());
                }
                Err(status) => {
                    clear_refusal(&status)?;
                    prop_assert!(!is_job_id(&text), "refused {:?}: {}", text, status.message());
                    prop_assert!(status.message().contains("not a job id"), "{}", status.message());
                }
            }
        }
    }
}

fn page_token() -> impl Strategy<Value = String> {
    let uuid = any::<u128>().prop_map(|u| uuid::Uuid::from_u128(u).to_string());
    prop_oneof![
        Just(String::new()),
        // As the server writes them: nanoseconds since the epoch, '.', a job id.
        (any::<u64>(), uuid.clone()).prop_map(|(nanos, id)| format!("{nanos}.{id}")),
        // Forged: signs, overflow, missing parts, other separators.
        (
            select(vec!["", "-", "+", "18446744073709551616", "1e9", " 1"]),
            select(vec![".", "", "..", ":"]),
            uuid
        )
            .prop_map(|(nanos, dot, id)| format!("{nanos}{dot}{id}")),
        short_text(),
    ]
}

/// Whether `token` is a position in the list: "<u64>.<job id>". A well-formed token that no
/// response carried is still just a position, so it is accepted like a real one.
fn is_page_token(token: &str) -> bool {
    match token.split_once('.') {
        Some((nanos, id)) => nanos.parse::<u64>().is_ok() && is_job_id(id),
        None => false,
    }
}

fn state() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..=6i32, 1 => any::<i32>()]
}

fn owner() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("alice".to_owned()),
        Just("bob".to_owned()),
        short_text()
    ]
}

proptest! {
    #[test]
    fn a_list_request_is_a_query_or_a_clear_refusal(
        page_size in prop_oneof![0..=1001u32, any::<u32>()],
        page_token in page_token(),
        states in prop::collection::vec(state(), 0..4),
        owner in owner(),
        admin in any::<bool>(),
    ) {
        let caller = Identity {
            user: "alice".into(),
            groups: if admin { vec!["admin".into()] } else { Vec::new() },
        };
        let req = pb::ListRequest { page_size, page_token: page_token.clone(), states: states.clone(), owner: owner.clone() };
        let others = !admin && !owner.is_empty() && owner != "alice";
        let bad_size = page_size > MAX_PAGE_SIZE;
        let bad_token = !page_token.is_empty() && !is_page_token(&page_token);
        let bad_state = states.iter().any(|s| !(1..=5).contains(s));
        match convert::list_query(&caller, &req) {
            Ok(query) => {
                prop_assert!(!others && !bad_size && !bad_token && !bad_state);
                let limit = if page_size == 0 { 100 } else { page_size as usize };
                prop_assert_eq!(query.limit, limit);
                prop_assert_eq!(query.states.len(), states.len());
                prop_assert_eq!(query.after.map(|c| c.to_string()).is_some(), !page_token.is_empty());
                let whose = match (admin, owner.as_str()) {
                    (true, "") => None,
                    (true, owner) => Some(owner.to_owned()),
                    (false, _) => Some("alice".to_owned()),
                };
                prop_assert_eq!(query.owner, whose);
            }
            // Authorization comes first: naming another user's jobs is not a malformed request.
            Err(status) if others => {
                prop_assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
            }
            Err(status) => {
                clear_refusal(&status)?;
                let message = status.message();
                let named = (bad_size && message.contains("page_size") && message.contains("1000"))
                    || (bad_token && message.contains("page token"))
                    || (bad_state && message.contains("job state"));
                prop_assert!(named, "{:?} for size {}, token {:?}, states {:?}", message, page_size, page_token, states);
            }
        }
    }

    #[test]
    fn a_page_token_the_server_wrote_reads_back_as_the_same_position(
        nanos in any::<u64>(),
        id in any::<u128>(),
    ) {
        let token = format!("{nanos}.{}", uuid::Uuid::from_u128(id));
        let cursor = convert::page_token(&token).map_err(|s| TestCaseError::fail(s.message().to_owned()))?;
        prop_assert_eq!(cursor.map(|c| c.to_string()), Some(token));
    }

    #[test]
    fn a_stream_output_request_is_a_filter_or_a_clear_refusal(
        streams in prop::collection::vec(prop_oneof![4 => 0..=3i32, 1 => any::<i32>()], 0..4),
        offset in any::<u64>(),
    ) {
        let req = pb::StreamOutputRequest { job_id: String::new(), streams: streams.clone(), offset };
        let stdout = streams.contains(&(pb::OutputStream::Stdout as i32));
        let stderr = streams.contains(&(pb::OutputStream::Stderr as i32));
        match convert::stream_filter(&req.streams) {
            Ok(filter) => {
                prop_assert!(streams.iter().all(|s| [1, 2].contains(s)), "accepted {:?}", streams);
                let expected = match (stdout, stderr) {
                    (true, false) => StreamFilter::Stdout,
                    (false, true) => StreamFilter::Stderr,
                    _ => StreamFilter::Both,
                };
                prop_assert_eq!(filter, expected);
            }
            Err(status) => {
                clear_refusal(&status)?;
                prop_assert!(streams.iter().any(|s| ![1, 2].contains(s)), "refused {:?}", streams);
                prop_assert!(status.message().contains("output stream"), "{}", status.message());
            }
        }
        // Any offset is a request to read from there: past the end of a finished job's output
        // the reader says so, and the caller gets OUT_OF_RANGE naming both.
        let past = convert::to_status(Error::Output(OutputError::OffsetPastEnd { offset, len: offset / 2 }));
        prop_assert_eq!(past.code(), Code::OutOfRange);
        prop_assert!(past.message().contains(&offset.to_string()), "{}", past.message());
    }
}

/// A request that asks for `edit`, otherwise minimal.
fn start(edit: impl FnOnce(&mut pb::StartRequest)) -> pb::StartRequest {
    let mut req = pb::StartRequest {
        command: "true".into(),
        ..pb::StartRequest::default()
    };
    edit(&mut req);
    req
}

/// A request with `edit` applied to its limits.
fn with_limits(edit: impl FnOnce(&mut pb::Limits)) -> pb::StartRequest {
    start(|req| {
        let mut limits = pb::Limits::default();
        edit(&mut limits);
        req.limits = Some(limits);
    })
}

#[test]
fn each_documented_bound_is_accepted_and_one_past_it_refused() {
    let node = Node {
        cpus: 2.0,
        memory: 1 << 30,
        pids: 1000,
        output: 1 << 30,
    };
    let text = |len: usize| sized(len, '€', None);
    let fill =
        |total, env_percent| start(|r| (r.args, r.env) = filling("true", total, env_percent));
    // (bound, a request right at it, one just past it, what the refusal must say)
    let bounds: Vec<(&str, pb::StartRequest, pb::StartRequest, &str)> = vec![
        (
            "command length",
            start(|r| r.command = text(COMMAND_BYTES)),
            start(|r| r.command = text(COMMAND_BYTES + 1)),
            "4095",
        ),
        (
            "command not empty",
            start(|r| r.command = "x".into()),
            start(|r| r.command = String::new()),
            "the command is empty",
        ),
        (
            "argument count",
            start(|r| r.args = vec![String::new(); ARGS]),
            start(|r| r.args = vec![String::new(); ARGS + 1]),
            "the limit is 4096",
        ),
        (
            "argument length",
            start(|r| r.args = vec![text(ARG_BYTES)]),
            start(|r| r.args = vec![text(ARG_BYTES + 1)]),
            "131071",
        ),
        (
            "variable count",
            start(|r| {
                r.env = (0..ENV_VARS)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect()
            }),
            start(|r| {
                r.env = (0..=ENV_VARS)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect()
            }),
            "the limit is 1024",
        ),
        (
            "variable length",
            start(|r| r.env = HashMap::from([("K".into(), text(ENV_ENTRY_BYTES - 2))])),
            start(|r| r.env = HashMap::from([("K".into(), text(ENV_ENTRY_BYTES - 1))])),
            "131071",
        ),
        (
            "total, in arguments",
            fill(TOTAL_BYTES, 0),
            fill(TOTAL_BYTES + 1, 0),
            "1048576",
        ),
        (
            "total, in the environment",
            fill(TOTAL_BYTES, 100),
            fill(TOTAL_BYTES + 1, 100),
            "1048576",
        ),
        (
            "working directory length",
            start(|r| r.working_dir = format!("/{}", text(WORKING_DIR_BYTES - 1))),
            start(|r| r.working_dir = format!("/{}", text(WORKING_DIR_BYTES))),
            "4095",
        ),
        (
            "cpus minimum",
            with_limits(|l| l.cpus = Some(MIN_CPUS)),
            with_limits(|l| l.cpus = Some(MIN_CPUS.next_down())),
            "0.01",
        ),
        (
            "cpus maximum",
            with_limits(|l| l.cpus = Some(2.0)),
            with_limits(|l| l.cpus = Some(2.0_f64.next_up())),
            "maximum of 2 CPUs",
        ),
        (
            "memory minimum",
            with_limits(|l| l.memory_bytes = Some(MIN_MEMORY)),
            with_limits(|l| l.memory_bytes = Some(MIN_MEMORY - 1)),
            "4 MiB",
        ),
        (
            "memory maximum",
            with_limits(|l| l.memory_bytes = Some(1 << 30)),
            with_limits(|l| l.memory_bytes = Some((1 << 30) + 1)),
            "maximum of 1073741824 bytes",
        ),
        (
            "io read bps minimum",
            with_limits(|l| l.io_read_bps = Some(1)),
            with_limits(|l| l.io_read_bps = Some(0)),
            "io read bps must be between 1",
        ),
        (
            "io write bps maximum",
            with_limits(|l| l.io_write_bps = Some(IO.1)),
            with_limits(|l| l.io_write_bps = Some(IO.1 + 1)),
            "4611686018427387904",
        ),
        (
            "io read iops maximum",
            with_limits(|l| l.io_read_iops = Some(IO.1)),
            with_limits(|l| l.io_read_iops = Some(u64::MAX)),
            "4611686018427387904",
        ),
        (
            "io write iops minimum",
            with_limits(|l| l.io_write_iops = Some(1)),
            with_limits(|l| l.io_write_iops = Some(0)),
            "io write iops must be between 1",
        ),
        (
            "pids minimum",
            with_limits(|l| l.pids = Some(MIN_PIDS)),
            with_limits(|l| l.pids = Some(MIN_PIDS - 1)),
            "between 2",
        ),
        (
            "pids maximum",
            with_limits(|l| l.pids = Some(1000)),
            with_limits(|l| l.pids = Some(1001)),
            "maximum of 1000",
        ),
        (
            "output maximum",
            with_limits(|l| l.output_bytes = Some(1 << 30)),
            with_limits(|l| l.output_bytes = Some((1 << 30) + 1)),
            "maximum of 1073741824 bytes",
        ),
    ];
    for (bound, at, past, says) in bounds {
        assert!(
            faults(&at, &node).is_empty(),
            "{bound}: the test's own request at the bound"
        );
        if let Err(status) = check_start(&at, &node) {
            panic!("{bound}: refused at the bound: {}", status.message());
        }
        match check_start(&past, &node) {
            Ok(_) => panic!("{bound}: accepted one past the bound"),
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{bound}: {}",
                    status.message()
                );
                assert!(
                    status.message().contains(says),
                    "{bound}: {:?} should say {says:?}",
                    status.message()
                );
            }
        }
    }
    let caller = Identity {
        user: "alice".into(),
        groups: Vec::new(),
    };
    let list = |page_size| {
        convert::list_query(
            &caller,
            &pb::ListRequest {
                page_size,
                ..Default::default()
            },
        )
    };
    assert!(list(MAX_PAGE_SIZE).is_ok(), "page size at its bound");
    let past = list(MAX_PAGE_SIZE + 1)
        .map(|_| ())
        .expect_err("page size past its bound");
    assert_eq!(past.code(), Code::InvalidArgument);
    assert!(past.message().contains("1000"), "{}", past.message());
}

#[test]
fn every_list_state_the_proto_names_is_a_filter() {
    let all = [
        (pb::JobState::Running, StateKind::Running),
        (pb::JobState::Exited, StateKind::Exited),
        (pb::JobState::Signaled, StateKind::Signaled),
        (pb::JobState::OomKilled, StateKind::OomKilled),
        (pb::JobState::Lost, StateKind::Lost),
    ];
    for (state, kind) in all {
        assert_eq!(
            convert::states(&[state as i32]).ok(),
            Some(vec![kind]),
            "{state:?}"
        );
    }
    let unspecified = convert::states(&[pb::JobState::Unspecified as i32]);
    assert_eq!(
        unspecified.map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
}
