//! The fault suite (issue 11): one module per fault class. Each test injects
//! its fault for real (a small tmpfs for a full disk, a held SQLite
//! transaction or `flock` for a busy lock, FIFOs, symlinks and oversize
//! files for foreign input, `RELAY_FAKE_NOW_MS` for clock steps) and checks
//! that nothing is lost, nothing is stranded and nothing outside the home is
//! touched.

mod clock; // 6: wall clock stepped backwards: buckets refill, cooldowns end on time
mod disk; // 1: disk full and inode exhaustion (small tmpfs; needs root)
mod foreign; // 2: FIFOs, directories, symlinks, devices, oversize files, hostile replyTo
mod leases; // 5: leases, redelivery, max_deliveries, late acks; stranded claims
mod locks; // 4: bounded lock waits naming the holder
mod maintenance; // 8, 10: endpoints remove / dlq requeue / doctor --repair / gc under traffic
mod own_files; // 3: relay's own files: symlinks, hostile journal, state slots, modes
mod reasons; // 11: a dead letter's reason is durable in failed/ before the letter; a crash between
mod scale; // 7: fan-out past the fd limit, batch payload cap, runaway refused senders
mod serve; // 9: relay serve under hostile clients
mod stall; // 4: a stalled sender to one endpoint does not hold up the others
