//! BERT-family text encoders (Hugging Face's `model_type: bert`), cut into xferlab's blocks:
//! b1 the embeddings (word, position and token type, LayerNorm), b2..b(L+1) the L encoder
//! layers (self-attention, feed-forward), the last one ending in pooling to one vector per
//! text, so that a whole frozen encoder's output is that vector.
//!
//! It follows Hugging Face's `BertModel` (post-LayerNorm layers, absolute positions, token
//! type 0 for every token), with parameters named as its checkpoints name them, `embeddings.`
//! becoming `b1.` and `encoder.layer.N.` becoming `b{N+2}.`. In training mode every op has a
//! gradient, since any block may be fine-tuned; in inference mode (frozen blocks and
//! evaluation, which nothing differentiates) LayerNorm and softmax are candle-nn's fused
//! kernels, which have none.

use candle_core::op::{Gelu, GeluErf, UnaryOpT};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::dropout::{Dropout, mix};
use super::lora;
use super::parameters::Parameters;
use super::{Mode, f32_values, is_cpu_f32};
use crate::spec::Pooling;

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

/// Standard deviation of BERT's initial weights (`initializer_range`, 0.02 in every BERT
/// config; not among [`BertConfig`]'s fields).
pub const INITIALIZER_RANGE: f32 = 0.02;

/// The feed-forward activation, from `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// `gelu`: exact, with erf.
    GeluErf,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// The activation; on the CPU one parallel pass with candle's own arithmetic (candle's CPU
    /// unary ops run on one thread), and in training one pass back (candle's gradient of GELU
    /// is eight tensor ops, each a full-size temporary).
    fn forward(self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        if is_cpu_f32(x) {
            return match mode {
                Mode::Infer => x.detach().contiguous()?.apply_op1_no_bwd(&self),
                Mode::Train => x.contiguous()?.apply_op1(self),
            };
        }
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }

    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::GeluErf => GeluErf::f32(v),
            Activation::GeluTanh => Gelu::f32(v),
            Activation::Relu => v.max(0.0),
        }
    }

    /// The derivative at `v`, with the constants of candle's backward pass.
    fn derivative(self, v: f32) -> f32 {
        match self {
            Activation::GeluErf => {
                let erf = candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2);
                0.5 + 0.398942 * (-0.5 * v * v).exp() * v + 0.5 * erf
            }
            Activation::GeluTanh => {
                let cube = v * v * v;
                let tanh = (0.0356774 * cube + 0.797885 * v).tanh();
                0.5 * tanh + (0.0535161 * cube + 0.398942 * v) * (1.0 - tanh * tanh) + 0.5
            }
            Activation::Relu => f32::from(u8::from(v >= 0.0)),
        }
    }
}

/// The activation's backward pass: the output gradient times the derivative at the input.
struct ActivationGrad(Activation);

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "bert-activation-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (xs, g) = (f32_values(x, x_layout)?, f32_values(grad, grad_layout)?);
        let dx = (xs.par_iter().zip(g))
            .map(|(&v, &g)| g * self.0.derivative(v))
            .collect();
        Ok((CpuStorage::F32(dx), x_layout.shape().clone()))
    }
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        "bert-activation"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = (f32_values(x, layout)?.par_iter())
            .map(|&v| self.apply(v))
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&grad, &ActivationGrad(*self))?))
    }
}

/// LayerNorm over the last dimension: in training mode xferlab's op (`rows`), which has a
/// gradient; in inference mode candle-nn's one fused op.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: &mut Parameters, name: &str, width: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(LayerNorm {
            weight: p.full(format!("{name}.weight"), &[width], 1.0)?,
            bias: p.full(format!("{name}.bias"), &[width], 0.0)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        if mode == Mode::Infer {
            let (weight, bias) = (self.weight.detach(), self.bias.detach());
            return candle_nn::ops::layer_norm(&x.detach(), &weight, &bias, self.eps as f32);
        }
        super::rows::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A linear layer in BERT's initialisation: weight normal(0, 0.02), bias 0.
fn linear(
    p: &mut Parameters,
    name: &str,
    input: usize,
    output: usize,
) -> candle_core::Result<lora::Linear> {
    let weight = p.normal(
        format!("{name}.weight"),
        &[output, input],
        INITIALIZER_RANGE,
    )?;
    let bias = p.full(format!("{name}.bias"), &[output], 0.0)?;
    Ok(lora::Linear {
        linear: Linear::new(weight, Some(bias)),
        lora: p.lora(name, (input, output), None)?,
    })
}

/// Block b1: word, position and token type embeddings, summed, LayerNorm, dropout.
pub struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
    dropout: Dropout,
}

impl Embeddings {
    /// Token ids (B, S) to token vectors (B, S, H); positions 0..S, token type 0.
    fn forward(&self, ids: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let (batch, length) = ids.dims2()?;
        let positions = self.position.dim(0)?;
        if length > positions {
            candle_core::bail!(
                "bert: {length} tokens, the position embeddings cover {positions} (max_position_embeddings)"
            );
        }
        let words =
            (self.word.index_select(&ids.flatten_all()?, 0)?).reshape((batch, length, ()))?;
        let x = words
            .broadcast_add(&self.position.narrow(0, 0, length)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?;
        self.dropout.forward(&self.norm.forward(&x, mode)?, mode)
    }
}

/// Blocks b2..b(L+1): one encoder layer (self-attention, then feed-forward, each with a
/// residual connection and LayerNorm after it); the last one also pools.
pub struct Layer {
    heads: usize,
    query: lora::Linear,
    key: lora::Linear,
    value: lora::Linear,
    attention_dropout: Dropout,
    attention_output: lora::Linear,
    attention_output_dropout: Dropout,
    attention_norm: LayerNorm,
    intermediate: lora::Linear,
    activation: Activation,
    output: lora::Linear,
    output_dropout: Dropout,
    output_norm: LayerNorm,
    pooling: Option<Pooling>,
}

impl Layer {
    /// Token vectors (B, S, H) and the mask (B, S) to token vectors (B, S, H), or pooled
    /// vectors (B, H) for the last layer.
    fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let (batch, length, hidden) = x.dims3()?;
        let head = hidden / self.heads;
        if mode == Mode::Infer && is_cpu_f32(x) {
            let attention = Attention {
                heads: self.heads,
                mask: mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            };
            let (query, key) = (self.query.forward(x, mode)?, self.key.forward(x, mode)?);
            let value = self.value.forward(x, mode)?;
            let context =
                query
                    .detach()
                    .apply_op3_no_bwd(&key.detach(), &value.detach(), &attention)?;
            return self.finish(x, &context, mask, mode);
        }
        // (B, S, H) to (B, heads, S, head).
        let split = |t: Tensor| {
            t.reshape((batch, length, self.heads, head))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = split(self.query.forward(x, mode)?)?;
        let key = split(self.key.forward(x, mode)?)?;
        let value = split(self.value.forward(x, mode)?)?;
        let scores = (query.matmul(&key.t()?)? / (head as f64).sqrt())?;
        let mask = mask.to_dtype(x.dtype())?;
        // Padding keys get the lowest float, so that softmax gives them weight 0 (Hugging
        // Face's extended attention mask).
        let bias = ((1.0 - &mask)? * f64::from(f32::MIN))?.reshape((batch, 1, 1, length))?;
        let scores = scores.broadcast_add(&bias)?;
        let probabilities = match mode {
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores.detach())?,
            Mode::Train => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probabilities = self.attention_dropout.forward(&probabilities, mode)?;
        let context = probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, length, hidden))?;
        self.finish(x, &context, &mask, mode)
    }

    /// The layer after self-attention's context (B, S, H): its output projection, the
    /// residual and LayerNorm, the feed-forward part, and pooling in the last layer.
    fn finish(
        &self,
        x: &Tensor,
        context: &Tensor,
        mask: &Tensor,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let attended = self.attention_output.forward(context, mode)?;
        let attended = self.attention_output_dropout.forward(&attended, mode)?;
        let x = self.attention_norm.forward(&(attended + x)?, mode)?;
        let inner = self
            .activation
            .forward(&self.intermediate.forward(&x, mode)?, mode)?;
        let out = self
            .output_dropout
            .forward(&self.output.forward(&inner, mode)?, mode)?;
        let x = self.output_norm.forward(&(out + x)?, mode)?;
        match self.pooling {
            None => Ok(x),
            Some(pooling) => pool(&x, &mask.to_dtype(x.dtype())?, pooling),
        }
    }
}

/// Self-attention in inference mode on the CPU, as one op over query, key and value
/// (B, S, H): for each text in parallel and each head, scores = q kᵀ / sqrt(head) plus the
/// padding mask's bias, softmax, then the context, read and written in (B, S, H) where candle
/// would copy to (B, heads, S, head) and back and run two tiny matrix multiplies per head,
/// each spread over the threads.
struct Attention {
    heads: usize,
    /// (B, S): 1 for a real token, 0 for padding.
    mask: Vec<f32>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "bert-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qs = f32_values(q, q_layout)?;
        let (ks, vs) = (f32_values(k, k_layout)?, f32_values(v, v_layout)?);
        let (batch, length, hidden) = q_layout.shape().dims3()?;
        let head = hidden / self.heads;
        let scale = 1.0 / (head as f32).sqrt();
        let mut out = vec![0f32; batch * length * hidden];
        out.par_chunks_mut(length * hidden)
            .enumerate()
            .for_each_init(
                || vec![0f32; length * length],
                |scores, (text, out)| {
                    let at = text * length * hidden;
                    let mask = &self.mask[text * length..][..length];
                    for h in 0..self.heads {
                        let (q, k, v) = (
                            &qs[at + h * head..],
                            &ks[at + h * head..],
                            &vs[at + h * head..],
                        );
                        // SAFETY: q, k and v hold the text's S rows of H values from head h's
                        // column on; scores is S x S; out's rows are H apart.
                        unsafe {
                            // scores = q kᵀ, S x S
                            gemm::gemm(
                                length,
                                length,
                                head,
                                scores.as_mut_ptr(),
                                1,
                                length as isize,
                                false,
                                q.as_ptr(),
                                1,
                                hidden as isize,
                                k.as_ptr(),
                                hidden as isize,
                                1,
                                0.0,
                                scale,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        for row in scores.chunks_mut(length) {
                            // Padding keys get the lowest float (Hugging Face's extended mask).
                            for (s, &m) in row.iter_mut().zip(mask) {
                                *s += (1.0 - m) * f32::MIN;
                            }
                            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let mut sum = 0.0;
                            for s in row.iter_mut() {
                                *s = (*s - max).exp();
                                sum += *s;
                            }
                            row.iter_mut().for_each(|s| *s /= sum);
                        }
                        // SAFETY: as above; out gets head h's S x head block.
                        unsafe {
                            gemm::gemm(
                                length,
                                head,
                                length,
                                out[h * head..].as_mut_ptr(),
                                1,
                                hidden as isize,
                                false,
                                scores.as_ptr(),
                                1,
                                length as isize,
                                v.as_ptr(),
                                1,
                                hidden as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }
}

/// Token vectors (B, S, H) to one vector per text: the [CLS] token's, or the mean over the
/// real tokens of `mask` (B, S), in x's dtype.
pub(crate) fn pool(x: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    match pooling {
        Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => {
            let mask = mask.unsqueeze(2)?;
            let sum = x.broadcast_mul(&mask)?.sum(1)?;
            // sentence-transformers' clamp: a text of padding alone gives 0, not NaN.
            sum.broadcast_div(&mask.sum(1)?.clamp(1e-9, f64::MAX)?)
        }
    }
}

/// One of xferlab's BERT blocks.
pub enum Block {
    /// b1: the embeddings.
    Embeddings(Embeddings),
    /// b2..b(L+1): the encoder layers.
    Layer(Box<Layer>),
}

impl Block {
    /// Runs the block in `mode`: b1 maps token ids (B, S) u32 to vectors (B, S, H); a layer
    /// maps (B, S, H) to (B, S, H), the last one to pooled vectors (B, H). `mask` (B, S) is 1
    /// for real tokens and 0 for padding (b1 ignores it). Dropout only in training.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match self {
            Block::Embeddings(embeddings) => embeddings.forward(x, mode),
            Block::Layer(layer) => layer.forward(x, mask, mode),
        }
    }
}

/// Checks that `config` describes an encoder these blocks can run (the planner asks too);
/// the error says why not.
pub fn check(config: &BertConfig) -> Result<(), String> {
    activation(config).map(drop).map_err(|e| match e {
        candle_core::Error::Msg(message) => message,
        other => other.to_string(),
    })
}

/// The config's activation, once the config is known to be one these blocks run.
fn activation(config: &BertConfig) -> candle_core::Result<Activation> {
    let c = config;
    // Plain messages (not `bail!`, which may add a backtrace): people read them.
    let refuse = |message: String| Err(candle_core::Error::Msg(message));
    if c.num_hidden_layers == 0 {
        return refuse("num_hidden_layers is 0; the last layer pools, so at least 1".into());
    }
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return refuse(format!(
            "hidden_size {} is not divisible by num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    for (name, p) in [
        ("hidden_dropout_prob", c.hidden_dropout_prob),
        (
            "attention_probs_dropout_prob",
            c.attention_probs_dropout_prob,
        ),
    ] {
        if !(0.0..1.0).contains(&p) {
            return refuse(format!("{name} {p} is not in [0, 1)"));
        }
    }
    match Activation::parse(&c.hidden_act) {
        Some(activation) => Ok(activation),
        None => refuse(format!(
            "hidden_act `{}` is not one of gelu, gelu_new, gelu_pytorch_tanh, relu",
            c.hidden_act
        )),
    }
}

/// The blocks b1..b(L+1) of `config`'s encoder, freshly initialised as BERT's
/// `_init_weights` (linear and embedding weights normal(0, 0.02), biases 0, LayerNorm weight
/// 1 and bias 0), the last layer pooling by `pooling`. `seed` seeds the dropouts (the
/// weights come from `p`'s generator).
pub(crate) fn build(
    p: &mut Parameters,
    config: &BertConfig,
    pooling: Pooling,
    seed: u64,
) -> candle_core::Result<Vec<Block>> {
    let activation = activation(config)?;
    let c = config;
    let h = c.hidden_size;
    // Each dropout its own stream: numbered in build order.
    let mut dropouts = 0u64;
    let mut dropout = |rate: f64| {
        dropouts += 1;
        Dropout::new(rate, mix(seed, dropouts))
    };
    let embeddings = Embeddings {
        word: p.normal(
            "b1.word_embeddings.weight".into(),
            &[c.vocab_size, h],
            INITIALIZER_RANGE,
        )?,
        position: p.normal(
            "b1.position_embeddings.weight".into(),
            &[c.max_position_embeddings, h],
            INITIALIZER_RANGE,
        )?,
        token_type: p.normal(
            "b1.token_type_embeddings.weight".into(),
            &[c.type_vocab_size, h],
            INITIALIZER_RANGE,
        )?,
        norm: LayerNorm::new(p, "b1.LayerNorm", h, c.layer_norm_eps)?,
        dropout: dropout(c.hidden_dropout_prob),
    };
    let mut blocks = vec![Block::Embeddings(embeddings)];
    for n in 0..c.num_hidden_layers {
        let name = |part: &str| format!("b{}.{part}", n + 2);
        let layer = Layer {
            heads: c.num_attention_heads,
            query: linear(p, &name("attention.self.query"), h, h)?,
            key: linear(p, &name("attention.self.key"), h, h)?,
            value: linear(p, &name("attention.self.value"), h, h)?,
            attention_dropout: dropout(c.attention_probs_dropout_prob),
            attention_output: linear(p, &name("attention.output.dense"), h, h)?,
            attention_output_dropout: dropout(c.hidden_dropout_prob),
            attention_norm: LayerNorm::new(
                p,
                &name("attention.output.LayerNorm"),
                h,
                c.layer_norm_eps,
            )?,
            intermediate: linear(p, &name("intermediate.dense"), h, c.intermediate_size)?,
            activation,
            output: linear(p, &name("output.dense"), c.intermediate_size, h)?,
            output_dropout: dropout(c.hidden_dropout_prob),
            output_norm: LayerNorm::new(p, &name("output.LayerNorm"), h, c.layer_norm_eps)?,
            pooling: (n + 1 == c.num_hidden_layers).then_some(pooling),
        };
        blocks.push(Block::Layer(Box::new(layer)));
    }
    Ok(blocks)
}

/// A checkpoint name without the `bert.` prefix that `BertFor...` models add.
fn unprefixed(checkpoint: &str) -> &str {
    checkpoint.strip_prefix("bert.").unwrap_or(checkpoint)
}

/// Whether checkpoint tensor `checkpoint` is deliberately left out: the pooler, task heads
/// (`classifier.*`, `cls.*`: xferlab's head is always new) and `embeddings.position_ids` (a
/// constant 0..max, not a parameter).
pub fn dropped(checkpoint: &str) -> bool {
    let name = unprefixed(checkpoint);
    name == "embeddings.position_ids"
        || ["pooler.", "classifier.", "cls."]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The xferlab name of a Hugging Face BERT checkpoint tensor (with or without `bert.`, old
/// TensorFlow-converted `LayerNorm.gamma`/`beta` read as `weight`/`bias`), or None for a
/// name BERT does not know or one that is [`dropped`].
pub fn xferlab_name(checkpoint: &str) -> Option<String> {
    if dropped(checkpoint) {
        return None;
    }
    let name = unprefixed(checkpoint);
    let name = if let Some(stem) = name.strip_suffix("LayerNorm.gamma") {
        format!("{stem}LayerNorm.weight")
    } else if let Some(stem) = name.strip_suffix("LayerNorm.beta") {
        format!("{stem}LayerNorm.bias")
    } else {
        name.to_string()
    };
    if let Some(rest) = name.strip_prefix("embeddings.") {
        return Some(format!("b1.{rest}"));
    }
    let (layer, rest) = name.strip_prefix("encoder.layer.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    Some(format!("b{}.{rest}", layer + 2))
}

/// The Hugging Face name (without `bert.`) of an xferlab BERT parameter, or None (the head).
pub fn checkpoint_name(xferlab: &str) -> Option<String> {
    let (block, rest) = xferlab.split_once('.')?;
    match block.strip_prefix('b')?.parse::<usize>().ok()? {
        0 => None,
        1 => Some(format!("embeddings.{rest}")),
        b => Some(format!("encoder.layer.{}.{rest}", b - 2)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use candle_core::{DType, Device, Var};
    use tokenizers::Tokenizer;

    use super::*;

    /// The activations' CPU op and its backward pass against candle's ops and gradients.
    #[test]
    fn activations_and_their_gradients_agree_with_candles() {
        let device = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2., (4, 50), &device).unwrap())).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for activation in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            let theirs = match activation {
                Activation::GeluErf => x.gelu_erf(),
                Activation::GeluTanh => x.gelu(),
                Activation::Relu => x.relu(),
            }
            .unwrap();
            let ours = activation.forward(&x, Mode::Train).unwrap();
            assert_eq!(flat(&ours), flat(&theirs), "{activation:?}");
            let grad = |y: &Tensor| {
                let loss = (y * y.cos().unwrap()).unwrap().sum_all().unwrap();
                flat(loss.backward().unwrap().get(&x).unwrap())
            };
            let (ours, theirs) = (grad(&ours), grad(&theirs));
            for (o, t) in ours.iter().zip(&theirs) {
                assert!(
                    (o - t).abs() <= 1e-4 * (1.0 + t.abs()),
                    "{activation:?}: {o} {t}"
                );
            }
        }
    }

    fn minilm() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/all-minilm-l6-v2")
    }

    /// The model's tokenizer, without the fixed padding to 128 its `tokenizer.json` sets.
    fn tokenizer() -> Tokenizer {
        let mut tokenizer = Tokenizer::from_file(minilm().join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, true).unwrap().get_ids().to_vec()
    }

    fn vars(p: &Parameters) -> HashMap<String, Var> {
        p.varmap.data().lock().unwrap().clone()
    }

    fn run(blocks: &[Block], ids: &Tensor, mask: &Tensor, mode: Mode) -> Tensor {
        let mut x = ids.clone();
        for block in blocks {
            x = block.forward(&x, mask, mode).unwrap();
        }
        x
    }

    #[test]
    fn checkpoint_names_map_to_blocks_and_back() {
        let cases = [
            (
                "embeddings.word_embeddings.weight",
                Some("b1.word_embeddings.weight"),
            ),
            (
                "bert.embeddings.LayerNorm.gamma",
                Some("b1.LayerNorm.weight"),
            ),
            (
                "encoder.layer.0.attention.self.query.weight",
                Some("b2.attention.self.query.weight"),
            ),
            (
                "bert.encoder.layer.11.output.LayerNorm.beta",
                Some("b13.output.LayerNorm.bias"),
            ),
            (
                "encoder.layer.5.attention.output.LayerNorm.weight",
                Some("b7.attention.output.LayerNorm.weight"),
            ),
            ("embeddings.position_ids", None),
            ("pooler.dense.weight", None),
            ("bert.pooler.dense.bias", None),
            ("classifier.weight", None),
            ("cls.predictions.bias", None),
            ("encoder.layer.x.output.dense.weight", None),
            ("decoder.weight", None),
        ];
        for (checkpoint, xferlab) in cases {
            assert_eq!(xferlab_name(checkpoint).as_deref(), xferlab, "{checkpoint}");
        }
        for dropped_name in [
            "embeddings.position_ids",
            "bert.embeddings.position_ids",
            "pooler.dense.weight",
            "classifier.bias",
            "cls.predictions.transform.dense.weight",
        ] {
            assert!(dropped(dropped_name), "{dropped_name}");
        }
        assert!(!dropped("encoder.layer.0.output.dense.weight"));
        assert!(!dropped("decoder.weight"));
        for (xferlab, checkpoint) in [
            (
                "b1.position_embeddings.weight",
                Some("embeddings.position_embeddings.weight"),
            ),
            (
                "b2.intermediate.dense.bias",
                Some("encoder.layer.0.intermediate.dense.bias"),
            ),
            (
                "b13.output.LayerNorm.weight",
                Some("encoder.layer.11.output.LayerNorm.weight"),
            ),
            ("head.weight", None),
            ("b0.x", None),
        ] {
            assert_eq!(checkpoint_name(xferlab).as_deref(), checkpoint, "{xferlab}");
            if let Some(checkpoint) = checkpoint {
                assert_eq!(xferlab_name(checkpoint).as_deref(), Some(xferlab));
            }
        }
    }

    #[test]
    fn tokenizer_gives_bert_ids_and_wordpieces() {
        let tokenizer = tokenizer();
        assert_eq!(
            ids(&tokenizer, "This is an example sentence"),
            [101, 2023, 2003, 2019, 2742, 6251, 102]
        );
        let encoding = tokenizer
            .encode("Fine-tuning xferlab's encoders", true)
            .unwrap();
        let (ids, tokens) = (encoding.get_ids(), encoding.get_tokens());
        println!("wordpieces: {tokens:?} = {ids:?}");
        assert_eq!(
            tokens,
            [
                "[CLS]", "fine", "-", "tuning", "x", "##fer", "##lab", "'", "s", "en", "##code",
                "##rs", "[SEP]"
            ]
        );
        assert_eq!(
            ids,
            [
                101, 2986, 1011, 17372, 1060, 7512, 20470, 1005, 1055, 4372, 16044, 2869, 102
            ]
        );
        // vocab.txt lists the tokens in id order, one a line.
        let vocab = std::fs::read_to_string(minilm().join("vocab.txt")).unwrap();
        let vocab: Vec<&str> = vocab.lines().collect();
        for (&id, token) in ids.iter().zip(tokens) {
            assert_eq!(vocab[id as usize], token);
        }
    }

    /// all-MiniLM-L6-v2 with its published weights, blocks pooling by mean.
    fn pretrained() -> (Parameters<'static>, Vec<Block>) {
        let config: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(minilm().join("config.json")).unwrap())
                .unwrap();
        let mut p = Parameters::new(0, &Device::Cpu);
        let blocks = build(&mut p, &config, Pooling::Mean, 0).unwrap();
        let vars = vars(&p);
        let weights =
            candle_core::safetensors::load(minilm().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut loaded = 0;
        for (name, tensor) in &weights {
            if dropped(name) {
                continue;
            }
            let xferlab = xferlab_name(name).unwrap_or_else(|| panic!("unmapped {name}"));
            vars[&xferlab].set(tensor).unwrap();
            loaded += 1;
        }
        // Every parameter came from the checkpoint.
        assert_eq!(loaded, vars.len());
        (p, blocks)
    }

    fn normalised(x: &Tensor) -> Vec<Vec<f32>> {
        x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn minilm_gives_the_published_sentence_embedding() {
        let (_p, blocks) = pretrained();
        let ids = ids(&tokenizer(), "This is an example sentence");
        let n = ids.len();
        let input = Tensor::new(&ids[..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones((1, n), DType::F32, &Device::Cpu).unwrap();
        let embedding = normalised(&run(&blocks, &input, &mask, Mode::Infer));
        println!("all-MiniLM-L6-v2: {:?}", &embedding[0][..5]);
        let published = [0.06766, 0.06350, 0.04871, 0.07930, 0.03745];
        for (got, want) in embedding[0].iter().zip(published) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        // Padded with [PAD] (id 0, mask 0), as the tokenizer's own fixed padding to 128.
        let mut padded = ids.clone();
        padded.resize(128, 0);
        let mask: Vec<f32> = (0..128).map(|i| if i < n { 1.0 } else { 0.0 }).collect();
        let input = Tensor::new(&padded[..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::new(&mask[..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let padded = normalised(&run(&blocks, &input, &mask, Mode::Infer));
        let difference = (embedding[0].iter().zip(&padded[0]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!("padded to 128: largest difference {difference:e}");
        assert!(difference < 1e-5);
    }

    pub(crate) fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 32,
            max_position_embeddings: 12,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            hidden_act: "gelu".into(),
        }
    }

    /// Two texts of 6 tokens, the second with 2 of padding.
    fn tiny_batch() -> (Tensor, Tensor) {
        let ids = Tensor::new(
            &[[1u32, 7, 9, 31, 4, 2], [1, 12, 49, 2, 0, 0]],
            &Device::Cpu,
        );
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 1., 1.], [1., 1., 1., 1., 0., 0.]],
            &Device::Cpu,
        );
        (ids.unwrap(), mask.unwrap())
    }

    #[test]
    fn every_parameter_gets_a_gradient_in_training() {
        let mut p = Parameters::new(3, &Device::Cpu);
        let blocks = build(&mut p, &tiny(), Pooling::Mean, 3).unwrap();
        assert_eq!(blocks.len(), 3);
        let (ids, mask) = tiny_batch();
        let pooled = run(&blocks, &ids, &mask, Mode::Train);
        assert_eq!(pooled.dims(), &[2, 16]);
        // A fixed projection: a sum of LayerNorm outputs (or of their squares) hardly depends
        // on its input.
        let direction: Vec<f32> = (0..16).map(|i| (i as f32).sin()).collect();
        let direction = Tensor::new(&direction[..], &Device::Cpu).unwrap();
        let loss = pooled
            .broadcast_mul(&direction)
            .unwrap()
            .sum(1)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = vars(&p);
        assert_eq!(vars.len(), 5 + 2 * 16);
        for (name, var) in &vars {
            let grad = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let grad = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(grad.iter().all(|g| g.is_finite()), "{name}");
            assert!(grad.iter().any(|&g| g != 0.0), "zero gradient for {name}");
        }
    }

    #[test]
    fn dropout_is_seeded_and_only_in_training() {
        let build_tiny = |pooling| {
            let mut p = Parameters::new(5, &Device::Cpu);
            let blocks = build(&mut p, &tiny(), pooling, 11).unwrap();
            (p, blocks)
        };
        let (ids, mask) = tiny_batch();
        let values = |x: Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (_a, a) = build_tiny(Pooling::Cls);
        let (_b, b) = build_tiny(Pooling::Cls);
        let a1 = values(run(&a, &ids, &mask, Mode::Train));
        let a2 = values(run(&a, &ids, &mask, Mode::Train));
        let b1 = values(run(&b, &ids, &mask, Mode::Train));
        let b2 = values(run(&b, &ids, &mask, Mode::Train));
        assert_eq!((&a1, &a2), (&b1, &b2));
        assert_ne!(a1, a2, "each call draws a new mask");
        let infer = run(&a, &ids, &mask, Mode::Infer);
        assert_eq!(infer.dims(), &[2, 16]);
        assert_eq!(
            values(infer.clone()),
            values(run(&b, &ids, &mask, Mode::Infer))
        );
        assert_ne!(values(infer), a1);

        // About p of the elements are dropped, the rest scaled by 1/(1-p).
        let dropout = Dropout::new(0.1, 7);
        let ones = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let kept = values(dropout.forward(&ones, Mode::Train).unwrap());
        let dropped = kept.iter().filter(|&&v| v == 0.0).count();
        assert!((900..1100).contains(&dropped), "{dropped} of 10000 dropped");
        assert!(
            kept.iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6)
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut p = Parameters::new(0, &Device::Cpu);
        let refused = |config: BertConfig| {
            build(
                &mut Parameters::new(0, &Device::Cpu),
                &config,
                Pooling::Cls,
                0,
            )
            .err()
            .unwrap()
            .to_string()
        };
        let heads = refused(BertConfig {
            num_attention_heads: 5,
            ..tiny()
        });
        assert!(
            heads.contains("not divisible by num_attention_heads 5"),
            "{heads}"
        );
        let act = refused(BertConfig {
            hidden_act: "swish".into(),
            ..tiny()
        });
        assert!(act.contains("hidden_act `swish`"), "{act}");
        let blocks = build(
            &mut p,
            &BertConfig {
                hidden_act: "gelu_new".into(),
                ..tiny()
            },
            Pooling::Cls,
            0,
        );
        assert!(blocks.is_ok());
        // Too long a text is an error, not a panic.
        let blocks = blocks.unwrap();
        let long = Tensor::zeros((1, 13), DType::U32, &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, 13), DType::F32, &Device::Cpu).unwrap();
        let error = blocks[0].forward(&long, &mask, Mode::Infer).err().unwrap();
        assert!(error.to_string().contains("13 tokens"), "{error}");
    }
}
