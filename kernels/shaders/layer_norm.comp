#version 450
// Layer norm, one invocation per row, its values summed in order: (x − μ)/σ · γ + β, and the
// row's (μ, 1/σ) for the backward pass.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer Gamma { float gamma[]; };
layout(set = 0, binding = 2) readonly buffer Beta { float beta[]; };
layout(set = 0, binding = 3) writeonly buffer Out { float out_[]; };
layout(set = 0, binding = 4) writeonly buffer Stats { float stats[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint cols;
    float epsilon;
} s;

void main() {
    uint r = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (r >= s.rows) return;
    uint base = r * s.cols;
    float n = float(s.cols);
    float sum = 0.0;
    for (uint c = 0; c < s.cols; c++) sum += x[base + c];
    float mean = sum / n;
    float squares = 0.0;
    for (uint c = 0; c < s.cols; c++) {
        float d = x[base + c] - mean;
        squares += d * d;
    }
    float inv = 1.0 / sqrt(squares / n + s.epsilon);
    for (uint c = 0; c < s.cols; c++) out_[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    stats[2 * r] = mean;
    stats[2 * r + 1] = inv;
}
