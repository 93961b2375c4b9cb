#version 450
// Adam: m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; w ← w − lr·m̂/(√v̂ + ε), with the bias
// corrections folded into `step_size` = lr·√(1−β2^t)/(1−β1^t) and `epsilon_hat` = ε·√(1−β2^t).
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) buffer W { float w[]; };
layout(set = 0, binding = 1) readonly buffer G { float g[]; };
layout(set = 0, binding = 2) buffer M { float m[]; };
layout(set = 0, binding = 3) buffer V { float v[]; };

layout(push_constant) uniform Params {
    uint len;
    float beta1;
    float beta2;
    float step_size;
    float epsilon_hat;
} params;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= params.len) return;
    float grad = g[i];
    float m_new = params.beta1 * m[i] + (1.0 - params.beta1) * grad;
    float v_new = params.beta2 * v[i] + (1.0 - params.beta2) * grad * grad;
    m[i] = m_new;
    v[i] = v_new;
    w[i] -= params.step_size * m_new / (sqrt(v_new) + params.epsilon_hat);
}
