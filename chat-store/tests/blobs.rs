//! The blob store suite on the file-system store (the S3 store runs it in
//! tests/s3.rs, against a moto server).

use chat_store::blobs::FsBlobStore;
use chat_store::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_system_blob_store_passes_the_suite_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path().join("blobs")).unwrap();
    conformance::blob_store_suite(&store).await;
    conformance::blob_store_suite(&store).await;
    // Reopened: blobs of earlier runs stay readable, no temporary file is left.
    let store = FsBlobStore::open(dir.path().join("blobs")).unwrap();
    conformance::blob_store_suite(&store).await;
    let temps = std::fs::read_dir(dir.path().join("blobs/tmp"))
        .unwrap()
        .count();
    assert_eq!(temps, 0, "no partial upload is left behind");
}
