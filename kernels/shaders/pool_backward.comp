#version 450
// The gradient through pooling: each input value gathers the gradients of the windows that
// hold it (max pooling: only where it was the maximum; mean: a 1/(k·k) share), in increasing
// output order, as the host adds them. One invocation per input value: deterministic.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer G { float g[]; };
layout(set = 0, binding = 1) readonly buffer Indices { uint indices[]; };
layout(set = 0, binding = 2) writeonly buffer DX { float d_x[]; };

layout(push_constant) uniform Geometry {
    uint total;
    uint channels;
    uint height;
    uint width;
    uint out_height;
    uint out_width;
    uint kernel;
    uint stride;
    uint max_pool;
} p;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= p.total) return;
    uint plane = p.height * p.width;
    uint image = p.channels * plane;
    uint r = i / image;
    uint local = i % image;
    uint c = local / plane;
    uint y = (local % plane) / p.width;
    uint x = local % p.width;
    // Windows oy with oy·stride ≤ y < oy·stride + kernel.
    uint oy_first = y + 1 > p.kernel ? (y + 1 - p.kernel + p.stride - 1) / p.stride : 0;
    uint oy_last = min(y / p.stride, p.out_height - 1);
    uint ox_first = x + 1 > p.kernel ? (x + 1 - p.kernel + p.stride - 1) / p.stride : 0;
    uint ox_last = min(x / p.stride, p.out_width - 1);
    uint out_plane = p.out_height * p.out_width;
    uint out_base = r * p.channels * out_plane + c * out_plane;
    float area = float(p.kernel * p.kernel);
    float total = 0.0;
    for (uint oy = oy_first; oy <= oy_last && oy < p.out_height; oy++) {
        for (uint ox = ox_first; ox <= ox_last && ox < p.out_width; ox++) {
            uint o = out_base + oy * p.out_width + ox;
            if (p.max_pool != 0) {
                if (indices[o] == local) total += g[o];
            } else {
                total += g[o] / area;
            }
        }
    }
    d_x[i] = total;
}
