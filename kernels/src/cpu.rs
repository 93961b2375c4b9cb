//! The CPU backend: the reference every op is checked against, and the fast path on machines
//! without a GPU. Matrix multiply is the `gemm` crate's SGEMM (SIMD micro-kernels, split over
//! `threads` cores through rayon for products big enough to gain from it); the other ops run in
//! index order, so results are reproducible for a given thread count.

use gemm::Parallelism;

use crate::backend::{check_adam, check_labels, check_len, check_matmul, check_same, AdamParams, Backend};
use crate::error::{check_finite, Result};
use crate::tensor::Matrix;

/// Products smaller than this many multiply-adds run on one thread: splitting them costs more
/// than it gains.
const PARALLEL_MIN_FLOPS: usize = 64 * 64 * 64;

/// The CPU backend. [`Default`] is the single-threaded reference.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    threads: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend { threads: 1 }
    }
}

impl CpuBackend {
    /// A backend whose matrix multiplies use `threads` cores; 0 means every core.
    pub fn with_threads(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        CpuBackend { threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Backend for CpuBackend {
    fn host_threads(&self) -> usize {
        self.threads
    }

    fn describe(&self) -> String {
        let threads = self.threads;
        format!(
            "cpu (gemm sgemm, {threads} thread{})",
            if threads == 1 { "" } else { "s" }
        )
    }

    fn matmul(&mut self, a: &Matrix, b: &Matrix, transpose_a: bool, transpose_b: bool) -> Result<Matrix> {
        let (m, n, k) = check_matmul(a, b, transpose_a, transpose_b)?;
        check_finite("matmul input a", &a.data)?;
        check_finite("matmul input b", &b.data)?;
        let mut c = Matrix::zeros(m, n);
        if m == 0 || n == 0 {
            return Ok(c);
        }
        // Transposes are expressed as strides (column stride, row stride): no copy.
        let (a_cs, a_rs) = if transpose_a {
            (m as isize, 1)
        } else {
            (1, k as isize)
        };
        let (b_cs, b_rs) = if transpose_b {
            (k as isize, 1)
        } else {
            (1, n as isize)
        };
        let parallelism = if self.threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_FLOPS {
            Parallelism::Rayon(self.threads)
        } else {
            Parallelism::None
        };
        // SAFETY: the pointers and strides describe exactly the m×k, k×n and m×n matrices the
        // three vectors hold, as checked above; `c` is not aliased and not read (read_dst false).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.data.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.data.as_ptr(),
                a_cs,
                a_rs,
                b.data.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok(c)
    }

    fn bias_act(&mut self, x: &Matrix, bias: &[f32], relu: bool) -> Result<Matrix> {
        check_len("bias_act", x.cols, bias.len())?;
        let mut y = x.clone();
        for (i, v) in y.data.iter_mut().enumerate() {
            *v += bias[i % x.cols];
            if relu && *v < 0.0 {
                *v = 0.0;
            }
        }
        Ok(y)
    }

    fn relu_backward(&mut self, activation: &Matrix, grad: &Matrix) -> Result<Matrix> {
        check_same("relu_backward", activation, grad)?;
        let data = activation
            .data
            .iter()
            .zip(&grad.data)
            .map(|(&a, &g)| if a > 0.0 { g } else { 0.0 })
            .collect();
        Matrix::new(grad.rows, grad.cols, data)
    }

    fn softmax_xent(&mut self, logits: &Matrix, labels: &[u32]) -> Result<(Matrix, Vec<f32>)> {
        check_labels(logits, labels)?;
        let (rows, classes) = (logits.rows, logits.cols);
        let mut grad = Matrix::zeros(rows, classes);
        let mut losses = Vec::with_capacity(rows);
        let scale = 1.0 / rows as f32;
        for ((row, &label), grad_row) in logits
            .data
            .chunks_exact(classes)
            .zip(labels)
            .zip(grad.data.chunks_exact_mut(classes))
        {
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = row.iter().map(|&v| (v - top).exp()).sum();
            let log_total = total.ln();
            let label = label as usize;
            losses.push(log_total - (row[label] - top));
            for (c, (&logit, g)) in row.iter().zip(grad_row.iter_mut()).enumerate() {
                let p = (logit - top - log_total).exp();
                *g = (p - if c == label { 1.0 } else { 0.0 }) * scale;
            }
        }
        Ok((grad, losses))
    }

    fn column_sum(&mut self, x: &Matrix) -> Result<Vec<f32>> {
        let mut sums = vec![0.0f32; x.cols];
        for r in 0..x.rows {
            for (c, sum) in sums.iter_mut().enumerate() {
                *sum += x.data[r * x.cols + c];
            }
        }
        Ok(sums)
    }

    fn sum(&mut self, x: &[f32], square: bool) -> Result<f32> {
        Ok(x.iter().map(|&v| if square { v * v } else { v }).sum())
    }

    fn sgd(&mut self, w: &mut [f32], g: &[f32], lr: f32) -> Result<()> {
        check_len("sgd", w.len(), g.len())?;
        for (w, g) in w.iter_mut().zip(g) {
            *w -= lr * g;
        }
        Ok(())
    }

    fn adam(
        &mut self,
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        params: AdamParams,
    ) -> Result<()> {
        check_adam(w, g, m, v)?;
        let (step_size, epsilon_hat) = params.corrected();
        for i in 0..w.len() {
            m[i] = params.beta1 * m[i] + (1.0 - params.beta1) * g[i];
            v[i] = params.beta2 * v[i] + (1.0 - params.beta2) * g[i] * g[i];
            w[i] -= step_size * m[i] / (v[i].sqrt() + epsilon_hat);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-0.5, 0.5).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// The textbook product, accumulated in f64, of a (m×k, or k×m stored when transposed) and
    /// b (k×n, or n×k stored when transposed).
    fn textbook(a: &Matrix, b: &Matrix, ta: bool, tb: bool, (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let at = |i: usize, l: usize| if ta { a.data[l * m + i] } else { a.data[i * k + l] };
        let bt = |l: usize, j: usize| if tb { b.data[j * k + l] } else { b.data[l * n + j] };
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|l| f64::from(at(i, l)) * f64::from(bt(l, j)))
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn one_thread_and_every_core_multiply_like_the_textbook_on_odd_shapes_and_transposes() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 1, 33),
            (65, 67, 63),
            (128, 96, 200),
            (0, 4, 3),
        ];
        for (m, n, k) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let a = Matrix::new(ar, ac, values(ar * ac, 1)).unwrap();
                let b = Matrix::new(br, bc, values(br * bc, 2)).unwrap();
                let expected = textbook(&a, &b, ta, tb, (m, n, k));
                for threads in [1, 4] {
                    let c = CpuBackend::with_threads(threads).matmul(&a, &b, ta, tb).unwrap();
                    assert_eq!((c.rows, c.cols), (m, n));
                    for (got, want) in c.data.iter().zip(&expected) {
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f32 + 1.0),
                            "{m}×{k}·{k}×{n} (transposed {ta}, {tb}) on {threads} threads: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_multiply_on_every_core_repeats_bitwise() {
        let a = Matrix::new(300, 257, values(300 * 257, 3)).unwrap();
        let b = Matrix::new(257, 129, values(257 * 129, 4)).unwrap();
        let mut backend = CpuBackend::with_threads(4);
        let first = backend.matmul(&a, &b, false, false).unwrap();
        for _ in 0..3 {
            assert_eq!(backend.matmul(&a, &b, false, false).unwrap().data, first.data);
        }
    }

    #[test]
    fn zero_threads_means_every_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(CpuBackend::with_threads(0).threads(), cores);
        assert_eq!(CpuBackend::default().threads(), 1);
    }
}
