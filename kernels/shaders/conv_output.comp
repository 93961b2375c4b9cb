#version 450
// A convolution's GEMM output, (rows·positions) × filters, as rows of filters × positions (the
// channel-major image layout every layer uses), plus each filter's bias.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer Y { float y[]; };
layout(set = 0, binding = 1) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 2) writeonly buffer Out { float out_[]; };

layout(push_constant) uniform Shape {
    uint total;
    uint positions;
    uint filters;
} s;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= s.total) return;
    uint per_row = s.positions * s.filters;
    uint r = i / per_row;
    uint f = (i % per_row) / s.positions;
    uint p = i % s.positions;
    out_[i] = y[(r * s.positions + p) * s.filters + f] + bias[f];
}
