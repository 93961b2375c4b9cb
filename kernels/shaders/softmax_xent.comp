#version 450
// Per row: softmax of the logits, the cross-entropy loss of the row's label, and the gradient of
// the mean loss with respect to the logits, (p − onehot) / rows. One invocation per row, classes
// in a fixed order: deterministic.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer Logits { float logits[]; };
layout(set = 0, binding = 1) readonly buffer Labels { uint labels[]; };
layout(set = 0, binding = 2) writeonly buffer Grad { float grad[]; };
layout(set = 0, binding = 3) writeonly buffer Loss { float loss[]; };

layout(push_constant) uniform Shape {
    uint rows;
    uint classes;
} shape;

void main() {
    uint r = gl_GlobalInvocationID.x;
    if (r >= shape.rows) return;
    uint base = r * shape.classes;
    float top = logits[base];
    for (uint c = 1; c < shape.classes; c++) top = max(top, logits[base + c]);
    float total = 0.0;
    for (uint c = 0; c < shape.classes; c++) total += exp(logits[base + c] - top);
    uint label = labels[r];
    float log_total = log(total);
    loss[r] = log_total - (logits[base + label] - top);
    float scale = 1.0 / float(shape.rows);
    for (uint c = 0; c < shape.classes; c++) {
        float p = exp(logits[base + c] - top - log_total);
        grad[base + c] = (p - (c == label ? 1.0 : 0.0)) * scale;
    }
}
