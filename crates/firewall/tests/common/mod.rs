//! Shared by the firewall's kernel tests: a private network namespace per test.

/// Runs `f` on a thread that unshared its own network namespace, so nothing it programs
/// touches the host's firewall; the namespace goes with the thread.
pub fn in_private_netns<T: Send, F: FnOnce() -> T + Send>(f: F) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}
