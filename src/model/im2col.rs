//! The CPU convolution kernels: forward, and the kernel's and the input's gradients, as
//! matrix multiplies over im2col columns of a group of images at a time.
//!
//! candle's CPU `conv2d` builds the whole batch's columns at once, multiplies into NHWC and
//! copies that to NCHW, three passes over batch-sized memory freshly faulted in; its backward
//! pass is a transposed convolution. Here each group's columns live in one reused buffer of
//! bounded size, the multiplies write NCHW, and an epilogue (BatchNorm and the activation in
//! inference mode) runs while the output is in cache. Grouping images matters where the
//! image is small: at 3x3 pixels one image's multiply is 9 columns wide, and a per-image
//! kernel gradient would read and write the whole kernel's gradient for 9 columns of work.

use rayon::prelude::*;

use super::conv::Epilogue;

/// The most values a group's column matrix (or output) may hold: 16 MB of f32.
pub(crate) const GROUP_VALUES: usize = 4 << 20;

/// A convolution's shapes: `n` images of `c` x `h` x `w`, `o` kernels of `c` x `k` x `k`,
/// `stride`, zero padding `top`/`left` before (and enough after for an `oh` x `ow` output).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn plane(&self) -> usize {
        self.oh * self.ow
    }

    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Images per matrix multiply: as many as keep its matrices within [`GROUP_VALUES`].
    fn group(&self) -> usize {
        let per_image = self.plane() * self.ckk().max(self.o);
        (GROUP_VALUES / per_image).clamp(1, self.n)
    }

    /// A 1x1 kernel at stride 1 without padding: an image is its own column matrix.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.oh == self.h && self.ow == self.w
    }

    /// Output columns `j` whose tap `v` lands inside a row: left <= j * s + v < w + left.
    fn inside(&self, v: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        let first = self.left.saturating_sub(v).div_ceil(s);
        let end = (self.w + self.left)
            .saturating_sub(v)
            .div_ceil(s)
            .min(self.ow);
        first..end.max(first)
    }

    /// The input row that output row `i`'s tap `u` reads, if inside.
    fn row(&self, i: usize, u: usize) -> Option<usize> {
        (i * self.stride + u)
            .checked_sub(self.top)
            .filter(|&y| y < self.h)
    }
}

/// The columns of images `first..first + count` of `xs`: row (channel, u, v) of `columns`
/// (ckk x count * plane) holds, image after image, the input that kernel tap (u, v) of that
/// channel sees at each output pixel (zero in the padding). Rows in parallel.
fn im2col(g: &Geometry, xs: &[f32], first: usize, count: usize, columns: &mut [f32]) {
    let (k, s, plane, ow) = (g.k, g.stride, g.plane(), g.ow);
    columns
        .par_chunks_mut(count * plane)
        .enumerate()
        .for_each(|(row, out)| {
            let (channel, u, v) = (row / (k * k), row / k % k, row % k);
            let inside = g.inside(v);
            for (i, out) in out.chunks_mut(plane).enumerate() {
                let image = &xs[(first + i) * g.image()..][..g.image()];
                let source = &image[channel * g.h * g.w..][..g.h * g.w];
                for (oy, line) in out.chunks_mut(ow).enumerate() {
                    let Some(y) = g.row(oy, u).filter(|_| !inside.is_empty()) else {
                        line.fill(0.0);
                        continue;
                    };
                    line[..inside.start].fill(0.0);
                    line[inside.end..].fill(0.0);
                    let from = &source[y * g.w..][..g.w];
                    let start = inside.start * s + v - g.left;
                    let line = &mut line[inside.clone()];
                    if s == 1 {
                        line.copy_from_slice(&from[start..start + line.len()]);
                    } else {
                        for (j, value) in line.iter_mut().enumerate() {
                            *value = from[start + j * s];
                        }
                    }
                }
            }
        });
}

/// [`im2col`]'s adjoint: adds each column value back onto the input pixel it was read from,
/// into `gx` (images `first..first + count`, each plane in parallel).
fn col2im(g: &Geometry, columns: &[f32], first: usize, count: usize, gx: &mut [f32]) {
    let (k, s, plane, ow) = (g.k, g.stride, g.plane(), g.ow);
    let images = &mut gx[first * g.image()..(first + count) * g.image()];
    images
        .par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(at, target)| {
            let (i, channel) = (at / g.c, at % g.c);
            for u in 0..k {
                for v in 0..k {
                    let inside = g.inside(v);
                    let row = (channel * k + u) * k + v;
                    let values = &columns[row * count * plane + i * plane..][..plane];
                    for (oy, line) in values.chunks(ow).enumerate() {
                        let Some(y) = g.row(oy, u).filter(|_| !inside.is_empty()) else {
                            continue;
                        };
                        let start = inside.start * s + v - g.left;
                        let target = &mut target[y * g.w..][..g.w];
                        for (j, value) in line[inside.clone()].iter().enumerate() {
                            target[start + j * s] += value;
                        }
                    }
                }
            }
        });
}

/// A row-major or transposed view of a matrix for [`multiply`]: (values, row stride, column
/// stride).
type View<'a> = (&'a [f32], usize, usize);

/// dst (m x n, row-major) = lhs (m x depth) rhs (depth x n), plus dst's values when
/// `accumulate`; gemm's parallel kernel on the machine's threads.
pub(crate) fn multiply(
    (m, n, depth): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): View,
    (rhs, rhs_rs, rhs_cs): View,
) {
    assert!(dst.len() >= m * n);
    assert!(lhs.len() > (m - 1) * lhs_rs + (depth - 1) * lhs_cs);
    assert!(rhs.len() > (depth - 1) * rhs_rs + (n - 1) * rhs_cs);
    let threads = rayon::current_num_threads();
    let parallelism = match threads {
        1 => gemm::Parallelism::None,
        _ => gemm::Parallelism::Rayon(threads),
    };
    // SAFETY: the assertions above keep every element gemm reads or writes in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            depth,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The convolution of `xs` (N, C, H, W) with `ws` (O, C, k, k), then `epilogue`: (N, O, oh, ow).
pub(crate) fn forward(g: &Geometry, xs: &[f32], ws: &[f32], epilogue: &Epilogue) -> Vec<f32> {
    let (plane, ckk, o) = (g.plane(), g.ckk(), g.o);
    let mut y = vec![0f32; g.n * o * plane];
    let (mut columns, mut out) = (Vec::new(), Vec::new());
    let group = g.group();
    for first in (0..g.n).step_by(group) {
        let count = group.min(g.n - first);
        let width = count * plane;
        let rhs: &[f32] = if g.direct() && count == 1 {
            &xs[first * g.image()..][..g.image()]
        } else {
            columns.resize(ckk * width, 0.0);
            im2col(g, xs, first, count, &mut columns);
            &columns
        };
        let target = &mut y[first * o * plane..][..count * o * plane];
        if count == 1 {
            multiply(
                (o, width, ckk),
                target,
                false,
                (ws, ckk, 1),
                (rhs, width, 1),
            );
        } else {
            // (O, count * plane) to count images of (O, plane).
            out.resize(o * width, 0.0);
            multiply(
                (o, width, ckk),
                &mut out,
                false,
                (ws, ckk, 1),
                (rhs, width, 1),
            );
            target
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(at, dst)| {
                    let (i, channel) = (at / o, at % o);
                    dst.copy_from_slice(&out[channel * width + i * plane..][..plane]);
                });
        }
        target
            .par_chunks_mut(o * plane)
            .for_each(|image| epilogue.apply(image, plane, 0));
    }
    y
}

/// The gradients of [`forward`] without epilogue for the output's gradient `gs`
/// (N, O, oh, ow): the input's (when `want_x`) and the kernel's. Per group: the kernel's
/// gradient accumulates grad (O x count * plane) times the columns transposed; the columns'
/// gradient, the kernel transposed times grad, goes back onto the images by [`col2im`].
pub(crate) fn backward(
    g: &Geometry,
    xs: &[f32],
    ws: &[f32],
    gs: &[f32],
    want_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let (plane, ckk, o) = (g.plane(), g.ckk(), g.o);
    let mut gw = vec![0f32; o * ckk];
    let mut gx = vec![0f32; if want_x { g.n * g.image() } else { 0 }];
    let (mut columns, mut gathered, mut gcol) = (Vec::new(), Vec::new(), Vec::new());
    let group = g.group();
    for first in (0..g.n).step_by(group) {
        let count = group.min(g.n - first);
        let width = count * plane;
        let direct = g.direct() && count == 1;
        let cols: &[f32] = if direct {
            &xs[first * g.image()..][..g.image()]
        } else {
            columns.resize(ckk * width, 0.0);
            im2col(g, xs, first, count, &mut columns);
            &columns
        };
        // The output gradient as one (O, count * plane) matrix.
        let grad: &[f32] = if count == 1 {
            &gs[first * o * plane..][..o * plane]
        } else {
            gathered.resize(o * width, 0.0);
            gathered
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(at, dst)| {
                    let (channel, i) = (at / count, at % count);
                    dst.copy_from_slice(&gs[((first + i) * o + channel) * plane..][..plane]);
                });
            &gathered
        };
        // gw += grad cols^T
        multiply(
            (o, ckk, width),
            &mut gw,
            true,
            (grad, width, 1),
            (cols, 1, width),
        );
        if want_x {
            // cols' gradient = ws^T grad
            let lhs = (ws, 1, ckk);
            if direct {
                let dst = &mut gx[first * g.image()..][..g.image()];
                multiply((ckk, width, o), dst, false, lhs, (grad, width, 1));
            } else {
                gcol.resize(ckk * width, 0.0);
                multiply((ckk, width, o), &mut gcol, false, lhs, (grad, width, 1));
                col2im(g, &gcol, first, count, &mut gx);
            }
        }
    }
    (want_x.then_some(gx), gw)
}
