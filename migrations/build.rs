//! Rebuild when a migration file changes: `sqlx::migrate!` and
//! `include_str!` embed them at compile time.
fn main() {
    println!("cargo:rerun-if-changed=postgres");
    println!("cargo:rerun-if-changed=clickhouse");
}
