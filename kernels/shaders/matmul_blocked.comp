#version 450
#extension GL_GOOGLE_include_directive : require
// Register-blocked matrix multiply with scalar loads (any shape); see matmul_blocked.glsl.
#include "matmul_blocked.glsl"
