//! A development PKI: one CA, a server certificate and one client certificate per user.
//!
//! Keys are ECDSA P-384. Every certificate states its validity window and its purpose (EKU)
//! explicitly, because [`crate::tls`] refuses certificates that do not. [`init`] writes a
//! complete PKI to a directory and [`add_user`] issues one more client certificate from the CA
//! kept there; [`Ca`] issues single certificates, including deliberately wrong ones (expired,
//! wrong EKU) for tests.
//!
//! Only with the `dev-pki` feature: clients have no use for a certificate authority.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::ADMIN_GROUP;

/// Names the server certificate is valid for: the daemon listens on loopback by default.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// File stems [`init`] uses itself, so no user may take them.
const RESERVED_NAMES: [&str; 2] = ["ca", "server"];

/// The X.520 organization attribute (O), 2.5.4.10.
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// Why a certificate could not be issued or a PKI not written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot issue a certificate for {subject}")]
    Issue {
        /// The certificate's subject (CN, or the SANs for a server).
        subject: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// rcgen keeps one value per attribute type in a name; a second O is encoded under its
    /// numeric OID, and there is no third way to spell it.
    #[error("{user} has {count} groups, but a certificate can carry at most 2 (O values)")]
    TooManyGroups {
        /// The user (CN).
        user: String,
        /// How many groups were asked for.
        count: usize,
    },
    /// A user name cannot be used as a CN and a file name.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA's certificate or key cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The CA's certificate or key is not what [`init`] writes.
    #[error("{} is not a usable CA {what}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// rcgen's reason, if it gave one.
        #[source]
        source: Option<rcgen::Error>,
    },
    /// `ca.key` does not belong to `ca.pem`: anything signed with it would not verify.
    #[error("{} is not the private key of {}", key.display(), cert.display())]
    KeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The key that does not match it.
        key: PathBuf,
    },
    /// The CA itself is no longer valid, so nothing it issues would be.
    #[error("the CA {} expired on {not_after}", path.display())]
    CaExpired {
        /// The CA certificate.
        path: PathBuf,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// A validity of zero days asks for certificates that are already useless.
    #[error("certificate validity must be at least one day")]
    ZeroValidity,
    /// A file exists and `force` was not given.
    #[error("refusing to overwrite {}", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The output directory cannot be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file cannot be removed before being rewritten (with `force`).
    #[error("cannot remove {} to overwrite it", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The first moment of validity.
    pub not_before: OffsetDateTime,
    /// The last moment of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago for `days` days.
    ///
    /// The start is backdated so that a peer whose clock runs slightly behind does not see a
    /// freshly issued certificate as "not yet valid".
    pub fn days_from_now(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// A window that closed yesterday: for testing that expired certificates are refused.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(2),
            not_after: now - Duration::days(1),
        }
    }
}

/// A purpose a certificate declares in its extended key usage (EKU) extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// id-kp-clientAuth: may authenticate a TLS client.
    ClientAuth,
    /// id-kp-serverAuth: may authenticate a TLS server.
    ServerAuth,
}

/// Everything that varies between the leaf certificates a [`Ca`] issues.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Subject CN (the user, for a client certificate); `None` for no CN.
    pub common_name: Option<String>,
    /// Subject O values (the user's groups); at most 2.
    pub groups: Vec<String>,
    /// DNS names and IP addresses (as text) for the SAN extension.
    pub subject_alt_names: Vec<String>,
    /// EKU values; empty means no EKU extension at all.
    pub usages: Vec<Usage>,
    /// When the certificate is valid.
    pub validity: Validity,
}

/// A certificate with its private key, both PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key (PKCS#8 `PRIVATE KEY`). Secret.
    pub key_pem: String,
}

// By hand, so that a debug print or a failing test never shows the private key.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate authority held in memory.
pub struct Ca {
    /// The CA's name and signing key: what signing a leaf needs.
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM-encoded.
    cert_pem: String,
    /// The end of the CA's validity: nothing it issues is valid beyond it.
    not_after: OffsetDateTime,
}

impl Ca {
    /// Generates a self-signed CA named `name` (its CN) with a fresh P-384 key.
    ///
    /// The CA may sign only leaf certificates (path length 0): nothing it issues can act as a
    /// CA in turn.
    pub fn generate(name: &str, validity: Validity) -> Result<Ca, PkiError> {
        let issue_error = |source| PkiError::Issue {
            subject: name.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(issue_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(issue_error)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            not_after: validity.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA that [`init`] wrote to `dir`: `ca.pem` and its key `ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| PkiError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let bad_cert = |source| PkiError::Load {
            path: cert_path.clone(),
            what: "certificate",
            source,
        };

        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::Load {
            path: key_path.clone(),
            what: "private key",
            source: Some(source),
        })?;
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| bad_cert(None))?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|_| bad_cert(None))?;
        // rcgen signs with whatever key it is given; a mismatch would only show later, as
        // certificates that no server accepts.
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| bad_cert(Some(e)))?;
        Ok(Ca {
            issuer,
            cert_pem,
            not_after,
        })
    }

    /// The CA certificate, PEM-encoded: what servers and clients trust.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key, PEM-encoded. Secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The last moment the CA, and so anything it issues, is valid.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A client certificate for `user` (CN) in `groups` (O), usable only as a TLS client.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        self.issue(&Leaf {
            common_name: Some(user.to_owned()),
            groups: groups.iter().map(|&group| group.to_owned()).collect(),
            subject_alt_names: Vec::new(),
            usages: vec![Usage::ClientAuth],
            validity,
        })
    }

    /// A server certificate for the DNS names and IP addresses in `names`, usable only as a TLS
    /// server. It has no CN: clients match the SANs.
    pub fn issue_server(&self, names: &[&str], validity: Validity) -> Result<Issued, PkiError> {
        self.issue(&Leaf {
            common_name: None,
            groups: Vec::new(),
            subject_alt_names: names.iter().map(|&name| name.to_owned()).collect(),
            usages: vec![Usage::ServerAuth],
            validity,
        })
    }

    /// Any leaf certificate, including ones the TLS policy must refuse.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, PkiError> {
        let subject = leaf
            .common_name
            .clone()
            .unwrap_or_else(|| leaf.subject_alt_names.join(", "));
        let issue_error = |source| PkiError::Issue {
            subject: subject.clone(),
            source,
        };

        let mut params =
            CertificateParams::new(leaf.subject_alt_names.clone()).map_err(issue_error)?;
        params.distinguished_name = subject_name(leaf)?;
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys only sign the TLS handshake.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = leaf
            .usages
            .iter()
            .map(|usage| match usage {
                Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            })
            .collect();
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.validity.not_before;
        params.not_after = leaf.validity.not_after;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(issue_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn subject_name(leaf: &Leaf) -> Result<DistinguishedName, PkiError> {
    let mut name = DistinguishedName::new();
    if let Some(common_name) = &leaf.common_name {
        name.push(DnType::CommonName, common_name.as_str());
    }
    // rcgen's DistinguishedName is a map keyed by attribute type, so the usual O key holds one
    // value. The same OID spelled as a custom type is a different key and encodes identically,
    // which makes room for exactly one more.
    match leaf.groups.as_slice() {
        [] => {}
        [first] => name.push(DnType::OrganizationName, first.as_str()),
        [first, second] => {
            name.push(DnType::OrganizationName, first.as_str());
            name.push(
                DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
                second.as_str(),
            );
        }
        groups => {
            return Err(PkiError::TooManyGroups {
                user: leaf.common_name.clone().unwrap_or_default(),
                count: groups.len(),
            });
        }
    }
    Ok(name)
}

/// Writes a development PKI into `dir` (created, mode 0700, if missing) and returns the files
/// written:
///
/// - `ca.pem`, `ca.key`: the CA;
/// - `server.pem`, `server.key`: the server, valid for [`SERVER_NAMES`];
/// - `<name>.pem`, `<name>.key` for every name in `users` and `admins` (CN = name); admins
///   also carry O=admin.
///
/// Keys are created with mode 0600 (never readable by others, not even briefly). Without
/// `force`, nothing is written if any of the files exists.
pub fn init(
    dir: &Path,
    users: &[String],
    admins: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    if validity_days == 0 {
        return Err(PkiError::ZeroValidity);
    }
    let clients = clients(users, admins)?;

    let mut stems = vec!["ca", "server"];
    stems.extend(clients.iter().map(|(name, _)| name.as_str()));
    if !force {
        for stem in &stems {
            for path in [
                dir.join(format!("{stem}.pem")),
                dir.join(format!("{stem}.key")),
            ] {
                // symlink_metadata: a dangling symlink is an existing file too.
                if fs::symlink_metadata(&path).is_ok() {
                    return Err(PkiError::Exists { path });
                }
            }
        }
    }

    // Everything is generated before anything is written, so a failure leaves no half PKI.
    let validity = Validity::days_from_now(validity_days);
    let ca = Ca::generate("jobworker development CA", validity)?;
    let mut issued = vec![(
        "ca",
        Issued {
            cert_pem: ca.cert_pem(),
            key_pem: ca.key_pem(),
        },
    )];
    issued.push(("server", ca.issue_server(&SERVER_NAMES, validity)?));
    for (name, admin) in &clients {
        let groups: &[&str] = if *admin { &[ADMIN_GROUP] } else { &[] };
        issued.push((name.as_str(), ca.issue_client(name, groups, validity)?));
    }

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    let mut written = Vec::with_capacity(issued.len() * 2);
    for (stem, Issued { cert_pem, key_pem }) in issued {
        let cert_path = dir.join(format!("{stem}.pem"));
        write_new(&cert_path, cert_pem.as_bytes(), 0o644, force)?;
        written.push(cert_path);
        let key_path = dir.join(format!("{stem}.key"));
        write_new(&key_path, key_pem.as_bytes(), 0o600, force)?;
        written.push(key_path);
    }
    Ok(written)
}

/// Issues a client certificate for `name` (with O=admin if `admin`) from the CA that [`init`]
/// wrote to `dir`, and writes it as `<name>.pem` and `<name>.key` (0600) next to it. Nothing
/// else in `dir` changes.
///
/// The certificate is valid for `validity_days`, but never beyond the CA itself. Without
/// `force`, an existing certificate or key of that name is left alone and reported.
pub fn add_user(
    dir: &Path,
    name: &str,
    admin: bool,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, PkiError> {
    if validity_days == 0 {
        return Err(PkiError::ZeroValidity);
    }
    validate_name(name)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    if !force {
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::Exists { path: path.clone() });
            }
        }
    }

    let ca = Ca::load(dir)?;
    let mut validity = Validity::days_from_now(validity_days);
    if ca.not_after() <= OffsetDateTime::now_utc() {
        return Err(PkiError::CaExpired {
            path: dir.join("ca.pem"),
            not_after: ca.not_after(),
        });
    }
    validity.not_after = validity.not_after.min(ca.not_after());
    let groups: &[&str] = if admin { &[ADMIN_GROUP] } else { &[] };
    let issued = ca.issue_client(name, groups, validity)?;

    write_new(&cert_path, issued.cert_pem.as_bytes(), 0o644, force)?;
    write_new(&key_path, issued.key_pem.as_bytes(), 0o600, force)?;
    Ok(vec![cert_path, key_path])
}

/// The client certificates to issue: every user and admin once, in the order given, with
/// whether they are an admin.
fn clients(users: &[String], admins: &[String]) -> Result<Vec<(String, bool)>, PkiError> {
    let admin_names: HashSet<&str> = admins.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut clients = Vec::new();
    for name in users.iter().chain(admins) {
        validate_name(name)?;
        if seen.insert(name.as_str()) {
            clients.push((name.clone(), admin_names.contains(name.as_str())));
        }
    }
    Ok(clients)
}

/// A user name becomes both a CN and a file name in the PKI directory.
fn validate_name(name: &str) -> Result<(), PkiError> {
    let invalid = |reason| {
        Err(PkiError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.starts_with('.') {
        return invalid("it starts with '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    if RESERVED_NAMES.contains(&name) {
        return invalid("the name is reserved for the CA and server files");
    }
    Ok(())
}

/// Writes `contents` to a file that this call creates with `mode`.
///
/// With `force`, an existing file is removed first: opening it would keep its old mode, and
/// a key must never end up more readable than 0600.
fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), PkiError> {
    if force {
        match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(PkiError::Remove {
                    path: path.to_owned(),
                    source: error,
                });
            }
            _ => {}
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => PkiError::Exists {
                path: path.to_owned(),
            },
            _ => PkiError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|&name| name.to_owned()).collect()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_every_certificate_and_key_with_keys_at_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");

        let written = init(&pki, &names(&["alice"]), &names(&["root"]), 30, false).expect("init");

        let expected: Vec<PathBuf> = [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "alice.pem",
            "alice.key",
            "root.pem",
            "root.key",
        ]
        .iter()
        .map(|file| pki.join(file))
        .collect();
        assert_eq!(written, expected);
        for path in &written {
            let mode = mode_of(path);
            if path.extension().is_some_and(|ext| ext == "key") {
                assert_eq!(mode, 0o600, "{} must be private", path.display());
            } else {
                assert_eq!(
                    mode & 0o022,
                    0,
                    "{} is writable by others: {mode:o}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn init_refuses_to_overwrite_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = dir.path().join("alice.key");
        fs::write(&existing, "precious").expect("write");

        let result = init(dir.path(), &names(&["alice"]), &[], 30, false);

        match result {
            Err(PkiError::Exists { path }) => assert_eq!(path, existing),
            other => panic!("expected Exists for {}, got {other:?}", existing.display()),
        }
        assert_eq!(fs::read_to_string(&existing).expect("read"), "precious");
        assert!(
            !dir.path().join("ca.pem").exists(),
            "a refused init must write nothing"
        );
    }

    #[test]
    fn init_with_force_replaces_files_and_tightens_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ca.key");
        fs::write(&key, "old").expect("write");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");

        init(dir.path(), &[], &[], 30, true).expect("init --force");

        assert_eq!(mode_of(&key), 0o600, "a replaced key must be 0600");
        let contents = fs::read_to_string(&key).expect("read");
        assert!(contents.contains("PRIVATE KEY"), "key not rewritten");
    }

    #[test]
    fn init_refuses_names_that_are_not_plain_file_names() {
        for bad in ["", "../etc", "a/b", ".hidden", "ca", "server", "ünï"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let result = init(dir.path(), &names(&[bad]), &[], 30, false);
            assert!(
                matches!(result, Err(PkiError::InvalidName { .. })),
                "{bad:?} accepted: {result:?}"
            );
        }
    }

    #[test]
    fn add_user_issues_from_the_existing_ca_and_changes_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &names(&["alice"]), &[], 30, false).expect("init");
        let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|entry| {
                let path = entry.expect("entry").path();
                let bytes = fs::read(&path).expect("read");
                (path, bytes)
            })
            .collect();

        let written = add_user(dir.path(), "carol", true, 30, false).expect("add-user");

        assert_eq!(
            written,
            [dir.path().join("carol.pem"), dir.path().join("carol.key")]
        );
        assert_eq!(mode_of(&dir.path().join("carol.key")), 0o600);
        for (path, bytes) in before {
            assert_eq!(
                fs::read(&path).expect("read"),
                bytes,
                "{} changed",
                path.display()
            );
        }
        let pem = fs::read(dir.path().join("carol.pem")).expect("read");
        let der = CertificateDer::from_pem_slice(&pem).expect("PEM");
        let identity = crate::Identity::from_peer_certs(&[der]).expect("identity");
        assert_eq!(identity.user, "carol");
        assert_eq!(identity.groups, [ADMIN_GROUP]);
    }

    #[test]
    fn add_user_refuses_to_overwrite_a_user_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &names(&["alice"]), &[], 30, false).expect("init");
        let key = dir.path().join("alice.key");
        let before = fs::read(&key).expect("read");

        let refused = add_user(dir.path(), "alice", false, 30, false);
        match refused {
            Err(PkiError::Exists { path }) => assert_eq!(path, dir.path().join("alice.pem")),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&key).expect("read"), before);

        add_user(dir.path(), "alice", false, 30, true).expect("add-user --force");
        assert_ne!(fs::read(&key).expect("read"), before, "key not replaced");
    }

    #[test]
    fn add_user_never_outlives_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &[], &[], 2, false).expect("init");

        add_user(dir.path(), "dave", false, 365, false).expect("add-user");

        let pem = fs::read(dir.path().join("dave.pem")).expect("read");
        let der = CertificateDer::from_pem_slice(&pem).expect("PEM");
        let (_, cert) = X509Certificate::from_der(&der).expect("DER");
        let ca = Ca::load(dir.path()).expect("CA");
        assert_eq!(cert.validity().not_after.to_datetime(), ca.not_after());
    }

    #[test]
    fn add_user_without_a_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");

        let result = add_user(dir.path(), "carol", false, 30, false);

        match result {
            Err(PkiError::Read { path, source }) => {
                assert_eq!(path, dir.path().join("ca.pem"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn a_ca_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &[], &[], 30, false).expect("init");
        let other = Ca::generate("another CA", Validity::days_from_now(1)).expect("CA");
        fs::write(dir.path().join("ca.key"), other.key_pem()).expect("write");

        let result = Ca::load(dir.path());

        assert!(
            matches!(result, Err(PkiError::KeyMismatch { .. })),
            "got {:?}",
            result.err()
        );
    }

    #[test]
    fn a_third_group_is_refused_rather_than_dropped() {
        let ca = Ca::generate("test CA", Validity::days_from_now(1)).expect("CA");
        let result = ca.issue_client("alice", &["a", "b", "c"], Validity::days_from_now(1));
        assert!(
            matches!(result, Err(PkiError::TooManyGroups { count: 3, .. })),
            "got {result:?}"
        );
    }
}
