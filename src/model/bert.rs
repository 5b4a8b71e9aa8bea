//! BERT-family text encoders (Hugging Face's `model_type: bert`), cut into xferlab's blocks:
//! b1 the embeddings (word, position and token type, LayerNorm), b2..b(L+1) the L encoder
//! layers (self-attention, feed-forward), the last one ending in pooling to one vector per
//! text, so that a whole frozen encoder's output is that vector.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The encoder's shape: the fields of Hugging Face's `config.json` that BERT reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every token vector.
    pub hidden_size: usize,
    /// Encoder layers, L.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (a divisor of `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Token types (segments) the embeddings know.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// LayerNorm's epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Dropout after the embeddings, attention output and feed-forward output (trainable
    /// blocks, training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout of the attention probabilities (trainable blocks, training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The feed-forward activation: `gelu` (erf), `gelu_new` (tanh approximation) or `relu`.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
}

fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_hidden_act() -> String {
    "gelu".into()
}
