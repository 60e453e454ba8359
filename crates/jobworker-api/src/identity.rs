//! Who is calling: the identity carried by a verified client certificate.
//!
//! Follows the Kubernetes convention: the subject's common name (CN) is the user and its
//! organization (O) values are the user's groups. The certificate must already have been
//! verified by the TLS layer; this module only reads it.

use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The group whose members may see and act on every job: the name the development PKI gives
/// admins, and the server's policy (`jobworkerd::authz`) checks.
pub const ADMIN_GROUP: &str = "admin";

/// A caller, as named by its client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject CN: the owner recorded on the jobs this caller starts.
    pub user: String,
    /// The subject O values, in certificate order.
    pub groups: Vec<String>,
}

/// Why no identity could be read from a peer's certificates.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The connection carries no client certificate: not served through
    /// [`crate::tls_incoming`], or (a bug) the TLS layer let a client in without one.
    #[error("the connection carries no client certificate")]
    NoCertificate,
    /// The end-entity certificate is not valid DER.
    #[error("cannot parse the client certificate")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The subject has no CN, so there is no user name.
    #[error("the client certificate's subject has no common name (CN), which names the user")]
    NoCommonName,
    /// The subject has more than one CN, so the user name is ambiguous.
    #[error(
        "the client certificate's subject has {count} common names (CN); exactly one is required"
    )]
    AmbiguousCommonName {
        /// How many CN values the subject holds.
        count: usize,
    },
    /// The subject's CN is empty.
    #[error("the client certificate's common name (CN) is empty")]
    EmptyCommonName,
    /// The subject's CN is longer than X.509 allows (`ub-common-name`, 64).
    #[error("the client certificate's common name (CN) is longer than 64 bytes")]
    CommonNameTooLong,
    /// A CN or O value is in a string type that cannot be read as text.
    #[error("the client certificate's subject {attribute} is not a readable string")]
    Undecodable {
        /// "CN" or "O".
        attribute: &'static str,
        /// The decoding problem.
        #[source]
        source: x509_parser::error::X509Error,
    },
}

impl Identity {
    /// The caller of a tonic handler, for a server fed by [`crate::tls_incoming`].
    ///
    /// Reads the connection information tonic attaches to every request from a
    /// `TlsStream<TcpStream>` (feature `tls-connect-info`). `tonic::Request::peer_certs` reads
    /// the same data, but tonic compiles it (and exports the info type, `TlsConnectInfo`) only
    /// with one of its own TLS features; we leave those off because tonic's TLS configuration
    /// cannot express our policy. The type is therefore named through the `Connected` impl.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Identity, IdentityError> {
        type TlsInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;
        let certs = request
            .extensions()
            .get::<TlsInfo>()
            .and_then(|info| info.peer_certs())
            .ok_or(IdentityError::NoCertificate)?;
        Identity::from_peer_certs(&certs)
    }

    /// Reads the identity from a verified peer chain; the end-entity certificate comes first,
    /// as TLS sends it (and as `tonic::Request::peer_certs` returns it).
    pub fn from_peer_certs(certs: &[CertificateDer<'_>]) -> Result<Identity, IdentityError> {
        let end_entity = certs.first().ok_or(IdentityError::NoCertificate)?;
        let (_, cert) = X509Certificate::from_der(end_entity).map_err(IdentityError::Parse)?;
        let subject = cert.subject();

        let common_names = subject
            .iter_common_name()
            .map(|cn| cn.as_str())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| IdentityError::Undecodable {
                attribute: "CN",
                source,
            })?;
        let user = match common_names.as_slice() {
            [] => return Err(IdentityError::NoCommonName),
            [""] => return Err(IdentityError::EmptyCommonName),
            // RFC 5280's bound; it also bounds what a job's owner costs in every list row.
            [user] if user.len() > 64 => return Err(IdentityError::CommonNameTooLong),
            [user] => (*user).to_owned(),
            many => return Err(IdentityError::AmbiguousCommonName { count: many.len() }),
        };

        let groups = subject
            .iter_organization()
            .map(|o| o.as_str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| IdentityError::Undecodable {
                attribute: "O",
                source,
            })?;

        Ok(Identity { user, groups })
    }
}

// Certificates to read come from the development CA.
#[cfg(all(test, feature = "dev-pki"))]
mod tests {
    use super::*;
    use crate::pki::{Ca, Validity};

    fn der_of(pem: &str) -> CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("rcgen writes valid PEM")
    }

    #[test]
    fn user_is_the_cn_and_groups_are_every_o() {
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("CA");
        let alice = ca
            .issue_client("alice", &["admin", "dev"], Validity::days_from_now(1))
            .expect("client cert");

        let identity = Identity::from_peer_certs(&[der_of(&alice.cert_pem)]).expect("identity");

        assert_eq!(identity.user, "alice");
        assert_eq!(identity.groups, ["admin", "dev"]);
        assert!(identity.groups.iter().any(|g| g == ADMIN_GROUP));
    }

    #[test]
    fn a_user_without_the_admin_group_is_not_an_admin() {
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("CA");
        let bob = ca
            .issue_client("bob", &["dev"], Validity::days_from_now(1))
            .expect("client cert");

        let identity = Identity::from_peer_certs(&[der_of(&bob.cert_pem)]).expect("identity");

        assert_eq!(identity.user, "bob");
        assert!(!identity.groups.iter().any(|g| g == ADMIN_GROUP));
    }

    #[test]
    fn only_the_first_certificate_of_the_chain_names_the_user() {
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("CA");
        let carol = ca
            .issue_client("carol", &[], Validity::days_from_now(1))
            .expect("client cert");

        let chain = [der_of(&carol.cert_pem), der_of(&ca.cert_pem())];
        let identity = Identity::from_peer_certs(&chain).expect("identity");

        assert_eq!(identity.user, "carol");
        assert!(identity.groups.is_empty(), "no O values, no groups");
    }

    #[test]
    fn a_certificate_without_cn_has_no_identity() {
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("CA");
        // A server certificate names hosts in its SANs and carries no CN.
        let server = ca
            .issue_server(&["localhost"], Validity::days_from_now(1))
            .expect("server cert");

        let result = Identity::from_peer_certs(&[der_of(&server.cert_pem)]);

        assert!(
            matches!(result, Err(IdentityError::NoCommonName)),
            "expected NoCommonName, got {result:?}"
        );
    }

    #[test]
    fn an_empty_chain_has_no_identity() {
        let result = Identity::from_peer_certs(&[]);
        assert!(
            matches!(result, Err(IdentityError::NoCertificate)),
            "expected NoCertificate, got {result:?}"
        );
    }
}
