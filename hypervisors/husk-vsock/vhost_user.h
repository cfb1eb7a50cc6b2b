// The backend half of the vhost-user protocol (QEMU's docs/interop/
// vhost-user.rst) for one virtio-vsock device: the VMM (the front-end)
// hands over guest memory (memfd regions), the rx and tx rings (queue 0
// and 1; QEMU keeps the event queue, 2, itself) with their kick and call
// eventfds, and reads the device's config (the guest's CID).
// The messages are parsed strictly (sizes, indexes, region counts): a
// malformed one is an error, which ends the session.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hypervisors/husk-vsock/virtqueue.h"
#include "husk/result.h"
#include "sys/fd.h"

namespace husk::vsock {

enum Request : uint32_t {
    kGetFeatures = 1,
    kSetFeatures = 2,
    kSetOwner = 3,
    kResetOwner = 4,
    kSetMemTable = 5,
    kSetVringNum = 8,
    kSetVringAddr = 9,
    kSetVringBase = 10,
    kGetVringBase = 11,
    kSetVringKick = 12,
    kSetVringCall = 13,
    kSetVringErr = 14,
    kGetProtocolFeatures = 15,
    kSetProtocolFeatures = 16,
    kGetQueueNum = 17,
    kSetVringEnable = 18,
    kGetConfig = 24,
    kSetConfig = 25,
};

inline constexpr uint32_t kFlagVersion = 1, kFlagReply = 1u << 2, kFlagNeedReply = 1u << 3;
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;
inline constexpr uint64_t kFeatureProtocolFeatures = 1ull << 30;
inline constexpr uint64_t kProtocolReplyAck = 1ull << 3;
inline constexpr uint64_t kProtocolConfig = 1ull << 9;
inline constexpr size_t kMaxRegions = 8;
inline constexpr size_t kMaxPayloadSize = 4096;
inline constexpr int kQueues = 2;

struct Message {
    uint32_t request = 0, flags = 0;
    std::string payload;
    std::vector<sys::Fd> fds;
};

// One message from the socket (its fds with it); none at EOF.
Result<std::optional<Message>> read_message(int sock);
Result<void> write_message(int sock, const Message& m);
// The wire form of `m` (header and payload), for tests and fuzzing.
std::string wire(const Message& m);

// How a memory region is mapped here: mmap by default; tests and the
// fuzzer map their own buffers.
struct Mapper {
    virtual Result<uint8_t*> map(int fd, uint64_t size, uint64_t offset) = 0;
    virtual void unmap(uint8_t* base, uint64_t size, uint64_t offset) = 0;
    virtual ~Mapper() = default;
};
Mapper& mmap_mapper();

class VhostUser {
public:
    VhostUser(uint64_t guest_cid, Mapper& mapper = mmap_mapper());
    ~VhostUser();
    VhostUser(const VhostUser&) = delete;
    VhostUser& operator=(const VhostUser&) = delete;

    // Act on one message: its reply (none when it has none), or why the
    // session must end.
    Result<std::optional<Message>> handle(Message m);

    GuestMemory& memory() { return mem_; }
    Virtqueue& queue(int i) { return rings_[i].q; }
    // The ring may be used: set up, enabled and given a kick fd.
    bool running(int i) const;
    int kick_fd(int i) const { return rings_[i].kick.get(); }
    int call_fd(int i) const { return rings_[i].call.get(); }
    // Called when a ring stops (GET_VRING_BASE: the VM paused or the
    // device stopped), before its base is read, and before guest memory
    // is mapped anew: the device gives back a buffer it holds. Its
    // streams live on: the rings start again where they stopped.
    std::function<void()> on_stop;

private:
    struct Ring {
        Virtqueue q;
        uint16_t num = 0;
        uint16_t base = 0;
        bool enabled = false;
        bool started = false;
        sys::Fd kick, call;
    };
    Result<void> set_mem_table(const Message& m);
    void unmap_all();
    Result<uint32_t> ring_index(const std::string& payload, size_t need);

    uint64_t cid_;
    Mapper& mapper_;
    uint64_t features_ = 0, protocol_features_ = 0;
    GuestMemory mem_;
    struct Mapped {
        uint8_t* base;
        uint64_t size, offset;
    };
    std::vector<Mapped> maps_;
    std::array<Ring, kQueues> rings_;
};

}  // namespace husk::vsock
