//! Sampling: the per-request sampler chain (JSON-schema grammar, temperature, `top_p`, a seeded draw) and drawing a token from logits copied out of the context.
//!
//! Every request has its own chain seeded from its cache key (or its explicit `seed`), so a
//! request's draws do not depend on what else is batched with it.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;

use super::LocalModelError;
use crate::provider::gbnf::json_schema_to_gbnf;
use crate::provider::{ErrorKind, Params, ProviderError};

/// Fold a 64-bit seed into llama.cpp's 32-bit one, avoiding `LLAMA_DEFAULT_SEED` (u32::MAX),
/// which llama.cpp treats as "pick a random seed".
fn fold_seed(seed: u64) -> u32 {
    let s = (seed ^ (seed >> 32)) as u32;
    if s == u32::MAX { 0x5eed_5eed } else { s }
}

/// The sampling chain of one request: the grammar of its `json_schema` (if any), then greedy
/// (temperature ≤ 0) or `top_p`, temperature and a draw seeded with `seed`.
pub(super) fn build_sampler(
    model: &LlamaModel,
    params: &Params,
    seed: u64,
) -> Result<LlamaSampler, ProviderError> {
    let mut chain = Vec::new();
    if let Some(schema) = &params.json_schema {
        let grammar = json_schema_to_gbnf(schema).map_err(|e| {
            ProviderError::new(ErrorKind::BadRequest, LocalModelError::from(e).to_string())
        })?;
        let sampler = LlamaSampler::grammar(model, &grammar, "root").map_err(|e| {
            ProviderError::new(
                ErrorKind::BadRequest,
                format!("llama.cpp rejected the grammar for the JSON schema: {e}"),
            )
        })?;
        chain.push(sampler);
    }
    let temperature = params.temperature.unwrap_or(0.8);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if let Some(p) = params.top_p
            && p > 0.0
            && p < 1.0
        {
            chain.push(LlamaSampler::top_p(p, 1));
        }
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(fold_seed(seed)));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// What `llama_sampler_sample` does, on logits already copied out of the context: apply the
/// chain to all candidates, take the selected token and let the chain accept it (grammar
/// state). `candidates` is a reusable buffer.
pub(super) fn draw(
    sampler: &mut LlamaSampler,
    candidates: &mut Vec<LlamaTokenData>,
    logits: &[f32],
) -> LlamaToken {
    let mut buffer = std::mem::take(candidates);
    buffer.clear();
    buffer.extend(
        logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| LlamaTokenData::new(LlamaToken::new(id as i32), logit, 0.0)),
    );
    let mut array = LlamaTokenDataArray::new(buffer, false);
    sampler.apply(&mut array);
    // Every chain ends in `dist` or `greedy`, which select a token; fall back to the most
    // likely one rather than fail if a chain ever does not.
    let token = array.selected_token().unwrap_or_else(|| {
        array
            .data
            .iter()
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map_or(LlamaToken::new(0), LlamaTokenData::id)
    });
    sampler.accept(token);
    *candidates = array.data;
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_avoid_the_random_sentinel() {
        assert_ne!(fold_seed(u64::from(u32::MAX)), u32::MAX);
        assert_eq!(fold_seed(7), 7);
    }
}
