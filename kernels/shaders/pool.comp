#version 450
// Pools each channel's kernel × kernel windows: the maximum (the first in scan order on ties)
// with the input index it came from, or the mean with the window's first input index.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float out_[]; };
layout(set = 0, binding = 2) writeonly buffer Indices { uint indices[]; };

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
} g;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= g.total) return;
    uint out_plane = g.out_height * g.out_width;
    uint out_image = g.channels * out_plane;
    uint r = i / out_image;
    uint c = (i % out_image) / out_plane;
    uint oy = (i % out_plane) / g.out_width;
    uint ox = i % g.out_width;
    uint first = c * g.height * g.width + oy * g.stride * g.width + ox * g.stride;
    uint base = r * g.channels * g.height * g.width;
    float best = uintBitsToFloat(0xff800000u);
    uint at = first;
    float sum = 0.0;
    for (uint dy = 0; dy < g.kernel; dy++) {
        for (uint dx = 0; dx < g.kernel; dx++) {
            uint index = first + dy * g.width + dx;
            float v = x[base + index];
            sum += v;
            if (v > best) {
                best = v;
                at = index;
            }
        }
    }
    bool max_pool = g.max_pool != 0;
    out_[i] = max_pool ? best : sum / float(g.kernel * g.kernel);
    indices[i] = max_pool ? at : first;
}
