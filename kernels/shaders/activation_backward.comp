#version 450
// The gradient through an activation (codes as in activation.comp): ReLU, tanh and sigmoid from
// their output, GELU from its input.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer G { float g[]; };
layout(set = 0, binding = 1) readonly buffer Input { float input_[]; };
layout(set = 0, binding = 2) readonly buffer Output { float output_[]; };
layout(set = 0, binding = 3) writeonly buffer DX { float d_x[]; };

layout(push_constant) uniform Op {
    uint total;
    uint kind;
} op;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= op.total) return;
    float grad = g[i];
    float y = output_[i];
    float result;
    if (op.kind == 0) {
        result = y > 0.0 ? grad : 0.0;
    } else if (op.kind == 1) {
        result = grad * (1.0 - y * y);
    } else if (op.kind == 2) {
        result = grad * y * (1.0 - y);
    } else {
        float v = input_[i];
        float t = tanh(clamp(0.7978846 * (v + 0.044715 * v * v * v), -10.0, 10.0));
        float d_inner = 0.7978846 * (1.0 + 3.0 * 0.044715 * v * v);
        result = grad * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner);
    }
    d_x[i] = result;
}
