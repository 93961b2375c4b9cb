#!/usr/bin/env bash
# Installs the system packages the tests need, when they are missing:
#   mesa-vulkan-drivers     Mesa's lavapipe, a real Vulkan device on the CPU
#   libvulkan1              the Vulkan loader
#   glslc                   compiles kernels/shaders/*.comp to SPIR-V (build script and a test)
#   vulkan-validationlayers the Khronos validation layer, enabled by the kernel tests
#   prometheus              the server and promtool, for cli/tests/ops.rs (config, rules, alert
#                           tests, and a real Prometheus scraping a devnet)
set -euo pipefail

need=()
compgen -G '/usr/share/vulkan/icd.d/lvp_icd*.json' >/dev/null || need+=(mesa-vulkan-drivers)
ldconfig -p | grep -q 'libvulkan\.so\.1' || need+=(libvulkan1)
command -v glslc >/dev/null || need+=(glslc)
[ -e /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ] || need+=(vulkan-validationlayers)
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi
