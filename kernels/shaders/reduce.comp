#version 450
// One pass of a deterministic sum: each workgroup of 256 sums its slice of `x` (squared first
// when `square` is set) by a fixed tree and writes one partial. Run again on the partials until
// one value is left. No atomics: the order of additions never changes.
layout(local_size_x = 256) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Partials { float partials[]; };

layout(push_constant) uniform Shape {
    uint len;
    uint square;
} shape;

shared float scratch[256];

void main() {
    uint i = gl_GlobalInvocationID.x;
    uint l = gl_LocalInvocationID.x;
    float v = i < shape.len ? x[i] : 0.0;
    scratch[l] = shape.square != 0 ? v * v : v;
    barrier();
    for (uint stride = 128; stride > 0; stride >>= 1) {
        if (l < stride) scratch[l] += scratch[l + stride];
        barrier();
    }
    if (l == 0) partials[gl_WorkGroupID.x] = scratch[0];
}
