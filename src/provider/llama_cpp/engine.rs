//! The continuous batcher: one inference thread per engine owning the llama context, admitting requests as sequences, prefilling prompts in fixed chunks (or copying their KV), and decoding every generating sequence in one call per step.
//!
//! Every active request is a sequence (seq id) of the context; new requests join as soon as a
//! slot frees up, and their prompts are prefilled between decode steps, each chunk of
//! [`PREFILL_CHUNK`] tokens in a `llama_decode` call of its own, while the decode tokens of all
//! running requests share one call. With one KV stream per sequence and a seeded sampler per
//! request, a request's text does not depend on what else is batched with it. Finished
//! sequences stay parked with their prompt KV for later requests to copy (`prefix`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use tokio::sync::oneshot;

use super::LocalModelError;
use super::model::{self, LoadedModel};
use super::prefix::{self, Holder, Plan, PromptShape};
use super::sampling::draw;
use crate::provider::{ErrorKind, ProviderError, ProviderReply, RateLimitHints, Usage};

/// Prompts are prefilled in chunks that start at multiples of this many tokens, whatever else is
/// in the batch: where a prompt is split changes the floats, and so could change the reply.
pub(super) const PREFILL_CHUNK: u32 = 512;

/// How the inference thread of a local model is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Requests decoded together (sequences of the context), 1 to 256.
    pub max_sequences: usize,
    /// Context of each sequence (prompt plus reply), at least 64 tokens.
    pub context_per_sequence: u32,
    /// Share prompt KV between requests (system prompts, candidates of one prompt). Off: every
    /// prompt is prefilled from scratch, in chunks at multiples of the chunk size.
    pub prefix_sharing: bool,
}

impl EngineSettings {
    /// `max_sequences` × `context_per_sequence`, prefix sharing on.
    pub fn new(max_sequences: usize, context_per_sequence: u32) -> Self {
        Self {
            max_sequences,
            context_per_sequence,
            prefix_sharing: true,
        }
    }
}

/// Prompt tokens of the requests an engine has taken, and how they got into the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillStats {
    /// Prompt tokens of every request admitted.
    pub prompt_tokens: u64,
    /// Prompt tokens decoded by prefill chunks.
    pub computed_tokens: u64,
    /// Prompt tokens copied from another sequence's KV cache (or kept from a parked one).
    pub shared_tokens: u64,
}

#[derive(Default)]
struct PrefillCounters {
    prompt: AtomicU64,
    computed: AtomicU64,
    shared: AtomicU64,
}

/// The inference thread of one model and the channel to it.
pub(super) struct Engine {
    /// The GGUF file as the provider named it.
    pub(super) path: PathBuf,
    pub(super) model: Arc<LoadedModel>,
    pub(super) settings: EngineSettings,
    counters: Arc<PrefillCounters>,
    jobs: mpsc::Sender<Job>,
}

/// One request, prepared (templated, tokenized, sampler built) on the caller's side.
pub(super) struct Job {
    pub(super) prompt: PromptShape,
    pub(super) sampler: LlamaSampler,
    pub(super) max_tokens: u32,
    /// Stop sequences, none empty.
    pub(super) stop: Vec<String>,
    pub(super) reply: oneshot::Sender<Result<ProviderReply, ProviderError>>,
}

impl Engine {
    /// Start the inference thread of `model` with `settings` (already clamped) and wait until
    /// its context exists. `path` and `expected_sha256` only name the model in errors.
    pub(super) fn start(
        path: &Path,
        expected_sha256: Option<&str>,
        model: Arc<LoadedModel>,
        settings: EngineSettings,
    ) -> Result<Self, LocalModelError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let worker_model = Arc::clone(&model);
        let counters = Arc::new(PrefillCounters::default());
        let worker_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name(format!(
                "llama-{}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ))
            .spawn(move || worker(worker_model, rx, ready_tx, settings, &worker_counters))
            .map_err(|e| LocalModelError::Backend(format!("spawning the inference thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(LocalModelError::Load {
                    path: path.to_path_buf(),
                    expected: expected_sha256.map(str::to_owned),
                    message,
                });
            }
            Err(_) => {
                return Err(LocalModelError::Backend(
                    "the inference thread stopped during start-up".into(),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            model,
            settings,
            counters,
            jobs: tx,
        })
    }

    /// Hand `job` to the inference thread.
    pub(super) fn submit(&self, job: Job) -> Result<(), ProviderError> {
        self.jobs.send(job).map_err(|_| {
            ProviderError::new(
                ErrorKind::Local,
                "the local model's inference thread has stopped",
            )
        })
    }

    /// Prompt tokens taken so far, and how they got into the KV cache.
    pub(super) fn prefill_stats(&self) -> PrefillStats {
        let c = &self.counters;
        PrefillStats {
            prompt_tokens: c.prompt.load(Ordering::Relaxed),
            computed_tokens: c.computed.load(Ordering::Relaxed),
            shared_tokens: c.shared.load(Ordering::Relaxed),
        }
    }
}

/// One running request: a sequence of the shared context.
struct Seq {
    id: i32,
    job: Job,
    /// Admission order: among requests waiting for the same prompt KV, the earliest computes it.
    admitted: u64,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Next position in the sequence.
    pos: i32,
    /// The last sampled token, still to be decoded.
    pending: Option<LlamaToken>,
    /// Index in the current batch whose logits belong to this sequence.
    logits_at: Option<i32>,
    /// The token just drawn from those logits.
    drawn: Option<LlamaToken>,
    /// The logits after the whole prompt, once it is in the KV cache (candidates of the same
    /// prompt draw their first token from them).
    prompt_logits: Option<Arc<[f32]>>,
    /// The prompt's KV came from a parked sequence: the first token is still to be drawn from
    /// `prompt_logits`.
    first_draw_due: bool,
    /// Reused buffer of sampling candidates (one per vocabulary entry).
    candidates: Vec<LlamaTokenData>,
    out: Vec<u8>,
    n_out: u32,
}

/// A finished request's sequence kept with its prompt in the KV cache, for later requests to
/// copy; it gives its slot up as soon as a new request needs one.
struct Parked {
    id: i32,
    prompt: PromptShape,
    logits: Option<Arc<[f32]>>,
    last_used: u64,
}

enum Finish {
    Stop,
    Length,
    /// A prompt chunk failed to decode.
    Failed(String),
}

/// The sequence slots of the context: free, running, parked.
struct Slots {
    free: Vec<i32>,
    active: Vec<Seq>,
    parked: Vec<Parked>,
    /// Ticks for admission order and parked recency.
    clock: u64,
}

impl Slots {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty() || !self.parked.is_empty()
    }
}

fn worker(
    model: Arc<LoadedModel>,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(), String>>,
    settings: EngineSettings,
    counters: &PrefillCounters,
) {
    let EngineSettings {
        max_sequences,
        context_per_sequence,
        prefix_sharing,
    } = settings;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .min(16) as i32;
    let parallel_sampling = threads > 1;
    // A call is either one decode token per sequence or one sequence's prefill chunk.
    let n_batch = PREFILL_CHUNK.max(max_sequences as u32);
    let mut ctx = match model::new_context(&model, settings, n_batch, threads) {
        Ok(c) => c,
        Err(message) => {
            let _ = ready.send(Err(message));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    let mut slots = Slots {
        free: (0..max_sequences as i32).rev().collect(),
        active: Vec::new(),
        parked: Vec::new(),
        clock: 0,
    };
    let mut open = true;
    loop {
        // Admit new requests: block when idle, otherwise take what is waiting.
        if slots.active.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => admit(job, &mut ctx, &mut slots, counters),
                Err(_) => return,
            }
        }
        while open && slots.has_room() {
            match jobs.try_recv() {
                Ok(job) => admit(job, &mut ctx, &mut slots, counters),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Drop requests whose caller went away.
        let mut i = 0;
        while i < slots.active.len() {
            if slots.active[i].job.reply.is_closed() {
                let seq = slots.active.swap_remove(i);
                release(&mut ctx, &mut slots.free, seq.id);
            } else {
                i += 1;
            }
        }
        if slots.active.is_empty() {
            continue;
        }
        // Keep a stable order (by seq id) so batches are built deterministically.
        slots.active.sort_by_key(|s| s.id);
        let vocab = model.model.vocab();
        let mut finished: Vec<(i32, Finish)> = Vec::new();

        // 1. One decode step: the pending token of every generating sequence, one call.
        batch.clear();
        let mut add_failed = None;
        for seq in slots.active.iter_mut() {
            seq.logits_at = None;
            if let Some(token) = seq.pending {
                let at = batch.n_tokens();
                if let Err(e) = batch.add(token, seq.pos, &[seq.id], true) {
                    add_failed = Some(e.to_string());
                    break;
                }
                seq.logits_at = Some(at);
            }
        }
        if batch.n_tokens() > 0 || add_failed.is_some() {
            if let Err(message) = decode(&mut ctx, &mut batch, add_failed) {
                fail_all(&mut ctx, &mut slots, &message);
                continue;
            }
            let mut draws: Vec<(&mut Seq, &[f32])> = slots
                .active
                .iter_mut()
                .filter_map(|seq| {
                    let at = seq.logits_at.take()?;
                    Some((seq, ctx.get_logits_ith(at)))
                })
                .collect();
            draw_all(&mut draws, parallel_sampling);
            drop(draws);
            for seq in slots.active.iter_mut() {
                let Some(token) = seq.drawn.take() else {
                    continue;
                };
                seq.pending = None;
                seq.pos += 1;
                if let Some(finish) = take_token(seq, token, &vocab, context_per_sequence) {
                    finished.push((seq.id, finish));
                }
            }
        }

        // 2. Prompts, in admission order. A prompt whose KV another sequence holds (or is
        // computing, admitted earlier) is copied from it; otherwise its next chunk is
        // prefilled in a call of its own: a prompt is then split into exactly the same
        // micro-batches whether it runs alone or next to others, which keeps its floats — and
        // its reply — independent of the rest of the workload (llama.cpp splits a mixed batch
        // per sequence, and the flash-attention kernel's result depends on how many query rows
        // it gets). At most one chunk's worth of tokens per step, so generating sequences are
        // not starved by a burst of long prompts.
        let mut order: Vec<usize> = (0..slots.active.len()).collect();
        order.sort_by_key(|&i| slots.active[i].admitted);
        let mut prefill_budget = PREFILL_CHUNK as usize;
        for i in order {
            let id = slots.active[i].id;
            if finished.iter().any(|(f, _)| *f == id) {
                continue;
            }
            if std::mem::take(&mut slots.active[i].first_draw_due) {
                if let Some(finish) = draw_first(&mut slots.active[i], &vocab, context_per_sequence)
                {
                    finished.push((id, finish));
                }
                continue;
            }
            let seq = &slots.active[i];
            if seq.prefilled == seq.job.prompt.len() || seq.pending.is_some() {
                continue;
            }
            if prefix_sharing {
                let holders = slots
                    .active
                    .iter()
                    .filter(|other| other.id != id)
                    .map(|other| Holder {
                        id: other.id,
                        shape: &other.job.prompt,
                        prompt_in_kv: other.prefilled,
                        logits: other.prompt_logits.as_ref(),
                        admitted: Some(other.admitted),
                    })
                    .chain(slots.parked.iter().map(|p| Holder {
                        id: p.id,
                        shape: &p.prompt,
                        prompt_in_kv: p.prompt.len(),
                        logits: p.logits.as_ref(),
                        admitted: None,
                    }));
                let plan = prefix::plan(&seq.job.prompt, seq.admitted, seq.prefilled, holders);
                let seq = &mut slots.active[i];
                match plan {
                    Plan::Wait => continue,
                    Plan::Prefill => {}
                    Plan::CopyPrompt { from, logits } => {
                        let len = seq.job.prompt.len();
                        copy_prompt_kv(&mut ctx, from, seq, len, counters);
                        touch(&mut slots.parked, from, &mut slots.clock);
                        seq.prompt_logits = Some(logits);
                        if let Some(finish) = draw_first(seq, &vocab, context_per_sequence) {
                            finished.push((id, finish));
                        }
                        continue;
                    }
                    Plan::CopyPrefix { from } => {
                        let split = seq.job.prompt.split();
                        copy_prompt_kv(&mut ctx, from, seq, split, counters);
                        touch(&mut slots.parked, from, &mut slots.clock);
                    }
                }
            }
            if prefill_budget == 0 {
                continue;
            }
            let seq = &mut slots.active[i];
            // Always a whole chunk (or the prompt's or its prefix's whole tail).
            let end = seq
                .job
                .prompt
                .chunk_end(seq.prefilled, PREFILL_CHUNK as usize);
            let take = end - seq.prefilled;
            prefill_budget = prefill_budget.saturating_sub(take);
            batch.clear();
            let mut add_failed = None;
            let mut logits_at = None;
            let tokens = seq.job.prompt.tokens();
            for (idx, &token) in tokens.iter().enumerate().take(end).skip(seq.prefilled) {
                let last = idx + 1 == tokens.len();
                let at = batch.n_tokens();
                if let Err(e) = batch.add(token, idx as i32, &[seq.id], last) {
                    add_failed = Some(e.to_string());
                    break;
                }
                if last {
                    logits_at = Some(at);
                }
            }
            if let Err(message) = decode(&mut ctx, &mut batch, add_failed) {
                finished.push((seq.id, Finish::Failed(message)));
                continue;
            }
            counters.computed.fetch_add(take as u64, Ordering::Relaxed);
            seq.prefilled = end;
            seq.pos = end as i32;
            if let Some(at) = logits_at {
                seq.prompt_logits = Some(Arc::from(ctx.get_logits_ith(at)));
                if let Some(finish) = draw_first(seq, &vocab, context_per_sequence) {
                    finished.push((seq.id, finish));
                }
            }
        }

        // 3. Reply to and release (or park) the finished sequences.
        for (id, finish) in finished {
            let Some(i) = slots.active.iter().position(|s| s.id == id) else {
                continue;
            };
            let seq = slots.active.swap_remove(i);
            let finish_reason = match finish {
                Finish::Stop => "stop",
                Finish::Length => "length",
                Finish::Failed(message) => {
                    let _ = seq
                        .job
                        .reply
                        .send(Err(ProviderError::new(ErrorKind::Local, message)));
                    release(&mut ctx, &mut slots.free, seq.id);
                    continue;
                }
            };
            let reply = ProviderReply {
                text: utf8_prefix(seq.out),
                finish_reason: Some(finish_reason.to_owned()),
                usage: Usage {
                    input_tokens: seq.job.prompt.len() as u64,
                    output_tokens: u64::from(seq.n_out),
                },
                hints: RateLimitHints::default(),
            };
            let _ = seq.job.reply.send(Ok(reply));
            if prefix_sharing {
                park(
                    &mut ctx,
                    &mut slots,
                    seq.id,
                    seq.job.prompt,
                    seq.prompt_logits,
                );
            } else {
                release(&mut ctx, &mut slots.free, seq.id);
            }
        }
    }
}

/// Copy the first `len` prompt tokens' KV of sequence `from` into `seq` (which holds fewer).
/// The copy of a whole stream is queued by llama.cpp and done at the start of the next
/// `llama_decode`, before anything can write to either stream.
fn copy_prompt_kv(
    ctx: &mut LlamaContext<'_>,
    from: i32,
    seq: &mut Seq,
    len: usize,
    counters: &PrefillCounters,
) {
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), None, None);
    // Whole streams only (positions unbounded): llama.cpp copies across streams no other way.
    let _ = ctx.copy_kv_cache_seq(from, seq.id, None, None);
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), Some(len as u32), None);
    counters
        .shared
        .fetch_add((len - seq.prefilled) as u64, Ordering::Relaxed);
    seq.prefilled = len;
    seq.pos = len as i32;
}

/// Mark the parked sequence `id` (if it is one) as just used.
fn touch(parked: &mut [Parked], id: i32, clock: &mut u64) {
    if let Some(p) = parked.iter_mut().find(|p| p.id == id) {
        *clock += 1;
        p.last_used = *clock;
    }
}

/// Draw the first token of `seq` from the logits after its prompt.
fn draw_first(
    seq: &mut Seq,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: u32,
) -> Option<Finish> {
    let logits = Arc::clone(seq.prompt_logits.as_ref()?);
    let token = draw(&mut seq.job.sampler, &mut seq.candidates, &logits);
    take_token(seq, token, vocab, context_per_sequence)
}

/// Run one `llama_decode` over `batch` (or report why the batch could not be built).
fn decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    add_failed: Option<String>,
) -> Result<(), String> {
    match add_failed {
        Some(e) => Err(format!("building the batch: {e}")),
        None => ctx
            .decode(batch)
            .map_err(|e| format!("llama_decode failed: {e}")),
    }
}

/// Fail every active request (the context itself is in trouble) and free every sequence.
fn fail_all(ctx: &mut LlamaContext<'_>, slots: &mut Slots, message: &str) {
    for seq in slots.active.drain(..) {
        let _ = seq.job.reply.send(Err(ProviderError::new(
            ErrorKind::Local,
            message.to_owned(),
        )));
        release(ctx, &mut slots.free, seq.id);
    }
    for parked in std::mem::take(&mut slots.parked) {
        release(ctx, &mut slots.free, parked.id);
    }
}
/// Draw the next token of every sequence in `draws` from its logits. The samplers are
/// independent (one chain per request) and llama.cpp is idle meanwhile, so with several
/// sequences half of them are drawn on a second thread: with `top_p`, drawing costs about as
/// much as decoding one token, and done one after the other it would leave a core idle.
fn draw_all(draws: &mut [(&mut Seq, &[f32])], parallel: bool) {
    let draw_into = |part: &mut [(&mut Seq, &[f32])]| {
        for (seq, logits) in part.iter_mut() {
            let token = draw(&mut seq.job.sampler, &mut seq.candidates, logits);
            seq.drawn = Some(token);
        }
    };
    if parallel && draws.len() >= 2 {
        let (left, right) = draws.split_at_mut(draws.len() / 2);
        std::thread::scope(|scope| {
            scope.spawn(|| draw_into(right));
            draw_into(left);
        });
    } else {
        draw_into(draws);
    }
}

/// Append the drawn `token` to `seq`: returns why the sequence is finished, or leaves the
/// token pending for the next decode step.
fn take_token(
    seq: &mut Seq,
    token: LlamaToken,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: u32,
) -> Option<Finish> {
    if vocab.is_eog(token) {
        return Some(Finish::Stop);
    }
    seq.n_out += 1;
    let before = seq.out.len();
    vocab.token_to_piece_into(token, &mut seq.out, false, None);
    if let Some(cut) = find_stop(&seq.out, before, &seq.job.stop) {
        seq.out.truncate(cut);
        return Some(Finish::Stop);
    }
    if seq.n_out >= seq.job.max_tokens || seq.pos + 1 >= context_per_sequence as i32 {
        return Some(Finish::Length);
    }
    seq.pending = Some(token);
    None
}

/// Give `job` a sequence: a free one, or else the least recently used parked one — preferably
/// one whose prompt KV `job` cannot use (that one stays for a copy); if every parked sequence
/// holds something `job` can use, it takes over the oldest with its KV.
fn admit(job: Job, ctx: &mut LlamaContext<'_>, slots: &mut Slots, counters: &PrefillCounters) {
    let admitted = slots.tick();
    counters
        .prompt
        .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
    let mut seq = Seq {
        id: -1,
        job,
        admitted,
        prefilled: 0,
        pos: 0,
        pending: None,
        logits_at: None,
        drawn: None,
        prompt_logits: None,
        first_draw_due: false,
        candidates: Vec::new(),
        out: Vec::new(),
        n_out: 0,
    };
    if let Some(id) = slots.free.pop() {
        seq.id = id;
        slots.active.push(seq);
        return;
    }
    let usable = |p: &Parked| {
        (p.logits.is_some() && p.prompt.same_prompt(&seq.job.prompt))
            || p.prompt.same_prefix(&seq.job.prompt)
    };
    let victim = slots
        .parked
        .iter()
        .enumerate()
        .filter(|(_, p)| !usable(p))
        .min_by_key(|(_, p)| p.last_used)
        .or_else(|| {
            slots
                .parked
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_used)
        })
        .map(|(i, _)| i)
        .expect("admit is only called with a free or parked sequence");
    let parked = slots.parked.swap_remove(victim);
    seq.id = parked.id;
    let keep = if !usable(&parked) {
        0
    } else if parked.logits.is_some() && parked.prompt.same_prompt(&seq.job.prompt) {
        seq.prompt_logits = parked.logits;
        seq.first_draw_due = true;
        seq.job.prompt.len()
    } else {
        seq.job.prompt.split()
    };
    let _ = ctx.clear_kv_cache_seq(Some(seq.id as u32), Some(keep as u32), None);
    counters.shared.fetch_add(keep as u64, Ordering::Relaxed);
    seq.prefilled = keep;
    seq.pos = keep as i32;
    slots.active.push(seq);
}

/// Keep a finished sequence with its prompt in the KV cache (unless a parked sequence already
/// holds the same prompt), trimmed to the prompt.
fn park(
    ctx: &mut LlamaContext<'_>,
    slots: &mut Slots,
    id: i32,
    prompt: PromptShape,
    logits: Option<Arc<[f32]>>,
) {
    let now = slots.tick();
    if let Some(twin) = slots
        .parked
        .iter_mut()
        .find(|p| p.prompt.same_prompt(&prompt))
    {
        twin.last_used = now;
        release(ctx, &mut slots.free, id);
        return;
    }
    let _ = ctx.clear_kv_cache_seq(Some(id as u32), Some(prompt.len() as u32), None);
    slots.parked.push(Parked {
        id,
        prompt,
        logits,
        last_used: now,
    });
}

fn release(ctx: &mut LlamaContext<'_>, free: &mut Vec<i32>, id: i32) {
    let _ = ctx.clear_kv_cache_seq(Some(id as u32), None, None);
    free.push(id);
    // Lowest ids first, so the same workload maps to the same ids.
    free.sort_unstable_by(|a, b| b.cmp(a));
}

/// Where the earliest stop sequence starts, looking only at matches that end in the new bytes.
fn find_stop(out: &[u8], new_from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter_map(|stop| {
            let stop = stop.as_bytes();
            let start = new_from.saturating_sub(stop.len() - 1);
            out[start..]
                .windows(stop.len())
                .position(|w| w == stop)
                .map(|p| start + p)
        })
        .min()
}

/// The text of `bytes`, dropping an incomplete UTF-8 sequence at the end (a reply cut at
/// `max_tokens` can end mid-character) and replacing any other invalid bytes.
fn utf8_prefix(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_cut_at_the_earliest_match() {
        let out = b"hello world. END more".to_vec();
        assert_eq!(find_stop(&out, 0, &["END".into(), "world".into()]), Some(6));
        assert_eq!(find_stop(&out, 15, &["END".into()]), Some(13));
        assert_eq!(find_stop(&out, 0, &["zzz".into()]), None);
    }

    #[test]
    fn incomplete_utf8_is_dropped() {
        let mut b = "héllo".as_bytes().to_vec();
        b.extend_from_slice(&[0xe2, 0x82]);
        assert_eq!(utf8_prefix(b), "héllo");
    }
}
