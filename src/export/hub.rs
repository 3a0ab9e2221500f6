//! Uploading a Parquet export to a Hugging Face Hub dataset repository through the Hub's HTTP
//! API (what `huggingface_hub`'s `HfApi.create_repo` and `create_commit` send).
//!
//! 1. `POST {endpoint}/api/repos/create` `{"type": "dataset", "name", "organization", "private"}`:
//!    409 means the repository exists, which is fine (its visibility is left as it is).
//! 2. `POST {endpoint}/api/datasets/{repo}/preupload/main` with each file's path, size, sha256
//!    and first 512 bytes (base64): the Hub answers `uploadMode` `regular` or `lfs` per file
//!    (binary files such as Parquet, and large ones, go through LFS).
//! 3. LFS files: `POST {endpoint}/datasets/{repo}.git/info/lfs/objects/batch` (Git LFS batch API,
//!    `basic` transfer) gives an upload URL per object not yet stored; the bytes are `PUT` there
//!    and, when the Hub asks for it, verified. Objects the Hub already has are not sent again.
//! 4. `POST {endpoint}/api/datasets/{repo}/commit/main`, `application/x-ndjson`: a header line
//!    `{"key": "header", "value": {"summary", "description"}}`, then a `file` line (content
//!    base64) per regular file and an `lfsFile` line (`algo`, `oid`, `size`) per LFS file: one
//!    commit with every file.
//!
//! The token ([`crate::sources::hf_token`]: `HF_TOKEN`, else the `huggingface-cli login` file)
//! is sent as `Authorization: Bearer …` to the endpoint only (LFS upload URLs are pre-signed and
//! get none), and never appears in errors, output or `Debug`. The endpoint is
//! [`crate::sources::hf_endpoint`] (`HF_ENDPOINT`, default `https://huggingface.co`).
//! Regular files are inlined in the commit up to [`MAX_INLINE_BYTES`]; the Hub sends anything
//! larger through LFS, and a larger file it asks to inline is refused with a clear error.
//! Multipart LFS uploads (files of many gigabytes) are not implemented: the batch request offers
//! only the `basic` transfer.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ExportError;

/// The largest regular (non-LFS) file inlined in a commit: 10 MB.
pub const MAX_INLINE_BYTES: u64 = 10 * 1024 * 1024;

/// How long an API request (not an LFS upload) may take.
const API_TIMEOUT: Duration = Duration::from_secs(120);

/// A Hub endpoint with a write token.
#[derive(Clone)]
pub struct HubClient {
    endpoint: String,
    token: String,
    client: reqwest::Client,
}

impl fmt::Debug for HubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The repository (`owner/name`).
    pub repo: String,
    /// Whether the repository was created by this push.
    pub created: bool,
    /// The repository's page, `{endpoint}/datasets/{repo}`.
    pub url: String,
    /// The commit's URL, when the Hub gave one.
    pub commit_url: Option<String>,
    /// Files committed as regular files.
    pub regular: Vec<String>,
    /// Files committed through LFS.
    pub lfs: Vec<String>,
    /// LFS files whose bytes the Hub already had (not uploaded again).
    pub lfs_already_stored: Vec<String>,
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The commit's summary line.
    pub summary: String,
    /// The commit's description.
    pub description: String,
    /// Create the repository private (when it does not exist yet).
    pub private: bool,
}

/// One file to commit.
struct Upload {
    path: String,
    bytes: Vec<u8>,
    sha256: String,
}

/// Checks an `owner/name` repository id; returns `(owner, name)`.
pub fn parse_repo(repo: &str) -> Result<(&str, &str), ExportError> {
    let invalid = || ExportError::InvalidRepo {
        repo: repo.to_owned(),
    };
    let (owner, name) = repo.split_once('/').ok_or_else(invalid)?;
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= 96
            && !part.starts_with(['.', '-'])
            && !part.ends_with('.')
            && !part.contains("..")
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if valid(owner) && valid(name) {
        Ok((owner, name))
    } else {
        Err(invalid())
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match chunk {
            [a, b, c] => u32::from(*a) << 16 | u32::from(*b) << 8 | u32::from(*c),
            [a, b] => u32::from(*a) << 16 | u32::from(*b) << 8,
            [a] => u32::from(*a) << 16,
            _ => unreachable!("chunks of 1 to 3"),
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Deserialize)]
struct PreuploadReply {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreuploadFile {
    path: String,
    upload_mode: String,
    #[serde(default)]
    should_ignore: bool,
}

#[derive(Deserialize)]
struct BatchReply {
    objects: Vec<BatchObject>,
}

#[derive(Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<BatchActions>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct BatchActions {
    upload: Option<BatchAction>,
    verify: Option<BatchAction>,
}

#[derive(Deserialize)]
struct BatchAction {
    href: String,
    #[serde(default)]
    header: std::collections::BTreeMap<String, String>,
}

impl HubClient {
    /// A client for `endpoint` (e.g. `https://huggingface.co`) with a write token.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            client,
        }
    }

    /// The endpoint and token from the environment, found the way the Hugging Face tools find
    /// them ([`crate::sources::hf_endpoint`], [`crate::sources::hf_token`]).
    pub fn from_env() -> Result<Self, ExportError> {
        let var = |name: &str| std::env::var_os(name);
        let token = crate::sources::hf_token(var).ok_or(ExportError::NoToken)?;
        Ok(Self::new(crate::sources::hf_endpoint(var), token))
    }

    /// The Hub's base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Push `files` (paths relative to `dir`, such as an export's [`super::Exported::files`])
    /// to the dataset repository `repo` in one commit on `main`. Blocking: runs its own runtime,
    /// so never call it from async code (use [`HubClient::push_async`] there).
    pub fn push(
        &self,
        repo: &str,
        dir: &Path,
        files: &[String],
        options: &PushOptions,
    ) -> Result<Pushed, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ExportError::Hub {
                step: "start",
                url: self.endpoint.clone(),
                status: None,
                message: e.to_string(),
            })?;
        runtime.block_on(self.push_async(repo, dir, files, options))
    }

    /// [`HubClient::push`], async.
    pub async fn push_async(
        &self,
        repo: &str,
        dir: &Path,
        files: &[String],
        options: &PushOptions,
    ) -> Result<Pushed, ExportError> {
        let (owner, name) = parse_repo(repo)?;
        let mut uploads = Vec::with_capacity(files.len());
        for path in files {
            let full = dir.join(path);
            let bytes = std::fs::read(&full).map_err(|source| ExportError::Read {
                path: full.clone(),
                source,
            })?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            uploads.push(Upload {
                path: path.replace('\\', "/"),
                bytes,
                sha256,
            });
        }
        let created = self.create_repo(owner, name, options.private).await?;
        let modes = self.preupload(repo, &uploads).await?;
        let mut pushed = Pushed {
            repo: repo.to_owned(),
            created,
            url: format!("{}/datasets/{repo}", self.endpoint),
            commit_url: None,
            regular: Vec::new(),
            lfs: Vec::new(),
            lfs_already_stored: Vec::new(),
        };
        let mut lfs = Vec::new();
        let mut commit_files = Vec::new();
        for upload in &uploads {
            match modes.get(&upload.path).map(String::as_str) {
                Some("lfs") => {
                    lfs.push(upload);
                    commit_files.push((upload, true));
                }
                Some("regular") => {
                    if upload.bytes.len() as u64 > MAX_INLINE_BYTES {
                        return Err(ExportError::Hub {
                            step: "preupload",
                            url: self.preupload_url(repo),
                            status: None,
                            message: format!(
                                "the Hub asks to commit {} ({} bytes) as a regular file, over the {MAX_INLINE_BYTES}-byte limit for inlined files",
                                upload.path,
                                upload.bytes.len()
                            ),
                        });
                    }
                    commit_files.push((upload, false));
                }
                Some("ignored") => {}
                other => {
                    return Err(ExportError::Hub {
                        step: "preupload",
                        url: self.preupload_url(repo),
                        status: None,
                        message: format!("no upload mode for {} (got {other:?})", upload.path),
                    });
                }
            }
        }
        if !lfs.is_empty() {
            pushed.lfs_already_stored = self.upload_lfs(repo, &lfs).await?;
        }
        for (upload, is_lfs) in &commit_files {
            if *is_lfs {
                pushed.lfs.push(upload.path.clone());
            } else {
                pushed.regular.push(upload.path.clone());
            }
        }
        pushed.commit_url = self.commit(repo, &commit_files, options).await?;
        Ok(pushed)
    }

    fn post_json(&self, url: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }

    fn scrub(&self, text: &str) -> String {
        if self.token.is_empty() {
            text.to_owned()
        } else {
            text.replace(self.token.as_str(), "<redacted>")
        }
    }

    /// Send `request` (with the token when it goes to the endpoint, except LFS uploads, whose
    /// URLs are pre-signed); a non-2xx status outside `accept` is an error naming the step.
    async fn send(
        &self,
        step: &'static str,
        url: &str,
        request: reqwest::RequestBuilder,
        accept: &[u16],
    ) -> Result<reqwest::Response, ExportError> {
        let upload = step == "LFS upload";
        let request = if !upload && url.starts_with(&format!("{}/", self.endpoint)) {
            request.bearer_auth(&self.token)
        } else {
            request
        };
        // API calls answer quickly; an upload takes as long as the bytes take.
        let request = if upload {
            request
        } else {
            request.timeout(API_TIMEOUT)
        };
        let error = |status: Option<u16>, message: String| ExportError::Hub {
            step,
            url: self.scrub(url),
            status,
            message: self.scrub(&message),
        };
        let response = request
            .send()
            .await
            .map_err(|e| error(None, e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() || accept.contains(&status.as_u16()) {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(300).collect();
        let hint = match status.as_u16() {
            401 => " (the token was refused: check HF_TOKEN)",
            403 => " (the token may lack write access to this repository)",
            404 => " (no such repository, or the token cannot see it)",
            _ => "",
        };
        Err(error(
            Some(status.as_u16()),
            format!("HTTP {status}{hint}: {body}"),
        ))
    }

    async fn json_reply<T: for<'de> Deserialize<'de>>(
        &self,
        step: &'static str,
        url: &str,
        response: reqwest::Response,
    ) -> Result<T, ExportError> {
        let bytes = response.bytes().await.map_err(|e| ExportError::Hub {
            step,
            url: self.scrub(url),
            status: None,
            message: self.scrub(&e.without_url().to_string()),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ExportError::Hub {
            step,
            url: self.scrub(url),
            status: None,
            message: format!("unexpected reply: {e}"),
        })
    }

    /// Create the dataset repository; Ok(false) when it exists.
    async fn create_repo(
        &self,
        owner: &str,
        name: &str,
        private: bool,
    ) -> Result<bool, ExportError> {
        let url = format!("{}/api/repos/create", self.endpoint);
        let body =
            json!({"type": "dataset", "name": name, "organization": owner, "private": private});
        let response = self
            .send(
                "create repository",
                &url,
                self.post_json(&url, &body),
                &[409],
            )
            .await?;
        Ok(response.status().as_u16() != 409)
    }

    fn preupload_url(&self, repo: &str) -> String {
        format!("{}/api/datasets/{repo}/preupload/main", self.endpoint)
    }

    /// The upload mode of every file (`regular`, `lfs`, or `ignored` when the Hub says the
    /// repository's ignore rules skip it).
    async fn preupload(
        &self,
        repo: &str,
        uploads: &[Upload],
    ) -> Result<std::collections::BTreeMap<String, String>, ExportError> {
        let url = self.preupload_url(repo);
        let files: Vec<Value> = uploads
            .iter()
            .map(|u| {
                json!({
                    "path": u.path,
                    "sample": base64(&u.bytes[..u.bytes.len().min(512)]),
                    "size": u.bytes.len(),
                    "sha": u.sha256,
                })
            })
            .collect();
        let response = self
            .send(
                "preupload",
                &url,
                self.post_json(&url, &json!({"files": files})),
                &[],
            )
            .await?;
        let reply: PreuploadReply = self.json_reply("preupload", &url, response).await?;
        Ok(reply
            .files
            .into_iter()
            .map(|f| {
                let mode = if f.should_ignore {
                    "ignored".to_owned()
                } else {
                    f.upload_mode
                };
                (f.path, mode)
            })
            .collect())
    }

    /// Upload LFS objects the Hub does not have yet; returns the paths it already had.
    async fn upload_lfs(
        &self,
        repo: &str,
        uploads: &[&Upload],
    ) -> Result<Vec<String>, ExportError> {
        let url = format!(
            "{}/datasets/{repo}.git/info/lfs/objects/batch",
            self.endpoint
        );
        let body = json!({
            "operation": "upload",
            "transfers": ["basic"],
            "objects": uploads.iter().map(|u| json!({"oid": u.sha256, "size": u.bytes.len()})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
            "ref": {"name": "main"},
        });
        let request = self
            .client
            .post(&url)
            .header("Accept", "application/vnd.git-lfs+json")
            .header("Content-Type", "application/vnd.git-lfs+json")
            .body(body.to_string());
        let response = self.send("LFS batch", &url, request, &[]).await?;
        let reply: BatchReply = self.json_reply("LFS batch", &url, response).await?;
        let mut already = Vec::new();
        for upload in uploads {
            let Some(object) = reply.objects.iter().find(|o| o.oid == upload.sha256) else {
                return Err(ExportError::Hub {
                    step: "LFS batch",
                    url: url.clone(),
                    status: None,
                    message: format!("no instructions for {} ({})", upload.path, upload.sha256),
                });
            };
            if let Some(error) = &object.error {
                return Err(ExportError::Hub {
                    step: "LFS batch",
                    url: url.clone(),
                    status: None,
                    message: self.scrub(&format!("{}: {error}", upload.path)),
                });
            }
            let Some(actions) = &object.actions else {
                already.push(upload.path.clone());
                continue;
            };
            if let Some(action) = &actions.upload {
                if action.header.contains_key("chunk_size") {
                    return Err(ExportError::Hub {
                        step: "LFS batch",
                        url: url.clone(),
                        status: None,
                        message: format!(
                            "the Hub asks for a multipart upload of {} ({} bytes), which is not implemented",
                            upload.path,
                            upload.bytes.len()
                        ),
                    });
                }
                let mut request = self.client.put(&action.href).body(upload.bytes.clone());
                for (key, value) in &action.header {
                    request = request.header(key, value);
                }
                self.send("LFS upload", &action.href, request, &[]).await?;
            } else {
                already.push(upload.path.clone());
            }
            if let Some(action) = &actions.verify {
                let mut request = self
                    .client
                    .post(&action.href)
                    .header("Content-Type", "application/vnd.git-lfs+json")
                    .body(json!({"oid": upload.sha256, "size": upload.bytes.len()}).to_string());
                for (key, value) in &action.header {
                    request = request.header(key, value);
                }
                self.send("LFS verify", &action.href, request, &[]).await?;
            }
        }
        Ok(already)
    }

    /// One commit on `main` with every file; returns the commit's URL when the Hub gives it.
    async fn commit(
        &self,
        repo: &str,
        files: &[(&Upload, bool)],
        options: &PushOptions,
    ) -> Result<Option<String>, ExportError> {
        let url = format!("{}/api/datasets/{repo}/commit/main", self.endpoint);
        let mut body = String::new();
        let mut line = |value: Value| {
            body.push_str(&value.to_string());
            body.push('\n');
        };
        line(
            json!({"key": "header", "value": {"summary": options.summary, "description": options.description}}),
        );
        for (upload, is_lfs) in files {
            if *is_lfs {
                line(
                    json!({"key": "lfsFile", "value": {"path": upload.path, "algo": "sha256", "oid": upload.sha256, "size": upload.bytes.len()}}),
                );
            } else {
                line(
                    json!({"key": "file", "value": {"path": upload.path, "content": base64(&upload.bytes), "encoding": "base64"}}),
                );
            }
        }
        let request = self
            .client
            .post(&url)
            .header("Content-Type", "application/x-ndjson")
            .body(body);
        let response = self.send("commit", &url, request, &[]).await?;
        let reply: Value = self
            .json_reply("commit", &url, response)
            .await
            .unwrap_or(Value::Null);
        Ok(reply
            .get("commitUrl")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn repository_ids_are_owner_slash_name() {
        assert_eq!(
            parse_repo("me/dee-voice").expect("valid"),
            ("me", "dee-voice")
        );
        for bad in [
            "dee-voice",
            "me/",
            "/x",
            "a/b/c",
            "me/../x",
            "me/x y",
            ".me/x",
        ] {
            assert!(parse_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_the_token() {
        let client = HubClient::new("http://127.0.0.1:1", "hf_secret");
        assert!(!format!("{client:?}").contains("hf_secret"));
    }
}
