#version 450
// out = a + b (op 0) or a · b (op 1), element-wise.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer Out { float out_[]; };

layout(push_constant) uniform Op {
    uint total;
    uint multiply;
} op;

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= op.total) return;
    out_[i] = op.multiply != 0 ? a[i] * b[i] : a[i] + b[i];
}
