//! A real server on 127.0.0.1:0 with a PKI made by the test, and clients for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobworker::{Config, Error, IdRange, StateLock, Worker};
use jobworker_api::pb::job_worker_client::JobWorkerClient;
use jobworker_api::pki::{Leaf, Usage, Validity};
#[allow(unused_imports)] // each test binary uses a different part
pub use jobworker_testkit::{Pki, eventually};
use jobworkerd::{Options, Server};
use tonic::transport::Channel;

/// The daemon binary: it is also every job's init.
pub const JOBWORKERD: &str = env!("CARGO_BIN_EXE_jobworkerd");

/// The test PKI on disk: the development PKI (CA, server, alice, bob, admin with O=admin) plus
/// certificates the server must refuse: `expired`, `server-eku` (serverAuth only, claiming
/// O=admin) and `other-ca` (alice, admin, from another CA).
pub fn pki() -> Pki {
    let pki = Pki::dev();
    pki.write(
        "expired",
        &pki.ca()
            .issue_client("old", &[], Validity::expired())
            .expect("expired"),
    );
    pki.write(
        "server-eku",
        &pki.leaf(Leaf {
            common_name: Some("imposter".into()),
            groups: vec!["admin".into()],
            subject_alt_names: vec![],
            usages: vec![Usage::ServerAuth],
            validity: Validity::days_from_now(1),
        }),
    );
    pki.write(
        "nameless",
        &pki.leaf(Leaf {
            common_name: None,
            groups: vec![],
            subject_alt_names: vec![],
            usages: vec![Usage::ClientAuth],
            validity: Validity::days_from_now(1),
        }),
    );
    let other = Pki::new("another CA");
    pki.write("other-ca", &other.client("alice", &["admin"]));
    pki
}

pub fn worker_config(state_dir: &Path) -> Config {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the server tests need root: the server creates namespaces and cgroups"
    );
    Config {
        state_dir: state_dir.to_owned(),
        init_program: Some(PathBuf::from(JOBWORKERD)),
        cgroup_parent: PathBuf::from(format!("jobworkerd-test-{}", uuid::Uuid::new_v4())),
        stop_grace: Duration::from_secs(3),
        max_total_output: Some(1 << 40),
        ..Config::default()
    }
}

/// A worker on `config` with a uid range no other running worker or daemon holds.
pub async fn start_worker(mut config: Config) -> Worker {
    for _ in 0..200 {
        config.job_ids = jobworker_testkit::random_job_ids()
            .parse::<IdRange>()
            .expect("range");
        let lock = StateLock::acquire(&config.state_dir).expect("lock the state dir");
        match Worker::new(config.clone(), lock).await {
            Err(Error::IdRangeBusy { .. }) => continue,
            other => return other.expect("worker starts"),
        }
    }
    panic!("no free uid range for a test worker");
}

/// A server running in this process.
pub struct TestServer {
    pub pki: Pki,
    pub server: Server,
    pub worker: Arc<Worker>,
    pub state_dir: tempfile::TempDir,
    _cleanup: jobworker_testkit::CleanupOnPanic,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}, Options::default()).await
    }

    /// A server whose worker configuration `configure` adjusts, run with `options`.
    pub async fn start_with(configure: impl FnOnce(&mut Config), options: Options) -> TestServer {
        let pki = pki();
        let state_dir = tempfile::tempdir().expect("state dir");
        let mut config = worker_config(state_dir.path());
        configure(&mut config);
        let worker = Arc::new(start_worker(config).await);
        let tls = pki.server_config();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::start(listener, tls, worker.clone(), options)
            .await
            .expect("server");
        let _cleanup = jobworker_testkit::CleanupOnPanic::new(worker.cgroup_parents());
        TestServer {
            pki,
            server,
            worker,
            state_dir,
            _cleanup,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.local_addr().port())
    }

    pub async fn client(&self, user: &str) -> JobWorkerClient<Channel> {
        jobworker_api::connect(&self.endpoint(), self.pki.client_config(user))
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// Shuts down and checks nothing is left: no job cgroup, no parent.
    pub async fn finish(self) {
        let parents = self.worker.cgroup_parents();
        self.server.shutdown().await;
        for dir in parents {
            assert!(
                !dir.exists(),
                "cgroup parent {} left after shutdown",
                dir.display()
            );
        }
    }
}
