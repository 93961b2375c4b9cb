#!/usr/bin/env bash
# Installs the system packages the tests need, when they are missing:
#   mesa-vulkan-drivers     Mesa's lavapipe, a real Vulkan device on the CPU
#   libvulkan1              the Vulkan loader
#   glslc                   compiles kernels/shaders/*.comp to SPIR-V (build script and a test)
#   vulkan-validationlayers the Khronos validation layer, enabled by the kernel tests
#   prometheus              the server and promtool, for cli/tests/ops.rs (config, rules, alert
#                           tests, and a real Prometheus scraping a devnet)
#   chromium, chromium-driver  a real headless browser and its WebDriver, which walk the AI
#                           PLAZA console in cli/tests/plaza/browser.rs
#   curl                    runs the call a published model's console page gives (the
#                           browser walk pastes it as a user would)
#   python3 and pip         for the Python packages below
# and, from PyPI, when missing:
#   onnx, onnxruntime       an independent reader of the exported ONNX files (its full checker,
#                           and a runtime whose predictions the tests compare with the grid's)
set -euo pipefail

need=()
compgen -G '/usr/share/vulkan/icd.d/lvp_icd*.json' >/dev/null || need+=(mesa-vulkan-drivers)
ldconfig -p | grep -q 'libvulkan\.so\.1' || need+=(libvulkan1)
command -v glslc >/dev/null || need+=(glslc)
[ -e /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ] || need+=(vulkan-validationlayers)
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v python3 >/dev/null || need+=(python3)
{ command -v python3 >/dev/null && python3 -m pip --version; } >/dev/null 2>&1 || need+=(python3-pip)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
fi

if ! python3 -c 'import onnx, onnxruntime' 2>/dev/null; then
  echo "installing from PyPI: onnx onnxruntime"
  packages=('onnx>=1.16' 'onnxruntime>=1.18')
  # A distribution's own Python refuses system-wide installs (PEP 668) unless told.
  python3 -m pip install --quiet "${packages[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "${packages[@]}"
fi
