#version 450
// The inverse of im2col for gradients: each input value gathers the receptive-field gradients
// of every (position, entry) that read it, in increasing position order (the order the host adds
// them in). One invocation per input value, no atomics: deterministic.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer DCols { float d_cols[]; };
layout(set = 0, binding = 1) writeonly buffer DX { float d_x[]; };

layout(push_constant) uniform Geometry {
    uint total;
    uint channels;
    uint height;
    uint width;
    uint out_height;
    uint out_width;
    uint kernel;
    uint stride;
    uint padding;
    uint positions;
    uint field;
} g;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= g.total) return;
    uint plane = g.height * g.width;
    uint image = g.channels * plane;
    uint r = i / image;
    uint c = (i % image) / plane;
    uint y = (i % plane) / g.width;
    uint x = i % g.width;
    float total = 0.0;
    // Kernel rows and columns downwards: output positions upwards.
    for (int ky = int(g.kernel) - 1; ky >= 0; ky--) {
        int ty = int(y + g.padding) - ky;
        if (ty < 0 || ty % int(g.stride) != 0) continue;
        uint oy = uint(ty) / g.stride;
        if (oy >= g.out_height) continue;
        for (int kx = int(g.kernel) - 1; kx >= 0; kx--) {
            int tx = int(x + g.padding) - kx;
            if (tx < 0 || tx % int(g.stride) != 0) continue;
            uint ox = uint(tx) / g.stride;
            if (ox >= g.out_width) continue;
            uint p = oy * g.out_width + ox;
            uint e = c * g.kernel * g.kernel + uint(ky) * g.kernel + uint(kx);
            total += d_cols[(r * g.positions + p) * g.field + e];
        }
    }
    d_x[i] = total;
}
