//! Who is calling, and what they may touch.
//!
//! Authentication is the TLS handshake: only clients with a certificate issued by the client CA
//! get this far. The identity is the certificate's subject: CN is the user, O values are groups.
//! The policy is deliberately tiny: users act on their own jobs; group `admin` on every job.

use jobworker_api::identity::Identity;
use tonic::{Request, Status};

/// The authenticated caller of a request.
pub type Caller = Identity;

/// The caller of `request`, from the client certificate verified during the handshake.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Identity::from_request(request)
        .map_err(|e| Status::unauthenticated(format!("no usable client identity: {e}")))
}

/// Whether `caller` may see and act on a job owned by `owner`.
pub fn may_access(caller: &Caller, owner: &str) -> bool {
    caller.is_admin() || caller.user == owner
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
}
