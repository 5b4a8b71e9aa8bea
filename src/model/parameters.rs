//! Fresh parameters for a network, created by name into its [`VarMap`] from a seeded
//! generator: candle's CPU random numbers cannot be seeded, and a trial re-run must start
//! from the same weights.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Linear, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::conv::Conv2d;
use super::dropout::{Dropout, mix};
use super::lora::{self, Lora};
use crate::spec::LoraSpec;

/// Creates parameters with PyTorch's default initialisation (uniform in ±1/sqrt(fan_in)),
/// BERT's (normal), or constants (BatchNorm's, LayerNorm's), each registered in the network's variables under its name.
pub(crate) struct Parameters<'a> {
    pub(crate) varmap: VarMap,
    rng: ChaCha8Rng,
    pub(crate) device: &'a Device,
    lora: Option<LoraPlan>,
}

/// Which layers get a LoRA update (those of blocks above `above`) and how; LoRA draws from
/// its own generator, so the network's own weights are the same with and without it.
struct LoraPlan {
    spec: LoraSpec,
    above: usize,
    rng: ChaCha8Rng,
    seed: u64,
    layers: u64,
}

impl<'a> Parameters<'a> {
    /// An empty set of parameters drawing from `seed`.
    pub(crate) fn new(seed: u64, device: &'a Device) -> Self {
        Parameters {
            varmap: VarMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
            lora: None,
        }
    }

    /// Gives every linear layer and 1x1 convolution created from now on in a block above
    /// `above` a LoRA update as `spec` says.
    pub(crate) fn with_lora(mut self, spec: LoraSpec, above: usize, seed: u64) -> Self {
        let seed = mix(seed, 0x10ba);
        self.lora = Some(LoraPlan {
            spec,
            above,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            layers: 0,
        });
        self
    }

    /// The LoRA update of the layer `name` (weight `output` x `input`, or a 1x1 convolution's
    /// with `stride`), when the network gives that layer's block one: A uniform in
    /// ±1/sqrt(`input`) (PEFT's), B zero.
    pub(crate) fn lora(
        &mut self,
        name: &str,
        (input, output): (usize, usize),
        conv_stride: Option<usize>,
    ) -> candle_core::Result<Option<Lora>> {
        let Some(plan) = &mut self.lora else {
            return Ok(None);
        };
        if super::block_of(name).is_none_or(|b| b <= plan.above) {
            return Ok(None);
        }
        let rank = plan.spec.rank;
        let bound = 1.0 / (input as f32).sqrt();
        let values = (0..rank * input)
            .map(|_| plan.rng.random_range(-bound..bound))
            .collect();
        let dropout = Dropout::new(plan.spec.dropout, mix(plan.seed, plan.layers));
        plan.layers += 1;
        let scale = plan.spec.alpha / rank as f64;
        let (down_shape, up_shape) = match conv_stride {
            Some(_) => (vec![rank, input, 1, 1], vec![output, rank, 1, 1]),
            None => (vec![rank, input], vec![output, rank]),
        };
        let down = self.variable(format!("{name}.lora_a"), values, &down_shape)?;
        let up = self.full(format!("{name}.lora_b"), &up_shape, 0.0)?;
        Ok(Some(Lora {
            down,
            up,
            scale,
            dropout,
            stride: conv_stride.unwrap_or(1),
        }))
    }

    fn insert(&mut self, name: String, var: Var) {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .insert(name, var);
    }

    /// A variable drawn uniformly in ±1/sqrt(`fan_in`).
    pub(crate) fn uniform(
        &mut self,
        name: String,
        shape: &[usize],
        fan_in: usize,
    ) -> candle_core::Result<Tensor> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        self.variable(name, values, shape)
    }

    /// A variable of `shape` holding `values`, registered under `name`.
    fn variable(
        &mut self,
        name: String,
        values: Vec<f32>,
        shape: &[usize],
    ) -> candle_core::Result<Tensor> {
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, self.device)?)?;
        let tensor = var.as_tensor().clone();
        self.insert(name, var);
        Ok(tensor)
    }

    /// A variable of `channels` values all equal to `value`.
    pub(crate) fn constant(
        &mut self,
        name: String,
        channels: usize,
        value: f32,
    ) -> candle_core::Result<Var> {
        let var = Var::from_tensor(&Tensor::full(value, channels, self.device)?)?;
        self.insert(name, var.clone());
        Ok(var)
    }

    /// A 3x3 convolution with bias (cnn6's).
    pub(crate) fn conv3x3(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
    ) -> candle_core::Result<Conv2d> {
        let fan_in = input * 9;
        let weight = self.uniform(format!("{name}.weight"), &[output, input, 3, 3], fan_in)?;
        let bias = self.uniform(format!("{name}.bias"), &[output], fan_in)?;
        Conv2d::new(weight, Some(bias), 1, 1)
    }

    /// A linear layer with bias inside a block: with a LoRA update when the network gives
    /// its block one.
    pub(crate) fn block_linear(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
    ) -> candle_core::Result<lora::Linear> {
        Ok(lora::Linear {
            linear: self.linear(name, input, output)?,
            lora: self.lora(name, (input, output), None)?,
        })
    }

    /// A linear layer with bias.
    pub(crate) fn linear(
        &mut self,
        name: &str,
        input: usize,
        output: usize,
    ) -> candle_core::Result<Linear> {
        let weight = self.uniform(format!("{name}.weight"), &[output, input], input)?;
        let bias = self.uniform(format!("{name}.bias"), &[output], input)?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// A variable of `shape` drawn from a normal distribution of mean 0 and standard
    /// deviation `std` (BERT's `_init_weights` for linear and embedding weights).
    pub(crate) fn normal(
        &mut self,
        name: String,
        shape: &[usize],
        std: f32,
    ) -> candle_core::Result<Tensor> {
        let normal = Normal::new(0.0, std)
            .map_err(|e| candle_core::Error::Msg(format!("`{name}`: normal({std}): {e}")))?;
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| normal.sample(&mut self.rng))
            .collect();
        self.variable(name, values, shape)
    }

    /// A variable of `shape` with every value `value` (biases 0, LayerNorm's weight 1);
    /// draws nothing from the generator.
    pub(crate) fn full(
        &mut self,
        name: String,
        shape: &[usize],
        value: f32,
    ) -> candle_core::Result<Tensor> {
        self.variable(name, vec![value; shape.iter().product()], shape)
    }
}
