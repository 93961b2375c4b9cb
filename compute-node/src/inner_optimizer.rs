//! The local (inner) optimizers a task's steps run: SGD, SGD with momentum, Adam and AdamW, with
//! weight decay. Their state starts fresh in every task, so a re-execution elsewhere repeats it.

use aic_protocol::messages::InnerOptimizer;

const MOMENTUM: f32 = 0.9;
const B1: f32 = 0.9;
const B2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// One task's optimizer state over the flat parameters.
pub struct InnerState {
    kind: InnerOptimizer,
    learning_rate: f32,
    weight_decay: f32,
    /// Momentum, or Adam's first moment.
    m: Vec<f32>,
    /// Adam's second moment.
    v: Vec<f32>,
    /// Steps taken so far.
    t: i32,
}

impl InnerState {
    pub fn new(kind: InnerOptimizer, parameters: usize, learning_rate: f32, weight_decay: f32) -> Self {
        let (m, v) = match kind {
            InnerOptimizer::Sgd => (0, 0),
            InnerOptimizer::Momentum => (parameters, 0),
            InnerOptimizer::Adam | InnerOptimizer::AdamW => (parameters, parameters),
        };
        InnerState {
            kind,
            learning_rate,
            weight_decay,
            m: vec![0.0; m],
            v: vec![0.0; v],
            t: 0,
        }
    }

    /// Updates the parameters at `offset..` of the flat order with their gradient.
    pub fn apply(&mut self, offset: usize, weights: &mut [f32], gradient: &[f32]) {
        let (lr, wd) = (self.learning_rate, self.weight_decay);
        let len = weights.len();
        match self.kind {
            InnerOptimizer::Sgd => {
                for (w, g) in weights.iter_mut().zip(gradient) {
                    *w -= lr * (g + wd * *w);
                }
            }
            InnerOptimizer::Momentum => {
                let m = &mut self.m[offset..offset + len];
                for ((w, g), m) in weights.iter_mut().zip(gradient).zip(m) {
                    *m = MOMENTUM * *m + g + wd * *w;
                    *w -= lr * *m;
                }
            }
            InnerOptimizer::Adam | InnerOptimizer::AdamW => {
                let t = self.t + 1;
                let correct1 = 1.0 - B1.powi(t);
                let correct2 = 1.0 - B2.powi(t);
                let decoupled = if self.kind == InnerOptimizer::AdamW {
                    wd
                } else {
                    0.0
                };
                let m = &mut self.m[offset..offset + len];
                let v = &mut self.v[offset..offset + len];
                for i in 0..len {
                    let g = gradient[i];
                    m[i] = B1 * m[i] + (1.0 - B1) * g;
                    v[i] = B2 * v[i] + (1.0 - B2) * g * g;
                    let step = (m[i] / correct1) / ((v[i] / correct2).sqrt() + EPS);
                    weights[i] -= lr * (step + decoupled * weights[i]);
                }
            }
        }
    }

    /// Ends a step (after every tensor was updated).
    pub fn finish_step(&mut self) {
        self.t += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(kind: InnerOptimizer, weight_decay: f32, gradients: &[f32], w: f32) -> Vec<f32> {
        let mut state = InnerState::new(kind, 1, 0.1, weight_decay);
        let mut weights = [w];
        let mut trail = Vec::new();
        for g in gradients {
            state.apply(0, &mut weights, &[*g]);
            state.finish_step();
            trail.push(weights[0]);
        }
        trail
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_adds_weight_decay_to_the_gradient() {
        // w = 1, no gradient: 1 − 0.1·0.5·1 = 0.95, then 0.95 − 0.1·0.5·0.95.
        close(
            &steps(InnerOptimizer::Sgd, 0.5, &[0.0, 0.0], 1.0),
            &[0.95, 0.9025],
        );
        close(&steps(InnerOptimizer::Sgd, 0.0, &[2.0], 1.0), &[0.8]);
    }

    #[test]
    fn momentum_accumulates_the_gradient() {
        // m = 1, then 1.9: w = 1 − 0.1, then − 0.19.
        close(
            &steps(InnerOptimizer::Momentum, 0.0, &[1.0, 1.0], 1.0),
            &[0.9, 0.71],
        );
    }

    #[test]
    fn adam_steps_by_the_learning_rate_and_adamw_decays_the_weights_apart() {
        // The first bias-corrected Adam step is lr·g/|g|.
        close(&steps(InnerOptimizer::Adam, 0.0, &[3.0], 1.0), &[0.9]);
        // Adam ignores weight decay; with no gradient nothing moves.
        close(&steps(InnerOptimizer::Adam, 0.5, &[0.0], 1.0), &[1.0]);
        // AdamW shrinks the weight by lr·wd·w whatever the gradient.
        close(
            &steps(InnerOptimizer::AdamW, 0.5, &[0.0, 0.0], 1.0),
            &[0.95, 0.9025],
        );
        close(
            &steps(InnerOptimizer::AdamW, 0.5, &[3.0], 1.0),
            &[1.0 - 0.1 * (1.0 + 0.5)],
        );
    }
}
