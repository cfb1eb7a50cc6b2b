// A pretend guest for husk-vsock's device (unit tests, fuzzing): guest
// memory in a buffer of our own, rx (0) and tx (1) split rings laid out in
// it as a virtio driver would, set up through the vhost-user messages QEMU
// sends, and helpers that post rx buffers, send tx packets and read back
// what the device put in the rx ring.
#pragma once
#include <sys/eventfd.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "hypervisors/husk-vsock/device.h"
#include "hypervisors/husk-vsock/vhost_user.h"

namespace husk::vsock::testing {

inline constexpr uint64_t kGpaBase = 0x100000;
inline constexpr uint64_t kMemSize = 1 << 20;
inline constexpr uint16_t kNum = 16;
inline constexpr uint64_t kBufArea = 0x40000;  // buffers from here
inline constexpr uint64_t kBufSize = 0x4000;   // 16 KiB each (header + payload)

// Guest memory is this buffer: "mapping" a region points into it.
struct BufferMapper : Mapper {
    std::vector<uint8_t> mem = std::vector<uint8_t>(kMemSize);
    Result<uint8_t*> map(int, uint64_t size, uint64_t offset) override {
        if (size + offset > mem.size()) return fail("past the buffer", EINVAL);
        return mem.data() + offset;
    }
    void unmap(uint8_t*, uint64_t, uint64_t) override {}
};

inline Message msg(uint32_t req, std::string payload = {}) {
    Message m;
    m.request = req;
    m.flags = kFlagVersion;
    m.payload = std::move(payload);
    return m;
}
template <typename T>
std::string le(T v) { return std::string(reinterpret_cast<const char*>(&v), sizeof v); }

struct Guest : Queues {
    BufferMapper mapper;
    VhostUser vu;
    uint64_t uva_base;
    int interrupts[2] = {0, 0};
    uint16_t avail_idx[2] = {0, 0}, used_seen[2] = {0, 0};
    unsigned next_buf = 0;
    std::vector<uint64_t> rx_bufs;  // gpa of the buffer each rx descriptor holds

    explicit Guest(uint64_t cid = 3) : vu(cid, mapper), uva_base(reinterpret_cast<uint64_t>(mapper.mem.data())) {}

    uint64_t desc_off(int q) const { return 0x10000 * uint64_t(q); }
    uint64_t avail_off(int q) const { return desc_off(q) + 0x1000; }
    uint64_t used_off(int q) const { return desc_off(q) + 0x2000; }
    uint8_t* at(uint64_t off) { return mapper.mem.data() + off; }

    // QEMU's start sequence; every message must be taken.
    bool start() {
        auto ok = [&](Message m, int fd = -1) {
            if (fd >= 0) m.fds.emplace_back(fd);
            return bool(vu.handle(std::move(m)));
        };
        bool good = ok(msg(kSetOwner)) && ok(msg(kSetFeatures, le(kFeatureVersion1 | kFeatureProtocolFeatures))) &&
                    ok(msg(kSetProtocolFeatures, le(kProtocolReplyAck | kProtocolConfig)));
        Message table = msg(kSetMemTable, le(uint32_t(1)) + le(uint32_t(0)) + le(kGpaBase) + le(kMemSize) + le(uva_base) + le(uint64_t(0)));
        table.fds.emplace_back(::eventfd(0, EFD_CLOEXEC));  // any fd: the mapper ignores it
        good = good && ok(std::move(table));
        for (uint32_t q = 0; q < 2; ++q) {
            good = good && ok(msg(kSetVringNum, le(q) + le(uint32_t(kNum)))) && ok(msg(kSetVringBase, le(q) + le(uint32_t(0)))) &&
                   ok(msg(kSetVringAddr, le(q) + le(uint32_t(0)) + le(uva_base + desc_off(q)) + le(uva_base + used_off(q)) +
                                             le(uva_base + avail_off(q)) + le(uint64_t(0)))) &&
                   ok(msg(kSetVringKick, le(uint64_t(q))), ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) &&
                   ok(msg(kSetVringCall, le(uint64_t(q))), ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) &&
                   ok(msg(kSetVringEnable, le(q) + le(uint32_t(1))));
        }
        update();
        return good;
    }
    // What QEMU does at a pause and the resume after it: each ring
    // stopped (its base read back), then set up again from that base.
    uint32_t bases[2] = {0, 0};  // what the last pause read back
    bool pause_and_resume() {
        for (uint32_t q = 0; q < 2; ++q) {
            auto r = vu.handle(msg(kGetVringBase, le(q) + le(uint32_t(0))));
            if (!r || !*r || (*r)->payload.size() != 8) return false;
            std::memcpy(&bases[q], (*r)->payload.data() + 4, 4);
            update();
        }
        if (vu.running(0) || vu.running(1)) return false;
        bool good = true;
        for (uint32_t q = 0; q < 2; ++q) {
            auto ok = [&](Message m, int fd = -1) {
                if (fd >= 0) m.fds.emplace_back(fd);
                return bool(vu.handle(std::move(m)));
            };
            good = good && ok(msg(kSetVringNum, le(q) + le(uint32_t(kNum)))) && ok(msg(kSetVringBase, le(q) + le(bases[q]))) &&
                   ok(msg(kSetVringAddr, le(q) + le(uint32_t(0)) + le(uva_base + desc_off(q)) + le(uva_base + used_off(q)) +
                                             le(uva_base + avail_off(q)) + le(uint64_t(0)))) &&
                   ok(msg(kSetVringKick, le(uint64_t(q))), ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) &&
                   ok(msg(kSetVringEnable, le(q) + le(uint32_t(1))));
        }
        update();
        return good;
    }
    // A new memory table while the rings run: RAM as before plus a region
    // plugged in (QEMU sends one when virtio-mem plugs memory).
    bool plug_memory() {
        Message table = msg(kSetMemTable, le(uint32_t(2)) + le(uint32_t(0)) + le(kGpaBase) + le(kMemSize) + le(uva_base) +
                                              le(uint64_t(0)) + le(uint64_t(1) << 32) + le(uint64_t(0x1000)) +
                                              le(uint64_t(0x7e0000000000)) + le(uint64_t(0)));
        table.fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
        table.fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
        bool good = bool(vu.handle(std::move(table)));
        update();
        return good && vu.running(0) && vu.running(1);
    }
    void update() {
        mem = &vu.memory();
        rx = &vu.queue(0);
        tx = &vu.queue(1);
    }
    void interrupt(Virtqueue& q) override { ++interrupts[&q == rx ? 0 : 1]; }

    void set_desc(int q, uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next) {
        uint8_t* d = at(desc_off(q) + 16 * i);
        std::memcpy(d, &gpa, 8);
        std::memcpy(d + 8, &len, 4);
        std::memcpy(d + 12, &flags, 2);
        std::memcpy(d + 14, &next, 2);
    }
    void make_available(int q, uint16_t head) {
        std::memcpy(at(avail_off(q) + 4 + 2 * (avail_idx[q] % kNum)), &head, 2);
        ++avail_idx[q];
        std::memcpy(at(avail_off(q) + 2), &avail_idx[q], 2);
    }
    uint64_t buffer() { return kGpaBase + kBufArea + kBufSize * (next_buf++ % 40); }

    // `n` rx buffers of kBufSize, one descriptor each (fewer if the ring
    // would overflow: the device must be given no more than it has).
    void post_rx(unsigned n) {
        for (unsigned k = 0; k < n && uint16_t(avail_idx[0] - used_seen[0]) < kNum; ++k) {
            uint16_t i = uint16_t(avail_idx[0] % kNum);
            uint64_t b = buffer();
            set_desc(0, i, b, uint32_t(kBufSize), 2 /* WRITE */, 0);
            if (rx_bufs.size() <= i) rx_bufs.resize(i + 1);
            rx_bufs[i] = b;
            make_available(0, i);
        }
    }
    // A packet on tx: the header and its payload in two descriptors.
    void send(Header h, const std::string& payload = {}) {
        h.len = uint32_t(payload.size());
        uint16_t i = uint16_t((2 * avail_idx[1]) % kNum);
        uint64_t b = buffer();
        encode(h, at(b - kGpaBase));
        std::memcpy(at(b - kGpaBase + kHeaderSize), payload.data(), payload.size());
        set_desc(1, i, b, uint32_t(kHeaderSize), payload.empty() ? 0 : 1, uint16_t(i + 1));
        if (!payload.empty()) set_desc(1, uint16_t(i + 1), b + kHeaderSize, uint32_t(payload.size()), 0, 0);
        make_available(1, i);
    }
    // What the device wrote to rx since we last looked.
    std::vector<std::pair<Header, std::string>> received() {
        std::vector<std::pair<Header, std::string>> out;
        uint16_t used;
        std::memcpy(&used, at(used_off(0) + 2), 2);
        while (used_seen[0] != used) {
            uint32_t id, len;
            std::memcpy(&id, at(used_off(0) + 4 + 8 * (used_seen[0] % kNum)), 4);
            std::memcpy(&len, at(used_off(0) + 8 + 8 * (used_seen[0] % kNum)), 4);
            ++used_seen[0];
            if (id >= rx_bufs.size() || len < kHeaderSize) continue;
            const uint8_t* b = at(rx_bufs[id] - kGpaBase);
            out.push_back({decode(b), std::string(reinterpret_cast<const char*>(b + kHeaderSize), len - kHeaderSize)});
        }
        return out;
    }
    uint16_t tx_used() {
        uint16_t used;
        std::memcpy(&used, at(used_off(1) + 2), 2);
        return used;
    }
};

}  // namespace husk::vsock::testing
