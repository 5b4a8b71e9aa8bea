//! Adam and AdamW with candle-nn's arithmetic, fused: two in-place operations per variable and
//! step (moments, then the update) where candle-nn's `AdamW` runs sixteen tensor operations,
//! each a kernel launch and an allocation on a GPU. A cnn6 step with every block trainable
//! then launches 24 optimizer kernels instead of about 190.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var, bail};
use candle_nn::ParamsAdamW;

use crate::model::f32_values;

/// Adam over a fixed set of f32 variables; `weight_decay` makes it AdamW.
pub struct Adam {
    /// Each variable with its moments (a `[2, n]` tensor, first moments then second), what
    /// `params.lr` is multiplied by for it, and the optimizer's steps since it joined (a
    /// variable added later, by gradual unfreezing, starts its bias correction afresh).
    vars: Vec<(Var, Tensor, f64, i32)>,
    pub(super) params: ParamsAdamW,
}

impl Adam {
    /// Adam over `vars` (all f32), with zeroed moments.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        Adam::scaled(vars.into_iter().map(|v| (v, 1.0)).collect(), params)
    }

    /// Adam over `vars`, each with its own multiple of `params.lr` (PyTorch's parameter
    /// groups, one per variable).
    pub fn scaled(vars: Vec<(Var, f64)>, params: ParamsAdamW) -> Result<Self> {
        let mut adam = Adam {
            vars: Vec::new(),
            params,
        };
        for (var, factor) in vars {
            adam.push(var, factor)?;
        }
        Ok(adam)
    }

    /// One more variable (f32), with zeroed moments and no steps yet.
    pub fn push(&mut self, var: Var, factor: f64) -> Result<()> {
        if var.dtype() != DType::F32 {
            bail!("adam: variable of {:?}, not f32", var.dtype());
        }
        let moments = Tensor::zeros((2, var.elem_count()), DType::F32, var.device())?;
        self.vars.push((var, moments, factor, 0));
        Ok(())
    }

    /// Each variable's learning rate now, in the order given.
    pub fn rates(&self) -> Vec<f64> {
        self.vars.iter().map(|v| self.params.lr * v.2).collect()
    }

    /// One update of every variable from its gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let p = &self.params;
        let moments = Moments {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
        };
        for (var, state, factor, step) in &mut self.vars {
            // Steps since the variable joined, with or without a gradient (as candle-nn counts).
            *step += 1;
            let Some(grad) = grads.get(var) else { continue };
            let lr = p.lr * *factor;
            let update = Update {
                decay: (1.0 - lr * p.weight_decay) as f32,
                lr: lr as f32,
                scale_m: (1.0 / (1.0 - p.beta1.powi(*step))) as f32,
                scale_v: (1.0 / (1.0 - p.beta2.powi(*step))) as f32,
                eps: p.eps as f32,
            };
            state.inplace_op2(&grad.contiguous()?, &moments)?;
            var.as_tensor().inplace_op2(state, &update)?;
        }
        Ok(())
    }
}

/// `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`, in place on the `[2, n]` moments.
struct Moments {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

/// `θ = θ·(1-lr·λ) - lr · m̂ / (√v̂ + ε)`, in place on the variable, with `m̂ = m·scale_m`
/// and `v̂ = v·scale_v` the bias corrections.
struct Update {
    decay: f32,
    lr: f32,
    scale_m: f32,
    scale_v: f32,
    eps: f32,
}

fn values_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    let (CpuStorage::F32(all), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
        bail!("adam: expected contiguous f32 values");
    };
    Ok(&mut all[start..end])
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adam_moments"
    }

    fn cpu_fwd(
        &self,
        moments: &mut CpuStorage,
        moments_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> Result<()> {
        let grad = f32_values(grad, grad_l)?;
        let (m, v) = values_mut(moments, moments_l)?.split_at_mut(grad.len());
        for ((m, v), &g) in m.iter_mut().zip(v).zip(grad) {
            *m = *m * self.beta1 + g * self.one_minus_beta1;
            *v = *v * self.beta2 + (g * g) * self.one_minus_beta2;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        moments: &mut candle_core::CudaStorage,
        moments_l: &Layout,
        grad: &candle_core::CudaStorage,
        grad_l: &Layout,
    ) -> Result<()> {
        let n = grad_l.shape().elem_count();
        let scalars = [
            self.beta1,
            self.one_minus_beta1,
            self.beta2,
            self.one_minus_beta2,
        ];
        cuda::launch(
            "adam_moments",
            n,
            (moments, moments_l),
            (grad, grad_l),
            &scalars,
        )
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        "adam_update"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        theta_l: &Layout,
        moments: &CpuStorage,
        moments_l: &Layout,
    ) -> Result<()> {
        let theta = values_mut(theta, theta_l)?;
        let (m, v) = f32_values(moments, moments_l)?.split_at(theta.len());
        for ((theta, &m), &v) in theta.iter_mut().zip(m).zip(v) {
            let (m_hat, v_hat) = (m * self.scale_m, v * self.scale_v);
            *theta = *theta * self.decay - (m_hat / (v_hat.sqrt() + self.eps)) * self.lr;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        theta: &mut candle_core::CudaStorage,
        theta_l: &Layout,
        moments: &candle_core::CudaStorage,
        moments_l: &Layout,
    ) -> Result<()> {
        let n = theta_l.shape().elem_count();
        let scalars = [self.decay, self.lr, self.scale_m, self.scale_v, self.eps];
        cuda::launch(
            "adam_update",
            n,
            (theta, theta_l),
            (moments, moments_l),
            &scalars,
        )
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage as _;
    use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg as _};
    use candle_core::cuda::cudarc::nvrtc;
    use candle_core::{CudaStorage, Error, Layout, Result, bail};

    /// Runs kernel `name` of adam.cu as `name(dst, src, n, scalars...)` on `dst`'s device and
    /// stream. adam.cu is compiled by NVRTC once per process and loaded once per device.
    pub fn launch(
        name: &str,
        n: usize,
        (dst, dst_l): (&mut CudaStorage, &Layout),
        (src, src_l): (&CudaStorage, &Layout),
        scalars: &[f32],
    ) -> Result<()> {
        if !dst_l.is_contiguous() || !src_l.is_contiguous() {
            bail!("{name}: expected contiguous f32 values");
        }
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let ptx = PTX.get_or_init(|| {
            nvrtc::compile_ptx(include_str!("adam.cu"))
                .map(|ptx| ptx.to_src())
                .map_err(|e| format!("adam.cu: {e}"))
        });
        let ptx = ptx.as_ref().map_err(|e| Error::Cuda(e.clone().into()))?;
        let func = dst
            .device()
            .get_or_load_custom_func(name, "xferlab_adam", ptx)?;
        let src = src.as_cuda_slice::<f32>()?.slice(src_l.start_offset()..);
        let mut dst = dst
            .as_cuda_slice_mut::<f32>()?
            .slice_mut(dst_l.start_offset()..);
        let n32 = n as u32;
        let mut launch = func.builder();
        launch.arg(&mut dst).arg(&src).arg(&n32);
        for scalar in scalars {
            launch.arg(scalar);
        }
        // SAFETY: the arguments match the kernel's signature in adam.cu, and n bounds every
        // index it touches.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n32)) }
            .map(drop)
            .map_err(|e| Error::Cuda(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer as _};

    /// Runs `steps` steps of a quadratic loss with per-element weights from each optimizer.
    fn run(weight_decay: f64, steps: usize, ours: bool) -> Vec<f32> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = Var::from_vec(init[..12].to_vec(), (3, 4), &dev).unwrap();
        let b = Var::from_vec(init[12..].to_vec(), 12, &dev).unwrap();
        let target = Tensor::arange(0f32, 12., &dev).unwrap().cos().unwrap();
        let params = ParamsAdamW {
            lr: 0.05,
            weight_decay,
            ..Default::default()
        };
        let vars = vec![a.clone(), b.clone()];
        let mut adam = Adam::new(vars.clone(), params.clone()).unwrap();
        let mut reference = AdamW::new(vars, params).unwrap();
        for step in 0..steps {
            // Through a transpose, as candle's convolution backward gives some gradients.
            let a_term = (a.as_tensor().t().unwrap().flatten_all().unwrap() - &target).unwrap();
            let mut loss = a_term.sqr().unwrap().sum_all().unwrap();
            if step % 3 != 0 {
                // Some steps leave b without a gradient.
                let b_term = (b.as_tensor() * &target).unwrap().sqr().unwrap().sum_all();
                loss = (loss + b_term.unwrap()).unwrap();
            }
            let grads = loss.backward().unwrap();
            if ours {
                adam.step(&grads).unwrap();
            } else {
                reference.step(&grads).unwrap();
            }
        }
        let flat = |v: &Var| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        [flat(&a), flat(&b)].concat()
    }

    /// NVRTC needs no GPU: a CUDA build can check adam.cu anywhere (`cargo test --features cuda`).
    #[cfg(feature = "cuda")]
    #[test]
    fn adam_cu_compiles() {
        let ptx = candle_core::cuda::cudarc::nvrtc::compile_ptx(include_str!("adam.cu")).unwrap();
        let ptx = ptx.to_src();
        assert!(ptx.contains(".entry adam_moments") && ptx.contains(".entry adam_update"));
    }

    #[test]
    fn matches_candle_nns_adamw() {
        for decay in [0.0, 0.1] {
            let (ours, theirs) = (run(decay, 20, true), run(decay, 20, false));
            let moved = ours.iter().zip(run(decay, 0, true)).any(|(a, b)| *a != b);
            assert!(moved);
            for (o, t) in ours.iter().zip(&theirs) {
                assert!((o - t).abs() < 1e-6, "decay {decay}: {o} vs {t}");
            }
        }
    }
}
