//! Opening Vulkan: the loader, an instance (with the Khronos validation layer when asked and
//! installed), the device choice (discrete GPU, then integrated; a CPU-type device such as
//! lavapipe only when asked), and one compute queue.

use std::sync::{Arc, Mutex};

use vulkano::device::physical::{PhysicalDevice, PhysicalDeviceType};
use vulkano::device::{Device, DeviceCreateInfo, Queue, QueueCreateInfo, QueueFlags};
use vulkano::instance::debug::{
    DebugUtilsMessageSeverity, DebugUtilsMessageType, DebugUtilsMessenger, DebugUtilsMessengerCallback,
    DebugUtilsMessengerCreateInfo,
};
use vulkano::instance::{Instance, InstanceCreateInfo, InstanceExtensions};
use vulkano::VulkanLibrary;

use crate::error::{KernelError, Result};

const VALIDATION_LAYER: &str = "VK_LAYER_KHRONOS_validation";

/// How to open the Vulkan backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VulkanOptions {
    /// Admit a CPU-type Vulkan device (lavapipe): correct but slower than the CPU backend.
    pub allow_cpu_device: bool,
    /// Enable the Khronos validation layer if it is installed, collecting its messages.
    pub validation: bool,
}

/// An open device with its compute queue.
pub struct Context {
    pub device: Arc<Device>,
    pub queue: Arc<Queue>,
    pub device_name: String,
    pub device_type: PhysicalDeviceType,
    /// Whether the validation layer is active.
    pub validating: bool,
    /// Warnings and errors the validation layer reported.
    pub messages: Arc<Mutex<Vec<String>>>,
    _messenger: Option<DebugUtilsMessenger>,
}

fn rank(device_type: PhysicalDeviceType) -> u8 {
    match device_type {
        PhysicalDeviceType::DiscreteGpu => 0,
        PhysicalDeviceType::IntegratedGpu => 1,
        PhysicalDeviceType::VirtualGpu => 2,
        PhysicalDeviceType::Cpu => 3,
        _ => 4,
    }
}

impl Context {
    pub fn open(options: VulkanOptions) -> Result<Self> {
        let library =
            VulkanLibrary::new().map_err(|e| KernelError::NoVulkan(format!("no Vulkan loader: {e}")))?;
        let validating = options.validation
            && library
                .layer_properties()
                .is_ok_and(|mut layers| layers.any(|l| l.name() == VALIDATION_LAYER));
        let mut create_info = InstanceCreateInfo::application_from_cargo_toml();
        if validating {
            create_info.enabled_layers = vec![VALIDATION_LAYER.to_string()];
            create_info.enabled_extensions = InstanceExtensions {
                ext_debug_utils: true,
                ..InstanceExtensions::empty()
            };
        }
        let instance = Instance::new(library, create_info)
            .map_err(|e| KernelError::NoVulkan(format!("no Vulkan driver: {e}")))?;

        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let messenger = if validating {
            let sink = messages.clone();
            // SAFETY: the callback only locks a mutex and copies a string; it calls no Vulkan.
            let callback = unsafe {
                DebugUtilsMessengerCallback::new(move |severity, _kind, data| {
                    if severity
                        .intersects(DebugUtilsMessageSeverity::ERROR | DebugUtilsMessageSeverity::WARNING)
                    {
                        sink.lock().expect("message sink").push(data.message.to_string());
                    }
                })
            };
            let info = DebugUtilsMessengerCreateInfo {
                message_severity: DebugUtilsMessageSeverity::ERROR | DebugUtilsMessageSeverity::WARNING,
                message_type: DebugUtilsMessageType::GENERAL
                    | DebugUtilsMessageType::VALIDATION
                    | DebugUtilsMessageType::PERFORMANCE,
                ..DebugUtilsMessengerCreateInfo::user_callback(callback)
            };
            Some(
                DebugUtilsMessenger::new(instance.clone(), info)
                    .map_err(|e| KernelError::Vulkan(e.to_string()))?,
            )
        } else {
            None
        };

        let (physical, family) = choose_device(&instance, options.allow_cpu_device)?;
        let (device, mut queues) = Device::new(
            physical.clone(),
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo {
                    queue_family_index: family,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .map_err(|e| KernelError::Vulkan(format!("creating the device: {e}")))?;
        let queue = queues
            .next()
            .ok_or_else(|| KernelError::Vulkan("the device gave no queue".into()))?;
        let properties = physical.properties();
        Ok(Context {
            device,
            queue,
            device_name: properties.device_name.clone(),
            device_type: properties.device_type,
            validating,
            messages,
            _messenger: messenger,
        })
    }
}

fn choose_device(instance: &Arc<Instance>, allow_cpu_device: bool) -> Result<(Arc<PhysicalDevice>, u32)> {
    let devices: Vec<(Arc<PhysicalDevice>, u32)> = instance
        .enumerate_physical_devices()
        .map_err(|e| KernelError::NoVulkan(format!("cannot list devices: {e}")))?
        .filter_map(|device| {
            let family = device
                .queue_family_properties()
                .iter()
                .position(|q| q.queue_flags.intersects(QueueFlags::COMPUTE))?;
            Some((device, family as u32))
        })
        .collect();
    if devices.is_empty() {
        return Err(KernelError::NoVulkan(
            "no Vulkan device with a compute queue".into(),
        ));
    }
    let best = devices
        .iter()
        .filter(|(d, _)| allow_cpu_device || d.properties().device_type != PhysicalDeviceType::Cpu)
        .min_by_key(|(d, _)| rank(d.properties().device_type))
        .cloned();
    match best {
        Some(choice) => Ok(choice),
        None => Err(KernelError::OnlyCpuDevice(
            devices[0].0.properties().device_name.clone(),
        )),
    }
}
