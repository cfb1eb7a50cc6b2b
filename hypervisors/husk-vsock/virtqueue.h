// Guest memory and split virtqueues, as a vhost-user backend sees them.
// The guest is untrusted: every address it puts in a ring is checked
// against the memory table before it is touched, every descriptor is
// copied out before it is checked (the guest may change it meanwhile),
// and a chain that loops, runs past the table or mixes its directions
// ends the ring (the device "needs reset"), never the backend.
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "husk/result.h"

namespace husk::vsock {

// One region of guest RAM, mapped into this process.
struct MemRegion {
    uint64_t gpa = 0;   // guest-physical start
    uint64_t size = 0;
    uint64_t uva = 0;   // where the VMM has it (ring addresses are the VMM's)
    uint8_t* host = nullptr;
};

class GuestMemory {
public:
    void set(std::vector<MemRegion> regions) { regions_ = std::move(regions); }
    const std::vector<MemRegion>& regions() const { return regions_; }
    // [addr, addr+len) inside one region, as a pointer here; nullptr when
    // it is not (past the end, across regions, or an overflowing length).
    uint8_t* gpa(uint64_t addr, uint64_t len) const;
    uint8_t* uva(uint64_t addr, uint64_t len) const;

private:
    std::vector<MemRegion> regions_;
};

// A descriptor chain taken from the avail ring: the buffers the driver
// gave, readable ones (for the device to read) before writable ones.
struct Chain {
    uint16_t head = 0;
    std::vector<iovec> readable, writable;
    uint64_t readable_len = 0, writable_len = 0;
};

inline constexpr uint16_t kMaxQueueSize = 32768;

class Virtqueue {
public:
    // The ring's layout, in VMM addresses (VHOST_USER_SET_VRING_ADDR),
    // checked against `mem`; `num` entries (a power of two up to 32768).
    Result<void> set_addresses(const GuestMemory& mem, uint64_t desc, uint64_t avail, uint64_t used, uint16_t num);
    // The same ring in a new memory table (memory plugged in while it
    // runs): its addresses found again, its indexes kept.
    Result<void> remap(const GuestMemory& mem);
    bool has_addresses() const { return num_ != 0; }
    bool ready() const { return desc_ && !broken_; }
    bool broken() const { return broken_; }
    const std::string& why_broken() const { return why_; }
    void set_base(uint16_t last_avail) { last_avail_ = used_idx_ = last_avail; }
    uint16_t base() const { return last_avail_; }
    void reset();

    // The next chain the driver made available, or none yet. A malformed
    // one breaks the ring (Result's error says how); it stays broken.
    Result<std::optional<Chain>> pop(const GuestMemory& mem);
    // Give the last chain popped back to the driver, untouched (a buffer
    // held when the ring stops).
    void unpop() { --last_avail_; }
    // Give a chain back as used, `written` bytes written into it.
    void push(uint16_t head, uint32_t written);
    // Whether the driver wants an interrupt for what was pushed.
    bool wants_interrupt() const;

private:
    Result<void> bad(std::string why);
    Result<void> translate_rings(const GuestMemory& mem);
    uint64_t desc_uva_ = 0, avail_uva_ = 0, used_uva_ = 0;
    uint8_t* desc_ = nullptr;
    uint8_t* avail_ = nullptr;
    uint8_t* used_ = nullptr;
    uint16_t num_ = 0;
    uint16_t last_avail_ = 0;
    uint16_t used_idx_ = 0;
    bool broken_ = false;
    std::string why_;
};

// Copy between a chain's buffers and memory here. `off` skips that many
// bytes of the chain's buffers first. Return how many were copied.
size_t copy_from(const std::vector<iovec>& iov, size_t off, void* to, size_t len);
size_t copy_to(const std::vector<iovec>& iov, size_t off, const void* from, size_t len);
// The part of `iov` from `off` for at most `len` bytes (for readv/writev).
std::vector<iovec> slice(const std::vector<iovec>& iov, size_t off, size_t len);

}  // namespace husk::vsock
