//! Hugging Face datasets: shards from a local checkout, the HF cache, or a download from the Hub.
//!
//! * Local directory ([`HfDataset::shards_in`]): a dataset repository checkout or snapshot.
//! * Cache ([`HfDataset::cached`]): [`HfCache::from_env`] is `$HF_HUB_CACHE`, else
//!   `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
//!   `datasets--{org}--{name}/snapshots/{commit}/...` with `refs/{revision}` files holding the
//!   commit a branch or tag (`main`, `refs/convert/parquet`) points to. A 40-hex revision names the
//!   snapshot directly.
//! * Download ([`HfDataset::download`], async): resolves the revision to a commit with
//!   `GET {endpoint}/api/datasets/{repo}/revision/{revision}`, lists files with
//!   `GET {endpoint}/api/datasets/{repo}/tree/{commit}[/{config}]?recursive=true` (following
//!   `Link: rel="next"` pages), fetches the split's shards from
//!   `GET {endpoint}/datasets/{repo}/resolve/{commit}/{path}` and writes them atomically (temp file +
//!   rename) into the cache layout above, plus `refs/{revision}`. Files already present are not
//!   fetched again. [`HfHub::from_env`] reads `HF_ENDPOINT` (default `https://huggingface.co`) and
//!   the token ([`hf_token`]: `HF_TOKEN`, else the `HF_TOKEN_PATH` file, else the `huggingface-cli
//!   login` file `$HF_HOME/token`), sent as `Authorization: Bearer …` and never included in errors
//!   or `Debug` output.
//!
//! Which files belong to a split: Parquet/JSONL/CSV files (hidden ones skipped) under the config
//! directory when a config is set and such a directory exists, whose path has a directory named
//! after the split (`default/train/0000.parquet`, the Hub's Parquet conversion) or whose file name
//! has the split as a `-`/`_`/`.`-separated token (`data/train-00000-of-00014.parquet`,
//! `wildchat-train.jsonl`). Sorted by path.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Loader, SourceError};

const SHARD_EXTS: &[&str] = &["parquet", "jsonl", "ndjson", "csv"];

/// Root of the Hugging Face hub cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfCache {
    root: PathBuf,
}

impl HfCache {
    /// A cache rooted at `root` (the directory holding `datasets--…` folders).
    pub fn new(root: impl AsRef<Path>) -> Self {
        HfCache {
            root: root.as_ref().to_path_buf(),
        }
    }

    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$HOME/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
            .unwrap_or_else(|| {
                var("HOME")
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".cache/huggingface/hub")
            });
        HfCache { root }
    }

    /// The hub cache directory (`$HF_HUB_CACHE`, `$HF_HOME/hub`, …).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `datasets--{org}--{name}`.
    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root
            .join(format!("datasets--{}", repo_id.replace('/', "--")))
    }
}

/// The Hugging Face token, looked up as `huggingface_hub` does, with `var` reading the
/// environment: `HF_TOKEN` if set and non-empty; else the file named by `HF_TOKEN_PATH`; else the
/// file `huggingface-cli login` writes, `$HF_HOME/token` (`HF_HOME` defaulting to
/// `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`). Surrounding whitespace is
/// trimmed; an unreadable or empty file means no token. The value is never logged.
pub fn hf_token(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<String> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(token) = set("HF_TOKEN") {
        let token = token.to_string_lossy().trim().to_owned();
        if !token.is_empty() {
            return Some(token);
        }
    }
    let file = set("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
        let home = set("HF_HOME").map(PathBuf::from).or_else(|| {
            set("XDG_CACHE_HOME")
                .map(|cache| PathBuf::from(cache).join("huggingface"))
                .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        })?;
        Some(home.join("token"))
    })?;
    let token = std::fs::read_to_string(file).ok()?;
    Some(token.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The Hub's base URL, with `var` reading the environment: `HF_ENDPOINT` if set and non-empty,
/// else `https://huggingface.co`; without a trailing `/`.
pub fn hf_endpoint(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> String {
    var("HF_ENDPOINT")
        .map(|v| v.to_string_lossy().trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_owned()
}

/// A Hub endpoint and optional token.
#[derive(Clone)]
pub struct HfHub {
    endpoint: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl fmt::Debug for HfHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HfHub")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HfHub {
    /// An endpoint such as `https://huggingface.co`, without a token.
    pub fn new(endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into().trim_end_matches('/').to_owned();
        HfHub {
            endpoint,
            token: None,
            client: reqwest::Client::new(),
        }
    }

    /// `HF_ENDPOINT` (default `https://huggingface.co`) and the token found the way the Hugging
    /// Face tools find it (see [`hf_token`]).
    pub fn from_env() -> Self {
        let token = hf_token(|name| std::env::var_os(name));
        HfHub::new(hf_endpoint(|name| std::env::var_os(name))).with_token(token)
    }

    /// Sets (or clears) the bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The Hub's base URL (default `https://huggingface.co`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn scrub(&self, text: String) -> String {
        match &self.token {
            Some(t) => text.replace(t.as_str(), "<redacted>"),
            None => text,
        }
    }

    fn http_err(&self, url: &str, message: String) -> SourceError {
        SourceError::Http {
            url: self.scrub(url.to_owned()),
            message: self.scrub(message),
        }
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, SourceError> {
        let mut req = self.client.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.http_err(url, e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            let hint = match status.as_u16() {
                401 | 403 => {
                    " (gated or private dataset? set HF_TOKEN or log in with `huggingface-cli login`)"
                }
                404 => " (check repo id, revision and path)",
                _ => "",
            };
            return Err(self.http_err(url, format!("HTTP {status}{hint}: {}", body.trim())));
        }
        Ok(resp)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
    ) -> Result<(T, Option<String>), SourceError> {
        let resp = self.get(url).await?;
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.http_err(url, e.without_url().to_string()))?;
        let value = serde_json::from_slice(&body)
            .map_err(|e| self.http_err(url, format!("unexpected response: {e}")))?;
        Ok((value, next))
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A dataset on the Hub: repository, revision, config and split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfDataset {
    /// The dataset's repository, `org/name`.
    pub repo_id: String,
    /// Branch, tag, `refs/convert/parquet` or a 40-hex commit (default `main`).
    pub revision: String,
    /// Config (subset) directory, if the dataset has several.
    pub config: Option<String>,
    /// Split (default `train`).
    pub split: String,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: Option<u64>,
}

impl HfDataset {
    /// `org/name` at `main`, split `train`, no config.
    pub fn new(repo_id: impl Into<String>) -> Self {
        HfDataset {
            repo_id: repo_id.into(),
            revision: "main".into(),
            config: None,
            split: "train".into(),
        }
    }
    /// Pin a branch, tag or commit instead of `main`.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }
    /// Read this config (subset) directory.
    pub fn config(mut self, config: impl Into<String>) -> Self {
        self.config = Some(config.into());
        self
    }
    /// Read this split instead of `train`.
    pub fn split(mut self, split: impl Into<String>) -> Self {
        self.split = split.into();
        self
    }

    /// The dataset's name (after the `/`), used as the default source name.
    pub fn name(&self) -> &str {
        self.repo_id.rsplit('/').next().unwrap_or(&self.repo_id)
    }

    fn err(&self, message: impl Into<String>) -> SourceError {
        SourceError::Hf {
            repo_id: self.repo_id.clone(),
            message: message.into(),
        }
    }

    /// Whether `rel` (a `/`-separated path inside the repo) is a shard of this config and split.
    fn selects(&self, rel: &str, config_dir: bool) -> bool {
        let rel = match (&self.config, config_dir) {
            (Some(c), true) => match rel
                .strip_prefix(c.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                Some(r) => r,
                None => return false,
            },
            _ => rel,
        };
        let mut parts: Vec<&str> = rel.split('/').collect();
        let Some(file) = parts.pop() else {
            return false;
        };
        if file.starts_with('.') || parts.iter().any(|p| p.starts_with('.')) {
            return false;
        }
        let lower = file.to_ascii_lowercase();
        if !SHARD_EXTS.iter().any(|e| lower.ends_with(&format!(".{e}"))) {
            return false;
        }
        parts.contains(&self.split.as_str()) || file.split(['-', '_', '.']).any(|t| t == self.split)
    }

    fn select(&self, mut rels: Vec<String>) -> Result<Vec<String>, SourceError> {
        let config_dir = self
            .config
            .as_ref()
            .is_some_and(|c| rels.iter().any(|r| r.starts_with(&format!("{c}/"))));
        if let Some(c) = &self.config
            && !config_dir
            && c != "default"
        {
            return Err(self.err(format!(
                "no directory for config `{c}` at revision `{}`",
                self.revision
            )));
        }
        rels.sort();
        let picked: Vec<String> = rels
            .iter()
            .filter(|r| self.selects(r, config_dir))
            .cloned()
            .collect();
        if picked.is_empty() {
            let mut shown: Vec<&str> = rels.iter().map(String::as_str).take(20).collect();
            if rels.len() > 20 {
                shown.push("…");
            }
            return Err(self.err(format!(
                "no .parquet/.jsonl/.csv shards for split `{}` at revision `{}`; files: {}",
                self.split,
                self.revision,
                shown.join(", ")
            )));
        }
        Ok(picked)
    }

    /// Shards of this config/split in a local dataset directory (checkout or snapshot).
    pub fn shards_in(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, SourceError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(self.err(format!("{} is not a directory", dir.display())));
        }
        let files = super::readers::shards(dir, &[])?;
        let rels: Vec<String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(dir).ok())
            .map(|r| {
                r.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        Ok(self
            .select(rels)?
            .into_iter()
            .map(|r| dir.join(r))
            .collect())
    }

    /// The cached snapshot directory this revision points to.
    pub fn snapshot_dir(&self, cache: &HfCache) -> Result<PathBuf, SourceError> {
        let repo = cache.repo_dir(&self.repo_id);
        let snapshots = repo.join("snapshots");
        let commit = if is_commit(&self.revision) {
            self.revision.clone()
        } else {
            let ref_file = repo.join("refs").join(&self.revision);
            match std::fs::read(&ref_file) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map_err(|_| self.err(format!("{}: not UTF-8", ref_file.display())))?
                    .trim()
                    .to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.err(format!(
                        "revision `{}` is not in the cache ({} does not exist); cached snapshots: {}",
                        self.revision,
                        ref_file.display(),
                        list_dir(&snapshots)
                    )));
                }
                Err(e) => return Err(SourceError::io(&ref_file, e)),
            }
        };
        let dir = snapshots.join(&commit);
        if !dir.is_dir() {
            return Err(self.err(format!(
                "revision `{}` (commit {commit}) has no snapshot at {}; cached snapshots: {}",
                self.revision,
                dir.display(),
                list_dir(&snapshots)
            )));
        }
        Ok(dir)
    }

    /// Shards from the HF cache, pinned to `revision`.
    pub fn cached(&self, cache: &HfCache) -> Result<Vec<PathBuf>, SourceError> {
        self.shards_in(self.snapshot_dir(cache)?)
    }

    /// Shards from the cache; when they are not there and `hub` is given, downloads them first.
    pub async fn fetch(
        &self,
        cache: &HfCache,
        hub: Option<&HfHub>,
    ) -> Result<Vec<PathBuf>, SourceError> {
        match (self.cached(cache), hub) {
            (Ok(files), _) => Ok(files),
            (Err(e), None) => Err(e),
            (Err(_), Some(hub)) => self.download(hub, cache).await,
        }
    }

    /// Downloads this config/split's shards into the cache (see the module docs); returns their
    /// paths in the snapshot.
    pub async fn download(
        &self,
        hub: &HfHub,
        cache: &HfCache,
    ) -> Result<Vec<PathBuf>, SourceError> {
        let repo = encode_path(&self.repo_id);
        let url = format!(
            "{}/api/datasets/{repo}/revision/{}",
            hub.endpoint,
            encode_segment(&self.revision)
        );
        let (info, _): (RevisionInfo, _) = hub.get_json(&url).await?;
        if !is_commit(&info.sha) {
            return Err(hub.http_err(&url, format!("unexpected commit id `{}`", info.sha)));
        }
        let commit = info.sha;
        let mut next = Some(match &self.config {
            Some(c) => format!(
                "{}/api/datasets/{repo}/tree/{commit}/{}?recursive=true",
                hub.endpoint,
                encode_path(c)
            ),
            None => format!(
                "{}/api/datasets/{repo}/tree/{commit}?recursive=true",
                hub.endpoint
            ),
        });
        let mut files = Vec::new();
        let mut sizes = std::collections::HashMap::new();
        while let Some(url) = next.take() {
            let (entries, link): (Vec<TreeEntry>, _) = hub.get_json(&url).await?;
            for e in entries.into_iter().filter(|e| e.kind == "file") {
                sizes.insert(e.path.clone(), e.size);
                files.push(e.path);
            }
            next = link;
        }
        let picked = self.select(files)?;
        let repo_dir = cache.repo_dir(&self.repo_id);
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let mut out = Vec::with_capacity(picked.len());
        for rel in picked {
            let target = snapshot.join(&rel);
            let complete = match (
                std::fs::metadata(&target),
                sizes.get(&rel).copied().flatten(),
            ) {
                (Ok(m), Some(size)) => m.len() == size,
                (Ok(_), None) => true,
                (Err(_), _) => false,
            };
            if !complete {
                let url = format!(
                    "{}/datasets/{repo}/resolve/{commit}/{}",
                    hub.endpoint,
                    encode_path(&rel)
                );
                download_to(hub, &url, &target).await?;
            }
            out.push(target);
        }
        if self.revision != commit {
            write_atomic(
                &repo_dir.join("refs").join(&self.revision),
                commit.as_bytes(),
            )
            .await?;
        }
        Ok(out)
    }

    /// A [`Loader`] over these shard files, named after the dataset.
    pub fn loader(&self, files: Vec<PathBuf>) -> Loader {
        Loader::from_files(files).source_name(self.name())
    }
}

fn list_dir(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn temp_name(target: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.{nanos}.incomplete", std::process::id()))
}

async fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| SourceError::io(dir, e))?;
    let tmp = temp_name(target);
    let res = async {
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, target).await
    }
    .await;
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(SourceError::io(target, e));
    }
    Ok(())
}

async fn download_to(hub: &HfHub, url: &str, target: &Path) -> Result<(), SourceError> {
    use tokio::io::AsyncWriteExt;
    let dir = target.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| SourceError::io(dir, e))?;
    let mut resp = hub.get(url).await?;
    let tmp = temp_name(target);
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| SourceError::io(&tmp, e))?;
    let result: Result<(), SourceError> = async {
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| hub.http_err(url, e.without_url().to_string()))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| SourceError::io(&tmp, e))?;
        }
        file.flush().await.map_err(|e| SourceError::io(&tmp, e))?;
        file.sync_all()
            .await
            .map_err(|e| SourceError::io(&tmp, e))?;
        drop(file);
        tokio::fs::rename(&tmp, target)
            .await
            .map_err(|e| SourceError::io(target, e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
