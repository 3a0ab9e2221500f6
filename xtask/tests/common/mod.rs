//! Helpers shared by xtask's integration tests.

/// A repository whose cargo workspace has no pipelines (an empty `models.toml`, nothing to
/// build): commands that need no pipeline run at once.
pub(crate) fn empty_repo() -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"empty\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/lib.rs"), "").unwrap();
    std::fs::write(root.join("models.toml"), "").unwrap();
    temp
}
