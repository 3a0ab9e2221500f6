//! The two batch wire formats: OpenAI's Batch API (a JSONL file upload, `/v1/batches`) and Anthropic's Message Batches, as one client.

use std::time::Duration;

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
        // Each request body is built around the file's bytes in one buffer: a job can be
        // 200 MB.
        let read_into = |body: &mut Vec<u8>| {
            use std::io::Read;
            std::fs::File::open(files.requests())
                .and_then(|mut f| {
                    // Exactly the file plus the envelope's closing bytes: no doubling growth.
                    let len = f.metadata()?.len() as usize;
                    body.reserve_exact(len + 128);
                    f.read_to_end(body)
                })
                .map_err(|e| {
                    ProviderError::new(
                        ErrorKind::Local,
                        format!("cannot read {}: {e}", files.requests().display()),
                    )
                })
        };
        match self.api {
            BatchApi::OpenAi => {
                if state.input_file_id.is_none() {
                    let id = self.upload(&state.local_id, &read_into).await?;
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
                let mut body = b"{\"requests\":[".to_vec();
                let start = body.len();
                read_into(&mut body)?;
                while body.last() == Some(&b'\n') {
                    body.pop();
                }
                for byte in &mut body[start..] {
                    if *byte == b'\n' {
                        *byte = b',';
                    }
                }
                body.extend_from_slice(b"]}");
                let created = self
                    .json(
                        self.client
                            .post(self.jobs_url())
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(body),
                    )
                    .await?;
                state.job_id = Some(job_id(&created)?);
            }
        }
        Ok(())
    }

    async fn upload(
        &self,
        local_id: &str,
        read_into: &(dyn Fn(&mut Vec<u8>) -> Result<usize, ProviderError> + Sync),
    ) -> Result<String, ProviderError> {
        let boundary = format!("shaping-batch-{local_id}");
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{local_id}.jsonl\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        read_into(&mut body)?;
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let uploaded = self
            .json(
                self.client
                    .post(format!("{}/files", self.base))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body),
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
