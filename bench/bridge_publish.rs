//! The baseline of `bench/bridge.py`: a bare async-nats JetStream publish
//! loop (the same client, features and server as `relay bridge`), with the
//! same window of acks in flight as the bridge keeps (1,024: the copies it
//! claims per round), and messages of
//! the size given. Prints `{"messages": N, "seconds": S}`.
//!
//! Usage: cargo run --release --example bridge_publish -- URL N BYTES

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

const WINDOW: usize = 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(400);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = async_nats::connect(url.as_str()).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        let body = vec![b'x'; size];
        let start = Instant::now();
        let mut sent = 0;
        while sent < n {
            let mut acks = Vec::with_capacity(WINDOW);
            for i in sent..(sent + WINDOW).min(n) {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("bench-{i}").as_str());
                acks.push(
                    js.publish_with_headers("bench.x", h, body.clone().into())
                        .await?,
                );
            }
            sent += acks.len();
            for a in acks {
                a.await?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{{\"messages\": {n}, \"seconds\": {secs}}}");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
