//! The JSON the page reads: proto messages mapped by hand (the field names the page uses, no
//! serde on generated types), and the per-service summary of the status board.

use crate::failover::loss_from_sample;
use crate::hub::LagSample;
use drcut_proto::v1 as pb;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The health board: regions × checks × vantage points, with SLO results and values.
pub fn board(b: &pb::HealthBoard) -> Value {
    let check = |c: &pb::CheckHealth| {
        let values: BTreeMap<&String, &f64> = c.values.iter().collect();
        let labels: BTreeMap<&String, &String> = c.labels.iter().collect();
        json!({
            "check": c.check, "type": c.r#type, "region": c.region, "vantage_agent": c.vantage_agent,
            "vantage_region": c.vantage_region, "state": c.state, "since_unix_ms": c.since_unix_ms,
            "slo": c.slo.iter().map(|s| json!({
                "expr": s.expr, "value": s.has_value.then_some(s.value), "ok": s.ok,
            })).collect::<Vec<_>>(),
            "values": values, "labels": labels, "error": c.error,
            "last_report_unix_ms": c.last_report_unix_ms, "stale": c.stale,
        })
    };
    json!({
        "node_id": b.node_id,
        "live": b.live,
        "regions": b.regions.iter().map(|r| json!({
            "region": r.region, "state": r.state, "since_unix_ms": r.since_unix_ms, "reason": r.reason,
            "checks": r.checks.iter().map(check).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "agents": b.agents.iter().map(|a| json!({
            "agent_id": a.agent_id, "region": a.region, "version": a.version, "connected": a.connected,
            "last_seen_unix_ms": a.last_seen_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The coordinator cluster as this node sees it.
pub fn cluster(s: &pb::ClusterStatus, read_only: Option<&str>) -> Value {
    json!({
        "cluster_id": s.cluster_id,
        "node": { "id": s.node_id, "addr": s.node_addr, "state": s.state },
        "leader": (s.leader_id != 0).then(|| json!({ "id": s.leader_id, "addr": s.leader_addr })),
        "term": s.term,
        "commit_index": s.commit_index,
        "last_applied": s.last_applied,
        "members": s.members.iter().map(|m| json!({
            "id": m.id, "addr": m.addr, "voter": m.voter,
            "lag": m.has_progress.then_some(m.lag), "leader": m.id == s.leader_id,
        })).collect::<Vec<_>>(),
        "read_only": read_only,
        "audit_len": s.audit_len,
    })
}

/// A run: the key fields and the full record (steps, attempts, phases, approvals, loss).
pub fn run(r: &pb::RunInfo) -> Value {
    json!({
        "run_id": r.run_id, "service": r.service, "playbook": r.playbook, "playbook_hash": r.playbook_hash,
        "requester": r.requester, "reason": r.reason, "state": r.state, "state_reason": r.state_reason,
        "created_unix_ms": r.created_unix_ms, "ended_unix_ms": r.ended_unix_ms, "revision": r.revision,
        "record": serde_json::from_str::<Value>(&r.record_json).unwrap_or(Value::Null),
    })
}

/// An audit entry (a run's events: approvals, gate verdicts, step results).
pub fn audit_entry(e: &pb::AuditEntry) -> Value {
    json!({
        "seq": e.seq, "time_unix_ms": e.time_unix_ms, "actor": e.actor, "action": e.action,
        "details": serde_json::from_str::<Value>(&e.details_json).unwrap_or(Value::Null),
    })
}

fn fire(f: &pb::DrillFire) -> Value {
    json!({ "at_unix_ms": f.at_unix_ms, "local": f.local, "utc": f.utc, "blackout": f.blackout })
}

/// A drill on file with its next fire times (the calendar).
pub fn drill(d: &pb::DrillSummary) -> Value {
    json!({
        "name": d.name, "owner": d.owner, "service": d.service, "target_region": d.target_region,
        "rrule": d.rrule, "timezone": d.timezone, "enabled": d.enabled,
        "next": d.next.iter().map(fire).collect::<Vec<_>>(),
        "last_run": d.last_run, "last_outcome": d.last_outcome,
    })
}

/// A drill run; with its report once ended.
pub fn drill_run(d: &pb::DrillRunInfo) -> Value {
    json!({
        "id": d.id, "drill": d.drill, "state": d.state, "outcome": d.outcome,
        "outcome_detail": d.outcome_detail, "revision": d.revision,
        "record": serde_json::from_str::<Value>(&d.record_json).unwrap_or(Value::Null),
        "report": serde_json::from_str::<Value>(&d.report_json).unwrap_or(Value::Null),
        "report_markdown": d.report_markdown,
    })
}

/// What a service's playbook says about it when the replicated state does not: the region it
/// runs from and the one it would move to (the defaults of the playbook's parameters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlaybookHint {
    /// Failover source, else the `source` parameter's default.
    pub source: Option<String>,
    /// Failover target, else the precondition's target region.
    pub target: Option<String>,
}

/// What the board knows of each service beyond the cluster status.
#[derive(Debug, Clone, Default)]
pub struct ServiceFacts {
    /// Per service, its latest playbook's defaults.
    pub hints: BTreeMap<String, PlaybookHint>,
    /// Per service, the run holding it now.
    pub active_runs: BTreeMap<String, String>,
    /// Per service, the region the latest succeeded run promoted the database in, and the run.
    pub promoted: BTreeMap<String, (String, String)>,
}

/// One row per service: where it is active, its standby's replication lag, and the data an
/// unplanned failover would lose if the active region were lost now (the same rule the run
/// records: [`loss_from_sample`] over the standby's latest sample).
pub fn services(status: &pb::ClusterStatus, board: &pb::HealthBoard, facts: &ServiceFacts, now_ms: i64) -> Vec<Value> {
    let (hints, active_runs) = (&facts.hints, &facts.active_runs);
    let mut names: BTreeSet<String> = hints.keys().cloned().collect();
    names.extend(status.services.iter().map(|s| s.service.clone()));
    names.extend(status.regions.iter().flat_map(|r| r.roles.iter().map(|x| x.service.clone())));
    names
        .into_iter()
        .map(|name| {
            let state = status.services.iter().find(|s| s.service == name);
            let with_role = |role: pb::RegionRole| -> Vec<String> {
                status
                    .regions
                    .iter()
                    .filter(|r| r.roles.iter().any(|x| x.service == name && x.role == role as i32))
                    .map(|r| r.name.clone())
                    .collect()
            };
            let hint = hints.get(&name).cloned().unwrap_or_default();
            // A planned cutover moves the primary without a failover record: the latest run
            // that promoted a database says where it is now.
            let promoted = facts.promoted.get(&name);
            let (active, from) = match (promoted, state.filter(|s| !s.primary_region.is_empty())) {
                (Some((region, run)), _) => (Some(region.clone()), format!("promoted by run {run}")),
                (None, Some(s)) => (Some(s.primary_region.clone()), "last failover".into()),
                (None, None) => match with_role(pb::RegionRole::Primary) {
                    p if p.len() == 1 => (p.first().cloned(), "region roles".into()),
                    _ if hint.source.is_some() => (hint.source.clone(), "playbook default".into()),
                    _ => (None, "no primary region recorded".into()),
                },
            };
            let standby = with_role(pb::RegionRole::Standby)
                .into_iter()
                .find(|r| Some(r) != active.as_ref())
                .or_else(|| {
                    // After a failover the old target is active: the standby is the other end.
                    let ends = [hint.target.clone(), hint.source.clone()];
                    ends.into_iter().flatten().find(|r| Some(r) != active.as_ref())
                });
            let sample = standby.as_deref().and_then(|r| lag_sample(board, r));
            let lag = sample.as_ref().map(|s| {
                json!({
                    "seconds": s.values.get("lag_seconds"), "receive_bytes": s.values.get("receive_lag_bytes"),
                    "replay_bytes": s.values.get("lag_bytes"), "synchronous": s.values.get("synchronous").map(|v| *v >= 1.0),
                    "check": s.check, "agent": s.agent,
                })
            });
            let loss = if board.live {
                let l = loss_from_sample(sample, now_ms);
                json!({ "known": l.known, "bytes": l.bytes, "acknowledged_bytes": l.acknowledged_bytes(),
                        "seconds": l.seconds, "synchronous": l.synchronous, "text": l.text(), "evidence": l.evidence })
            } else {
                json!({ "known": false, "text": "unknown: no live values (no leader reachable)" })
            };
            json!({
                "service": name, "active_region": active, "active_from": from, "standby_region": standby,
                "lag": lag, "loss_if_failover_now": loss,
                "fences": state.map(|s| s.fences.clone()).unwrap_or_default(),
                "ack_requested": state.map(|s| s.ack_requested.clone()).unwrap_or_default(),
                "active_run": active_runs.get(&name),
            })
        })
        .collect()
}

/// The freshest replication sample from a live check measuring `region`'s standby against its
/// primary (the agent reports `synchronous` only when the primary answered the same probe).
fn lag_sample(board: &pb::HealthBoard, region: &str) -> Option<LagSample> {
    board
        .regions
        .iter()
        .filter(|r| r.region == region)
        .flat_map(|r| r.checks.iter())
        .filter(|c| !c.stale && c.values.contains_key("receive_lag_bytes") && c.values.contains_key("synchronous"))
        .max_by_key(|c| c.last_report_unix_ms)
        .map(|c| LagSample {
            at_ms: c.last_report_unix_ms,
            agent: c.vantage_agent.clone(),
            check: c.check.clone(),
            region: c.region.clone(),
            values: c.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby_check(bytes: f64, sync: f64, at: i64) -> pb::CheckHealth {
        pb::CheckHealth {
            check: "db".into(),
            region: "eu-central".into(),
            vantage_agent: "agent-c".into(),
            values: [
                ("receive_lag_bytes".to_string(), bytes),
                ("synchronous".to_string(), sync),
                ("lag_seconds".to_string(), 0.5),
            ]
            .into_iter()
            .collect(),
            last_report_unix_ms: at,
            ..Default::default()
        }
    }

    fn setup(live: bool, checks: Vec<pb::CheckHealth>) -> (pb::ClusterStatus, pb::HealthBoard, ServiceFacts) {
        let status = pb::ClusterStatus {
            regions: vec![
                pb::Region { name: "eu-west".into(), ..Default::default() },
                pb::Region { name: "eu-central".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let board = pb::HealthBoard {
            live,
            regions: vec![pb::RegionHealth {
                region: "eu-central".into(),
                state: "up".into(),
                checks,
                ..Default::default()
            }],
            ..Default::default()
        };
        let hints = BTreeMap::from([(
            "wallet".to_string(),
            PlaybookHint { source: Some("eu-west".into()), target: Some("eu-central".into()) },
        )]);
        (status, board, ServiceFacts { hints, ..Default::default() })
    }

    #[test]
    fn loss_now_comes_from_the_standbys_freshest_sample() {
        let (status, board, hints) = setup(true, vec![standby_check(100.0, 0.0, 900), standby_check(4096.0, 0.0, 990)]);
        let rows = services(&status, &board, &hints, 1000);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r["active_region"], "eu-west");
        assert_eq!(r["active_from"], "playbook default");
        assert_eq!(r["standby_region"], "eu-central");
        assert_eq!(r["loss_if_failover_now"]["bytes"], 4096);
        assert_eq!(r["loss_if_failover_now"]["acknowledged_bytes"], 4096);
    }

    #[test]
    fn a_synchronous_standby_loses_no_acknowledged_write_and_no_sample_is_unknown() {
        let (status, board, hints) = setup(true, vec![standby_check(512.0, 1.0, 990)]);
        let rows = services(&status, &board, &hints, 1000);
        assert_eq!(rows[0]["loss_if_failover_now"]["acknowledged_bytes"], 0);
        let (status, board, hints) = setup(true, vec![]);
        let rows = services(&status, &board, &hints, 1000);
        assert_eq!(rows[0]["loss_if_failover_now"]["known"], false);
        let (status, board, hints) = setup(false, vec![standby_check(0.0, 1.0, 990)]);
        let rows = services(&status, &board, &hints, 1000);
        assert_eq!(rows[0]["loss_if_failover_now"]["known"], false);
    }

    #[test]
    fn a_recorded_failover_moves_the_active_region_and_the_standby() {
        let (mut status, board, hints) = setup(true, vec![]);
        status.services.push(pb::ServiceStatus {
            service: "wallet".into(),
            primary_region: "eu-central".into(),
            ..Default::default()
        });
        let rows = services(&status, &board, &hints, 1000);
        assert_eq!(rows[0]["active_region"], "eu-central");
        assert_eq!(rows[0]["standby_region"], "eu-west");
    }

    #[test]
    fn a_planned_cutover_moves_the_active_region_by_its_promotion() {
        let (status, board, mut facts) = setup(true, vec![]);
        facts.promoted.insert("wallet".into(), ("eu-central".into(), "wallet-1".into()));
        let rows = services(&status, &board, &facts, 1000);
        assert_eq!(rows[0]["active_region"], "eu-central");
        assert_eq!(rows[0]["active_from"], "promoted by run wallet-1");
        assert_eq!(rows[0]["standby_region"], "eu-west");
    }
}
