#version 450
// y[r][c] = x[r][c] + bias[c], then ReLU when `relu` is set.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint cols;
    uint relu;
} shape;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= shape.rows * shape.cols) return;
    float v = x[i] + bias[i % shape.cols];
    y[i] = (shape.relu != 0 && v < 0.0) ? 0.0 : v;
}
