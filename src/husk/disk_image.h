// The share as a disk, for VMMs that cannot share a directory with their
// guest (Firecracker, Cloud Hypervisor) or when config.json asks for it:
// an ext4 image holding a copy of the share directory, built with
// e2fsprogs' mkfs.ext4 -d at create. What the container writes stays in
// the image (and goes with the state directory at delete).
#pragma once
#include <cstdint>
#include <string>

#include "husk/result.h"

namespace husk {

struct TreeSize {
    uint64_t bytes = 0;   // file data, each file rounded up to 4 KiB
    uint64_t inodes = 0;  // every entry
};
// What the tree under `dir` holds, bind mounts inside it included.
Result<TreeSize> tree_size(const std::string& dir);

// Free space the container gets in the image, beyond what the tree holds.
inline constexpr uint64_t kShareImageSlackMiB = 256;

// The image's size and inode count for a tree. Pure.
uint64_t share_image_bytes(const TreeSize& t, uint64_t slack_mib = kShareImageSlackMiB);
uint64_t share_image_inodes(const TreeSize& t);

// Write `image` (sparse) holding a copy of `dir`.
Result<void> make_share_image(const std::string& dir, const std::string& image,
                              uint64_t slack_mib = kShareImageSlackMiB);

}  // namespace husk
