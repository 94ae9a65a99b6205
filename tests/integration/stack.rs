//! The local-server launcher's guarantees that do not need a second stack.

use tally_stack::{DataDirLock, StackError};

#[test]
fn a_data_directory_is_owned_by_one_process_at_a_time() {
    let dir = std::env::temp_dir().join(format!("tally-lock-{}", uuid::Uuid::new_v4()));
    let first = DataDirLock::acquire(&dir).unwrap();
    let err = DataDirLock::acquire(&dir)
        .err()
        .expect("second lock must fail");
    match &err {
        StackError::Locked { pid, .. } => assert_eq!(pid, &std::process::id().to_string()),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("already running"));
    drop(first);
    DataDirLock::acquire(&dir).expect("free again once released");
    let _ = std::fs::remove_dir_all(dir);
}
