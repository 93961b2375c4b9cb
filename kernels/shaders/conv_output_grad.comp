#version 450
// The inverse layout of conv_output for the gradient: rows of filters × positions to
// (rows·positions) × filters, the shape the convolution's GEMMs take.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer G { float g[]; };
layout(set = 0, binding = 1) writeonly buffer GP { float g_p[]; };

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
    uint p = (i % per_row) / s.filters;
    uint f = i % s.filters;
    g_p[i] = g[r * per_row + f * s.positions + p];
}
