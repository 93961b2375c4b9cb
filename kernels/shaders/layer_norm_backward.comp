#version 450
// The gradient through layer norm with respect to its input, one invocation per row:
// dx = (1/σ)/n · (n·d̂ − Σd̂ − x̂·Σ(d̂·x̂)), where d̂ = g·γ and x̂ = (x − μ)/σ.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer G { float g[]; };
layout(set = 0, binding = 2) readonly buffer Gamma { float gamma[]; };
layout(set = 0, binding = 3) readonly buffer Stats { float stats[]; };
layout(set = 0, binding = 4) writeonly buffer DX { float d_x[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint cols;
} s;

void main() {
    uint r = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (r >= s.rows) return;
    uint base = r * s.cols;
    float n = float(s.cols);
    float mean = stats[2 * r];
    float inv = stats[2 * r + 1];
    float sum_d = 0.0;
    float sum_dx = 0.0;
    for (uint c = 0; c < s.cols; c++) {
        float d_hat = g[base + c] * gamma[c];
        sum_d += d_hat;
        sum_dx += d_hat * ((x[base + c] - mean) * inv);
    }
    for (uint c = 0; c < s.cols; c++) {
        float x_hat = (x[base + c] - mean) * inv;
        float d_hat = g[base + c] * gamma[c];
        d_x[base + c] = inv / n * (n * d_hat - sum_d - x_hat * sum_dx);
    }
}
