#version 450
// y = f(x) element-wise: 0 ReLU, 1 tanh, 2 sigmoid, 3 GELU (tanh approximation).
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };

layout(push_constant) uniform Op {
    uint total;
    uint kind;
} op;

// tanh saturates to ±1 in f32 well before |v| = 10; clamping keeps drivers whose tanh is
// exp-based from overflowing to NaN.
float saturating_tanh(float v) {
    return tanh(clamp(v, -10.0, 10.0));
}

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= op.total) return;
    float v = x[i];
    float result;
    if (op.kind == 0) {
        result = max(v, 0.0);
    } else if (op.kind == 1) {
        result = saturating_tanh(v);
    } else if (op.kind == 2) {
        result = 1.0 / (1.0 + exp(-v));
    } else {
        float t = saturating_tanh(0.7978846 * (v + 0.044715 * v * v * v));
        result = 0.5 * v * (1.0 + t);
    }
    y[i] = result;
}
