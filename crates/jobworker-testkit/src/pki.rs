//! A throw-away PKI on disk, and the TLS configurations built from it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jobworker_api::pki::{self, Ca, Issued, Leaf, SERVER_NAMES, Usage, Validity};
use jobworker_api::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// A CA and the certificates it issued, as PEM files in a temporary directory (removed on
/// drop): `ca.pem`/`ca.key`, `server.pem`/`server.key` (for localhost, 127.0.0.1 and ::1), and
/// `<user>.pem`/`<user>.key` per client. Everything is valid for one day.
pub struct Pki {
    /// Holds the files.
    dir: TempDir,
    /// The CA, to issue more certificates from.
    ca: Ca,
}

impl Pki {
    /// The development PKI exactly as `jobworkerd certs init` writes it (the same function
    /// writes it): users `alice` and `bob`, and `admin` in the group admin.
    pub fn dev() -> Pki {
        let dir = temp_dir();
        let users = ["alice".to_owned(), "bob".to_owned()];
        pki::init(dir.path(), &users, &["admin".to_owned()], 1, false)
            .expect("write the development PKI");
        let ca = Ca::load(dir.path()).expect("load the CA just written");
        Pki { dir, ca }
    }

    /// A CA named `name` and a server certificate, and no clients yet.
    pub fn new(name: &str) -> Pki {
        let dir = temp_dir();
        let ca = Ca::generate(name, Validity::days_from_now(1)).expect("generate a CA");
        let pki = Pki { dir, ca };
        let ca_files = Issued {
            cert_pem: pki.ca.cert_pem(),
            key_pem: pki.ca.key_pem(),
        };
        pki.write("ca", &ca_files);
        let server = pki
            .ca
            .issue_server(&SERVER_NAMES, Validity::days_from_now(1))
            .expect("issue the server certificate");
        pki.write("server", &server);
        pki
    }

    /// The directory holding the files: what `jobworkerd certs` and `jobctl --pki-dir` take.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the PKI, e.g. `path("alice.pem")`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Writes `issued` as `<stem>.pem` and `<stem>.key` (replacing them) and returns both paths.
    pub fn write(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{stem}.pem"));
        let key = self.path(&format!("{stem}.key"));
        fs::write(&cert, &issued.cert_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", cert.display()));
        fs::write(&key, &issued.key_pem).unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
        (cert, key)
    }

    /// A client certificate for `user` in `groups`, from this CA (not written).
    pub fn client(&self, user: &str, groups: &[&str]) -> Issued {
        self.ca
            .issue_client(user, groups, Validity::days_from_now(1))
            .unwrap_or_else(|e| panic!("issue a client certificate for {user}: {e}"))
    }

    /// Any leaf certificate from this CA, including ones the TLS policy must refuse.
    pub fn leaf(&self, leaf: Leaf) -> Issued {
        self.ca.issue(&leaf).expect("issue a leaf certificate")
    }

    /// The server configuration under test, presenting `server.pem`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        tls::server_config(
            &self.ca_path(),
            &self.path("server.pem"),
            &self.path("server.key"),
        )
        .expect("server TLS configuration")
    }

    /// The server configuration under test, presenting `server` (written as `server.pem`).
    pub fn server_config_with(&self, server: &Issued) -> Arc<ServerConfig> {
        self.write("server", server);
        self.server_config()
    }

    /// The client configuration under test for `<user>.pem` and `<user>.key`.
    pub fn client_config(&self, user: &str) -> Arc<ClientConfig> {
        tls::client_config(
            &self.ca_path(),
            &self.path(&format!("{user}.pem")),
            &self.path(&format!("{user}.key")),
        )
        .unwrap_or_else(|e| panic!("client TLS configuration for {user}: {e}"))
    }

    /// The client configuration under test, presenting `client` (written as `client.pem`).
    pub fn client_config_for(&self, client: &Issued) -> Arc<ClientConfig> {
        self.write("client", client);
        self.client_config("client")
    }

    /// This CA as the only trust anchor, for hand-made rustls configurations.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.cert_pem().as_bytes()).expect("CA PEM"))
            .expect("the CA as a trust anchor");
        roots
    }
}

/// A leaf like a client certificate for `user`, to be varied by the caller.
pub fn client_leaf(user: &str) -> Leaf {
    Leaf {
        common_name: Some(user.to_owned()),
        groups: Vec::new(),
        subject_alt_names: Vec::new(),
        usages: vec![Usage::ClientAuth],
        validity: Validity::days_from_now(1),
    }
}

/// `issued` as rustls takes a certificate chain and key.
pub fn chain_and_key(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM");
    (chain, key)
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("jobworker-test-pki-")
        .tempdir()
        .expect("a temporary directory for the PKI")
}
