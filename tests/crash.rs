//! placeholder

use crate::harness::Relay;

#[test]
fn placeholder_compiles() {
    let _ = Relay::new();
}
