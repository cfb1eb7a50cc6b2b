// The virtio-vsock device's host half (virtio 1.2, 5.10), with the guest's
// ports mapped to unix sockets as Firecracker's "hybrid vsock" maps them:
//  * host to guest: a client connects to the listening socket `uds`,
//    writes "CONNECT <port>\n", and once the guest has accepted, reads
//    "OK <host port>\n"; then the stream is the guest's. A guest that
//    refuses closes the client's socket;
//  * guest to host: a guest connect to the host (CID 2), port P, reaches
//    the unix socket `<uds>_<P>`, if something listens there.
// Stream sockets only. Credit (5.10.6.3) is kept both ways: the guest is
// never sent more than it has room for, and a guest that sends past the
// room it was given loses the connection (RST), so what is buffered here
// per connection is bounded by kBufAlloc.
#pragma once
#include <poll.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hypervisors/husk-vsock/virtqueue.h"
#include "sys/fd.h"

namespace husk::vsock {

inline constexpr uint64_t kHostCid = 2;
inline constexpr size_t kHeaderSize = 44;
inline constexpr uint32_t kMaxPayload = 64 * 1024;  // the Linux driver's largest packet
inline constexpr uint32_t kBufAlloc = 1024 * 1024;  // our receive room per connection
inline constexpr uint32_t kFirstHostPort = 1u << 30;  // ports given to host-initiated streams

enum Op : uint16_t { kRequest = 1, kResponse = 2, kRst = 3, kShutdown = 4, kRw = 5, kCreditUpdate = 6, kCreditRequest = 7 };
inline constexpr uint16_t kTypeStream = 1;
inline constexpr uint32_t kShutdownRcv = 1, kShutdownSend = 2;

struct Header {
    uint64_t src_cid = 0, dst_cid = 0;
    uint32_t src_port = 0, dst_port = 0;
    uint32_t len = 0;
    uint16_t type = kTypeStream, op = 0;
    uint32_t flags = 0, buf_alloc = 0, fwd_cnt = 0;
};
void encode(const Header& h, uint8_t out[kHeaderSize]);
Header decode(const uint8_t in[kHeaderSize]);

// "CONNECT <port>" (without its newline): the port, or none.
std::optional<uint32_t> parse_connect(const std::string& line);

// What the device asks of its transport.
struct Queues {
    GuestMemory* mem = nullptr;
    Virtqueue* rx = nullptr;  // queue 0: to the guest
    Virtqueue* tx = nullptr;  // queue 1: from the guest
    // Tell the driver (the call eventfd) that `q` has used buffers.
    virtual void interrupt(Virtqueue& q) = 0;
    virtual ~Queues() = default;
};

class Device {
public:
    // `uds`: the hybrid socket's path (for `<uds>_<port>`); `listener`:
    // that socket, bound and listening (may be invalid: no host dials).
    Device(uint64_t guest_cid, std::string uds, sys::Fd listener, Queues& q);
    ~Device();

    // The fds to poll, and what for; then handle() with the results (in
    // the same order).
    void poll_set(std::vector<pollfd>& out);
    void handle(const pollfd* fds, size_t n);
    // Take what the guest put on the tx queue, and fill the rx queue with
    // what is waiting for it. Called after a kick and after handle().
    void process();
    // The queues stop (a pause), or guest memory moves: give back an rx
    // buffer taken and not filled, untouched. The streams live on.
    void release_rx();

    size_t connections() const { return conns_.size(); }
    const std::string& error() const { return error_; }

private:
    struct Conn;
    struct Pending;  // a host client that has not said CONNECT yet
    using Key = std::pair<uint32_t, uint32_t>;  // (host port, guest port)

    bool take_tx();  // true: it stopped with packets left (too many replies owed)
    void on_packet(const Header& h, const Chain& c);
    void fill_rx();
    bool send_control();
    bool send_data(Conn& c);
    Conn* find(uint32_t host_port, uint32_t guest_port);
    void queue(const Header& h);
    void control(const Conn& c, uint16_t op, uint32_t flags = 0);
    void rst(uint32_t host_port, uint32_t guest_port);
    void drop(Conn& c, bool send_rst);
    void drain(Conn& c);
    void maybe_credit(Conn& c);
    void accept_clients();
    void read_connect(Pending& p);
    uint32_t free_host_port();
    uint32_t peer_credit(const Conn& c) const;
    Header header(const Conn& c, uint16_t op) const;

    uint64_t cid_;
    std::string uds_;
    sys::Fd listener_;
    Queues& q_;
    std::map<Key, std::unique_ptr<Conn>> conns_;
    std::vector<std::unique_ptr<Pending>> pending_;
    std::deque<std::pair<Key, Header>> control_;  // headers for the guest, credit filled in when sent
    std::vector<Key> polled_;  // the streams poll_set gave fds for, in order
    std::optional<Chain> held_rx_;  // an rx buffer taken and not yet filled
    uint32_t next_port_ = kFirstHostPort;
    std::string error_;
    bool rx_used_ = false;
};

}  // namespace husk::vsock
