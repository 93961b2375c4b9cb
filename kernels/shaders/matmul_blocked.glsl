// The register-blocked matrix multiply, shared by matmul_blocked.comp (scalar loads) and
// matmul_blocked_vec4.comp (VECTOR_LOADS: one vec4 per load, where every contiguous dimension
// is a multiple of 4). Both sum in the same order: their results are bitwise equal.
// C (m×n) = op(A) · op(B), op = optional transpose. Row-major storage.
// A is m×k after op (stored k×m when transposed); B is k×n after op (stored n×k when transposed).
// Register-blocked: each workgroup computes a 64×64 tile of C through 64×16 slices of A and
// 16×64 slices of B staged in shared memory (8 KiB), and each of its 16×16 invocations keeps a
// 4×4 block of C in registers — rows ly + 16·i, columns lx + 16·j, so neighbouring invocations
// touch neighbouring addresses. Every element sums its k products in ascending order, as the
// simple kernel does, so the result is the same on every run. Chosen where the device allows
// 256 invocations per workgroup.
layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;

#ifdef VECTOR_LOADS
layout(set = 0, binding = 0) readonly buffer A { vec4 a[]; };
layout(set = 0, binding = 1) readonly buffer B { vec4 b[]; };
#else
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
#endif
layout(set = 0, binding = 2) writeonly buffer C { float c[]; };

layout(push_constant) uniform Shape {
    uint m;
    uint n;
    uint k;
    uint transpose_a;
    uint transpose_b;
} shape;

const uint TILE = 64;
const uint DEPTH = 16;
const uint BLOCK = 4;
const uint THREADS = 256;

shared float tile_a[DEPTH][TILE];
shared float tile_b[DEPTH][TILE];

#ifdef VECTOR_LOADS
// Four consecutive stored values from element `index` (a multiple of 4), or zeros outside the
// matrix: the contiguous dimension is a multiple of 4, so a vector is wholly in or wholly out.
vec4 load_a4(uint index, bool inside) {
    return inside ? a[index / 4] : vec4(0.0);
}

vec4 load_b4(uint index, bool inside) {
    return inside ? b[index / 4] : vec4(0.0);
}

// The 64×16 slice of op(A) and the 16×64 slice of op(B) at depth t, one vec4 of each per
// invocation, along whichever dimension is contiguous in storage.
void load_tiles(uint local, uint row0, uint col0, uint t) {
    if (shape.transpose_a == 0) {
        // A stored m×k: along k.
        uint row = local / 4;
        uint col = (local % 4) * 4;
        vec4 v = load_a4((row0 + row) * shape.k + t + col, row0 + row < shape.m && t + col < shape.k);
        for (uint q = 0; q < 4; q++) tile_a[col + q][row] = v[q];
    } else {
        // A stored k×m: along m.
        uint depth = local / 16;
        uint col = (local % 16) * 4;
        vec4 v = load_a4((t + depth) * shape.m + row0 + col, t + depth < shape.k && row0 + col < shape.m);
        for (uint q = 0; q < 4; q++) tile_a[depth][col + q] = v[q];
    }
    if (shape.transpose_b == 0) {
        // B stored k×n: along n.
        uint depth = local / 16;
        uint col = (local % 16) * 4;
        vec4 v = load_b4((t + depth) * shape.n + col0 + col, t + depth < shape.k && col0 + col < shape.n);
        for (uint q = 0; q < 4; q++) tile_b[depth][col + q] = v[q];
    } else {
        // B stored n×k: along k.
        uint row = local / 4;
        uint depth = (local % 4) * 4;
        vec4 v = load_b4((col0 + row) * shape.k + t + depth, col0 + row < shape.n && t + depth < shape.k);
        for (uint q = 0; q < 4; q++) tile_b[depth + q][row] = v[q];
    }
}
#else
float load_a(uint row, uint col) {
    if (row >= shape.m || col >= shape.k) return 0.0;
    return shape.transpose_a != 0 ? a[col * shape.m + row] : a[row * shape.k + col];
}

float load_b(uint row, uint col) {
    if (row >= shape.k || col >= shape.n) return 0.0;
    return shape.transpose_b != 0 ? b[col * shape.k + row] : b[row * shape.n + col];
}

// The 64×16 slice of op(A) and the 16×64 slice of op(B) at depth t, 4 values of each per
// invocation; consecutive invocations read consecutive elements of a row.
void load_tiles(uint local, uint row0, uint col0, uint t) {
    for (uint s = 0; s < BLOCK; s++) {
        uint index = local + s * THREADS;
        uint a_row = index / DEPTH;
        uint a_col = index % DEPTH;
        tile_a[a_col][a_row] = load_a(row0 + a_row, t + a_col);
        uint b_row = index / TILE;
        uint b_col = index % TILE;
        tile_b[b_row][b_col] = load_b(t + b_row, col0 + b_col);
    }
}
#endif

void main() {
    uint lx = gl_LocalInvocationID.x;
    uint ly = gl_LocalInvocationID.y;
    uint local = ly * 16 + lx;
    uint row0 = gl_WorkGroupID.y * TILE;
    uint col0 = gl_WorkGroupID.x * TILE;
    float acc[BLOCK][BLOCK];
    for (uint i = 0; i < BLOCK; i++) {
        for (uint j = 0; j < BLOCK; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (uint t = 0; t < shape.k; t += DEPTH) {
        load_tiles(local, row0, col0, t);
        barrier();
        for (uint d = 0; d < DEPTH; d++) {
            float av[BLOCK];
            float bv[BLOCK];
            for (uint i = 0; i < BLOCK; i++) {
                av[i] = tile_a[d][ly + 16 * i];
                bv[i] = tile_b[d][lx + 16 * i];
            }
            for (uint i = 0; i < BLOCK; i++) {
                for (uint j = 0; j < BLOCK; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        barrier();
    }
    for (uint i = 0; i < BLOCK; i++) {
        uint row = row0 + ly + 16 * i;
        for (uint j = 0; j < BLOCK; j++) {
            uint col = col0 + lx + 16 * j;
            if (row < shape.m && col < shape.n) {
                c[row * shape.n + col] = acc[i][j];
            }
        }
    }
}
