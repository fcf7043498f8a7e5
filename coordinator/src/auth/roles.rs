//! Which role each call needs: one table for gRPC and the console, so the two can never disagree.

use serde::{Deserialize, Serialize};

/// A role a principal holds. Roles do not imply each other (an admin is not an approver: the
/// separation of duties is the point); every role can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads state: status, health, runs, plans, audit, drills.
    Viewer,
    /// Starts, pauses, resumes and aborts runs; runs and halts drills.
    Operator,
    /// Approves runs and consents to data loss (never their own run).
    Approver,
    /// Membership, regions, playbooks, drill files.
    Admin,
    /// A region agent (from its certificate): the agent link only.
    Agent,
    /// A coordinator node (from its certificate): the Raft transport only.
    Node,
}

impl Role {
    /// The role's name as written in principals files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Node => "node",
        }
    }
}

/// The role a call needs, by gRPC method name (the last segment of its path, e.g. `StartCutover`)
/// or console action of the same name; `None` for a name no role may call (deny by default).
pub fn required_role(call: &str) -> Option<Role> {
    use Role::*;
    Some(match call {
        "GetStatus" | "ListRegions" | "ListAudit" | "GetHealth" | "WatchHealth" | "ListPlaybooks" | "PlanCutover"
        | "GetRun" | "ListRuns" | "WatchRun" | "ListDrills" | "GetDrillRun" | "ListDrillRuns" => Viewer,
        "StartCutover" | "PauseRun" | "ResumeRun" | "AbortRun" | "Halt" | "AckFailover" | "RunDrill" | "HaltDrills" => {
            Operator
        }
        "ApproveRun" | "OverrideFencing" => Approver,
        "AddLearner" | "PromoteVoter" | "RemoveNode" | "AddRegion" | "ApplyPlaybook" | "ApplyDrill" => Admin,
        "Session" => Agent,
        "AppendEntries" | "Vote" | "InstallSnapshot" | "Forward" | "PeerState" => Node,
        _ => return None,
    })
}

/// Whether `roles` may make a call that needs `needed`: the role itself, or any human role for
/// a read (machines read nothing through the client API).
pub fn allows(roles: &[Role], needed: Role) -> bool {
    roles.contains(&needed)
        || (needed == Role::Viewer && roles.iter().any(|r| matches!(r, Role::Operator | Role::Approver | Role::Admin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_calls_are_denied_to_everyone() {
        assert_eq!(required_role("DropDatabase"), None);
        assert_eq!(required_role(""), None);
    }

    #[test]
    fn roles_do_not_imply_each_other_except_reading() {
        assert!(allows(&[Role::Operator], Role::Viewer));
        assert!(!allows(&[Role::Admin], Role::Approver));
        assert!(!allows(&[Role::Operator], Role::Approver));
        assert!(!allows(&[Role::Viewer], Role::Operator));
        assert!(!allows(&[Role::Agent], Role::Viewer));
        assert!(!allows(&[Role::Node], Role::Agent));
    }
}
