#version 450
// dx = dy where the ReLU's output was positive, else 0.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer Activation { float activation[]; };
layout(set = 0, binding = 1) readonly buffer GradOut { float grad_out[]; };
layout(set = 0, binding = 2) writeonly buffer GradIn { float grad_in[]; };

layout(push_constant) uniform Shape { uint len; } shape;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= shape.len) return;
    grad_in[i] = activation[i] > 0.0 ? grad_out[i] : 0.0;
}
