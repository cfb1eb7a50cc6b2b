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

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk::checkpoint {

// In the image directory (--image-path):
inline constexpr const char* kInfoFile = "husk-checkpoint.json";  // Info
inline constexpr const char* kStateFile = "vm.state";             // the VMM's save of the paused VM
inline constexpr const char* kDiskFile = "rootfs.img";            // the rootfs disk, as the guest left it
// What callers built around runc look for in a checkpoint directory (no
// CRIU process images follow: the VM's state is kStateFile):
// - podman's restore refuses a directory without CRIU's inventory.img;
//   this one is a valid CRIU inventory image that holds its version alone;
// - runc writes the init's stdio targets to descriptors.json.
inline constexpr const char* kInventoryFile = "inventory.img";
inline constexpr const char* kDescriptorsFile = "descriptors.json";

// CRIU's inventory image with img_version 2 (CRIU images v1.1) and nothing
// else: its magic (inventory images carry no common magic), then one
// protobuf entry, length first. Pure.
std::string criu_inventory();

// CRIU's statistics files, which runc leaves in --work-path and podman
// reads (--print-stats; its export takes stats-dump along): husk's own
// figures in CRIU's fields. Times in microseconds.
inline constexpr const char* kDumpStatsFile = "stats-dump";
inline constexpr const char* kRestoreStatsFile = "stats-restore";
struct DumpStats {
    uint32_t freezing_us = 0;  // the agent's quiesce
    uint32_t frozen_us = 0;    // the VM paused until the image was written
    uint32_t memdump_us = 0;   // the VMM's save
    uint32_t memwrite_us = 0;  // the rootfs disk's copy
    uint64_t pages_written = 0;  // vm.state, in 4 KiB pages
};
struct RestoreStats {
    uint32_t restore_us = 0;     // husk restore until the container ran
    uint64_t pages_restored = 0;
};
// The save's figures as the shim's checkpoint reply carries them ("stats"),
// and back; a field that is missing or not a number reads as 0.
nlohmann::json stats_to_json(const DumpStats& s);
DumpStats stats_from_json(const nlohmann::json& j);
// The files' bytes: IMG_SERVICE_MAGIC, STATS_MAGIC, one StatsEntry (every
// field CRIU marks required present). Pure.
std::string criu_dump_stats(const DumpStats& s);
std::string criu_restore_stats(const RestoreStats& s);

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
