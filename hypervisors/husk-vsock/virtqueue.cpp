#include "hypervisors/husk-vsock/virtqueue.h"

#include <algorithm>
#include <cstring>

namespace husk::vsock {

namespace {

// Split virtqueue layout (virtio 1.x, 2.7): little-endian, this host's order.
constexpr uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;
constexpr uint16_t kAvailNoInterrupt = 1;
constexpr size_t kDescSize = 16;

struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

uint16_t load16(const uint8_t* p) { return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE); }

uint8_t* translate(const std::vector<MemRegion>& rs, uint64_t addr, uint64_t len, bool by_uva) {
    for (const auto& r : rs) {
        uint64_t start = by_uva ? r.uva : r.gpa;
        if (addr < start) continue;
        uint64_t off = addr - start;
        if (off >= r.size && !(off == r.size && len == 0)) continue;
        if (len > r.size - off) return nullptr;  // runs past this region
        return r.host + off;
    }
    return nullptr;
}

}  // namespace

uint8_t* GuestMemory::gpa(uint64_t addr, uint64_t len) const { return translate(regions_, addr, len, false); }
uint8_t* GuestMemory::uva(uint64_t addr, uint64_t len) const { return translate(regions_, addr, len, true); }

Result<void> Virtqueue::translate_rings(const GuestMemory& mem) {
    uint8_t* d = mem.uva(desc_uva_, uint64_t(num_) * kDescSize);
    uint8_t* a = mem.uva(avail_uva_, 6 + 2 * uint64_t(num_));
    uint8_t* u = mem.uva(used_uva_, 6 + 8 * uint64_t(num_));
    desc_ = avail_ = used_ = nullptr;
    if (!d || !a || !u) return fail("virtqueue rings outside guest memory", EFAULT);
    if ((reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(u)) & 1)
        return fail("virtqueue rings misaligned", EINVAL);
    desc_ = d;
    avail_ = a;
    used_ = u;
    return {};
}

Result<void> Virtqueue::set_addresses(const GuestMemory& mem, uint64_t desc, uint64_t avail, uint64_t used, uint16_t num) {
    if (num == 0 || num > kMaxQueueSize || (num & (num - 1))) return fail("virtqueue size " + std::to_string(num), EINVAL);
    desc_uva_ = desc, avail_uva_ = avail, used_uva_ = used, num_ = num;
    TRY(translate_rings(mem));
    used_idx_ = load16(used_ + 2);
    broken_ = false;
    why_.clear();
    return {};
}

Result<void> Virtqueue::remap(const GuestMemory& mem) {
    if (!has_addresses()) return {};
    return translate_rings(mem);
}

void Virtqueue::reset() {
    desc_ = avail_ = used_ = nullptr;
    desc_uva_ = avail_uva_ = used_uva_ = 0;
    num_ = last_avail_ = used_idx_ = 0;
    broken_ = false;
    why_.clear();
}

Result<void> Virtqueue::bad(std::string why) {
    broken_ = true;
    why_ = why;
    return fail("virtqueue: " + why, EPROTO);
}

Result<std::optional<Chain>> Virtqueue::pop(const GuestMemory& mem) {
    if (!ready()) return std::optional<Chain>();
    uint16_t avail_idx = load16(avail_ + 2);
    uint16_t waiting = uint16_t(avail_idx - last_avail_);
    if (waiting == 0) return std::optional<Chain>();
    if (waiting > num_) {
        TRY(bad("avail index moved " + std::to_string(waiting) + " past a ring of " + std::to_string(num_)));
    }
    uint16_t head = load16(avail_ + 4 + 2 * (last_avail_ % num_));
    if (head >= num_) TRY(bad("chain head " + std::to_string(head) + " outside the table"));
    Chain c;
    c.head = head;
    uint16_t i = head;
    for (unsigned n = 0;; ++n) {
        if (n >= num_) TRY(bad("descriptor chain loops"));
        Desc d;
        std::memcpy(&d, desc_ + size_t(i) * kDescSize, sizeof d);  // a copy the guest cannot change under us
        if (d.flags & kDescIndirect) TRY(bad("indirect descriptor (not negotiated)"));
        if (d.len) {
            uint8_t* p = mem.gpa(d.addr, d.len);
            if (!p) TRY(bad("buffer outside guest memory"));
            if (d.flags & kDescWrite) {
                c.writable.push_back({p, d.len});
                c.writable_len += d.len;
            } else {
                if (!c.writable.empty()) TRY(bad("readable buffer after a writable one"));
                c.readable.push_back({p, d.len});
                c.readable_len += d.len;
            }
        }
        if (!(d.flags & kDescNext)) break;
        if (d.next >= num_) TRY(bad("descriptor " + std::to_string(d.next) + " outside the table"));
        i = d.next;
    }
    ++last_avail_;
    return std::optional<Chain>(std::move(c));
}

void Virtqueue::push(uint16_t head, uint32_t written) {
    if (!ready()) return;
    uint8_t* e = used_ + 4 + 8 * size_t(used_idx_ % num_);
    uint32_t id = head;
    std::memcpy(e, &id, 4);
    std::memcpy(e + 4, &written, 4);
    ++used_idx_;
    __atomic_store_n(reinterpret_cast<uint16_t*>(used_ + 2), used_idx_, __ATOMIC_RELEASE);
}

bool Virtqueue::wants_interrupt() const {
    if (!ready()) return false;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  // our used index before its flags
    return !(load16(avail_) & kAvailNoInterrupt);
}

size_t copy_from(const std::vector<iovec>& iov, size_t off, void* to, size_t len) {
    size_t done = 0;
    for (const auto& v : slice(iov, off, len)) {
        std::memcpy(static_cast<uint8_t*>(to) + done, v.iov_base, v.iov_len);
        done += v.iov_len;
    }
    return done;
}

size_t copy_to(const std::vector<iovec>& iov, size_t off, const void* from, size_t len) {
    size_t done = 0;
    for (const auto& v : slice(iov, off, len)) {
        std::memcpy(v.iov_base, static_cast<const uint8_t*>(from) + done, v.iov_len);
        done += v.iov_len;
    }
    return done;
}

std::vector<iovec> slice(const std::vector<iovec>& iov, size_t off, size_t len) {
    std::vector<iovec> out;
    for (const auto& v : iov) {
        if (!len) break;
        if (off >= v.iov_len) {
            off -= v.iov_len;
            continue;
        }
        size_t n = std::min(v.iov_len - off, len);
        out.push_back({static_cast<uint8_t*>(v.iov_base) + off, n});
        len -= n;
        off = 0;
    }
    return out;
}

}  // namespace husk::vsock
