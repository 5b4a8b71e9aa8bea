//! Optimizers: Adam and AdamW (fused, with candle-nn's arithmetic) and SGD with momentum,
//! which candle-nn's `SGD` lacks.

mod adam;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::ParamsAdamW;

pub use adam::Adam;

use crate::spec::{OptimizerKind, TrainSpec};

/// An optimizer over a fixed set of variables.
pub enum Optimizer {
    /// Adam or AdamW.
    Adam(Adam),
    /// SGD with momentum.
    Sgd(Sgd),
}

impl Optimizer {
    /// The optimizer `train` names, over `vars`.
    pub fn new(train: &TrainSpec, vars: Vec<Var>) -> Result<Self> {
        Ok(match train.optimizer {
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let default_decay = if train.optimizer == OptimizerKind::Adamw {
                    0.01
                } else {
                    0.0
                };
                let params = ParamsAdamW {
                    lr: train.lr,
                    weight_decay: train.weight_decay.unwrap_or(default_decay),
                    ..Default::default()
                };
                Optimizer::Adam(Adam::new(vars, params)?)
            }
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(
                vars,
                train.lr,
                train.momentum.unwrap_or(0.9),
                train.weight_decay.unwrap_or(0.0),
            )?),
        })
    }

    /// Sets the learning rate (a schedule's, step by step).
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::Adam(adam) => adam.params.lr = lr,
            Optimizer::Sgd(sgd) => sgd.lr = lr,
        }
    }

    /// Backpropagates `loss` and updates the variables.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        match self {
            Optimizer::Adam(adam) => adam.step(&loss.backward()?),
            Optimizer::Sgd(sgd) => sgd.step(&loss.backward()?),
        }
    }
}

/// SGD with momentum and L2 weight decay, as PyTorch's `torch.optim.SGD`:
/// `v = momentum * v + (g + decay * w)`, `w -= lr * v`.
pub struct Sgd {
    vars: Vec<(Var, Tensor)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over `vars`, velocities starting at zero.
    pub fn new(vars: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|v| {
                let velocity = v.zeros_like()?;
                Ok((v, velocity))
            })
            .collect::<Result<_>>()?;
        Ok(Sgd {
            vars,
            lr,
            momentum,
            weight_decay,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (var, velocity) in &mut self.vars {
            let Some(grad) = grads.get(var) else { continue };
            let grad = if self.weight_decay > 0.0 {
                (grad + (var.as_tensor() * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            *velocity = ((&*velocity * self.momentum)? + grad)?;
            var.set(&(var.as_tensor() - (&*velocity * self.lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sgd_momentum_matches_the_closed_form() {
        // Minimise w^2 / 2 (gradient w) from w = 1 with lr 0.1, momentum 0.9:
        // v1 = 1, w1 = 0.9; v2 = 0.9 + 0.9 = 1.8, w2 = 0.72.
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![w.clone()], 0.1, 0.9, 0.0).unwrap();
        for _ in 0..2 {
            let loss = (w.as_tensor().sqr().unwrap() * 0.5)
                .unwrap()
                .sum_all()
                .unwrap();
            sgd.step(&loss.backward().unwrap()).unwrap();
        }
        let value = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((value - 0.72).abs() < 1e-6, "{value}");
    }
}
