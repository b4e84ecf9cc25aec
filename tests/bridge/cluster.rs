//! A three-node NATS cluster (replicas 3) on loopback: one server killed
//! mid-stream, nothing lost, nothing twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::harness::{Bridge, Nats, drain, free_port, ids, wait_remote};
use crate::harness::Relay;

/// Replicas 3; neither limits nor capacity get in the way.
const CONFIG: &str = r#"{"bridge":{"replicas":3},"reliability":{"rateLimit":{"enabled":false},"backpressure":{"maxMailboxSize":100000}}}"#;

#[test]
fn a_three_node_cluster_losing_one_server_mid_stream_loses_nothing() {
    let ports = [free_port(), free_port(), free_port()];
    let Some(n0) = Nats::clustered(0, ports) else {
        return;
    };
    let mut nodes = vec![n0];
    for i in 1..3 {
        nodes.extend(Nats::clustered(i, ports));
    }
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let url = urls.join(",");
    let (a, b) = (Relay::new(), Relay::new());
    a.write_file("config.json", CONFIG);
    b.write_file("config.json", CONFIG);
    b.add(&["agent.b"]);
    // A on the first server, B on the second: the one killed is A's.
    let _ba = Bridge::start(&a, &url, "hosta");
    let _bb = Bridge::start(&b, &format!("{},{}", urls[1], urls[2]), "hostb");
    wait_remote(&a, "agent.b", "hostb");

    let mut sent: Vec<String> = Vec::new();
    let mut got: Vec<String> = Vec::new();
    for k in 0..6 {
        let input: String = (0..50)
            .map(|i| {
                format!(
                    "{{\"subject\":\"agent.b\",\"payload\":{{\"i\":{}}}}}\n",
                    k * 50 + i
                )
            })
            .collect();
        let out = a
            .cmd(["send", "--batch", "--from", "agent.a"])
            .stdin(input)
            .success();
        sent.extend(out.stdout.lines().map(str::to_string));
        std::thread::sleep(Duration::from_millis(200));
        if k == 2 {
            nodes[0].kill();
        }
        got.extend(drain(&b, "agent.b"));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} on B; A's outbox {} new {} cur",
            got.len(),
            sent.len(),
            ids(&a, "agent.b", "new").len(),
            ids(&a, "agent.b", "cur").len()
        );
        std::thread::sleep(Duration::from_millis(100));
        got.extend(drain(&b, "agent.b"));
    }
    std::thread::sleep(Duration::from_secs(1));
    got.extend(drain(&b, "agent.b"));
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a message arrived twice");
    assert_eq!(unique, sent.iter().collect::<BTreeSet<_>>());
}
