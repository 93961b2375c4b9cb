//! The CPU backend: the reference every op is checked against, and the fast path on machines
//! without a GPU. Matrix multiply is `matrixmultiply`'s single-threaded SGEMM; reductions run in
//! index order, so results are reproducible.

use crate::backend::{check_adam, check_labels, check_len, check_matmul, check_same, AdamParams, Backend};
use crate::error::{check_finite, Result};
use crate::tensor::Matrix;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        "cpu (matrixmultiply sgemm, 1 thread)".to_string()
    }

    fn matmul(&mut self, a: &Matrix, b: &Matrix, transpose_a: bool, transpose_b: bool) -> Result<Matrix> {
        let (m, n, k) = check_matmul(a, b, transpose_a, transpose_b)?;
        check_finite("matmul input a", &a.data)?;
        check_finite("matmul input b", &b.data)?;
        let mut c = Matrix::zeros(m, n);
        // Transposes are expressed as strides: no copy.
        let (rsa, csa) = if transpose_a {
            (1, m as isize)
        } else {
            (k as isize, 1)
        };
        let (rsb, csb) = if transpose_b {
            (1, k as isize)
        } else {
            (n as isize, 1)
        };
        // SAFETY: the pointers and strides describe exactly the m×k, k×n and m×n matrices the
        // three vectors hold, as checked above; `c` is not aliased.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.data.as_ptr(),
                rsa,
                csa,
                b.data.as_ptr(),
                rsb,
                csb,
                0.0,
                c.data.as_mut_ptr(),
                n as isize,
                1,
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
