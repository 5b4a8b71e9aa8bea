//! Optimizers: Adam and AdamW (fused, with candle-nn's arithmetic) and SGD with momentum,
//! which candle-nn's `SGD` lacks.

mod adam;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::ParamsAdamW;

pub use adam::Adam;

use crate::spec::{OptimizerKind, TrainSpec};

/// A variable to train, by name, and what the base learning rate is multiplied by for it
/// (`TrainSpec::rate_factor`).
pub struct Param {
    /// Its name in the network (`b3.fc.weight`, `head.weight`).
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Its learning rate over the base rate.
    pub factor: f64,
}

/// An optimizer over a fixed set of variables.
pub struct Optimizer {
    kind: Kind,
    names: Vec<String>,
}

enum Kind {
    /// Adam or AdamW.
    Adam(Adam),
    /// SGD with momentum.
    Sgd(Sgd),
}

impl Optimizer {
    /// The optimizer `train` names, over `params`.
    pub fn new(train: &TrainSpec, params: Vec<Param>) -> Result<Self> {
        let names = params.iter().map(|p| p.name.clone()).collect();
        let vars: Vec<(Var, f64)> = params.into_iter().map(|p| (p.var, p.factor)).collect();
        let kind = match train.optimizer {
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
                Kind::Adam(Adam::scaled(vars, params)?)
            }
            OptimizerKind::Sgd => Kind::Sgd(Sgd::new(
                vars,
                train.lr,
                train.momentum.unwrap_or(0.9),
                train.weight_decay.unwrap_or(0.0),
            )?),
        };
        Ok(Optimizer { kind, names })
    }

    /// Adds variables to train from the next step on, with fresh optimizer state (gradual
    /// unfreezing).
    pub fn add(&mut self, params: Vec<Param>) -> Result<()> {
        for param in params {
            match &mut self.kind {
                Kind::Adam(adam) => adam.push(param.var, param.factor)?,
                Kind::Sgd(sgd) => sgd.push(param.var, param.factor)?,
            }
            self.names.push(param.name);
        }
        Ok(())
    }

    /// Sets the base learning rate (a schedule's, step by step).
    pub fn set_lr(&mut self, lr: f64) {
        match &mut self.kind {
            Kind::Adam(adam) => adam.params.lr = lr,
            Kind::Sgd(sgd) => sgd.lr = lr,
        }
    }

    /// Each variable's name and learning rate now, as the next step applies it.
    pub fn rates(&self) -> Vec<(&str, f64)> {
        let rates = match &self.kind {
            Kind::Adam(adam) => adam.rates(),
            Kind::Sgd(sgd) => sgd.rates(),
        };
        self.names.iter().map(String::as_str).zip(rates).collect()
    }

    /// Backpropagates `loss` and updates the variables.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        match &mut self.kind {
            Kind::Adam(adam) => adam.step(&loss.backward()?),
            Kind::Sgd(sgd) => sgd.step(&loss.backward()?),
        }
    }
}

/// SGD with momentum and L2 weight decay, as PyTorch's `torch.optim.SGD`:
/// `v = momentum * v + (g + decay * w)`, `w -= lr * v`.
pub struct Sgd {
    /// Each variable, its velocity, and its multiple of `lr`.
    vars: Vec<(Var, Tensor, f64)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over `vars` (each with its multiple of `lr`), velocities starting at zero.
    pub fn new(vars: Vec<(Var, f64)>, lr: f64, momentum: f64, weight_decay: f64) -> Result<Self> {
        let mut sgd = Sgd {
            vars: Vec::new(),
            lr,
            momentum,
            weight_decay,
        };
        for (var, factor) in vars {
            sgd.push(var, factor)?;
        }
        Ok(sgd)
    }

    /// One more variable, its velocity at zero.
    fn push(&mut self, var: Var, factor: f64) -> Result<()> {
        let velocity = var.zeros_like()?;
        self.vars.push((var, velocity, factor));
        Ok(())
    }

    /// Each variable's learning rate now, in the order given.
    fn rates(&self) -> Vec<f64> {
        self.vars.iter().map(|v| self.lr * v.2).collect()
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (var, velocity, factor) in &mut self.vars {
            let Some(grad) = grads.get(var) else { continue };
            let grad = if self.weight_decay > 0.0 {
                (grad + (var.as_tensor() * self.weight_decay)?)?
            } else {
                grad.clone()
            };
            *velocity = ((&*velocity * self.momentum)? + grad)?;
            var.set(&(var.as_tensor() - (&*velocity * (self.lr * *factor))?)?)?;
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
        let mut sgd = Sgd::new(vec![(w.clone(), 1.0)], 0.1, 0.9, 0.0).unwrap();
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

    #[test]
    fn each_variable_steps_at_its_own_rate() {
        let train = |optimizer| TrainSpec {
            optimizer,
            ..serde_yaml::from_str("{steps: 1, batch_size: 1, lr: 0.1, log_every: 1}").unwrap()
        };
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let vars: Vec<Var> = (0..2)
                .map(|_| Var::new(&[1f32], &Device::Cpu).unwrap())
                .collect();
            let params = vars
                .iter()
                .zip([1.0, 0.25])
                .map(|(var, factor)| Param {
                    name: String::new(),
                    var: var.clone(),
                    factor,
                })
                .collect();
            let mut optimizer = Optimizer::new(&train(kind), params).unwrap();
            let loss = (vars[0].as_tensor() + vars[1].as_tensor())
                .unwrap()
                .sum_all()
                .unwrap();
            optimizer.backward_step(&loss).unwrap();
            let moved: Vec<f32> = (vars.iter())
                .map(|v| 1.0 - v.as_tensor().to_vec1::<f32>().unwrap()[0])
                .collect();
            // Both see gradient 1: SGD moves by lr * factor, Adam's first step by about that.
            assert!((moved[0] - 0.1).abs() < 1e-5, "{kind:?}: {moved:?}");
            assert!((moved[1] - 0.025).abs() < 1e-5, "{kind:?}: {moved:?}");
        }
    }
}
