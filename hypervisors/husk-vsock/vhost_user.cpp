#include "hypervisors/husk-vsock/vhost_user.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "sys/sys.h"

namespace husk::vsock {

namespace {

constexpr size_t kHeader = 12;  // request, flags, size
constexpr uint64_t kVringNoFd = 1ull << 8;
constexpr uint64_t kVringIndexMask = 0xff;

template <typename T>
T at(const std::string& s, size_t off) {
    T v;
    std::memcpy(&v, s.data() + off, sizeof v);
    return v;
}
template <typename T>
std::string bytes(T v) { return std::string(reinterpret_cast<const char*>(&v), sizeof v); }

Result<void> read_exact(int sock, char* p, size_t len) {
    while (len) {
        ssize_t n = ::read(sock, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno("vhost-user: read");
        if (n == 0) return fail("vhost-user: the front-end closed mid-message", EPROTO);
        p += n;
        len -= size_t(n);
    }
    return {};
}

struct MmapMapper : Mapper {
    Result<uint8_t*> map(int fd, uint64_t size, uint64_t offset) override {
        void* p = ::mmap(nullptr, size + offset, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
        if (p == MAP_FAILED) return fail_errno("vhost-user: map guest memory");
        return static_cast<uint8_t*>(p) + offset;
    }
    void unmap(uint8_t* base, uint64_t size, uint64_t offset) override { ::munmap(base - offset, size + offset); }
};

}  // namespace

Mapper& mmap_mapper() {
    static MmapMapper m;
    return m;
}

std::string wire(const Message& m) {
    return bytes(m.request) + bytes(m.flags) + bytes(uint32_t(m.payload.size())) + m.payload;
}

Result<std::optional<Message>> read_message(int sock) {
    std::vector<sys::Fd> fds;
    std::string head = TRY(sys::recv_fds(sock, kHeader, fds));
    if (head.empty()) return std::optional<Message>();
    size_t got = head.size();
    head.resize(kHeader);
    TRY(read_exact(sock, head.data() + got, kHeader - got));
    Message m;
    m.request = at<uint32_t>(head, 0);
    m.flags = at<uint32_t>(head, 4);
    uint32_t size = at<uint32_t>(head, 8);
    if (size > kMaxPayloadSize) return fail("vhost-user: a " + std::to_string(size) + "-byte message", EPROTO);
    m.payload.resize(size);
    TRY(read_exact(sock, m.payload.data(), size));
    m.fds = std::move(fds);
    return std::optional<Message>(std::move(m));
}

Result<void> write_message(int sock, const Message& m) { return sys::write_all(sock, wire(m)); }

VhostUser::VhostUser(uint64_t guest_cid, Mapper& mapper) : cid_(guest_cid), mapper_(mapper) {}
VhostUser::~VhostUser() {
    for (auto& r : rings_) r.q.reset();
    unmap_all();
}

void VhostUser::unmap_all() {
    for (const auto& m : maps_) mapper_.unmap(m.base, m.size, m.offset);
    maps_.clear();
    mem_.set({});
}

bool VhostUser::running(int i) const {
    const Ring& r = rings_[i];
    return r.started && r.enabled && r.q.ready() && r.kick;
}

Result<uint32_t> VhostUser::ring_index(const std::string& payload, size_t need) {
    if (payload.size() != need) return fail("vhost-user: a ring message of " + std::to_string(payload.size()) + " bytes", EPROTO);
    uint32_t i = at<uint32_t>(payload, 0);
    if (i >= kQueues) return fail("vhost-user: ring " + std::to_string(i) + " (this device has 2)", EPROTO);
    return i;
}

Result<void> VhostUser::set_mem_table(const Message& m) {
    if (m.payload.size() < 8) return fail("vhost-user: short memory table", EPROTO);
    uint32_t n = at<uint32_t>(m.payload, 0);
    if (n == 0 || n > kMaxRegions || m.payload.size() != 8 + 32 * size_t(n) || m.fds.size() != n)
        return fail("vhost-user: a memory table of " + std::to_string(n) + " regions and " + std::to_string(m.fds.size()) +
                        " fds",
                    EPROTO);
    // A new table while the rings run (QEMU sends one when memory is
    // plugged in): what the device holds points into the old mappings.
    if (on_stop) on_stop();
    unmap_all();
    std::vector<MemRegion> regions;
    for (uint32_t i = 0; i < n; ++i) {
        size_t o = 8 + 32 * size_t(i);
        MemRegion r;
        r.gpa = at<uint64_t>(m.payload, o);
        r.size = at<uint64_t>(m.payload, o + 8);
        r.uva = at<uint64_t>(m.payload, o + 16);
        uint64_t offset = at<uint64_t>(m.payload, o + 24);
        if (r.size == 0 || r.size > (1ull << 46) || offset > (1ull << 46) || r.gpa + r.size < r.gpa || r.uva + r.size < r.uva)
            return fail("vhost-user: memory region " + std::to_string(i) + " out of range", EPROTO);
        r.host = TRY(mapper_.map(m.fds[i].get(), r.size, offset));
        maps_.push_back({r.host, r.size, offset});
        regions.push_back(r);
    }
    mem_.set(std::move(regions));
    for (auto& r : rings_) TRY(r.q.remap(mem_));
    return {};
}

Result<std::optional<Message>> VhostUser::handle(Message m) {
    if ((m.flags & 3) != kFlagVersion) return fail("vhost-user: protocol version " + std::to_string(m.flags & 3), EPROTO);
    Message reply;
    reply.request = m.request;
    reply.flags = kFlagVersion | kFlagReply;
    bool has_reply = false;
    auto u64 = [&]() -> Result<uint64_t> {
        if (m.payload.size() != 8) return fail("vhost-user: request " + std::to_string(m.request) + " of " + std::to_string(m.payload.size()) + " bytes", EPROTO);
        return at<uint64_t>(m.payload, 0);
    };
    switch (m.request) {
    case kGetFeatures:
        reply.payload = bytes(kFeatureVersion1 | kFeatureProtocolFeatures);
        has_reply = true;
        break;
    case kSetFeatures:
        features_ = TRY(u64());
        if (features_ & ~(kFeatureVersion1 | kFeatureProtocolFeatures))
            return fail("vhost-user: features we did not offer", EPROTO);
        break;
    case kGetProtocolFeatures:
        reply.payload = bytes(kProtocolReplyAck | kProtocolConfig);
        has_reply = true;
        break;
    case kSetProtocolFeatures:
        protocol_features_ = TRY(u64());
        break;
    case kGetQueueNum:
        reply.payload = bytes(uint64_t(kQueues));
        has_reply = true;
        break;
    case kSetOwner:
    case kResetOwner:
        break;
    case kSetMemTable:
        TRY(set_mem_table(m));
        break;
    case kSetVringNum: {
        uint32_t i = TRY(ring_index(m.payload, 8));
        uint32_t num = at<uint32_t>(m.payload, 4);
        if (num == 0 || num > kMaxQueueSize || (num & (num - 1))) return fail("vhost-user: ring size " + std::to_string(num), EPROTO);
        rings_[i].num = uint16_t(num);
        break;
    }
    case kSetVringBase: {
        uint32_t i = TRY(ring_index(m.payload, 8));
        rings_[i].base = uint16_t(at<uint32_t>(m.payload, 4));
        rings_[i].q.set_base(rings_[i].base);
        break;
    }
    case kSetVringAddr: {
        uint32_t i = TRY(ring_index(m.payload, 40));
        Ring& r = rings_[i];
        if (!r.num) return fail("vhost-user: ring addresses before its size", EPROTO);
        TRY(r.q.set_addresses(mem_, at<uint64_t>(m.payload, 8), at<uint64_t>(m.payload, 24), at<uint64_t>(m.payload, 16), r.num));
        break;
    }
    case kGetVringBase: {
        uint32_t i = TRY(ring_index(m.payload, 8));
        if (on_stop) on_stop();  // the device gives back what it holds before the base is read
        Ring& r = rings_[i];
        r.started = false;
        reply.payload = bytes(uint32_t(i)) + bytes(uint32_t(r.q.base()));
        r.kick.reset();
        has_reply = true;
        break;
    }
    case kSetVringKick:
    case kSetVringCall:
    case kSetVringErr: {
        uint64_t v = TRY(u64());
        uint64_t i = v & kVringIndexMask;
        if (i >= kQueues || (v & ~(kVringIndexMask | kVringNoFd))) return fail("vhost-user: ring fd message " + std::to_string(v), EPROTO);
        bool none = v & kVringNoFd;
        if (m.fds.size() != (none ? 0u : 1u)) return fail("vhost-user: a ring fd message with " + std::to_string(m.fds.size()) + " fds", EPROTO);
        if (m.request == kSetVringKick && none) return fail("vhost-user: a ring without a kick fd (polling) is not supported", EPROTO);
        sys::Fd fd = none ? sys::Fd() : std::move(m.fds[0]);
        Ring& r = rings_[i];
        if (m.request == kSetVringKick) {
            r.kick = std::move(fd);
            TRY(sys::set_nonblock(r.kick.get(), true));
            r.started = true;
            // Without protocol features a ring starts enabled; with them
            // it waits for SET_VRING_ENABLE.
            if (!(features_ & kFeatureProtocolFeatures)) r.enabled = true;
        } else if (m.request == kSetVringCall) {
            r.call = std::move(fd);
        }
        break;
    }
    case kSetVringEnable: {
        uint32_t i = TRY(ring_index(m.payload, 8));
        rings_[i].enabled = at<uint32_t>(m.payload, 4) != 0;
        break;
    }
    case kGetConfig: {
        if (m.payload.size() < 12) return fail("vhost-user: short config request", EPROTO);
        uint32_t offset = at<uint32_t>(m.payload, 0), size = at<uint32_t>(m.payload, 4);
        if (m.payload.size() != 12 + size_t(size) || uint64_t(offset) + size > 8)
            return fail("vhost-user: config bytes " + std::to_string(offset) + "+" + std::to_string(size) + " (it has 8)", EPROTO);
        // struct virtio_vsock_config: le64 guest_cid
        std::string cfg = bytes(cid_);
        reply.payload = m.payload.substr(0, 12) + cfg.substr(offset, size);
        has_reply = true;
        break;
    }
    case kSetConfig:
        break;  // read-only: the guest's CID is ours to say
    default:
        return fail("vhost-user: request " + std::to_string(m.request) + " is not supported", EPROTO);
    }
    if (has_reply) return std::optional<Message>(std::move(reply));
    if ((m.flags & kFlagNeedReply) && (protocol_features_ & kProtocolReplyAck)) {
        reply.payload = bytes(uint64_t(0));
        return std::optional<Message>(std::move(reply));
    }
    return std::optional<Message>();
}

}  // namespace husk::vsock
