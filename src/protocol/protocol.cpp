#include "protocol/protocol.h"

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

static void put_u32(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

static uint32_t get_u32(const char* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | uint8_t(p[i]);
    return v;
}

std::string encode(Type t, uint32_t stream, std::string_view payload) {
    std::string s;
    s.reserve(kHeaderSize + payload.size());
    put_u32(s, uint32_t(payload.size()));
    s.push_back(char(t));
    s.push_back(0);
    s.push_back(0);
    s.push_back(0);
    put_u32(s, stream);
    s.append(payload);
    return s;
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
