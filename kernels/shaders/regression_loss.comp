#version 450
// Per row of a one-output model: the loss and the gradient of the mean loss. Kind 0: squared
// error against a numeric target; kind 1: binary cross-entropy of a logit against a 0/1 label,
// softplus(z) − t·z computed without overflow.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer Outputs { float outputs[]; };
layout(set = 0, binding = 1) readonly buffer Targets { float targets[]; };
layout(set = 0, binding = 2) writeonly buffer Grad { float grad[]; };
layout(set = 0, binding = 3) writeonly buffer Loss { float loss[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint kind;
} s;

void main() {
    uint r = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (r >= s.rows) return;
    float z = outputs[r];
    float t = targets[r];
    float n = float(s.rows);
    if (s.kind == 0) {
        float residual = z - t;
        loss[r] = residual * residual;
        grad[r] = 2.0 * residual / n;
    } else {
        loss[r] = max(z, 0.0) - z * t + log(1.0 + exp(-abs(z)));
        grad[r] = (1.0 / (1.0 + exp(-z)) - t) / n;
    }
}
