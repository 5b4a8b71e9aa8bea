//! 3x3 convolutions at stride 1 by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016) on the CPU.
//!
//! Each 2x2 block of output pixels (a tile) is computed from the 4x4 input patch under it:
//! the patch and every kernel are transformed (`B^T d B`, `G g G^T`), multiplied elementwise
//! and summed over channels, which for all tiles at once is 16 matrix multiplies of
//! (O x C) by (C x tiles), and the 4x4 result is transformed back (`A^T m A`). That is 16
//! multiply-adds per tile where im2col does 36: 2.25 times fewer (fewer on small planes,
//! whose last tiles reach past the edge), and the transforms read the input once where
//! im2col copies it nine times. On 2 cores that made ResNet-18's forward pass about 15%
//! faster, not 2.25 times: the transforms and 16 thin multiplies are bound by memory. The
//! gradients stay in [`im2col::backward`](super::im2col::backward): computing the input's
//! gradient this way (a convolution of the output's gradient with the kernels flipped and
//! transposed) measured no faster, as the kernels' gradient needs im2col's columns anyway.

use rayon::prelude::*;

use super::conv::Epilogue;
use super::im2col::{GROUP_VALUES, Geometry, multiply};

/// Fewer channels than this in or out take im2col: the multiplies are too thin to pay for
/// the transforms (cnn6's first convolution reads 1 channel).
const MIN_CHANNELS: usize = 16;

/// Smaller output planes take im2col: a 2x2 tile's 16 products cover 4 pixels only inside
/// the plane, and at 3x3 (ResNet's last layer at 96x96) half the tiles' pixels fall outside.
const MIN_SIDE: usize = 8;

/// Whether [`forward`] computes this convolution: 3x3 at stride 1, wide enough and on
/// planes large enough to gain (measured on ResNet's and cnn6's shapes, docs/speed.md).
pub(crate) fn applies(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.c.min(g.o) >= MIN_CHANNELS && g.oh.min(g.ow) >= MIN_SIDE
}

/// Tiles down and across: enough 2x2 tiles to cover the output.
fn tiles(g: &Geometry) -> (usize, usize) {
    (g.oh.div_ceil(2), g.ow.div_ceil(2))
}

/// The convolution of `xs` (N, C, H, W) with `ws` (O, C, 3, 3), then `epilogue`:
/// (N, O, oh, ow). Images go in groups whose transformed inputs and products fit in
/// [`GROUP_VALUES`]; the 16 multiplies of a group each run on all threads.
pub(crate) fn forward(g: &Geometry, xs: &[f32], ws: &[f32], epilogue: &Epilogue) -> Vec<f32> {
    debug_assert!(g.k == 3 && g.stride == 1);
    let (th, tw) = tiles(g);
    let (plane, per_image) = (g.oh * g.ow, th * tw);
    let group = (GROUP_VALUES / (16 * per_image * g.c.max(g.o))).clamp(1, g.n);
    let kernels = transform_kernels(g, ws);
    let mut y = vec![0f32; g.n * g.o * plane];
    let (mut inputs, mut products) = (Vec::new(), Vec::new());
    for first in (0..g.n).step_by(group) {
        let count = group.min(g.n - first);
        let width = count * per_image;
        inputs.resize(16 * g.c * width, 0.0);
        products.resize(16 * g.o * width, 0.0);
        transform_inputs(g, xs, first, count, &mut inputs);
        for (xi, product) in products.chunks_mut(g.o * width).enumerate() {
            multiply(
                (g.o, width, g.c),
                product,
                false,
                (&kernels[xi * g.o * g.c..], g.c, 1),
                (&inputs[xi * width..], 16 * width, 1),
            );
        }
        let target = &mut y[first * g.o * plane..][..count * g.o * plane];
        target
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(at, out)| {
                let (image, channel) = (at / g.o, at % g.o);
                let at = channel * width + image * per_image;
                transform_output(g, &products, g.o * width, at, out);
                epilogue.apply(out, plane, channel);
            });
    }
    y
}

/// `G k G^T` for each 3x3 kernel `k` of `ws`: 16 matrices of O x C, matrix `xi` holding
/// element `xi` of every transformed kernel.
fn transform_kernels(g: &Geometry, ws: &[f32]) -> Vec<f32> {
    // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] applied to a column (a, b, c).
    let apply = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let matrix = g.o * g.c;
    let mut out = vec![0f32; 16 * matrix];
    for (oc, k) in ws.chunks(9).enumerate() {
        let columns: [[f32; 4]; 3] = std::array::from_fn(|j| apply(k[j], k[3 + j], k[6 + j]));
        for i in 0..4 {
            let row = apply(columns[0][i], columns[1][i], columns[2][i]);
            for (j, value) in row.into_iter().enumerate() {
                out[(i * 4 + j) * matrix + oc] = value;
            }
        }
    }
    out
}

/// `B^T d B` for the 4x4 input patch `d` under each tile of images `first..first + count`:
/// per channel (in parallel) 16 rows of the group's tiles, row `xi` holding element `xi` of
/// each transformed patch; the patch's pixels outside the image are zero.
///
/// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. A row of tiles at a time: `B^T` combines
/// the four zero-padded input rows under it in slices, then `. B` combines each tile's four
/// columns of those.
fn transform_inputs(g: &Geometry, xs: &[f32], first: usize, count: usize, out: &mut [f32]) {
    let (th, tw) = tiles(g);
    let width = count * th * tw;
    let span = 2 * tw + 2;
    // A padded row's column p is the input's column p - left: the input's first `copied`
    // columns go to `left..`, the rest of the row stays zero.
    let copied = g.w.min(span - g.left);
    out.par_chunks_mut(16 * width)
        .enumerate()
        .for_each(|(channel, out)| {
            let mut rows = vec![0f32; 4 * span];
            let mut combined = vec![0f32; 4 * span];
            for image in 0..count {
                let plane = &xs[((first + image) * g.c + channel) * g.h * g.w..][..g.h * g.w];
                for ty in 0..th {
                    for (r, row) in rows.chunks_mut(span).enumerate() {
                        match (2 * ty + r).checked_sub(g.top).filter(|&y| y < g.h) {
                            Some(y) => {
                                row[g.left..][..copied].copy_from_slice(&plane[y * g.w..][..copied])
                            }
                            None => row[g.left..][..copied].fill(0.0),
                        }
                    }
                    let (d0, rest) = rows.split_at(span);
                    let (d1, rest) = rest.split_at(span);
                    let (d2, d3) = rest.split_at(span);
                    let (c0, rest) = combined.split_at_mut(span);
                    let (c1, rest) = rest.split_at_mut(span);
                    let (c2, c3) = rest.split_at_mut(span);
                    let rows = d0.iter().zip(d1).zip(d2).zip(d3);
                    let sums = c0.iter_mut().zip(c1.iter_mut()).zip(c2).zip(c3);
                    for ((((c0, c1), c2), c3), (((&d0, &d1), &d2), &d3)) in sums.zip(rows) {
                        (*c0, *c1, *c2, *c3) = (d0 - d2, d1 + d2, d2 - d1, d1 - d3);
                    }
                    let at = (image * th + ty) * tw;
                    for (i, c) in combined.chunks(span).enumerate() {
                        let from = i * 4 * width + at;
                        let (first, rest) = out[from..].split_at_mut(width);
                        let (second, rest) = rest.split_at_mut(width);
                        let (third, fourth) = rest.split_at_mut(width);
                        // Tile tx's columns: pairs tx and tx + 1 of the row.
                        let pairs = c[..2 * tw].chunks_exact(2).zip(c[2..].chunks_exact(2));
                        let targets = (first[..tw].iter_mut().zip(&mut second[..tw]))
                            .zip(third[..tw].iter_mut().zip(&mut fourth[..tw]));
                        for (((a, b), (c, d)), (left, right)) in targets.zip(pairs) {
                            (*a, *b) = (left[0] - right[0], left[1] + right[0]);
                            (*c, *d) = (right[0] - left[1], left[1] - right[1]);
                        }
                    }
                }
            }
        });
}

/// One output plane from the products: `A^T m A` for each tile, A^T = [1 1 1 0; 0 1 -1 -1],
/// where element `xi` of tile t's product is `products[xi * stride + at + t]`; the tiles'
/// pixels past the plane's edge are dropped. A row of tiles at a time, in slices across it.
fn transform_output(g: &Geometry, products: &[f32], stride: usize, at: usize, out: &mut [f32]) {
    let (th, tw) = tiles(g);
    let mut rows = vec![0f32; 8 * tw];
    for ty in 0..th {
        let m = |xi: usize| &products[xi * stride + at + ty * tw..][..tw];
        // A^T m: row 0 is m0 + m1 + m2, row 1 is m1 - m2 - m3 (rows of 4 elements j).
        for (j, pair) in rows.chunks_mut(2 * tw).enumerate() {
            let (r0, r1) = pair.split_at_mut(tw);
            let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
            for tx in 0..tw {
                r0[tx] = m0[tx] + m1[tx] + m2[tx];
                r1[tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        // (A^T m) A: column 0 is s0 + s1 + s2, column 1 is s1 - s2 - s3.
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= g.oh {
                break;
            }
            let s = |j: usize| &rows[j * 2 * tw + r * tw..][..tw];
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            let line = &mut out[y * g.ow..][..g.ow];
            for (tx, pair) in line.chunks_mut(2).enumerate() {
                pair[0] = s0[tx] + s1[tx] + s2[tx];
                if let Some(odd) = pair.get_mut(1) {
                    *odd = s1[tx] - s2[tx] - s3[tx];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::im2col;
    use super::*;

    fn random(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1 << 24) as f32 - 0.5)
            .collect()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// Geometries of 3x3 stride-1 convolutions: odd and even planes, 1x1 and 2x1 planes,
    /// padding 0, 1 and 2, and more images than one group holds.
    fn geometries() -> Vec<Geometry> {
        let at = |n, c, (h, w), o, (top, left), (bottom, right): (usize, usize)| Geometry {
            n,
            c,
            h,
            w,
            o,
            k: 3,
            stride: 1,
            top,
            left,
            oh: h + top + bottom - 2,
            ow: w + left + right - 2,
        };
        vec![
            at(3, 16, (7, 9), 24, (1, 1), (1, 1)),
            at(2, 17, (8, 8), 16, (0, 0), (0, 0)),
            at(2, 16, (1, 1), 16, (1, 1), (1, 1)),
            at(1, 16, (2, 1), 20, (2, 1), (0, 2)),
            at(5, 32, (6, 5), 16, (1, 2), (2, 1)),
            at(70, 16, (40, 40), 16, (1, 1), (1, 1)),
        ]
    }

    /// The forward pass, with an epilogue, agrees with im2col's on every geometry (also those
    /// [`applies`] leaves to im2col).
    #[test]
    fn forward_matches_im2col() {
        for (i, g) in geometries().into_iter().enumerate() {
            let xs = random(g.n * g.c * g.h * g.w, i as u32);
            let ws = random(g.o * g.c * 9, 100 + i as u32);
            let epilogue = Epilogue {
                scale: Some(random(g.o, 7)),
                shift: Some(random(g.o, 8)),
                ..Epilogue::default()
            };
            let ours = forward(&g, &xs, &ws, &epilogue);
            let theirs = im2col::forward(&g, &xs, &ws, &epilogue);
            assert!(
                worst(&ours, &theirs) < 1e-4,
                "{g:?}: {}",
                worst(&ours, &theirs)
            );
        }
    }
}
