//! Partitions and restarts: nothing lost, nothing twice.

use super::harness::{Pair, ids, wait_for};

#[test]
fn sends_while_nats_is_down_exit_0_and_arrive_after_it_is_back() {
    let Some(mut p) = Pair::start(&[], &["agent.b"]) else {
        return;
    };
    p.nats.kill();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(p.a.send("agent.b", &format!("{{\"i\":{i}}}")));
    }
    assert_eq!(
        ids(&p.a, "agent.b", "new").len() + ids(&p.a, "agent.b", "cur").len(),
        5
    );
    p.nats.up();
    sent.sort();
    wait_for("the queued copies on B", || {
        (ids(&p.b, "agent.b", "new") == sent).then_some(())
    });
    let _ = &mut p.bb;
}
