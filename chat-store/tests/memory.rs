//! The conformance suite against the in-memory backends of `chat-core`.

use chat_core::memory::{MemoryDirectory, MemoryHistory, MemoryInbox};
use chat_store::conformance;

#[tokio::test]
async fn memory_backends_pass_the_conformance_suite() {
    let history = MemoryHistory::default();
    let inbox = MemoryInbox::default();
    let directory = MemoryDirectory::default();
    // Twice on the same instances: the suite must be repeatable.
    conformance::run_all(&history, &inbox, &directory).await;
    conformance::run_all(&history, &inbox, &directory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backends_pass_on_a_multi_threaded_runtime() {
    let history = MemoryHistory::default();
    let inbox = MemoryInbox::default();
    let directory = MemoryDirectory::default();
    conformance::concurrency_suite(&history, &inbox, &directory).await;
}
