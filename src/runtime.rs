//! The library's shared threads: the one actix `System` that hosts every actor (agents,
//! the tracing actor, MCP servers), on a thread of its own, and the tokio runtime used for
//! work started outside any runtime. Started on first use, so a plain `#[tokio::main]`
//! program needs nothing set up.

use std::sync::OnceLock;

use actix::ArbiterHandle;
use tokio::runtime::Handle;

/// The arbiter of the library's actix `System`, started on its own thread on first use.
pub(crate) fn actor_arbiter() -> &'static ArbiterHandle {
    static HOST: OnceLock<ArbiterHandle> = OnceLock::new();
    HOST.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("callboard-actors".into())
            .spawn(move || {
                let sys = actix::System::new();
                sys.block_on(async {
                    let _ = tx.send(actix::Arbiter::current());
                });
                let _ = sys.run();
            });
        match spawned.ok().and_then(|_| rx.recv().ok()) {
            Some(h) => h,
            None => panic!("callboard: could not start the actor system thread"),
        }
    })
}

/// The library's own tokio runtime, for work started outside any runtime.
pub(crate) fn fallback_runtime() -> Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("callboard-runs")
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("callboard: could not start a tokio runtime: {e}"),
        }
    })
    .handle()
    .clone()
}
