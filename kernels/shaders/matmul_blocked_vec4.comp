#version 450
#extension GL_GOOGLE_include_directive : require
// Register-blocked matrix multiply with vec4 loads, for shapes whose contiguous dimensions are
// multiples of 4; see matmul_blocked.glsl.
#define VECTOR_LOADS
#include "matmul_blocked.glsl"
