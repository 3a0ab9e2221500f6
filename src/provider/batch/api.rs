//! The two batch wire formats: OpenAI's Batch API (a JSONL file upload, `/v1/batches`) and Anthropic's Message Batches, as one client.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::state::{BatchApi, JobFiles, JobState};
use crate::provider::openai::{http_error, send_for_json, transport_error};
use crate::provider::{
    ChatRequest, ErrorKind, HttpConfig, ProviderError, ProviderReply, RateLimitHints,
};

/// What the provider says about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteJob {
    /// The provider's status word (`validating`, `in_progress`, `completed`, `ended`, …).
    pub status: String,
    /// Whether the job is over (completed, failed, expired, cancelled; Anthropic: `ended`).
    pub ended: bool,
    /// Requests finished so far and in all, when the provider says.
    pub done: u64,
    /// Requests in the job.
    pub total: u64,
    /// Where the answers are: OpenAI's output and error file ids, or Anthropic's results URL.
    pub outputs: Vec<String>,
    /// OpenAI: why the whole job failed (`errors.data[].message`).
    pub failure: Option<String>,
}

/// A client for one endpoint's batch API. The key stays inside; `Debug` does not print it.
pub struct BatchClient {
    api: BatchApi,
    client: reqwest::Client,
    /// OpenAI: the base URL up to `/v1`; Anthropic: the host without `/v1`.
    base: String,
    model: String,
    api_key: Option<String>,
    key_env: Option<String>,
}

impl std::fmt::Debug for BatchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchClient")
            .field("api", &self.api)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The batch endpoint of OpenAI's chat completions.
const OPENAI_ENDPOINT: &str = "/v1/chat/completions";

fn no_hints(_: &HeaderMap) -> RateLimitHints {
    RateLimitHints::default()
}

impl BatchClient {
    /// A client for `http`'s endpoint. Each call (uploads and downloads can be large) may take
    /// up to ten minutes.
    pub fn new(api: BatchApi, http: &HttpConfig) -> Result<Self, reqwest::Error> {
        let base = match api {
            BatchApi::OpenAi => http
                .base_url
                .as_deref()
                .unwrap_or("https://api.openai.com/v1")
                .trim_end_matches('/')
                .to_owned(),
            BatchApi::Anthropic => {
                let base = http
                    .base_url
                    .as_deref()
                    .unwrap_or("https://api.anthropic.com")
                    .trim_end_matches('/');
                base.strip_suffix("/v1").unwrap_or(base).to_owned()
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(http.connect_timeout)
            .timeout(Duration::from_secs(600))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            api,
            client,
            base,
            model: http.model.clone(),
            api_key: http.api_key.clone(),
            key_env: http.api_key_env.clone(),
        })
    }

    /// The API this client speaks.
    pub fn api(&self) -> BatchApi {
        self.api
    }

    /// One line of a job's request file: the request under its `custom_id`, in the API's
    /// format (OpenAI: a batch input line; Anthropic: an element of `requests`).
    pub fn request_line(&self, custom_id: &str, request: &ChatRequest) -> Vec<u8> {
        let line = match self.api {
            BatchApi::OpenAi => json!({
                "custom_id": custom_id,
                "method": "POST",
                "url": OPENAI_ENDPOINT,
                "body": crate::provider::openai::request_body(&self.model, request),
            }),
            BatchApi::Anthropic => json!({
                "custom_id": custom_id,
                "params": crate::provider::anthropic::request_body(&self.model, request),
            }),
        };
        serde_json::to_vec(&line).expect("request line serializes")
    }

    fn jobs_url(&self) -> String {
        match self.api {
            BatchApi::OpenAi => format!("{}/batches", self.base),
            BatchApi::Anthropic => format!("{}/v1/messages/batches", self.base),
        }
    }

    fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (self.api, &self.api_key) {
            (BatchApi::OpenAi, Some(key)) => builder.bearer_auth(key),
            (BatchApi::Anthropic, key) => {
                let builder =
                    builder.header("anthropic-version", crate::provider::anthropic::API_VERSION);
                match key {
                    Some(key) => builder.header("x-api-key", key),
                    None => builder,
                }
            }
            (BatchApi::OpenAi, None) => builder,
        }
    }

    async fn json(&self, builder: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let (value, _, _) = send_for_json(
            self.authorize(builder),
            no_hints,
            self.key_env.as_deref(),
            &self.model,
        )
        .await?;
        Ok(value)
    }

    /// Check that the endpoint has a batch API and takes the key: lists one job. A 404 means
    /// the server has no batch API (a plain OpenAI-compatible server).
    pub async fn probe(&self) -> Result<(), ProviderError> {
        let url = format!("{}?limit=1", self.jobs_url());
        match self.json(self.client.get(&url)).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Err(ProviderError {
                kind: ErrorKind::NotFound,
                status: e.status,
                message: format!(
                    "{url} answered 404: this endpoint has no {} batch API (run without --batch, or set `batch = false` for the alias)",
                    self.api
                ),
                hints: e.hints,
            }),
            Err(e) => Err(e),
        }
    }

    /// Upload (OpenAI) and create the job; `on_progress` saves the state each time an id becomes
    /// known, before the next call goes out.
    pub async fn submit(
        &self,
        files: &JobFiles,
        state: &mut JobState,
        on_progress: &(dyn Fn(&JobState) -> Result<(), ProviderError> + Sync),
    ) -> Result<(), ProviderError> {
        match self.api {
            BatchApi::OpenAi => {
                if state.input_file_id.is_none() {
                    let id = self.upload(&state.local_id, files.requests()).await?;
                    state.input_file_id = Some(id);
                    on_progress(state)?;
                }
                let body = json!({
                    "input_file_id": state.input_file_id,
                    "endpoint": OPENAI_ENDPOINT,
                    "completion_window": "24h",
                    "metadata": { "shaping_job": state.local_id },
                });
                let created = self
                    .json(
                        self.client
                            .post(self.jobs_url())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(serde_json::to_vec(&body).expect("body serializes")),
                    )
                    .await?;
                state.job_id = Some(job_id(&created)?);
            }
            BatchApi::Anthropic => {
                // `{"requests":[` + the lines with their newlines turned into commas + `]}`.
                let body = FileBody::open(
                    b"{\"requests\":[".to_vec(),
                    files.requests(),
                    Lines::CommaSeparated,
                    b"]}".to_vec(),
                )?;
                let created = self
                    .json(
                        self.client
                            .post(self.jobs_url())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(reqwest::Body::wrap(body)),
                    )
                    .await?;
                state.job_id = Some(job_id(&created)?);
            }
        }
        Ok(())
    }

    /// Upload a job's request file (multipart, `purpose=batch`); the provider's file id.
    async fn upload(&self, local_id: &str, requests: PathBuf) -> Result<String, ProviderError> {
        let boundary = format!("shaping-batch-{local_id}");
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{local_id}.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let body = FileBody::open(
            head.into_bytes(),
            requests,
            Lines::AsTheyAre,
            tail.into_bytes(),
        )?;
        let uploaded = self
            .json(
                self.client
                    .post(format!("{}/files", self.base))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(reqwest::Body::wrap(body)),
            )
            .await?;
        uploaded["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad_body("the file upload's answer has no `id`"))
    }

    /// A job created for `state` whose id was never saved (the run was killed between creating
    /// it and saving the answer): OpenAI's jobs carry our id in `metadata.shaping_job`;
    /// Anthropic's are matched by size and creation time, excluding `known` ids. A wrong match
    /// costs nothing: answers are matched by `custom_id`, and those not in it are sent again.
    pub async fn find_created(
        &self,
        state: &JobState,
        known: &[String],
    ) -> Result<Option<String>, ProviderError> {
        let listed = self
            .json(self.client.get(format!("{}?limit=100", self.jobs_url())))
            .await?;
        let Some(jobs) = listed["data"].as_array() else {
            return Err(bad_body("the job list has no `data`"));
        };
        let found = jobs.iter().find(|job| {
            let Some(id) = job["id"].as_str() else {
                return false;
            };
            if known.iter().any(|k| k == id) {
                return false;
            }
            match self.api {
                BatchApi::OpenAi => {
                    job["metadata"]["shaping_job"].as_str() == Some(state.local_id.as_str())
                }
                BatchApi::Anthropic => {
                    let counts = &job["request_counts"];
                    let total: u64 = ["processing", "succeeded", "errored", "canceled", "expired"]
                        .iter()
                        .filter_map(|k| counts[*k].as_u64())
                        .sum();
                    let created = job["created_at"]
                        .as_str()
                        .and_then(|t| {
                            time::OffsetDateTime::parse(
                                t,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .ok()
                        })
                        .map(|t| t.unix_timestamp());
                    total == state.requests as u64
                        && created.is_some_and(|c| {
                            (state.created_at - 10..=state.created_at + 600).contains(&c)
                        })
                }
            }
        });
        Ok(found.and_then(|job| job["id"].as_str().map(str::to_owned)))
    }

    /// The job's status now.
    pub async fn status(&self, job_id: &str) -> Result<RemoteJob, ProviderError> {
        let job = self
            .json(self.client.get(format!("{}/{job_id}", self.jobs_url())))
            .await?;
        Ok(self.remote(&job))
    }

    /// Ask the provider to cancel the job; answers already made stay downloadable.
    pub async fn cancel(&self, job_id: &str) -> Result<RemoteJob, ProviderError> {
        let job = self
            .json(
                self.client
                    .post(format!("{}/{job_id}/cancel", self.jobs_url())),
            )
            .await?;
        Ok(self.remote(&job))
    }

    fn remote(&self, job: &Value) -> RemoteJob {
        let status = job[match self.api {
            BatchApi::OpenAi => "status",
            BatchApi::Anthropic => "processing_status",
        }]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
        let counts = &job["request_counts"];
        match self.api {
            BatchApi::OpenAi => RemoteJob {
                ended: matches!(
                    status.as_str(),
                    "completed" | "failed" | "expired" | "cancelled"
                ),
                done: counts["completed"].as_u64().unwrap_or(0)
                    + counts["failed"].as_u64().unwrap_or(0),
                total: counts["total"].as_u64().unwrap_or(0),
                outputs: ["output_file_id", "error_file_id"]
                    .iter()
                    .filter_map(|k| job[*k].as_str())
                    .map(|id| format!("{}/files/{id}/content", self.base))
                    .collect(),
                failure: job["errors"]["data"].as_array().map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e["message"].as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
                status,
            },
            BatchApi::Anthropic => {
                let n = |k: &str| counts[k].as_u64().unwrap_or(0);
                let done = n("succeeded") + n("errored") + n("canceled") + n("expired");
                RemoteJob {
                    ended: status == "ended",
                    done,
                    total: done + n("processing"),
                    outputs: job["results_url"]
                        .as_str()
                        .map(str::to_owned)
                        .into_iter()
                        .collect(),
                    failure: None,
                    status,
                }
            }
        }
    }

    /// Download the result lines of an ended job, as received (OpenAI: the output file, then
    /// the error file), to `path`: streamed to a temporary file beside it, synced, renamed.
    pub async fn download_results(
        &self,
        remote: &RemoteJob,
        path: &std::path::Path,
    ) -> Result<(), ProviderError> {
        use std::io::Write;
        let local = |e: std::io::Error| {
            ProviderError::new(ErrorKind::Local, format!("{}: {e}", path.display()))
        };
        let tmp = path.with_extension("jsonl.tmp");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(local)?);
        for url in &remote.outputs {
            let mut response = self
                .authorize(self.client.get(url))
                .send()
                .await
                .map_err(|e| transport_error(&e))?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                let body = response.bytes().await.unwrap_or_default();
                return Err(http_error(
                    status,
                    &body,
                    RateLimitHints::default(),
                    self.key_env.as_deref(),
                    &self.model,
                ));
            }
            let mut last = b'\n';
            while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e))? {
                file.write_all(&chunk).map_err(local)?;
                last = chunk.last().copied().unwrap_or(last);
            }
            if last != b'\n' {
                file.write_all(b"\n").map_err(local)?;
            }
        }
        let file = file.into_inner().map_err(|e| local(e.into_error()))?;
        file.sync_all().map_err(local)?;
        std::fs::rename(&tmp, path).map_err(local)?;
        Ok(())
    }
}

fn job_id(created: &Value) -> Result<String, ProviderError> {
    created["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad_body("the created job has no `id`"))
}

fn bad_body(message: &str) -> ProviderError {
    ProviderError::new(ErrorKind::BadBody, message)
}

/// One answer of a result file.
pub type ItemOutcome = Result<ProviderReply, ProviderError>;

/// The answer in one result line, with its `custom_id`; `None` for a line that does not parse
/// (its request is then missing from the results and is sent again).
pub fn parse_line(api: BatchApi, line: &[u8]) -> Option<(String, ItemOutcome)> {
    let value = serde_json::from_slice::<Value>(line).ok()?;
    let custom_id = value["custom_id"].as_str()?.to_owned();
    let outcome = match api {
        BatchApi::OpenAi => openai_item(&value),
        BatchApi::Anthropic => anthropic_item(&value),
    };
    Some((custom_id, outcome))
}

/// Every answer of a downloaded results file, read line by line.
pub fn read_results(
    api: BatchApi,
    path: &std::path::Path,
) -> std::io::Result<impl Iterator<Item = (String, ItemOutcome)> + use<>> {
    use std::io::BufRead;
    let reader = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(reader
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|line| !line.is_empty())
        .filter_map(move |line| parse_line(api, &line)))
}

fn openai_item(line: &Value) -> ItemOutcome {
    let response = &line["response"];
    if let Some(status) = response["status_code"].as_u64() {
        let status = status as u16;
        let body = &response["body"];
        if (200..300).contains(&status) {
            return crate::provider::openai::completion_reply(
                body,
                status,
                RateLimitHints::default(),
            );
        }
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        return Err(http_error(
            status,
            &bytes,
            RateLimitHints::default(),
            None,
            body["model"].as_str().unwrap_or("the batch's model"),
        ));
    }
    let code = line["error"]["code"].as_str().unwrap_or("");
    let message = line["error"]["message"].as_str().unwrap_or("no message");
    Err(item_error(code, message))
}

fn anthropic_item(line: &Value) -> ItemOutcome {
    let result = &line["result"];
    match result["type"].as_str().unwrap_or("") {
        "succeeded" => crate::provider::anthropic::message_reply(
            &result["message"],
            200,
            RateLimitHints::default(),
        ),
        "errored" => {
            let error = &result["error"]["error"];
            let kind = match error["type"].as_str().unwrap_or("") {
                "invalid_request_error" => ErrorKind::BadRequest,
                "authentication_error" | "permission_error" => ErrorKind::Auth,
                "not_found_error" => ErrorKind::NotFound,
                "rate_limit_error" => ErrorKind::RateLimited,
                _ => ErrorKind::Server,
            };
            Err(ProviderError::new(
                kind,
                format!(
                    "batch item errored: {}",
                    error["message"].as_str().unwrap_or("no message")
                ),
            ))
        }
        "expired" => Err(item_error("batch_expired", "the batch expired")),
        "canceled" => Err(item_error("batch_cancelled", "the batch was cancelled")),
        other => Err(ProviderError::new(
            ErrorKind::BadBody,
            format!("unknown batch result type '{other}'"),
        )),
    }
}

/// Expired items are sent again in the next batch (a retryable timeout); cancelled ones fail in
/// this run and are sent again by the next one; anything else is a server error.
fn item_error(code: &str, message: &str) -> ProviderError {
    match code {
        "batch_expired" => ProviderError::new(
            ErrorKind::Timeout,
            format!("expired in its batch before an answer ({message}); sent again"),
        ),
        "batch_cancelled" => ProviderError::new(
            ErrorKind::Cancelled,
            format!("its batch job was cancelled ({message}); a rerun sends it again"),
        ),
        _ => ProviderError::new(
            ErrorKind::Server,
            format!("batch item failed: {code}: {message}"),
        ),
    }
}

/// How a job file's lines go into a request body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lines {
    /// Byte for byte (OpenAI's JSONL upload).
    AsTheyAre,
    /// Separated by commas, without the last newline (the items of Anthropic's JSON array).
    CommaSeparated,
}

/// Bytes of a job file read per body chunk.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A request body of a head, a job's request file and a tail, read from disk a chunk at a time
/// as the connection takes it: a job file (up to 200 or 256 MB) is never in memory whole. Its
/// exact length is known, so it goes out with a `Content-Length`, and every attempt of an upload
/// opens the file again.
struct FileBody {
    head: Option<Bytes>,
    file: tokio::fs::File,
    path: PathBuf,
    /// File bytes still to send.
    remaining: u64,
    lines: Lines,
    tail: Option<Bytes>,
    chunk: Vec<u8>,
}

impl FileBody {
    fn open(
        head: Vec<u8>,
        path: PathBuf,
        lines: Lines,
        tail: Vec<u8>,
    ) -> Result<Self, ProviderError> {
        use std::io::{Read, Seek, SeekFrom};
        let cannot_read = |e: std::io::Error| {
            ProviderError::new(
                ErrorKind::Local,
                format!("cannot read {}: {e}", path.display()),
            )
        };
        let mut file = std::fs::File::open(&path).map_err(cannot_read)?;
        let mut size = file.metadata().map_err(cannot_read)?.len();
        if lines == Lines::CommaSeparated {
            // The last line's newline ends the array instead of separating an item.
            let mut last = [0u8; 1];
            if size > 0 {
                file.seek(SeekFrom::Start(size - 1)).map_err(cannot_read)?;
                file.read_exact(&mut last).map_err(cannot_read)?;
                file.seek(SeekFrom::Start(0)).map_err(cannot_read)?;
            }
            if last != *b"\n" {
                return Err(ProviderError::new(
                    ErrorKind::Local,
                    format!(
                        "{} does not end with a complete request line",
                        path.display()
                    ),
                ));
            }
            size -= 1;
        }
        Ok(Self {
            head: Some(Bytes::from(head)),
            file: tokio::fs::File::from_std(file),
            path,
            remaining: size,
            lines,
            tail: Some(Bytes::from(tail)),
            chunk: Vec::new(),
        })
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if this.remaining > 0 {
            let want = UPLOAD_CHUNK.min(usize::try_from(this.remaining).unwrap_or(UPLOAD_CHUNK));
            this.chunk.resize(want, 0);
            let mut buf = ReadBuf::new(&mut this.chunk[..want]);
            return match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} shrank while it was uploaded", this.path.display()),
                    ))))
                }
                Poll::Ready(Ok(())) => {
                    let mut data = buf.filled().to_vec();
                    if this.lines == Lines::CommaSeparated {
                        for byte in &mut data {
                            if *byte == b'\n' {
                                *byte = b',';
                            }
                        }
                    }
                    this.remaining -= data.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
                }
            };
        }
        Poll::Ready(this.tail.take().map(|tail| Ok(Frame::data(tail))))
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.remaining == 0 && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let pending = |part: &Option<Bytes>| part.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(pending(&self.head) + self.remaining + pending(&self.tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// Everything a body yields, and the length it announced first.
    async fn drain(mut body: FileBody) -> (Vec<u8>, Option<u64>) {
        let announced = body.size_hint().exact();
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            out.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        assert!(body.is_end_stream());
        (out, announced)
    }

    fn job_file(dir: &std::path::Path, lines: usize) -> (PathBuf, Vec<String>) {
        let items: Vec<String> = (0..lines)
            .map(|i| {
                format!(
                    r#"{{"custom_id":"{i:064}","params":{{"x":"{}"}}}}"#,
                    "y".repeat(i % 300)
                )
            })
            .collect();
        let path = dir.join("job.requests.jsonl");
        std::fs::write(
            &path,
            items.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        (path, items)
    }

    #[tokio::test]
    async fn a_job_file_streams_in_chunks_with_its_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        // About 1.1 MB: several chunks, lines split across chunk boundaries.
        let (path, items) = job_file(dir.path(), 4000);
        let file = std::fs::read(&path).unwrap();

        let body = FileBody::open(
            b"HEAD".to_vec(),
            path.clone(),
            Lines::AsTheyAre,
            b"TAIL".to_vec(),
        );
        let (bytes, announced) = drain(body.unwrap()).await;
        assert_eq!(bytes, [&b"HEAD"[..], &file, b"TAIL"].concat());
        assert_eq!(announced, Some(bytes.len() as u64));

        let body = FileBody::open(b"[".to_vec(), path, Lines::CommaSeparated, b"]".to_vec());
        let (bytes, announced) = drain(body.unwrap()).await;
        assert_eq!(announced, Some(bytes.len() as u64));
        let parsed: Vec<Value> = serde_json::from_slice(&bytes).expect("one JSON array");
        assert_eq!(parsed.len(), items.len());
        assert_eq!(parsed[3999]["custom_id"], format!("{:064}", 3999));
    }

    #[test]
    fn a_job_file_cut_mid_line_is_not_sent_as_an_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.requests.jsonl");
        std::fs::write(&path, "{\"custom_id\":\"a\"}\n{\"custom_id\":").unwrap();
        let err = FileBody::open(Vec::new(), path, Lines::CommaSeparated, Vec::new())
            .err()
            .expect("refused");
        assert!(
            err.message
                .contains("does not end with a complete request line"),
            "{err}"
        );
    }
}
