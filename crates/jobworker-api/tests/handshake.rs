//! The TLS policy, handshake by handshake: tokio-rustls clients, ours and deliberately
//! non-conforming ones, against the server configuration, over 127.0.0.1.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use jobworker_api::pki::{Leaf, Usage, Validity};
use jobworker_testkit::{Pki, chain_and_key, client_leaf};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::pki_types::ServerName;
use rustls::{
    AlertDescription, CertificateError, CipherSuite, ClientConfig, CommonState, Error, NamedGroup,
    PeerIncompatible, ProtocolVersion, ServerConfig, SupportedProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What a completed handshake agreed on.
#[derive(Debug, PartialEq)]
struct Negotiated {
    version: Option<ProtocolVersion>,
    suite: Option<CipherSuite>,
    group: Option<NamedGroup>,
    alpn: Option<Vec<u8>>,
}

impl Negotiated {
    fn of(state: &CommonState) -> Negotiated {
        Negotiated {
            version: state.protocol_version(),
            suite: state.negotiated_cipher_suite().map(|suite| suite.suite()),
            group: state
                .negotiated_key_exchange_group()
                .map(|group| group.name()),
            alpn: state.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

/// How one connection ended, seen from each side.
#[derive(Debug)]
struct Outcome {
    server: Result<Negotiated, Error>,
    client: Result<Negotiated, Error>,
}

fn tls_error(error: io::Error) -> Error {
    match error.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(error)) => *error,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// One connection from `client` to `server`, dialling `server_name`.
///
/// On success the server writes "ok" and closes. The client reads to the end because with
/// TLS 1.3 the server judges the client's certificate after the client has finished its
/// handshake: a refusal reaches the client as an alert on its first read.
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Outcome {
    tokio::time::timeout(
        Duration::from_secs(10),
        connect_once(server, client, server_name),
    )
    .await
    .expect("the handshake neither succeeded nor failed within 10s")
}

async fn connect_once(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(tls_error)?;
        let negotiated = Negotiated::of(tls.get_ref().1);
        tls.write_all(b"ok").await.expect("write");
        tls.shutdown().await.expect("shutdown");
        Ok(negotiated)
    });

    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let client = async {
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        let negotiated = Negotiated::of(tls.get_ref().1);
        let mut received = Vec::new();
        tls.read_to_end(&mut received).await.map_err(tls_error)?;
        assert_eq!(received, b"ok", "the server accepted but sent no data");
        Ok(negotiated)
    }
    .await;

    let server = server_side.await.expect("server task");
    Outcome { server, client }
}

/// A client that trusts the test CA but is built with `provider` and `versions`, not our policy.
fn foreign_client(
    pki: &Pki,
    provider: CryptoProvider,
    versions: &[&'static SupportedProtocolVersion],
    cert: Option<&jobworker_api::pki::Issued>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(pki.roots());
    let config = match cert {
        Some(cert) => {
            let (chain, key) = chain_and_key(cert);
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn assert_alert(client: &Result<Negotiated, Error>, alert: AlertDescription) {
    match client {
        Err(Error::AlertReceived(received)) => assert_eq!(*received, alert),
        other => panic!("expected the client to receive alert {alert:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn our_client_and_server_agree_on_tls13_aes256_and_x25519mlkem768() {
    let pki = Pki::new("test CA");
    let client = pki.client_config_for(&pki.client("alice", &[]));

    let outcome = connect(pki.server_config(), client, "localhost").await;

    let expected = Negotiated {
        version: Some(ProtocolVersion::TLSv1_3),
        suite: Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
        group: Some(NamedGroup::X25519MLKEM768),
        alpn: Some(b"h2".to_vec()),
    };
    assert_eq!(outcome.server.expect("server side"), expected);
    assert_eq!(outcome.client.expect("client side"), expected);
}

#[tokio::test]
async fn the_server_is_reachable_by_ip_address_sans() {
    let pki = Pki::new("test CA");
    let client = pki.client_config_for(&pki.client("alice", &[]));

    for name in ["127.0.0.1", "::1"] {
        let outcome = connect(pki.server_config(), client.clone(), name).await;
        assert!(
            outcome.client.is_ok(),
            "{name}: {:?} / {:?}",
            outcome.client,
            outcome.server
        );
    }
}

#[tokio::test]
async fn chacha20_poly1305_is_the_other_accepted_suite() {
    let pki = Pki::new("test CA");
    let provider = CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..aws_lc_rs::default_provider()
    };
    let alice = pki.client("alice", &[]);
    let client = foreign_client(&pki, provider, &[&rustls::version::TLS13], Some(&alice));

    let outcome = connect(pki.server_config(), client, "localhost").await;

    let server = outcome.server.expect("server side");
    assert_eq!(
        server.suite,
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
}

#[tokio::test]
async fn classical_groups_are_accepted_from_clients_without_ml_kem() {
    let pki = Pki::new("test CA");
    let alice = pki.client("alice", &[]);
    for (group, name) in [
        (kx_group::X25519, NamedGroup::X25519),
        (kx_group::SECP384R1, NamedGroup::secp384r1),
    ] {
        let provider = CryptoProvider {
            kx_groups: vec![group],
            ..aws_lc_rs::default_provider()
        };
        let client = foreign_client(&pki, provider, &[&rustls::version::TLS13], Some(&alice));

        let outcome = connect(pki.server_config(), client, "localhost").await;

        assert_eq!(outcome.server.expect("server side").group, Some(name));
    }
}

#[tokio::test]
async fn a_tls12_only_client_is_refused() {
    let pki = Pki::new("test CA");
    let alice = pki.client("alice", &[]);
    let client = foreign_client(
        &pki,
        aws_lc_rs::default_provider(),
        &[&rustls::version::TLS12],
        Some(&alice),
    );

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::PeerIncompatible(
                PeerIncompatible::Tls12NotOfferedOrEnabled
            ))
        ),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::ProtocolVersion);
}

#[tokio::test]
async fn a_client_offering_only_aes128_is_refused() {
    let pki = Pki::new("test CA");
    let provider = CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..aws_lc_rs::default_provider()
    };
    let alice = pki.client("alice", &[]);
    let client = foreign_client(&pki, provider, &[&rustls::version::TLS13], Some(&alice));

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
            ))
        ),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::HandshakeFailure);
}

#[tokio::test]
async fn a_client_offering_only_p256_is_refused() {
    let pki = Pki::new("test CA");
    let provider = CryptoProvider {
        kx_groups: vec![kx_group::SECP256R1],
        ..aws_lc_rs::default_provider()
    };
    let alice = pki.client("alice", &[]);
    let client = foreign_client(&pki, provider, &[&rustls::version::TLS13], Some(&alice));

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::PeerIncompatible(
                PeerIncompatible::NoKxGroupsInCommon
            ))
        ),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::HandshakeFailure);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("test CA");
    let client = foreign_client(
        &pki,
        jobworker_api::tls::crypto_provider().as_ref().clone(),
        &[&rustls::version::TLS13],
        None,
    );

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(outcome.server, Err(Error::NoCertificatesPresented)),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("test CA");
    let other = Pki::new("another CA");
    let mallory = other.client("mallory", &["admin"]);
    let (cert, key) = other.write("mallory", &mallory);
    // Mallory trusts our CA (so the server is accepted) but her certificate is from hers.
    let client = jobworker_api::tls::client_config(&pki.ca_path(), &cert, &key).expect("config");

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::UnknownCA);
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let pki = Pki::new("test CA");
    let expired = pki.leaf(Leaf {
        validity: Validity::expired(),
        ..client_leaf("alice")
    });
    let client = pki.client_config_for(&expired);

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "server: {:?}",
        outcome.server
    );
    assert_alert(&outcome.client, AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn a_client_certificate_for_servers_only_is_refused() {
    let pki = Pki::new("test CA");
    let server_only = pki.leaf(Leaf {
        usages: vec![Usage::ServerAuth],
        ..client_leaf("alice")
    });
    let client = pki.client_config_for(&server_only);

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        ),
        "server: {:?}",
        outcome.server
    );
    assert!(
        matches!(outcome.client, Err(Error::AlertReceived(_))),
        "client: {:?}",
        outcome.client
    );
}

/// webpki alone accepts a certificate without EKU as a client; our verifier must not.
#[tokio::test]
async fn a_client_certificate_without_eku_is_refused() {
    let pki = Pki::new("test CA");
    let no_eku = pki.leaf(Leaf {
        usages: Vec::new(),
        ..client_leaf("alice")
    });
    let client = pki.client_config_for(&no_eku);

    let outcome = connect(pki.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.server,
            Err(Error::InvalidCertificate(CertificateError::InvalidPurpose))
        ),
        "server: {:?}",
        outcome.server
    );
    assert!(
        matches!(outcome.client, Err(Error::AlertReceived(_))),
        "client: {:?}",
        outcome.client
    );
}

#[tokio::test]
async fn our_client_refuses_a_server_presenting_a_client_certificate() {
    let pki = Pki::new("test CA");
    let impostor = pki.leaf(Leaf {
        subject_alt_names: vec!["localhost".to_owned()],
        ..client_leaf("impostor")
    });
    let client = pki.client_config_for(&pki.client("alice", &[]));

    let outcome = connect(pki.server_config_with(&impostor), client, "localhost").await;

    assert!(
        matches!(
            outcome.client,
            Err(Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        ),
        "client: {:?}",
        outcome.client
    );
}

/// webpki alone accepts a certificate without EKU as a server; our verifier must not.
#[tokio::test]
async fn our_client_refuses_a_server_certificate_without_eku() {
    let pki = Pki::new("test CA");
    let no_eku = pki.leaf(Leaf {
        common_name: None,
        subject_alt_names: vec!["localhost".to_owned()],
        usages: Vec::new(),
        ..client_leaf("unused")
    });
    let client = pki.client_config_for(&pki.client("alice", &[]));

    let outcome = connect(pki.server_config_with(&no_eku), client, "localhost").await;

    assert!(
        matches!(
            outcome.client,
            Err(Error::InvalidCertificate(CertificateError::InvalidPurpose))
        ),
        "client: {:?}",
        outcome.client
    );
}

#[tokio::test]
async fn our_client_refuses_a_server_certificate_for_another_name() {
    let pki = Pki::new("test CA");
    let client = pki.client_config_for(&pki.client("alice", &[]));

    let outcome = connect(pki.server_config(), client, "jobworker.example").await;

    assert!(
        matches!(
            outcome.client,
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "client: {:?}",
        outcome.client
    );
}

#[tokio::test]
async fn our_client_refuses_a_server_from_another_ca() {
    let pki = Pki::new("test CA");
    let other = Pki::new("another CA");
    let client = pki.client_config_for(&pki.client("alice", &[]));

    let outcome = connect(other.server_config(), client, "localhost").await;

    assert!(
        matches!(
            outcome.client,
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ),
        "client: {:?}",
        outcome.client
    );
}
