#version 450
// Every sample's receptive fields as rows of a matrix (convolution as im2col + GEMM):
// cols[(r·positions + p)·field + e] = the input value position p's field entry e reads, 0 where
// it falls in the zero padding. One invocation per entry of the result.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Cols { float cols[]; };

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
    uint per_row = g.positions * g.field;
    uint r = i / per_row;
    uint p = (i % per_row) / g.field;
    uint e = i % g.field;
    uint c = e / (g.kernel * g.kernel);
    uint ky = (e / g.kernel) % g.kernel;
    uint kx = e % g.kernel;
    int y = int((p / g.out_width) * g.stride + ky) - int(g.padding);
    int xx = int((p % g.out_width) * g.stride + kx) - int(g.padding);
    float value = 0.0;
    if (y >= 0 && xx >= 0 && y < int(g.height) && xx < int(g.width)) {
        uint image = g.channels * g.height * g.width;
        value = x[r * image + c * g.height * g.width + uint(y) * g.width + uint(xx)];
    }
    cols[i] = value;
}
