//! Re-embeds the migrations (`sqlx::migrate!`) whenever a file under
//! `migrations/` changes, not only when a Rust file does.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
