#include <random>

#include <catch2/catch.hpp>

#include "protocol/protocol.h"

using namespace husk;
using namespace husk::proto;

static std::string header(uint32_t len, uint8_t type, uint32_t stream, uint8_t r1 = 0) {
    std::string h;
    for (int i = 0; i < 4; ++i) h.push_back(char((len >> (8 * i)) & 0xff));
    h.push_back(char(type));
    h.push_back(char(r1));
    h.push_back(0);
    h.push_back(0);
    for (int i = 0; i < 4; ++i) h.push_back(char((stream >> (8 * i)) & 0xff));
    return h;
}

TEST_CASE("frames round-trip, fed whole or byte by byte", "[protocol]") {
    std::string wire = encode(Type::Request, 0, R"({"id":1})") + encode(Type::Data, stream_id(0, Stdout), "hello") +
                       encode_credit(stream_id(0, Stdin), 4096) + encode(Type::Close, stream_id(0, Stderr), "");
    for (bool bytewise : {false, true}) {
        Decoder d;
        std::vector<Frame> got;
        auto drain = [&] {
            for (;;) {
                auto f = d.next();
                REQUIRE(f);
                if (!*f) break;
                got.push_back(**f);
            }
        };
        if (bytewise)
            for (char c : wire) {
                d.feed(&c, 1);
                drain();
            }
        else {
            d.feed(wire.data(), wire.size());
            drain();
        }
        REQUIRE(got.size() == 4);
        CHECK(got[0].type == Type::Request);
        CHECK(got[0].payload == R"({"id":1})");
        CHECK(got[1].type == Type::Data);
        CHECK(got[1].stream == stream_id(0, Stdout));
        CHECK(got[1].payload == "hello");
        CHECK(decode_credit(got[2]).value() == 4096);
        CHECK(got[3].type == Type::Close);
        CHECK(d.buffered() == 0);
    }
}

TEST_CASE("header layout is little endian: length, type, reserved, stream", "[protocol]") {
    CHECK(encode(Type::Data, 0x01020304, "ab") == header(2, 5, 0x01020304) + "ab");
}

TEST_CASE("stream ids pack process and fd", "[protocol]") {
    CHECK(stream_id(0, Stdin) == 0);
    CHECK(stream_id(3, Stderr) == 770);
    CHECK(stream_process(770) == 3);
    CHECK(stream_fd(770) == 2);
    CHECK(stream_fd(stream_id(7, kMaxStreamFd)) == 255);
    CHECK(stream_process(stream_id(kMaxProcess, kMaxStreamFd)) == kMaxProcess);
    CHECK(stream_id(kMaxProcess, kMaxStreamFd) != kChannelStream);
}

TEST_CASE("truncated frames wait for more bytes", "[protocol]") {
    std::string f = encode(Type::Event, 0, R"({"event":"exit"})");
    Decoder d;
    d.feed(f.data(), f.size() - 1);
    auto r = d.next();
    REQUIRE(r);
    CHECK_FALSE(r->has_value());
    d.feed(f.data() + f.size() - 1, 1);
    r = d.next();
    REQUIRE(r);
    REQUIRE(r->has_value());
    CHECK((*r)->type == Type::Event);
}

TEST_CASE("hostile headers are rejected before any allocation", "[protocol]") {
    struct Case {
        std::string bytes;
        std::string needle;
    };
    std::vector<Case> cases = {
        {header(kMaxPayload + 1, uint8_t(Type::Request), 0), "exceeds limit"},
        {header(0xffffffffu, uint8_t(Type::Response), 0), "exceeds limit"},
        {header(kMaxDataPayload + 1, uint8_t(Type::Data), 1), "DATA frame"},
        {header(8, uint8_t(Type::Credit), 1), "CREDIT"},
        {header(3, uint8_t(Type::Credit), 1), "CREDIT"},
        {header(1, uint8_t(Type::Close), 1), "CLOSE"},
        {header(0, 0, 0), "unknown frame type 0"},
        {header(0, 99, 0), "unknown frame type 99"},
        {header(0, uint8_t(Type::Hello), 0, 1), "reserved"},
    };
    for (auto& c : cases) {
        INFO(c.needle);
        Decoder d;
        d.feed(c.bytes.data(), c.bytes.size());
        auto r = d.next();
        REQUIRE_FALSE(r);
        CHECK(r.error().message.find(c.needle) != std::string::npos);
        CHECK(r.error().code == EPROTO);
        // Sticky: the connection is dead, even if valid bytes follow.
        std::string ok = encode(Type::Hello, 0, "{}");
        d.feed(ok.data(), ok.size());
        CHECK_FALSE(d.next());
        CHECK(d.buffered() == 0);
    }
}

TEST_CASE("random garbage never crashes and never grows without bound", "[protocol]") {
    std::mt19937 rng(42);
    for (int round = 0; round < 2000; ++round) {
        Decoder d;
        std::string junk(size_t(rng() % 256), '\0');
        for (auto& c : junk) c = char(rng());
        // Half the rounds start with a valid frame so parsing gets deep.
        if (round % 2) junk = encode(Type::Data, 1, "x") + junk;
        d.feed(junk.data(), junk.size());
        // Every byte is a decoded frame's, still buffered, or dropped with
        // the connection: none lost, none counted twice, none kept after
        // an error.
        size_t decoded = 0;
        for (;;) {
            auto r = d.next();
            if (!r) {
                CHECK(d.buffered() == 0);
                break;
            }
            if (!*r) {
                CHECK(decoded + d.buffered() == junk.size());
                CHECK(d.buffered() < kHeaderSize + kMaxPayload);
                break;
            }
            decoded += kHeaderSize + (*r)->payload.size();
            REQUIRE(decoded <= junk.size());
        }
    }
}

TEST_CASE("credit frames carry exactly four bytes", "[protocol]") {
    Frame f{Type::Credit, 1, "abc"};
    CHECK_FALSE(decode_credit(f));
    Frame g{Type::Data, 1, "abcd"};
    CHECK_FALSE(decode_credit(g));
}

TEST_CASE("the outbox keeps bytes in order through partial writes, reserves and growth", "[protocol]") {
    Outbox o;
    CHECK(o.empty());
    std::string sent, expect;
    std::mt19937 rng(7);
    uint32_t next = 0;
    for (int round = 0; round < 2000; ++round) {
        if (rng() % 3 == 0) {
            // A DATA frame read straight into the tail: reserve more than
            // the read returns, commit what it did.
            size_t want = 1 + rng() % kMaxDataPayload, got = rng() % (want + 1);
            char* p = o.reserve(kHeaderSize + want);
            put_header(p, Type::Data, 5, uint32_t(got));
            for (size_t i = 0; i < got; ++i) p[kHeaderSize + i] = char(next++);
            o.commit(kHeaderSize + got);
            expect += std::string(p, kHeaderSize + got);
        } else {
            std::string f = encode_credit(1, uint32_t(rng()));
            o.append(f);
            expect += f;
        }
        // The channel takes a random part of what is queued.
        size_t n = o.empty() ? 0 : rng() % (o.size() + 1);
        sent.append(o.data(), n);
        o.consume(n);
        REQUIRE(sent.size() + o.size() == expect.size());
    }
    sent.append(o.data(), o.size());
    o.consume(o.size());
    CHECK(o.empty());
    CHECK(sent == expect);
    // What went through decodes as the frames that went in.
    Decoder d;
    d.feed(sent.data(), sent.size());
    size_t frames = 0;
    for (;;) {
        auto f = d.next();
        REQUIRE(f);
        if (!*f) break;
        ++frames;
    }
    CHECK(frames == 2000);
    CHECK(d.buffered() == 0);
}

TEST_CASE("send credit: spent as sent, given back as the receiver drains, never past the window", "[protocol]") {
    SendCredit c(100);
    CHECK(c.left() == 100);
    c.spend(60);
    CHECK(c.left() == 40);
    c.spend(70);  // (a sender never spends more than it has: nothing goes below zero)
    CHECK(c.left() == 0);
    REQUIRE(c.give_back(100));
    CHECK(c.left() == 100);
    auto lie = c.give_back(1);
    REQUIRE_FALSE(lie);
    CHECK(lie.error().code == EPROTO);
    CHECK(lie.error().message == "returned 1 bytes of credit that were not given");
    CHECK(c.left() == 100);
    // A checkpoint's resumed stream: what is still buffered in the guest is out.
    SendCredit r(100, 30);
    CHECK(r.left() == 30);
    CHECK(SendCredit(100, 500).left() == 100);
    CHECK(SendCredit().window() == kInitialCredit);
}
