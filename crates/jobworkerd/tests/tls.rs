//! Transport security of the running server: who gets in, with what.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 connection preface and an empty SETTINGS frame: enough to make a server that
/// accepted us answer with its own SETTINGS.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Handshakes with `config` and checks the server answers; returns what was negotiated or why
/// the connection failed.
async fn probe(t: &TestServer, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(t.server.local_addr())
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let negotiated = format!(
        "{:?} {:?} {:?}",
        conn.protocol_version(),
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        conn.negotiated_key_exchange_group().map(|g| g.name())
    );
    // With TLS 1.3 the server checks our certificate after our side of the handshake is done:
    // a refusal shows up as an alert on the first read.
    tls.write_all(H2_HELLO)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(negotiated),
        Ok(Ok(_)) => Err("connection closed".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

fn roots(t: &TestServer) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(t.pki.path("ca.pem")).expect("ca");
    roots.add(ca).expect("add ca");
    roots
}

fn identity(t: &TestServer, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let cert = CertificateDer::from_pem_file(t.pki.path(&format!("{name}.pem"))).expect("cert");
    let key = PrivateKeyDer::from_pem_file(t.pki.path(&format!("{name}.key"))).expect("key");
    (vec![cert], key)
}

/// A client config that differs from ours only where a test says.
fn custom(
    t: &TestServer,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
    cert: Option<&str>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(t));
    let mut config = match cert {
        Some(name) => {
            let (chain, key) = identity(t, name);
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_gets_tls13_with_the_post_quantum_hybrid_group() {
    let t = TestServer::start().await;
    let negotiated = probe(&t, t.pki.client_config("alice"))
        .await
        .expect("valid client accepted");
    assert_eq!(
        negotiated,
        "Some(TLSv1_3) Some(TLS13_AES_256_GCM_SHA384) Some(X25519MLKEM768)"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_client_certificate_are_refused() {
    let t = TestServer::start().await;
    let tls13 = &[&rustls::version::TLS13];
    let cases = [
        ("no client certificate", None),
        ("a certificate from another CA", Some("other-ca")),
        ("an expired certificate", Some("expired")),
        (
            "a certificate with only the serverAuth EKU",
            Some("server-eku"),
        ),
    ];
    for (what, cert) in cases {
        let config = custom(
            &t,
            rustls::crypto::aws_lc_rs::default_provider(),
            tls13,
            cert,
        );
        let result = probe(&t, config).await;
        assert!(result.is_err(), "{what} was accepted: {result:?}");
        eprintln!("{what}: refused ({})", result.unwrap_err());
    }
    // The same client configuration with a good certificate gets in: the refusals above are
    // about the certificate, not the test's configuration.
    let config = custom(
        &t,
        rustls::crypto::aws_lc_rs::default_provider(),
        tls13,
        Some("alice"),
    );
    probe(&t, config).await.expect("control: alice accepted");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocols_and_weaker_suites_are_refused() {
    let t = TestServer::start().await;
    let tls12 = custom(
        &t,
        rustls::crypto::aws_lc_rs::default_provider(),
        &[&rustls::version::TLS12],
        Some("alice"),
    );
    let err = probe(&t, tls12).await.expect_err("TLS 1.2 accepted");
    eprintln!("TLS 1.2 only: refused ({err})");

    let mut aes128 = rustls::crypto::aws_lc_rs::default_provider();
    aes128.cipher_suites = vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let config = custom(&t, aes128, &[&rustls::version::TLS13], Some("alice"));
    let err = probe(&t, config).await.expect_err("AES-128 accepted");
    eprintln!("TLS_AES_128_GCM_SHA256 only: refused ({err})");

    let mut p256 = rustls::crypto::aws_lc_rs::default_provider();
    p256.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP256R1];
    let config = custom(&t, p256, &[&rustls::version::TLS13], Some("alice"));
    let err = probe(&t, config)
        .await
        .expect_err("P-256 key exchange accepted");
    eprintln!("secp256r1 only: refused ({err})");
    t.finish().await;
}

/// `openssl s_client` against the server; returns its combined output. With `until_closed`,
/// s_client ignores the end of its input and waits for the server to close the connection (the
/// way a refusal after the handshake arrives); without, it leaves right after the handshake.
async fn s_client(t: &TestServer, args: &[&str], until_closed: bool) -> String {
    let connect = format!("127.0.0.1:{}", t.server.local_addr().port());
    let mut command = tokio::process::Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-alpn",
            "h2",
        ])
        .arg("-CAfile")
        .arg(t.pki.path("ca.pem"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if until_closed {
        command.arg("-ign_eof");
    }
    let mut child = command
        .spawn()
        .expect("openssl is installed (CI installs it)");
    // The HTTP/2 preface makes the server read, and so send its verdict on our certificate.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(H2_HELLO).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("s_client finishes")
        .expect("s_client output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_only_tls13_with_strong_suites_and_mutual_auth() {
    let t = TestServer::start().await;
    let cert = t.pki.path("alice.pem");
    let key = t.pki.path("alice.key");
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    let ok = s_client(&t, &["-tls1_3", "-cert", cert, "-key", key], false).await;
    eprintln!("--- s_client -tls1_3 with alice's certificate:\n{ok}");
    assert!(
        ok.contains("Protocol: TLSv1.3") || ok.contains("New, TLSv1.3"),
        "{ok}"
    );
    assert!(ok.contains("TLS_AES_256_GCM_SHA384"), "{ok}");
    assert!(ok.contains("Verify return code: 0 (ok)"), "{ok}");
    assert!(!ok.contains("alert"), "a valid client got an alert: {ok}");

    let tls12 = s_client(&t, &["-tls1_2", "-cert", cert, "-key", key], true).await;
    eprintln!("--- s_client -tls1_2:\n{tls12}");
    assert!(
        tls12.contains("alert protocol version") || tls12.contains("no protocols available"),
        "{tls12}"
    );

    let aes128 = s_client(
        &t,
        &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
            "-cert",
            cert,
            "-key",
            key,
        ],
        true,
    )
    .await;
    eprintln!("--- s_client -ciphersuites TLS_AES_128_GCM_SHA256:\n{aes128}");
    assert!(aes128.contains("handshake failure"), "{aes128}");

    let no_cert = s_client(&t, &["-tls1_3"], true).await;
    eprintln!("--- s_client without a client certificate:\n{no_cert}");
    assert!(
        no_cert.contains("alert certificate required") || no_cert.contains("alert number 116"),
        "{no_cert}"
    );

    let other = t.pki.path("other-ca.pem");
    let other_key = t.pki.path("other-ca.key");
    let wrong_ca = s_client(
        &t,
        &[
            "-tls1_3",
            "-cert",
            other.to_str().expect("utf-8"),
            "-key",
            other_key.to_str().expect("utf-8"),
        ],
        true,
    )
    .await;
    eprintln!("--- s_client with a certificate from another CA:\n{wrong_ca}");
    assert!(
        wrong_ca.contains("alert unknown ca") || wrong_ca.contains("alert bad certificate"),
        "{wrong_ca}"
    );
    t.finish().await;
}
