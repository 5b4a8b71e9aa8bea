//! LoRA (Hu et al., 2021): a layer keeps its weight W frozen and learns a low-rank update,
//! computing W x + (alpha / r) B A dropout(x). xferlab gives one to every linear layer and
//! 1x1 convolution of the blocks above the freeze depth (`adapter: lora`); the parameters are
//! named after the layer's weight (`b5.linear.lora_a`, `.lora_b`) and live in the trial's
//! network only: a source model has none, and transferring skips them.

use candle_core::{Result, Tensor};
use candle_nn::Module;

use super::Mode;
use super::conv::Conv2d;
use super::dropout::Dropout;

/// Whether a parameter is a LoRA matrix.
pub fn is_lora(name: &str) -> bool {
    name.ends_with(".lora_a") || name.ends_with(".lora_b")
}

/// One layer's low-rank update.
pub struct Lora {
    /// A: (r, in), or (r, in, 1, 1) for a convolution.
    pub(crate) down: Tensor,
    /// B: (out, r), or (out, r, 1, 1); zero at first, so the layer starts as the source's.
    pub(crate) up: Tensor,
    /// alpha / r.
    pub(crate) scale: f64,
    pub(crate) dropout: Dropout,
    /// The convolution's stride (1 for a linear layer).
    pub(crate) stride: usize,
}

impl Lora {
    /// The update's contribution to the layer's output for the layer's input `x`: (..., in)
    /// for a linear layer, (N, in, H, W) for a convolution.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.dropout.forward(x, mode)?;
        let y = if self.down.rank() == 4 {
            let down = Conv2d::new(self.down.clone(), None, self.stride, 0)?.forward(&x)?;
            Conv2d::new(self.up.clone(), None, 1, 0)?.forward(&down)?
        } else {
            let down = candle_nn::Linear::new(self.down.clone(), None).forward(&x)?;
            candle_nn::Linear::new(self.up.clone(), None).forward(&down)?
        };
        y * self.scale
    }
}

/// A linear layer, with a LoRA update when the network has one for it.
pub struct Linear {
    pub(crate) linear: candle_nn::Linear,
    pub(crate) lora: Option<Lora>,
}

impl Linear {
    /// x (..., in) to (..., out).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = candle_nn::Linear::new(self.linear.weight().clone(), None).forward(x)?;
        let y = match self.linear.bias() {
            Some(bias) => super::rows::add_bias(&y, bias)?,
            None => y,
        };
        match &self.lora {
            Some(lora) => y + lora.forward(x, mode)?,
            None => Ok(y),
        }
    }
}

/// Folds every LoRA update into its layer's weight, W + (alpha / r) B A, and drops the LoRA
/// matrices: the plain architecture's tensors, computing what the adapted network computes.
pub fn merge(tensors: &mut std::collections::HashMap<String, Tensor>, scale: f64) -> Result<()> {
    let mut layers: Vec<String> = (tensors.keys())
        .filter_map(|name| name.strip_suffix(".lora_a").map(str::to_owned))
        .collect();
    layers.sort();
    for layer in layers {
        let down = tensors.remove(&format!("{layer}.lora_a")).expect("listed");
        let Some(up) = tensors.remove(&format!("{layer}.lora_b")) else {
            candle_core::bail!("`{layer}.lora_a` has no `{layer}.lora_b`")
        };
        let weight_name = format!("{layer}.weight");
        let Some(weight) = tensors.get(&weight_name) else {
            candle_core::bail!("LoRA matrices for `{layer}`, which has no weight")
        };
        let (out, rank) = (up.dim(0)?, up.dim(1)?);
        let delta = (up
            .reshape((out, rank))?
            .matmul(&down.reshape((rank, ()))?)?
            * scale)?;
        let merged = (weight + delta.reshape(weight.shape())?)?;
        tensors.insert(weight_name, merged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::data::{ImageShape, Input};
    use crate::model::{Network, block_of};
    use crate::spec::{Arch, LoraSpec, ModelSpec};

    /// The blocks of `model` with a layer LoRA adapts (a linear layer or a 1x1 convolution).
    /// The last block always has one, so no architecture refuses an adapter above f < L.
    fn blocks(model: &ModelSpec) -> Vec<usize> {
        let all = 1..=crate::model::block_count(model);
        match model.arch {
            Arch::Mlp => all.collect(),
            Arch::Cnn6 => vec![5],
            // The stem (b1) is the one 3x3-only block; every MBConv stage projects with a 1x1.
            Arch::EfficientnetLite0 => all.skip(1).collect(),
            // Basic blocks have 1x1s only in the downsampling shortcuts, from layer2 (b3) on.
            Arch::Resnet18 | Arch::Resnet34 => all.skip(2).collect(),
            Arch::Resnet50 => all.skip(1).collect(),
            // The embeddings (b1) have no linear layer.
            Arch::Bert => all.skip(1).collect(),
        }
    }

    fn image(channels: usize, side: usize) -> Input {
        Input::Image(ImageShape {
            channels,
            height: side,
            width: side,
        })
    }

    /// Every architecture, at a small input.
    fn models() -> Vec<(ModelSpec, Input)> {
        let bert = ModelSpec {
            config: Some(crate::model::bert::tests::tiny()),
            ..ModelSpec::plain(Arch::Bert)
        };
        let mlp = ModelSpec {
            hidden: Some(vec![16, 8]),
            ..ModelSpec::plain(Arch::Mlp)
        };
        let plain = ModelSpec::plain;
        vec![
            (mlp, image(1, 4)),
            (plain(Arch::Cnn6), image(1, 8)),
            (plain(Arch::EfficientnetLite0), image(3, 32)),
            (plain(Arch::Resnet18), image(3, 32)),
            (plain(Arch::Resnet50), image(3, 32)),
            (bert, Input::Tokens),
        ]
    }

    const SPEC: LoraSpec = LoraSpec {
        rank: 2,
        alpha: 3.0,
        dropout: 0.0,
    };

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The layers that get an update are those `blocks` promises (what the spec check
    /// reads), above the freeze depth only; B starts at zero and the network's own weights
    /// are those it has without LoRA.
    #[test]
    fn linear_layers_and_1x1_convolutions_above_the_freeze_depth_get_an_update() {
        for (model, input) in models() {
            let net = Network::with_lora(&model, input, 3, 1, &Device::Cpu, (SPEC, 1)).unwrap();
            let tensors = net.tensors();
            let adapted: BTreeSet<usize> = (tensors.keys())
                .filter(|n| is_lora(n))
                .map(|n| block_of(n).unwrap())
                .collect();
            let promised: BTreeSet<usize> = blocks(&model).into_iter().filter(|&b| b > 1).collect();
            assert_eq!(adapted, promised, "{:?}", model.arch);
            let plain = Network::new(&model, input, 3, 1, &Device::Cpu)
                .unwrap()
                .tensors();
            let mut layers = 0;
            for (name, tensor) in &tensors {
                let Some(layer) = name.strip_suffix(".lora_a") else {
                    continue;
                };
                layers += 1;
                let weight = plain[&format!("{layer}.weight")].dims().to_vec();
                let up = &tensors[&format!("{layer}.lora_b")];
                let (mut down_dims, mut up_dims) = (vec![2, weight[1]], vec![weight[0], 2]);
                if weight.len() == 4 {
                    assert_eq!(weight[2..], [1, 1], "{layer} is a 1x1 convolution");
                    down_dims.extend([1, 1]);
                    up_dims.extend([1, 1]);
                }
                assert_eq!((tensor.dims(), up.dims()), (&down_dims[..], &up_dims[..]));
                assert!(
                    values(up).iter().all(|&v| v == 0.0),
                    "{layer}: B starts at 0"
                );
            }
            assert!(layers > 0);
            assert_eq!(tensors.len(), plain.len() + 2 * layers);
            for (name, tensor) in &plain {
                assert_eq!(values(tensor), values(&tensors[name]), "{name}");
            }
        }
    }

    /// With B made non-zero, the adapted network computes what the plain network computes
    /// with the merged weights W + (alpha / r) B A: the update's arithmetic (linear layers on
    /// 3-D token vectors, 1x1 convolutions at stride 2) and `merge` agree.
    #[test]
    fn merged_weights_compute_what_the_adapted_network_computes() {
        for (model, input) in models() {
            if model.arch == Arch::Resnet50 {
                continue; // its 1x1s are ResNet-18's downsampling ones, more of them
            }
            let net = Network::with_lora(&model, input, 3, 0, &Device::Cpu, (SPEC, 0)).unwrap();
            {
                let data = net.varmap.data().lock().unwrap();
                for (name, var) in data.iter().filter(|(n, _)| n.ends_with(".lora_b")) {
                    let noise = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
                    var.set(&noise).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            let (x, mask) = match input {
                Input::Image(shape) => {
                    let dims = (2, shape.channels, shape.height, shape.width);
                    (Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap(), None)
                }
                Input::Tokens => {
                    let ids = Tensor::new(&[[1u32, 7, 9, 31], [1, 12, 49, 2]], &Device::Cpu);
                    let mask = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
                    (ids.unwrap(), Some(mask))
                }
            };
            // Up to the first adapted block: deeper, a fresh EfficientNet's signal fades.
            let upto = 0..blocks(&model)[0];
            let run = |net: &Network| {
                let y = net.forward_blocks(&x, mask.as_ref(), upto.clone(), Mode::Infer);
                values(&y.unwrap())
            };
            let adapted = run(&net);
            let mut tensors = net.tensors();
            merge(&mut tensors, SPEC.alpha / SPEC.rank as f64).unwrap();
            assert!(!tensors.keys().any(|n| is_lora(n)));
            let plain = Network::new(&model, input, 3, 7, &Device::Cpu).unwrap();
            plain.load_all(&tensors).unwrap();
            let merged = run(&plain);
            let source = run(&Network::new(&model, input, 3, 0, &Device::Cpu).unwrap());
            let largest = |a: &[f32], b: &[f32]| {
                (a.iter().zip(b))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max)
            };
            assert!(largest(&adapted, &merged) < 1e-4, "{:?}", model.arch);
            assert!(
                largest(&adapted, &source) > 1e-3,
                "{:?}: B moved it",
                model.arch
            );
        }
    }
}
