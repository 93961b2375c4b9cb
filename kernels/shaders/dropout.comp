#version 450
// Seeded dropout: value i is dropped when its draw, a 64-bit hash of (seed, layer, i), falls
// under the rate, and scaled by 1/(1 − rate) otherwise. The hash is graph::dropout_draw's, in
// 32-bit halves (no 64-bit integers needed of the device), so every backend draws one mask.
layout(local_size_x = 64) in;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Out { float out_[]; };
layout(set = 0, binding = 2) writeonly buffer Mask { float mask[]; };

layout(push_constant) uniform Draw {
    uint total;
    uint seed_lo;
    uint seed_hi;
    uint layer_lo;
    uint layer_hi;
    float rate;
    float keep;
} d;

// (lo, hi) halves of a 64-bit value.
uvec2 mul64(uvec2 a, uvec2 b) {
    uint hi;
    uint lo;
    umulExtended(a.x, b.x, hi, lo);
    return uvec2(lo, hi + a.x * b.y + a.y * b.x);
}

uvec2 shr64(uvec2 a, uint s) {
    return s >= 32 ? uvec2(a.y >> (s - 32), 0) : uvec2((a.x >> s) | (a.y << (32 - s)), a.y >> s);
}

void main() {
    uint i = gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x + gl_GlobalInvocationID.x;
    if (i >= d.total) return;
    const uvec2 golden = uvec2(0x7F4A7C15u, 0x9E3779B9u);
    const uvec2 mix1 = uvec2(0x1CE4E5B9u, 0xBF58476Du);
    const uvec2 mix2 = uvec2(0x133111EBu, 0x94D049BBu);
    uvec2 z = uvec2(d.seed_lo, d.seed_hi) ^ mul64(uvec2(d.layer_lo, d.layer_hi), golden) ^ mul64(uvec2(i, 0), mix1);
    z = mul64(z ^ shr64(z, 30), mix1);
    z = mul64(z ^ shr64(z, 27), mix2);
    z = z ^ shr64(z, 31);
    float draw = float(z.y >> 8) / 16777216.0;
    float factor = draw < d.rate ? 0.0 : d.keep;
    mask[i] = factor;
    out_[i] = x[i] * factor;
}
