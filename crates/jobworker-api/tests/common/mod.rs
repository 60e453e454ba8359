//! A throwaway PKI on disk and the configurations built from it.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::sync::Arc;

use jobworker_api::pki::{Ca, Issued, Leaf, SERVER_NAMES, Usage, Validity};
use jobworker_api::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tempfile::TempDir;

/// A CA with its certificate written to `<dir>/ca.pem`, and helpers to write leaves next to it.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate(name, Validity::days_from_now(1)).expect("generate CA");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca.pem");
        Pki { dir, ca }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `issued` as `<stem>.pem` / `<stem>.key` and returns both paths.
    pub fn write(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{stem}.pem"));
        let key = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        (cert, key)
    }

    pub fn client(&self, user: &str, groups: &[&str]) -> Issued {
        self.ca
            .issue_client(user, groups, Validity::days_from_now(1))
            .expect("issue client cert")
    }

    pub fn leaf(&self, leaf: Leaf) -> Issued {
        self.ca.issue(&leaf).expect("issue leaf cert")
    }

    /// The server configuration under test, with a certificate for [`SERVER_NAMES`].
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let server = self
            .ca
            .issue_server(&SERVER_NAMES, Validity::days_from_now(1))
            .expect("issue server cert");
        self.server_config_with(&server)
    }

    /// The server configuration under test, presenting `server` as its certificate.
    pub fn server_config_with(&self, server: &Issued) -> Arc<ServerConfig> {
        let (cert, key) = self.write("server", server);
        tls::server_config(&self.ca_path(), &cert, &key).expect("server config")
    }

    /// The client configuration under test, presenting `client` and trusting this CA.
    pub fn client_config(&self, client: &Issued) -> Arc<ClientConfig> {
        let (cert, key) = self.write("client", client);
        tls::client_config(&self.ca_path(), &cert, &key).expect("client config")
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.cert_pem().as_bytes()).expect("CA PEM"))
            .expect("CA as trust anchor");
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

pub fn chain_and_key(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM");
    (chain, key)
}
