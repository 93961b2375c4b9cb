#version 450
// out[c] = Σ_r x[r][c], rows summed in order (the bias gradient).
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float sums[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint cols;
} shape;

void main() {
    uint c = gl_GlobalInvocationID.x;
    if (c >= shape.cols) return;
    float total = 0.0;
    for (uint r = 0; r < shape.rows; r++) total += x[r * shape.cols + c];
    sums[c] = total;
}
