// Checkpoints (husk checkpoint / husk restore, runc's CLI shape): a running
// container's whole VM saved into an image directory and restored from it
// into a new VM, its processes going on where they were (docs/design.md,
// "Checkpoint and restore"). This file is the image: what it holds, and
// its description file, written by the shim that saves and checked by the
// shim that restores. The VM's own state is the driver's (Vm::checkpoint,
// VmConfig::incoming_fd), its shape too (Hypervisor::vm_shape).
#pragma once
#include <cstdint>
#include <string>

#include "husk/result.h"

namespace husk::checkpoint {

// In the image directory (--image-path):
inline constexpr const char* kInfoFile = "husk-checkpoint.json";  // Info
inline constexpr const char* kStateFile = "vm.state";             // the VMM's save of the paused VM
inline constexpr const char* kDiskFile = "rootfs.img";            // the rootfs disk, as the guest left it

struct Info {
    std::string hypervisor;  // the driver's name
    uint32_t protocol = 0;   // the agent's (proto::kVersion): the guest's agent is the one saved
    std::string vm_shape;    // Hypervisor::vm_shape of the VM saved
    std::string id;          // the container's id when it was saved
    bool terminal = false;   // its process has a terminal
    int64_t saved = 0;       // when (seconds since the epoch)
};

std::string info_to_json(const Info& i);
// Strict: a file that is not one of ours says so.
Result<Info> info_from_json(const std::string& text);

// Where two shapes (one line each of a thing) first differ, for an error:
// "<a's line>" instead of "<b's line>". Pure.
std::string first_difference(const std::string& saved, const std::string& now);

// The image directory's description, and what a restore checks first: the
// three files are there, and the description is ours.
Result<Info> read_image(const std::string& dir);

}  // namespace husk::checkpoint
