//! Who is calling, and what they may touch.
//!
//! Authentication is the TLS handshake: only clients with a certificate issued by the client CA
//! get this far. The identity is the certificate's subject: CN is the user, O values are groups.
//! It is read once per connection, right after the handshake, and attached to each of the
//! connection's requests as a [`Peer`]. The policy is deliberately tiny: users act on their own
//! jobs; group `admin` on every job.

use std::net::SocketAddr;
use std::sync::Arc;

use jobworker_api::identity::Identity;
use tonic::{Request, Status};

/// The authenticated caller of a request.
pub type Caller = Identity;

/// The client at the other end of a connection, as established by its TLS handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address, for the audit log.
    pub addr: SocketAddr,
    /// The user and groups of its verified certificate, or why they could not be read (e.g. no
    /// CN): every request on the connection is then UNAUTHENTICATED with that reason.
    pub identity: Result<Identity, String>,
}

impl Peer {
    /// The authenticated caller, or UNAUTHENTICATED saying why there is none.
    pub fn caller(&self) -> Result<&Caller, Status> {
        self.identity.as_ref().map_err(|reason| {
            Status::unauthenticated(format!("no usable client identity: {reason}"))
        })
    }
}

/// The peer of `request`, attached by the server's connection loop.
///
/// Missing only if the service is served some other way, which is a bug: INTERNAL.
pub fn peer<T>(request: &Request<T>) -> Result<Arc<Peer>, Status> {
    request
        .extensions()
        .get::<Arc<Peer>>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("a request arrived without its connection's peer");
            Status::internal("the server failed: the request carries no connection identity")
        })
}

/// Whether `caller` is an admin: a member of the group `admin` (exactly that name).
pub fn is_admin(caller: &Caller) -> bool {
    caller
        .groups
        .iter()
        .any(|group| group == jobworker_api::identity::ADMIN_GROUP)
}

/// Whether `caller` may see and act on a job owned by `owner`.
pub fn may_access(caller: &Caller, owner: &str) -> bool {
    is_admin(caller) || caller.user == owner
}

/// Whose jobs a List by `caller` returns, given the owner it asked for (empty: none named).
/// Admins: the one named, or everyone's (`None`). Others: their own, and asking for anyone
/// else's is PERMISSION_DENIED.
pub fn list_owner(caller: &Caller, requested: &str) -> Result<Option<String>, Status> {
    match (is_admin(caller), requested) {
        (true, "") => Ok(None),
        (true, owner) => Ok(Some(owner.to_owned())),
        (false, owner) if owner.is_empty() || owner == caller.user => Ok(Some(caller.user.clone())),
        (false, _) => Err(Status::permission_denied(
            "only admins may list other users' jobs",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, groups: &[&str]) -> Caller {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn users_reach_their_own_jobs_only() {
        assert!(may_access(&id("alice", &[]), "alice"));
        assert!(!may_access(&id("alice", &[]), "bob"));
        assert!(!may_access(&id("alice", &["dev", "ops"]), "bob"));
    }

    #[test]
    fn admins_reach_every_job() {
        assert!(may_access(&id("root", &["admin"]), "bob"));
        assert!(may_access(&id("carol", &["dev", "admin"]), "alice"));
    }

    #[test]
    fn a_group_named_like_admin_is_not_admin() {
        assert!(!may_access(
            &id("eve", &["Admin", "admins", "admin "]),
            "bob"
        ));
    }

    #[test]
    fn users_list_their_own_jobs_and_admins_anyones() {
        let alice = id("alice", &[]);
        assert_eq!(list_owner(&alice, "").ok(), Some(Some("alice".into())));
        assert_eq!(list_owner(&alice, "alice").ok(), Some(Some("alice".into())));
        assert_eq!(
            list_owner(&alice, "bob").map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        let root = id("root", &["admin"]);
        assert_eq!(list_owner(&root, "").ok(), Some(None));
        assert_eq!(list_owner(&root, "bob").ok(), Some(Some("bob".into())));
    }

    #[test]
    fn a_peer_without_identity_is_unauthenticated_with_the_reason() {
        let peer = Peer {
            addr: "127.0.0.1:1".parse().expect("address"),
            identity: Err("the certificate has no CN".into()),
        };
        let status = peer.caller().expect_err("no identity");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("no CN"), "{}", status.message());
    }
}
