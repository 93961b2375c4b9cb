#version 450
// The gradients of layer norm's γ and β, one invocation per value, rows summed in order:
// dγ = Σ g·x̂, dβ = Σ g.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer G { float g[]; };
layout(set = 0, binding = 2) readonly buffer Stats { float stats[]; };
layout(set = 0, binding = 3) writeonly buffer DGamma { float d_gamma[]; };
layout(set = 0, binding = 4) writeonly buffer DBeta { float d_beta[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint cols;
} s;

void main() {
    uint c = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (c >= s.cols) return;
    float dg = 0.0;
    float db = 0.0;
    for (uint r = 0; r < s.rows; r++) {
        float grad = g[r * s.cols + c];
        dg += grad * ((x[r * s.cols + c] - stats[2 * r]) * stats[2 * r + 1]);
        db += grad;
    }
    d_gamma[c] = dg;
    d_beta[c] = db;
}
