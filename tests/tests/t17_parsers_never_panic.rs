//! Bounded fuzzing of every parser of outside input: playbooks, drill files, coordinator and
//! agent configs, and the API's protobuf messages. Seeds are the shipped examples; each input
//! is a few random mutations of one (bytes flipped, ranges cut or doubled, YAML punctuation
//! sprinkled in, truncation). A parser may refuse, never panic, and a refused playbook or
//! drill names the file in its error. Runs for a fixed time per parser (DRCUT_FUZZ_SECS,
//! default 2) with a printed seed, so a failure replays with DRCUT_FUZZ_SEED.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use prost::Message;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const PUNCT: &[u8] = b":{}[]-,\"'#&*!|>%@`\n \t0123456789${}";

fn mutate(rng: &mut SmallRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..5u32) {
        if v.is_empty() {
            v.push(b'x');
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..5u32) {
            0 => v[i] ^= 1 << rng.random_range(0..7u32),
            1 => {
                let j = (i + rng.random_range(0..64usize)).min(v.len());
                v.drain(i..j);
            }
            2 => {
                let j = (i + rng.random_range(0..64usize)).min(v.len());
                let chunk = v[i..j].to_vec();
                v.splice(i..i, chunk);
            }
            3 => v.insert(i, PUNCT[rng.random_range(0..PUNCT.len())]),
            _ => v.truncate(i),
        }
    }
    v
}

/// Feeds `check` mutated inputs for the time budget; a panic fails the test with the seed and
/// the input saved to a file.
fn fuzz(name: &str, seeds: &[&[u8]], check: impl Fn(&[u8])) {
    let secs: u64 = std::env::var("DRCUT_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let seed: u64 = std::env::var("DRCUT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let base = seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, base);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("drcut-fuzz-{name}-{seed}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!("{name}: panicked on input {} (seed {seed}, input {n})", path.display());
        }
        n += 1;
    }
    println!("{name}: {n} inputs in {secs} s, no panic (seed {seed})");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PLAYBOOK: &str = include_str!("../../playbooks/wallet-region-cutover.yaml");
const FAILBACK: &str = include_str!("../../playbooks/wallet-region-failback.yaml");
const DRILL_Q: &str = include_str!("../../gameday/quarterly-region-loss.yaml");
const DRILL_PSP: &str = include_str!("../../gameday/psp-outage.yaml");
const DRILL_GAME: &str = include_str!("../../gameday/game-provider-latency.yaml");

#[test]
fn playbook_parser() {
    fuzz("playbook", &[PLAYBOOK.as_bytes(), FAILBACK.as_bytes()], |b| {
        if let Err(e) = drcut_coordinator::playbook::Playbook::parse("fuzz.yaml", &text(b)) {
            assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
        }
    });
}

#[test]
fn drill_parser() {
    fuzz("drill", &[DRILL_Q.as_bytes(), DRILL_PSP.as_bytes(), DRILL_GAME.as_bytes()], |b| {
        if let Err(e) = drcut_coordinator::drill::Drill::parse("fuzz.yaml", &text(b)) {
            assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
        }
    });
}

#[test]
fn coordinator_config_parser() {
    let seed = "cluster_id: drcut-prod\nnode_id: 1\nlisten: 127.0.0.1:7001\nadvertise: 127.0.0.1:7001\ndata_dir: /tmp/x\nhttp_listen: 127.0.0.1:8001\nlog_format: json\npeers:\n  - { id: 2, addr: 127.0.0.2:7001 }\n  - { id: 3, addr: 127.0.0.3:7001 }\nhealth: { down_after: 3, up_after: 3, tick_ms: 100 }\n";
    fuzz("coordinator-config", &[seed.as_bytes()], |b| {
        let _ = drcut_coordinator::config::Config::parse("fuzz.yaml", &text(b));
    });
}

#[test]
fn principals_file_parser() {
    let seed = format!(
        "principals:\n  - name: olga\n    roles: [operator, approver]\n    regions: [eu-west]\n    tokens:\n      - {{ sha256: {}, expires: 2027-01-01T00:00:00Z }}\n  - name: vera\n    roles: [viewer]\n    tokens: [{{ sha256: {} }}]\n",
        drcut_coordinator::auth::token_hash("a"),
        drcut_coordinator::auth::token_hash("b")
    );
    fuzz("principals-file", &[seed.as_bytes()], |b| {
        if let Ok(p) = drcut_coordinator::auth::Principals::parse("fuzz.yaml", &text(b)) {
            // Whatever parses must still refuse a token nobody was given.
            assert!(p.authenticate("not-a-token", std::time::SystemTime::now()).is_err());
        }
    });
}

#[test]
fn agent_config_parser() {
    let seed = "agent_id: a1\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nmetrics_listen: 127.0.0.1:9100\nresources:\n  postgres:\n    wallet-db: { dsn: \"host=127.0.0.1 user=postgres\", data_dir: /var/lib/pg, self_fence: { after: 3s } }\n  http:\n    api: { base_url: \"http://127.0.0.1:8080\" }\nfaults:\n  proxies:\n    psp: { listen: 127.0.0.1:18443, upstream: 10.0.0.1:443 }\n  processes:\n    app: { pidfile: /run/app.pid, start: [/bin/true] }\nchecks:\n  - { name: api, type: http, resource: api, path: /health, slo: [\"p95_ms <= 300\"] }\n  - { name: db, type: postgres, resource: wallet-db }\n";
    fuzz("agent-config", &[seed.as_bytes()], |b| {
        let _ = drcut_agent::config::parse("fuzz.yaml", &text(b));
    });
}

#[test]
fn api_messages() {
    use drcut_proto::v1 as pb;
    let start = pb::StartCutoverRequest {
        playbook: "wallet".into(),
        reason: "eu-west lost".into(),
        params: [("target".to_string(), "eu-central".to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec();
    let drill = pb::ApplyDrillRequest { file_name: "d.yaml".into(), text: DRILL_PSP.into(), ..Default::default() }
        .encode_to_vec();
    let hello = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            agent_id: "a".into(),
            region: "eu-west".into(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    fuzz("api-messages", &[&start, &drill, &hello], |b| {
        let _ = pb::StartCutoverRequest::decode(b);
        let _ = pb::ApplyDrillRequest::decode(b);
        let _ = pb::AgentMessage::decode(b);
        let _ = pb::RunActionRequest::decode(b);
    });
}
