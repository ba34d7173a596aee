//! The conformance suite against the in-memory backends of `chat-core`.

use chat_core::memory::MemoryStore;
use chat_store::conformance;

#[tokio::test]
async fn memory_backends_pass_the_conformance_suite() {
    let store = MemoryStore::default();
    // Twice on the same instance: the suite must be repeatable.
    conformance::run_all(&store, &*store.directory()).await;
    conformance::run_all(&store, &*store.directory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backends_pass_on_a_multi_threaded_runtime() {
    let store = MemoryStore::default();
    conformance::concurrency_suite(&store, &*store.directory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_attachments_and_blobs_pass_their_suites() {
    use chat_core::memory::{MemoryAttachments, MemoryBlobStore};
    conformance::attachment_store_suite(&MemoryAttachments::default()).await;
    conformance::blob_store_suite(&MemoryBlobStore::default()).await;
}

#[tokio::test]
async fn memory_search_passes_its_suite() {
    let store = MemoryStore::default();
    conformance::search_suite(&store, &store, &*store.directory()).await;
    conformance::search_suite(&store, &store, &*store.directory()).await;
}
