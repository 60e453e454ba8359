//! The mutual-TLS policy shared by server and client, built explicitly with rustls.
//!
//! Every security decision is one line here rather than a library default:
//! TLS 1.3 only, two AEAD suites, three key-exchange groups (post-quantum hybrid first),
//! client certificates required, and the extended key usage (EKU) of the peer's certificate
//! checked in both directions. The crypto provider is built for these configurations only and
//! never installed as the process-wide default, so nothing else in the process can weaken it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The only application protocol spoken: gRPC runs on HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// A file that could not be turned into part of a TLS configuration.
///
/// Every variant names the file, so the message tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read at all.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// What the file was expected to hold, e.g. "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },
    /// The file holds malformed PEM.
    #[error("{what} {} is not valid PEM", path.display())]
    Pem {
        /// What the file was expected to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with the PEM.
        #[source]
        source: pem::Error,
    },
    /// The file holds no `CERTIFICATE` section.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key section (PKCS#8, SEC1 or PKCS#1).
    #[error("no private key found in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the CA file cannot serve as a trust anchor.
    #[error("CA certificate {} cannot be used as a trust anchor", path.display())]
    TrustAnchor {
        /// The CA file.
        path: PathBuf,
        /// Why the certificate was rejected.
        #[source]
        source: rustls::Error,
    },
    /// No certificate verifier can be built from the CA file.
    #[error("cannot verify peers against CA certificate {}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why the verifier could not be built.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and the private key cannot be used together.
    #[error("cannot use certificate {} with private key {}", cert.display(), key.display())]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// Why rustls refused them (e.g. the key does not match the certificate).
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider does not support the policy; a bug, not a user error.
    #[error("the TLS policy is not supported by the crypto provider")]
    Policy(#[source] rustls::Error),
}

/// The crypto provider used by both sides: aws-lc-rs restricted to our policy.
///
/// Returned rather than installed process-wide, so other TLS users in the process (if any)
/// cannot change what these configurations accept.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        // TLS_AES_128_GCM_SHA256 is deliberately absent although RFC 8446 makes it
        // mandatory-to-implement: the policy asks for 256-bit-class symmetric keys only. Every
        // client we ship (rustls) offers both suites below, so nothing we support is locked out.
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        // Preference order: the post-quantum hybrid first, then classical fallbacks for peers
        // that lack ML-KEM (e.g. OpenSSL 3.0).
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP384R1,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// The server side of the policy: requires a client certificate issued by the CA in
/// `ca_pem_path` and carrying the clientAuth EKU, and presents `cert_path` / `key_path`.
///
/// `cert_path` may hold a chain (leaf first); the CA file may hold several CA certificates.
pub fn server_config(
    ca_pem_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = load_roots(ca_pem_path)?;
    let chain = load_certs("certificate", cert_path)?;
    let key = load_key(key_path)?;
    let provider = crypto_provider();

    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca_pem_path.to_owned(),
            source,
        })?;
    let verifier = Arc::new(ClientAuthEku { webpki });

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Policy)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertifiedKey {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT: early data can be replayed, and Start is not idempotent.
    config.max_early_data_size = 0;
    // No resumption: a resumed session skips certificate verification, so a certificate that
    // has since expired would keep working. Every connection verifies the client afresh.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of the policy: trusts only the CA in `ca_pem_path`, requires the server
/// certificate to match the name dialled and to carry the serverAuth EKU, and presents
/// `cert_path` / `key_path` as the client certificate.
pub fn client_config(
    ca_pem_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca_pem_path)?;
    let chain = load_certs("certificate", cert_path)?;
    let key = load_key(key_path)?;
    let provider = crypto_provider();

    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca_pem_path.to_owned(),
            source,
        })?;
    let verifier = Arc::new(ServerAuthEku { webpki });

    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Policy)?
        // "dangerous" only because rustls cannot tell a stricter verifier from a weaker one:
        // ours runs the full webpki verification (chain, validity, name) and then adds a check.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::CertifiedKey {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No 0-RTT and no resumption, for the same reasons as on the server.
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots.add(cert).map_err(|source| TlsError::TrustAnchor {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what: "private key",
            path: path.to_owned(),
            source,
        },
    })
}

/// The purpose a peer's end-entity certificate must declare in its EKU extension.
#[derive(Clone, Copy)]
enum Purpose {
    ClientAuth,
    ServerAuth,
}

/// Refuses an end-entity certificate whose EKU extension lacks `purpose`.
///
/// webpki checks the EKU only *if the extension is present* (RFC 5280 treats a certificate
/// without it as good for any purpose). Our policy is stricter: a certificate must say what it
/// is for, so a CA-issued certificate without EKU is neither a client nor a server.
fn require_eku(end_entity: &CertificateDer<'_>, purpose: Purpose) -> Result<(), rustls::Error> {
    let bad_encoding = rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| bad_encoding.clone())?;
    let eku = cert.extended_key_usage().map_err(|_| bad_encoding)?;
    let declared = eku.is_some_and(|eku| match purpose {
        Purpose::ClientAuth => eku.value.client_auth,
        Purpose::ServerAuth => eku.value.server_auth,
    });
    if declared {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose,
        ))
    }
}

/// webpki's client verifier plus [`require_eku`] for clientAuth.
#[derive(Debug)]
struct ClientAuthEku {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ClientAuthEku {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // A client without a certificate is refused during the handshake.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        require_eku(end_entity, Purpose::ClientAuth)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// webpki's server verifier plus [`require_eku`] for serverAuth.
#[derive(Debug)]
struct ServerAuthEku {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ServerAuthEku {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        require_eku(end_entity, Purpose::ServerAuth)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
