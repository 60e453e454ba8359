//! A real server on 127.0.0.1:0 with a PKI made by the test, and clients for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobworker::{Config, Worker};
use jobworker_api::pb::job_worker_client::JobWorkerClient;
use jobworker_api::pki::{Ca, Leaf, Usage, Validity};
use jobworkerd::{Options, Server};
use tonic::transport::Channel;

/// The daemon binary: it is also every job's init.
pub const JOBWORKERD: &str = env!("CARGO_BIN_EXE_jobworkerd");

/// The test PKI on disk: a CA, a server certificate, users alice and bob, admin "root" (O=admin),
/// certificates the server must refuse, and "nameless", a client certificate without a CN (let
/// in by TLS, but naming no user).
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("pki dir");
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("ca");
        let write = |name: &str, cert: &str, key: &str| {
            std::fs::write(dir.path().join(format!("{name}.pem")), cert).expect("write cert");
            std::fs::write(dir.path().join(format!("{name}.key")), key).expect("write key");
        };
        write("ca", &ca.cert_pem(), &ca.key_pem());
        let server = ca
            .issue_server(
                &["localhost", "127.0.0.1", "::1"],
                Validity::days_from_now(1),
            )
            .expect("server cert");
        write("server", &server.cert_pem, &server.key_pem);
        for (user, groups) in [("alice", &[][..]), ("bob", &[]), ("root", &["admin"])] {
            let c = ca
                .issue_client(user, groups, Validity::days_from_now(1))
                .expect("client cert");
            write(user, &c.cert_pem, &c.key_pem);
        }
        let expired = ca
            .issue_client("old", &[], Validity::expired())
            .expect("expired");
        write("expired", &expired.cert_pem, &expired.key_pem);
        let server_only = ca
            .issue(&Leaf {
                common_name: Some("imposter".into()),
                groups: vec!["admin".into()],
                subject_alt_names: vec![],
                usages: vec![Usage::ServerAuth],
                validity: Validity::days_from_now(1),
            })
            .expect("serverAuth-only cert");
        write("server-eku", &server_only.cert_pem, &server_only.key_pem);
        let nameless = ca
            .issue(&Leaf {
                common_name: None,
                groups: vec![],
                subject_alt_names: vec![],
                usages: vec![Usage::ClientAuth],
                validity: Validity::days_from_now(1),
            })
            .expect("client cert without a CN");
        write("nameless", &nameless.cert_pem, &nameless.key_pem);
        let other = Ca::generate("another CA", Validity::days_from_now(1)).expect("other ca");
        let stranger = other
            .issue_client("alice", &["admin"], Validity::days_from_now(1))
            .expect("stranger");
        write("other-ca", &stranger.cert_pem, &stranger.key_pem);
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn client_config(&self, user: &str) -> Arc<rustls::ClientConfig> {
        jobworker_api::tls::client_config(
            &self.path("ca.pem"),
            &self.path(&format!("{user}.pem")),
            &self.path(&format!("{user}.key")),
        )
        .expect("client config")
    }
}

pub fn worker_config(state_dir: &Path) -> Config {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the server tests need root: the server creates namespaces and cgroups"
    );
    Config {
        state_dir: state_dir.to_owned(),
        init_program: PathBuf::from(JOBWORKERD),
        cgroup_parent: PathBuf::from(format!("jobworkerd-test-{}", uuid::Uuid::new_v4())),
        stop_grace: Duration::from_secs(3),
        ..Config::default()
    }
}

/// A server running in this process.
pub struct TestServer {
    pub pki: Pki,
    pub server: Server,
    pub worker: Arc<Worker>,
    pub state_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}, Options::default()).await
    }

    /// A server whose worker configuration `configure` adjusts, run with `options`.
    pub async fn start_with(configure: impl FnOnce(&mut Config), options: Options) -> TestServer {
        let pki = Pki::new();
        let state_dir = tempfile::tempdir().expect("state dir");
        let mut config = worker_config(state_dir.path());
        configure(&mut config);
        let worker = Arc::new(Worker::new(config).expect("worker"));
        let tls = jobworker_api::tls::server_config(
            &pki.path("ca.pem"),
            &pki.path("server.pem"),
            &pki.path("server.key"),
        )
        .expect("server tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::start(listener, tls, worker.clone(), options)
            .await
            .expect("server");
        TestServer {
            pki,
            server,
            worker,
            state_dir,
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

/// Polls `cond` until it holds or `within` passes; for state another party changes (no fixed
/// sleeps: it returns as soon as the condition holds).
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
