#version 450
// C (m×n) = op(A) · op(B), op = optional transpose. Row-major storage.
// A is m×k after op (stored k×m when transposed); B is k×n after op (stored n×k when transposed).
// 16×16 tiles staged through shared memory; each invocation owns one element of C and sums
// its k products in a fixed order, so the result is the same on every run.
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer C { float c[]; };

layout(push_constant) uniform Shape {
    uint m;
    uint n;
    uint k;
    uint transpose_a;
    uint transpose_b;
} shape;

shared float tile_a[16][16];
shared float tile_b[16][16];

float load_a(uint row, uint col) {
    if (row >= shape.m || col >= shape.k) return 0.0;
    return shape.transpose_a != 0 ? a[col * shape.m + row] : a[row * shape.k + col];
}

float load_b(uint row, uint col) {
    if (row >= shape.k || col >= shape.n) return 0.0;
    return shape.transpose_b != 0 ? b[col * shape.k + row] : b[row * shape.n + col];
}

void main() {
    uint row = gl_GlobalInvocationID.y;
    uint col = gl_GlobalInvocationID.x;
    uint ly = gl_LocalInvocationID.y;
    uint lx = gl_LocalInvocationID.x;
    float sum = 0.0;
    uint tiles = (shape.k + 15) / 16;
    for (uint t = 0; t < tiles; t++) {
        tile_a[ly][lx] = load_a(row, t * 16 + lx);
        tile_b[ly][lx] = load_b(t * 16 + ly, col);
        barrier();
        for (uint i = 0; i < 16; i++) {
            sum += tile_a[ly][i] * tile_b[i][lx];
        }
        barrier();
    }
    if (row < shape.m && col < shape.n) {
        c[row * shape.n + col] = sum;
    }
}
