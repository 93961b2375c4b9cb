#version 450
// w ← w − lr · g
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) buffer W { float w[]; };
layout(set = 0, binding = 1) readonly buffer G { float g[]; };

layout(push_constant) uniform Params {
    uint len;
    float lr;
} params;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= params.len) return;
    w[i] -= params.lr * g[i];
}
