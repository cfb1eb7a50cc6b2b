// The shim <-> agent wire protocol, defined once for both sides.
//
// One byte stream (virtio-serial port or AF_VSOCK) carries frames:
//
//   u32 length (payload bytes, little endian) | u8 type | u8 flags (0) |
//   u16 reserved (0) | u32 stream | payload
//
// The agent speaks first with HELLO {"version":N}; the shim answers HELLO.
// REQUEST/RESPONSE carry JSON keyed by "id". EVENT carries JSON from the
// guest (process exit, OOM). DATA carries raw stdio bytes for one stream;
// a sender may only have `credit` unacknowledged bytes in flight per
// stream and the receiver returns credit (CREDIT, u32 LE) as it drains, so
// a stuck stdout never blocks control traffic. CLOSE ends a stream (EOF).
//
// The guest is untrusted: the decoder bounds every length and rejects any
// header it does not understand; after an error the connection is dead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "husk/result.h"

namespace husk::proto {

constexpr uint32_t kVersion = 4;  // 2: stream ids carry 8 bits of fd (--preserve-fds); 3: templates (HELLO "template", attach); 4: attach "disk", "macs"
constexpr size_t kHeaderSize = 12;
constexpr uint32_t kMaxPayload = 1u << 20;     // control frames (spec JSON fits)
constexpr uint32_t kMaxDataPayload = 32u << 10; // one DATA frame
constexpr uint32_t kInitialCredit = 1u << 20;    // per stream, each direction
constexpr uint32_t kAgentVsockPort = 1024;
// CREDIT on this stream returns channel bytes: an agent whose channel is a
// tty (UML's console line) says how much it has read, and the shim keeps
// no more than its window unread in the guest. Past 4 KiB unread, UML's
// line driver stops taking input for good.
constexpr uint32_t kChannelStream = 0xffffffffu;
constexpr const char* kSerialPortName = "husk.agent";

enum class Type : uint8_t {
    Hello = 1,
    Request = 2,
    Response = 3,
    Event = 4,
    Data = 5,
    Credit = 6,
    Close = 7,
};

const char* type_name(Type t);

struct Frame {
    Type type{};
    uint32_t stream = 0;
    std::string payload;
};

// Stream ids: process index (0 = the container's init) and the fd of the
// process it is (0-2, or a preserved fd from 3 up). A stream that goes both
// ways (a preserved fd opened O_RDWR) has one id for both directions: who
// sent a frame says which.
enum StdFd : uint32_t { Stdin = 0, Stdout = 1, Stderr = 2 };
constexpr uint32_t kStreamFdBits = 8;
constexpr uint32_t kMaxStreamFd = (1u << kStreamFdBits) - 1;
// Process indices wrap below this, so that no stream id is kChannelStream.
constexpr uint32_t kMaxProcess = (kChannelStream >> kStreamFdBits) - 1;
constexpr uint32_t stream_id(uint32_t process, uint32_t fd) { return (process << kStreamFdBits) | fd; }
constexpr uint32_t stream_process(uint32_t stream) { return stream >> kStreamFdBits; }
constexpr uint32_t stream_fd(uint32_t stream) { return stream & kMaxStreamFd; }
// --preserve-fds: fds 3.. of the caller, as many as a stream id can name.
constexpr int kFirstPreservedFd = 3;
constexpr int kMaxPreservedFds = int(kMaxStreamFd) - kFirstPreservedFd + 1;

// Which way a preserved fd's bytes go, as the process in the guest sees
// it: it reads (the host fd was opened O_RDONLY), writes (O_WRONLY), or
// both (O_RDWR; the process gets one end of a socketpair). The agent's
// process parameters carry them as "extra_fds": [name, ...] for fds 3...
enum class Flow { In, Out, Both };
const char* flow_name(Flow f);
std::optional<Flow> flow_of_name(std::string_view name);
constexpr bool flows_in(Flow f) { return f != Flow::Out; }   // host -> guest
constexpr bool flows_out(Flow f) { return f != Flow::In; }   // guest -> host

// A frame's header, written to out[0..kHeaderSize).
void put_header(char* out, Type t, uint32_t stream, uint32_t payload_size);
std::string encode(const Frame& f);
std::string encode(Type t, uint32_t stream, std::string_view payload);
std::string encode_credit(uint32_t stream, uint32_t bytes);
Result<uint32_t> decode_credit(const Frame& f);

// A sender's side of a stream's credit (or of kChannelStream's): what it
// may still send, out of the window the receiver granted. The shim's
// stdin and channel and the agent's output each keep one.
class SendCredit {
public:
    explicit SendCredit(uint32_t window = kInitialCredit) : window_(window), left_(window) {}
    SendCredit(uint32_t window, uint32_t left) : window_(window), left_(left < window ? left : window) {}
    uint32_t left() const { return left_; }
    uint32_t window() const { return window_; }
    void spend(uint32_t n) { left_ -= n < left_ ? n : left_; }
    // The receiver's CREDIT: more than is out is a lie (EPROTO), and the
    // count stays at the window.
    Result<void> give_back(uint32_t n);

private:
    uint32_t window_, left_;
};

// Bytes queued for a stream (frames for the other side): appended at the
// tail, written from the head. A DATA frame can be read straight into the
// tail (reserve, then commit), so a process's output is copied once in, once
// out; under TCG every copy counts.
class Outbox {
public:
    bool empty() const { return head_ == tail_; }
    size_t size() const { return tail_ - head_; }
    const char* data() const { return buf_.get() + head_; }
    // Room for n more bytes at the tail; valid until the next call.
    char* reserve(size_t n);
    void commit(size_t n) { tail_ += n; }
    void append(std::string_view s);
    void consume(size_t n);
    void clear() { head_ = tail_ = 0; }

private:
    std::unique_ptr<char[]> buf_;
    size_t cap_ = 0, head_ = 0, tail_ = 0;
};

// Incremental decoder: feed() bytes as they arrive, next() yields frames.
// Memory is bounded by kHeaderSize + kMaxPayload + one read's worth.
class Decoder {
public:
    void feed(const char* data, size_t len);
    // A frame, nothing yet (nullopt), or a protocol error (sticky).
    Result<std::optional<Frame>> next();
    size_t buffered() const { return buf_.size() - pos_; }

private:
    std::string buf_;
    size_t pos_ = 0;
    std::optional<Error> error_;
};

}  // namespace husk::proto
