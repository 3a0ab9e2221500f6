//! Prompt KV sharing: where a request's prompt is split for prefill, and which sequence's KV cache it may copy instead of prefilling.
//!
//! A prompt has two shareable parts, both functions of the request alone:
//!
//! - its **prefix**: the rendered tokens of every message before the last user message (system
//!   prompt and history), always prefilled as a part of its own — chunks start at multiples of
//!   [`super::engine::PREFILL_CHUNK`] inside it, and the rest of the prompt starts a new chunk
//!   right after it. The KV of a prefix is therefore the same computation whichever request
//!   makes it, and a request with the same prefix (same tokens, same length) may copy it.
//! - the **whole prompt** with the logits of its last token: candidates of one prompt (the same
//!   messages sent with different seeds) copy all of it and draw their first token from the
//!   saved logits with their own sampler.
//!
//! Copies are exact (`llama_memory_seq_cp` between the one-per-sequence KV streams copies the
//! stream's buffer), so a request's text does not depend on whether its KV was computed or
//! copied. Finished requests stay *parked* in their sequence slot, trimmed to their prompt, until
//! a new request needs the slot (least recently used first), so later requests with the same
//! system prompt copy it too; parked slots never keep a request waiting.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use llama_cpp_2::token::LlamaToken;

/// A request's prompt tokens and where its prefix ends.
#[derive(Debug)]
pub(super) struct PromptShape {
    tokens: Vec<LlamaToken>,
    /// Length of the prefix prefilled as its own part (0: none).
    split: usize,
    prefix_hash: u64,
    prompt_hash: u64,
}

fn hash_tokens(tokens: &[LlamaToken]) -> u64 {
    // `DefaultHasher::new()` has fixed keys: equal token lists hash equally.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut hasher);
    hasher.finish()
}

impl PromptShape {
    /// `tokens` with the prefix `prefix` (the tokens of the messages before the last user
    /// message), used only when it is a proper, non-empty prefix of `tokens`.
    pub(super) fn new(tokens: Vec<LlamaToken>, prefix: Option<&[LlamaToken]>) -> Self {
        let split = match prefix {
            Some(p) if !p.is_empty() && p.len() < tokens.len() && tokens.starts_with(p) => p.len(),
            _ => 0,
        };
        Self {
            prefix_hash: hash_tokens(&tokens[..split]),
            prompt_hash: hash_tokens(&tokens),
            split,
            tokens,
        }
    }

    pub(super) fn tokens(&self) -> &[LlamaToken] {
        &self.tokens
    }

    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn split(&self) -> usize {
        self.split
    }

    /// Where the prefill chunk starting at `prefilled` (a chunk boundary) ends.
    pub(super) fn chunk_end(&self, prefilled: usize, chunk: usize) -> usize {
        let part_end = if prefilled < self.split {
            self.split
        } else {
            self.tokens.len()
        };
        part_end.min(prefilled + chunk)
    }

    /// Same tokens and the same prefix: the KV cache of one is the KV cache of the other.
    pub(super) fn same_prompt(&self, other: &Self) -> bool {
        self.prompt_hash == other.prompt_hash
            && self.split == other.split
            && self.tokens == other.tokens
    }

    /// A non-empty prefix equal to `other`'s (same length, same tokens).
    pub(super) fn same_prefix(&self, other: &Self) -> bool {
        self.split > 0
            && self.split == other.split
            && self.prefix_hash == other.prefix_hash
            && self.tokens[..self.split] == other.tokens[..other.split]
    }
}

/// What another sequence (running or parked) holds, as seen by a request that wants to prefill.
pub(super) struct Holder<'a> {
    pub id: i32,
    pub shape: &'a PromptShape,
    /// Prompt tokens in its KV cache, counted from position 0.
    pub prompt_in_kv: usize,
    /// The logits after its whole prompt, once computed.
    pub logits: Option<&'a Arc<[f32]>>,
    /// Admission order of a running sequence; `None` for a parked one.
    pub admitted: Option<u64>,
}

/// How a sequence gets the next part of its prompt into its KV cache.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    /// Copy the whole prompt's KV from `from` and draw the first token from `logits`.
    CopyPrompt { from: i32, logits: Arc<[f32]> },
    /// Copy the prefix's KV from `from`.
    CopyPrefix { from: i32 },
    /// An earlier request is computing what this one needs: wait for it.
    Wait,
    /// Prefill the next chunk.
    Prefill,
}

/// The plan of the request `me` (admitted as `admitted`, `prefilled` prompt tokens in its KV)
/// given what the other sequences hold. Waiting is only ever on an earlier admission, so the
/// earliest request of a group always makes progress.
pub(super) fn plan<'a>(
    me: &PromptShape,
    admitted: u64,
    prefilled: usize,
    holders: impl IntoIterator<Item = Holder<'a>>,
) -> Plan {
    let mut wait = false;
    let mut prefix_from = None;
    let wants_prefix = prefilled < me.split;
    for holder in holders {
        let earlier = holder.admitted.is_none_or(|a| a < admitted);
        if me.same_prompt(holder.shape) {
            if let Some(logits) = holder.logits {
                return Plan::CopyPrompt {
                    from: holder.id,
                    logits: Arc::clone(logits),
                };
            }
            wait |= earlier;
        }
        if wants_prefix && me.same_prefix(holder.shape) {
            if holder.prompt_in_kv >= me.split {
                prefix_from.get_or_insert(holder.id);
            } else {
                wait |= earlier;
            }
        }
    }
    if wait {
        Plan::Wait
    } else if let Some(from) = prefix_from {
        Plan::CopyPrefix { from }
    } else {
        Plan::Prefill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().copied().map(LlamaToken::new).collect()
    }

    fn shape(ids: &[i32], prefix: usize) -> PromptShape {
        let t = toks(ids);
        let p = t[..prefix].to_vec();
        PromptShape::new(t, Some(&p))
    }

    #[test]
    fn the_prefix_is_used_only_when_it_is_a_proper_prefix() {
        let t = toks(&[1, 2, 3, 4]);
        assert_eq!(PromptShape::new(t.clone(), Some(&toks(&[1, 2]))).split(), 2);
        assert_eq!(PromptShape::new(t.clone(), Some(&toks(&[1, 3]))).split(), 0);
        assert_eq!(PromptShape::new(t.clone(), Some(&t)).split(), 0);
        assert_eq!(PromptShape::new(t.clone(), Some(&[])).split(), 0);
        assert_eq!(PromptShape::new(t, None).split(), 0);
    }

    #[test]
    fn chunks_restart_at_the_end_of_the_prefix() {
        let ids: Vec<i32> = (0..1300).collect();
        let s = shape(&ids, 700);
        let mut at = 0;
        let mut ends = Vec::new();
        while at < s.len() {
            at = s.chunk_end(at, 512);
            ends.push(at);
        }
        assert_eq!(ends, [512, 700, 1212, 1300]);
        let whole = PromptShape::new(toks(&ids), None);
        assert_eq!(whole.chunk_end(0, 512), 512);
        assert_eq!(whole.chunk_end(1024, 512), 1300);
    }

    #[test]
    fn prefixes_match_only_with_the_same_split() {
        let a = shape(&[1, 2, 3, 4, 5], 3);
        let b = shape(&[1, 2, 3, 9], 3);
        let c = shape(&[1, 2, 3, 4, 9], 4);
        let none = shape(&[1, 2, 3, 4, 5], 0);
        assert!(a.same_prefix(&b) && b.same_prefix(&a));
        assert!(
            !a.same_prefix(&c),
            "a longer prefix is another chunk schedule"
        );
        assert!(!none.same_prefix(&none));
        assert!(!a.same_prompt(&b));
        assert!(a.same_prompt(&shape(&[1, 2, 3, 4, 5], 3)));
        assert!(!a.same_prompt(&none), "same tokens, other chunk schedule");
    }

    #[test]
    fn plans_copy_wait_or_prefill() {
        let me = shape(&[1, 2, 3, 4, 5], 3);
        let twin = shape(&[1, 2, 3, 4, 5], 3);
        let sibling = shape(&[1, 2, 3, 7, 8, 9], 3);
        let stranger = shape(&[6, 2, 3, 4, 5], 3);
        let logits: Arc<[f32]> = Arc::from(vec![0.5f32, 1.0]);
        let holder = |id, shape, prompt_in_kv, logits, admitted| Holder {
            id,
            shape,
            prompt_in_kv,
            logits,
            admitted,
        };

        // Nobody holds anything useful.
        assert_eq!(
            plan(&me, 5, 0, [holder(1, &stranger, 5, None, Some(1))]),
            Plan::Prefill
        );
        // A finished twin (parked or running) gives the whole prompt.
        assert_eq!(
            plan(&me, 5, 0, [holder(1, &twin, 5, Some(&logits), None)]),
            Plan::CopyPrompt {
                from: 1,
                logits: Arc::clone(&logits)
            }
        );
        // A twin admitted earlier, still prefilling: wait for it, even if a sibling holds the prefix.
        assert_eq!(
            plan(
                &me,
                5,
                0,
                [
                    holder(2, &sibling, 6, Some(&logits), None),
                    holder(1, &twin, 3, None, Some(4))
                ]
            ),
            Plan::Wait
        );
        // A twin admitted later does not hold this one back.
        assert_eq!(
            plan(&me, 5, 0, [holder(1, &twin, 0, None, Some(6))]),
            Plan::Prefill
        );
        // A sibling with the prefix computed gives the prefix.
        assert_eq!(
            plan(&me, 5, 0, [holder(2, &sibling, 3, None, Some(9))]),
            Plan::CopyPrefix { from: 2 }
        );
        // … unless this request is past its prefix already.
        assert_eq!(
            plan(&me, 5, 3, [holder(2, &sibling, 3, None, Some(9))]),
            Plan::Prefill
        );
        // An earlier sibling still in the prefix: wait; a later one: go ahead.
        assert_eq!(
            plan(&me, 5, 0, [holder(2, &sibling, 0, None, Some(1))]),
            Plan::Wait
        );
        assert_eq!(
            plan(&me, 5, 0, [holder(2, &sibling, 0, None, Some(7))]),
            Plan::Prefill
        );
    }
}
