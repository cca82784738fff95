//! The storage suite: runs against a real RocksDB in a temporary directory.

use super::*;

fn put_log(storage: &Storage, entity: &str, versions: impl IntoIterator<Item = u64>) -> WriteSet {
    let _ = storage;
    let mut writes = WriteSet::default();
    for v in versions {
        writes
            .put(
                Cf::ConvLog,
                keys::versioned(entity, v),
                &format!("{entity}#{v}"),
            )
            .unwrap();
    }
    writes
}

fn versions(range: Vec<(u64, String)>) -> Vec<u64> {
    range.into_iter().map(|(v, _)| v).collect()
}

#[tokio::test]
async fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(dir.path()).unwrap();
        let writes = put_log(&storage, "c", 1..=3);
        storage.commit_local(writes).await.unwrap();
        storage.close().await.unwrap();
    }
    let storage = Storage::open(dir.path()).unwrap();
    let all: Vec<(u64, String)> = storage
        .log_range(Cf::ConvLog, "c", 0, u64::MAX, 10, false)
        .unwrap();
    assert_eq!(
        all,
        vec![(1, "c#1".into()), (2, "c#2".into()), (3, "c#3".into())]
    );
}

#[tokio::test]
async fn log_ranges_page_both_ways_and_stay_inside_their_entity() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    for entity in ["b", "bb", "c"] {
        let writes = put_log(&storage, entity, 1..=300);
        storage.commit_local(writes).await.unwrap();
    }
    let range = |after, before, limit, from_end| {
        versions(
            storage
                .log_range(Cf::ConvLog, "bb", after, before, limit, from_end)
                .unwrap(),
        )
    };
    assert_eq!(range(0, u64::MAX, 3, false), [1, 2, 3]);
    assert_eq!(range(255, u64::MAX, 3, false), [256, 257, 258]);
    assert_eq!(range(0, u64::MAX, 3, true), [298, 299, 300]);
    assert_eq!(range(0, 257, 3, true), [254, 255, 256]);
    assert_eq!(range(0, 3, 10, true), [1, 2]);
    assert_eq!(range(298, u64::MAX, 10, false), [299, 300]);
    assert_eq!(range(300, u64::MAX, 10, false), Vec::<u64>::new());
    assert_eq!(range(5, 6, 10, false), Vec::<u64>::new());
    let all: Vec<(u64, String)> = storage
        .log_range(Cf::ConvLog, "bb", 0, u64::MAX, 1000, false)
        .unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.iter().all(|(v, s)| s == &format!("bb#{v}")));
}

#[tokio::test]
async fn last_version_is_the_end_of_that_entity_log_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(dir.path()).unwrap();
        for (entity, last) in [("b", 5), ("bb", 300), ("a", 1)] {
            let writes = put_log(&storage, entity, 1..=last);
            storage.commit_local(writes).await.unwrap();
        }
        assert_eq!(storage.last_version(Cf::ConvLog, "b").unwrap(), Some(5));
        storage.close().await.unwrap();
    }
    // After reopening, the logs are in table files rather than the memtable.
    let storage = Storage::open(dir.path()).unwrap();
    let last = |entity| storage.last_version(Cf::ConvLog, entity).unwrap();
    assert_eq!(last("a"), Some(1));
    assert_eq!(last("b"), Some(5));
    assert_eq!(last("bb"), Some(300));
    assert_eq!(last("ba"), None);
    assert_eq!(last("c"), None);
}

#[tokio::test]
async fn names_list_one_entity() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let mut writes = WriteSet::default();
    for (user, conv) in [("al", "g:1"), ("al", "g:2"), ("alice", "g:3"), ("a", "g:4")] {
        writes
            .put(Cf::UserConvs, keys::named(user, conv), &())
            .unwrap();
    }
    storage.commit_local(writes).await.unwrap();
    assert_eq!(storage.names(Cf::UserConvs, "al").unwrap(), ["g:1", "g:2"]);
    let mut writes = WriteSet::default();
    writes.delete(Cf::UserConvs, keys::named("al", "g:1"));
    storage.commit_local(writes).await.unwrap();
    assert_eq!(storage.names(Cf::UserConvs, "al").unwrap(), ["g:2"]);
}

#[tokio::test]
async fn concurrent_writers_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| tokio::spawn(commit_one(&storage, format!("e{i}"))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = storage.commit_stats();
    assert_eq!(stats.write_sets, 200);
    assert!(
        stats.batches < 200,
        "200 concurrent commits took {} syncs",
        stats.batches
    );
}

#[tokio::test]
async fn syncs_start_a_commit_interval_apart_and_share_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(300);
    let storage = paced(dir.path(), interval);
    let commit = |entity: String| commit_one(&storage, entity);
    commit("first".into()).await.unwrap();
    let first_done = std::time::Instant::now();
    // Right after a sync: this one waits out the interval...
    commit("second".into()).await.unwrap();
    let waited = first_done.elapsed();
    assert!(
        waited >= interval / 2,
        "a write right after a sync was synced after {waited:?}, inside the {interval:?} interval"
    );
    // ...and so do these, sharing one sync.
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(commit(format!("e{i}"))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = storage.commit_stats();
    assert_eq!(stats.write_sets, 22);
    assert_eq!(
        stats.batches, 3,
        "20 writes inside one interval took more than one sync"
    );
}

#[tokio::test]
async fn a_write_after_a_quiet_interval_is_synced_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(1);
    let storage = paced(dir.path(), interval);
    commit_one(&storage, "first".into()).await.unwrap();
    // The quiet spell itself: longer than the interval.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    commit_one(&storage, "second".into()).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < interval,
        "a write after a quiet {interval:?} waited {took:?}"
    );
}

#[tokio::test]
async fn a_close_during_the_interval_commits_what_waits() {
    let dir = tempfile::tempdir().unwrap();
    let storage = paced(dir.path(), Duration::from_millis(300));
    commit_one(&storage, "first".into()).await.unwrap();
    // Polled in order: the write is queued (and waits out the interval)
    // before the close is.
    let (second, closed) = tokio::join!(commit_one(&storage, "second".into()), storage.close());
    second.unwrap();
    closed.unwrap();
    drop(storage);
    let storage = Storage::open(dir.path()).unwrap();
    assert_eq!(
        storage.last_version(Cf::ConvLog, "second").unwrap(),
        Some(1)
    );
}

fn paced(dir: &std::path::Path, interval: Duration) -> Storage {
    let options = StorageOptions {
        commit_interval: interval,
    };
    Storage::open_with(dir, options).unwrap()
}

fn commit_one(
    storage: &Storage,
    entity: String,
) -> impl std::future::Future<Output = Result<(), StorageError>> {
    let storage = storage.clone();
    async move {
        let writes = put_log(&storage, &entity, [1]);
        storage.commit_local(writes).await
    }
}

#[test]
fn an_unknown_column_family_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let _db = DB::open_cf(&options, dir.path(), ["mystery"]).unwrap();
    }
    match Storage::open(dir.path()) {
        Err(StorageError::UnknownColumnFamily(name)) => assert_eq!(name, "mystery"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a database with an unknown column family"),
    }
}
