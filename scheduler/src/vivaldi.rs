//! Network coordinates fitted from measured round trips (Vivaldi: Dabek, Cox, Kaashoek and
//! Morris, SIGCOMM 2004), so the allocator can estimate the RTT between any two nodes although
//! each node measures only a few peers.
//!
//! A coordinate is a point in a 3-dimensional Euclidean space plus a non-negative "height" (the
//! access-link delay every path from the node pays). Each sample pulls the two nodes' estimated
//! distance towards the measured RTT, weighted by how sure each side is of its coordinate.

use std::collections::HashMap;
use std::hash::Hash;

/// Dimensions of the Euclidean part.
pub const DIMENSIONS: usize = 3;
/// How far one sample may move a coordinate (Vivaldi's c_c).
const CC: f64 = 0.25;
/// How fast the error estimate follows new samples (Vivaldi's c_e).
const CE: f64 = 0.25;
/// Smallest height, in milliseconds: keeps coordinates from collapsing onto one point.
const MIN_HEIGHT_MS: f64 = 0.01;

/// One node's coordinate, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coordinate {
    pub position: [f64; DIMENSIONS],
    pub height: f64,
    /// Relative error estimate in (0, 1]; 1 for a node never measured.
    pub error: f64,
}

impl Default for Coordinate {
    fn default() -> Self {
        Coordinate {
            position: [0.0; DIMENSIONS],
            height: MIN_HEIGHT_MS,
            error: 1.0,
        }
    }
}

impl Coordinate {
    /// The estimated RTT to `other`, in milliseconds.
    pub fn distance_ms(&self, other: &Coordinate) -> f64 {
        let euclid: f64 = self
            .position
            .iter()
            .zip(&other.position)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        euclid + self.height + other.height
    }
}

/// The coordinates of every node, updated sample by sample.
#[derive(Clone, Debug)]
pub struct Coordinates<K> {
    nodes: HashMap<K, Coordinate>,
}

impl<K> Default for Coordinates<K> {
    fn default() -> Self {
        Coordinates {
            nodes: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone + Ord> Coordinates<K> {
    pub fn new() -> Self {
        Coordinates {
            nodes: HashMap::new(),
        }
    }

    pub fn get(&self, node: &K) -> Coordinate {
        self.nodes.get(node).copied().unwrap_or_default()
    }

    /// The estimated RTT between two nodes, in milliseconds.
    pub fn estimate_ms(&self, a: &K, b: &K) -> f64 {
        if a == b {
            return 0.0;
        }
        self.get(a).distance_ms(&self.get(b))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Applies one measurement: `from` measured `rtt_ms` to `to`. Only `from` moves (the
    /// measuring node's view, as in Vivaldi); samples that are not finite and positive are ignored.
    pub fn observe(&mut self, from: &K, to: &K, rtt_ms: f64) {
        if from == to || !rtt_ms.is_finite() || rtt_ms <= 0.0 {
            return;
        }
        let remote = self.get(to);
        let local = self.get(from);
        let predicted = local.distance_ms(&remote);
        // Confidence weight: trust the sample more when we are unsure and the peer is sure.
        let weight = local.error / (local.error + remote.error);
        let relative_error = (predicted - rtt_ms).abs() / rtt_ms;
        let error = (relative_error * CE * weight + local.error * (1.0 - CE * weight)).clamp(0.01, 1.0);
        let step = CC * weight * (rtt_ms - predicted);
        // The unit vector from the peer to us in the height-vector space of the paper (§5.5):
        // [x_i − x_j, h_i + h_j] / (‖x_i − x_j‖ + h_i + h_j).
        let mut direction = [0.0; DIMENSIONS];
        let mut euclid = 0.0;
        for (d, (a, b)) in direction
            .iter_mut()
            .zip(local.position.iter().zip(&remote.position))
        {
            *d = a - b;
            euclid += *d * *d;
        }
        let euclid = euclid.sqrt();
        if euclid < 1e-9 {
            // Coinciding points separate along a direction that depends only on the pair.
            direction = deterministic_direction(from, to);
        } else {
            direction.iter_mut().for_each(|d| *d /= euclid);
        }
        let norm = euclid + local.height + remote.height;
        let mut moved = local;
        for (p, d) in moved.position.iter_mut().zip(direction) {
            *p += step * d * if euclid < 1e-9 { 1.0 } else { euclid / norm };
        }
        moved.height = (local.height + step * (local.height + remote.height) / norm).max(MIN_HEIGHT_MS);
        moved.error = error;
        self.nodes.insert(from.clone(), moved);
    }
}

/// A unit vector that depends only on the pair, so two coinciding nodes separate the same way
/// on every replica.
fn deterministic_direction<K: Ord>(a: &K, b: &K) -> [f64; DIMENSIONS] {
    let sign = if a < b { 1.0 } else { -1.0 };
    let v = [sign, 0.5 * sign, -0.25 * sign];
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four sites on a line at 0, 10, 40 and 100 ms: the fitted coordinates predict every pair
    /// within 25 %, although each node measured only its neighbours on either side.
    #[test]
    fn coordinates_fit_a_line_from_neighbour_samples() {
        let sites = [0.0, 10.0, 40.0, 100.0];
        let rtt = |i: usize, j: usize| f64::abs(sites[i] - sites[j]) + 1.0;
        let mut coordinates = Coordinates::<usize>::new();
        for _ in 0..400 {
            for i in 0..4 {
                for j in 0..4 {
                    if i != j && (i as i64 - j as i64).abs() <= 2 {
                        coordinates.observe(&i, &j, rtt(i, j));
                    }
                }
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                if i != j {
                    let truth = rtt(i, j);
                    let estimate = coordinates.estimate_ms(&i, &j);
                    assert!(
                        (estimate - truth).abs() / truth < 0.25,
                        "{i}→{j}: estimated {estimate:.1} ms, measured {truth:.1} ms"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_samples_are_ignored_and_unknown_nodes_sit_at_the_origin() {
        let mut coordinates = Coordinates::<u8>::new();
        coordinates.observe(&1, &2, f64::NAN);
        coordinates.observe(&1, &2, -3.0);
        coordinates.observe(&1, &1, 5.0);
        assert!(coordinates.is_empty());
        assert_eq!(coordinates.estimate_ms(&7, &7), 0.0);
        assert!(coordinates.estimate_ms(&7, &8) > 0.0);
    }
}
