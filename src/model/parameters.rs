//! Fresh parameters for a network, created by name into its [`VarMap`] from a seeded
//! generator: candle's CPU random numbers cannot be seeded, and a trial re-run must start
//! from the same weights.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Linear, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::conv::Conv2d;

/// Creates parameters with PyTorch's default initialisation (uniform in ±1/sqrt(fan_in)),
/// BERT's (normal), or constants (BatchNorm's, LayerNorm's), each registered in the network's variables under its name.
pub(crate) struct Parameters<'a> {
    pub(crate) varmap: VarMap,
    rng: ChaCha8Rng,
    pub(crate) device: &'a Device,
}

impl<'a> Parameters<'a> {
    /// An empty set of parameters drawing from `seed`.
    pub(crate) fn new(seed: u64, device: &'a Device) -> Self {
        Parameters {
            varmap: VarMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
        }
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
