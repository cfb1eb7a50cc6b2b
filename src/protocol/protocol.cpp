#include "protocol/protocol.h"

#include <algorithm>
#include <cstring>

namespace husk::proto {

const char* type_name(Type t) {
    switch (t) {
        case Type::Hello: return "HELLO";
        case Type::Request: return "REQUEST";
        case Type::Response: return "RESPONSE";
        case Type::Event: return "EVENT";
        case Type::Data: return "DATA";
        case Type::Credit: return "CREDIT";
        case Type::Close: return "CLOSE";
    }
    return "?";
}

const char* flow_name(Flow f) {
    switch (f) {
        case Flow::In: return "in";
        case Flow::Out: return "out";
        case Flow::Both: return "both";
    }
    return "?";
}

std::optional<Flow> flow_of_name(std::string_view name) {
    for (Flow f : {Flow::In, Flow::Out, Flow::Both})
        if (name == flow_name(f)) return f;
    return std::nullopt;
}

static void put_u32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

static uint32_t get_u32(const char* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | uint8_t(p[i]);
    return v;
}

void put_header(char* out, Type t, uint32_t stream, uint32_t payload_size) {
    for (int i = 0; i < 4; ++i) out[i] = char((payload_size >> (8 * i)) & 0xff);
    out[4] = char(t);
    out[5] = out[6] = out[7] = 0;
    for (int i = 0; i < 4; ++i) out[8 + i] = char((stream >> (8 * i)) & 0xff);
}

std::string encode(Type t, uint32_t stream, std::string_view payload) {
    std::string s(kHeaderSize, '\0');
    put_header(s.data(), t, stream, uint32_t(payload.size()));
    s.append(payload);
    return s;
}

char* Outbox::reserve(size_t n) {
    if (cap_ - tail_ >= n) return buf_.get() + tail_;
    size_t live = size();
    if (cap_ >= live + n) {
        std::memmove(buf_.get(), buf_.get() + head_, live);
    } else {
        size_t cap = std::max<size_t>({cap_ * 2, live + n, 64 << 10});
        auto b = std::make_unique_for_overwrite<char[]>(cap);
        if (live) std::memcpy(b.get(), buf_.get() + head_, live);
        buf_ = std::move(b);
        cap_ = cap;
    }
    head_ = 0;
    tail_ = live;
    return buf_.get() + tail_;
}

void Outbox::append(std::string_view s) {
    std::memcpy(reserve(s.size()), s.data(), s.size());
    commit(s.size());
}

void Outbox::consume(size_t n) {
    head_ += n;
    if (head_ == tail_) head_ = tail_ = 0;
}

std::string encode(const Frame& f) { return encode(f.type, f.stream, f.payload); }

std::string encode_credit(uint32_t stream, uint32_t bytes) {
    std::string p;
    put_u32(p, bytes);
    return encode(Type::Credit, stream, p);
}

Result<uint32_t> decode_credit(const Frame& f) {
    if (f.type != Type::Credit || f.payload.size() != 4) return fail("bad CREDIT frame", EPROTO);
    return get_u32(f.payload.data());
}

Result<void> SendCredit::give_back(uint32_t n) {
    if (uint64_t(left_) + n > window_) {
        left_ = window_;
        return fail("returned " + std::to_string(n) + " bytes of credit that were not given", EPROTO);
    }
    left_ += n;
    return {};
}

void Decoder::feed(const char* data, size_t len) {
    if (error_) return;
    // Compact before growing so a long-lived connection does not creep.
    if (pos_ > 0 && pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    } else if (pos_ > (64u << 10)) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
    buf_.append(data, len);
}

Result<std::optional<Frame>> Decoder::next() {
    if (error_) return tl::unexpected(*error_);
    auto bad = [&](std::string msg) -> Result<std::optional<Frame>> {
        error_ = Error{EPROTO, "protocol error: " + msg};
        buf_.clear();
        pos_ = 0;
        return tl::unexpected(*error_);
    };
    size_t avail = buf_.size() - pos_;
    if (avail < kHeaderSize) return std::nullopt;
    const char* h = buf_.data() + pos_;
    uint32_t len = get_u32(h);
    uint8_t type = uint8_t(h[4]);
    if (h[5] != 0 || h[6] != 0 || h[7] != 0) return bad("nonzero reserved header bytes");
    if (type < uint8_t(Type::Hello) || type > uint8_t(Type::Close))
        return bad("unknown frame type " + std::to_string(type));
    Type t = Type(type);
    uint32_t limit = kMaxPayload;
    if (t == Type::Data) limit = kMaxDataPayload;
    if (t == Type::Credit) limit = 4;
    if (t == Type::Close) limit = 0;
    if (len > limit)
        return bad(std::string(type_name(t)) + " frame of " + std::to_string(len) + " bytes exceeds limit " +
                   std::to_string(limit));
    if (t == Type::Credit && len != 4) return bad("CREDIT frame must carry 4 bytes");
    if (avail < kHeaderSize + len) return std::nullopt;
    Frame f;
    f.type = t;
    f.stream = get_u32(h + 8);
    f.payload.assign(h + kHeaderSize, len);
    pos_ += kHeaderSize + len;
    return f;
}

}  // namespace husk::proto
