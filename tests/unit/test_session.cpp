// The shim's agent session (shim/session.h): the happy path through every
// phase, and a guest that lies. tests/fuzz/fuzz_session.cpp drives the
// same code with arbitrary input.
#include <catch2/catch.hpp>

#include "protocol/protocol.h"
#include "shim/session.h"

using namespace husk;
using nlohmann::json;

namespace {

struct Host : shim::SessionHost {
    std::vector<std::pair<uint64_t, json>> replies;
    std::vector<std::string> created_errors;
    int created_ok = 0, running_calls = 0;
    proto::Create create_params() override {
        proto::Create c;
        c.container = "b";
        return c;
    }
    void created(bool ok, const std::string& e) override { ok ? ++created_ok : (created_errors.push_back(e), 0); }
    void running() override { ++running_calls; }
    void busy(uint64_t) override {}
    void reply(uint64_t c, const proto::ControlReply& r) override { replies.emplace_back(c, proto::to_json(r)); }
};

std::string frame(proto::Type t, uint32_t stream, const json& j) { return proto::encode(t, stream, j.dump()); }
std::string response(const json& j) { return frame(proto::Type::Response, 0, j); }

Result<void> feed(shim::Session& s, const std::string& bytes) { return s.feed(bytes.data(), bytes.size()); }

// A process's streams as the shim declares them: stdin, stdout, stderr.
void stdio(shim::Proc& p) {
    p.in[0];
    p.out[1];
    p.out[2];
}

// A session the agent said HELLO to and created the container in.
void created(shim::Session& s) {
    s.procs[0].idx = 0;
    stdio(s.procs[0]);
    REQUIRE(feed(s, frame(proto::Type::Hello, 0, {{"version", proto::kVersion}})));
    REQUIRE(s.out.find(R"("method":"create","params":{)") != std::string::npos);
    REQUIRE(s.out.find(R"("container":"b")") != std::string::npos);
    REQUIRE(feed(s, response({{"id", 1}, {"ok", true}})));
    REQUIRE(s.phase == shim::Phase::Created);
}

}  // namespace

TEST_CASE("session: hello, create, start, output, exec, exit", "[session]") {
    Host h;
    shim::Session s(h);
    created(s);
    CHECK(h.created_ok == 1);
    s.request("start", {{"process", 0}}, 7);
    REQUIRE(feed(s, response({{"id", 2}, {"ok", true}})));
    CHECK(s.phase == shim::Phase::Running);
    CHECK(h.running_calls == 1);
    REQUIRE(h.replies.size() == 1);
    CHECK(h.replies[0] == std::pair<uint64_t, json>{7, {{"ok", true}}});
    REQUIRE(feed(s, proto::encode(proto::Type::Data, proto::stream_id(0, 1), "hello")));
    CHECK(s.procs[0].out[1].data == "hello");
    // An exec's pid comes back to its client.
    s.procs[1].idx = 1;
    s.request("exec", json::object(), 8, 1);
    REQUIRE(feed(s, response({{"id", 3}, {"ok", true}, {"result", {{"pid", 42}}}})));
    CHECK(h.replies.back() == std::pair<uint64_t, json>{8, {{"ok", true}, {"pid", 42}}});
    REQUIRE(feed(s, frame(proto::Type::Event, 0, {{"event", "exit"}, {"process", 0}, {"signal", 9}})));
    CHECK(s.phase == shim::Phase::Exiting);
    CHECK(s.procs[0].sig == 9);
    CHECK(s.in_flight() == 0);
}

TEST_CASE("session: a guest that lies is refused with an error, never a crash", "[session]") {
    struct Case {
        const char* what;
        std::string bytes;
        const char* error;
    };
    const Case cases[] = {
        // json::value() would throw on these: the shim died of it once.
        {"ok of the wrong type", response({{"id", 3}, {"ok", "yes"}}), "agent: response.ok: expected true or false"},
        {"a refusal without its error", response({{"id", 3}, {"ok", false}}), "agent: response.error: missing"},
        {"a key the protocol does not have", response({{"id", 3}, {"ok", true}, {"okay", true}}),
         "agent: response.okay: unknown key"},
        {"an exec's pid that is not one", "exec", "agent: exec.pid: not a pid"},
        {"an answer nobody asked for", response({{"id", 99}, {"ok", true}}), "response to unknown request 99"},
        {"a second hello", frame(proto::Type::Hello, 0, {{"version", proto::kVersion}}), "unexpected HELLO from agent"},
        {"output for a process never started", proto::encode(proto::Type::Data, proto::stream_id(5, 1), "x"),
         "data on unknown stream 1281"},
        {"output to the container's stdin", proto::encode(proto::Type::Data, proto::stream_id(0, 0), "x"),
         "data on unknown stream 0"},
        {"more output than granted", std::string(), "agent overran its credit on stream 1"},
        {"an exit for no process", frame(proto::Type::Event, 0, {{"event", "exit"}, {"process", 3}, {"code", 0}}),
         "exit event for unknown process 3"},
        {"an exit without a status", frame(proto::Type::Event, 0, {{"event", "exit"}, {"process", 0}, {"code", "0"}}),
         "agent: event.code: expected an integer in -2147483648..2147483647"},
        {"an exit with a code and a signal",
         frame(proto::Type::Event, 0, {{"event", "exit"}, {"process", 0}, {"code", 0}, {"signal", 9}}),
         "agent: event: expected a code or a signal"},
        {"an event husk does not know", frame(proto::Type::Event, 0, {{"event", "oops"}, {"process", 0}}),
         "agent: event.event: not an event husk knows: oops"},
        {"a request to the shim", frame(proto::Type::Request, 0, {{"id", 1}}), "agent sent a request"},
        {"too much stdin credit", proto::encode_credit(proto::stream_id(0, 0), 1), "returned 1 bytes of credit that were not given"},
        {"output on an fd the process was not given", proto::encode(proto::Type::Data, proto::stream_id(0, 3), "x"),
         "data on unknown stream 3"},
        {"a close of an fd the process was not given", proto::encode(proto::Type::Close, proto::stream_id(0, 9), ""),
         "close on unknown stream 9"},
    };
    for (const auto& c : cases) {
        INFO(c.what);
        Host h;
        shim::Session s(h);
        created(s);
        s.request("start", {{"process", 0}}, 7);
        REQUIRE(feed(s, response({{"id", 2}, {"ok", true}})));
        s.request("ps", {{"process", 0}}, 8);  // id 3
        std::string bytes = c.bytes;
        if (bytes == "exec") {
            s.procs[1].idx = 1;
            s.request("exec", json::object(), 9, 1);  // id 4
            bytes = response({{"id", 4}, {"ok", true}, {"result", {{"pid", -1}}}});
        }
        if (bytes.empty()) {
            // All the credit it was granted, then one byte more.
            std::string chunk(proto::kMaxDataPayload, 'x');
            for (uint32_t sent = 0; sent < proto::kInitialCredit; sent += proto::kMaxDataPayload)
                REQUIRE(feed(s, proto::encode(proto::Type::Data, proto::stream_id(0, 1), chunk)));
            bytes = proto::encode(proto::Type::Data, proto::stream_id(0, 1), "x");
        }
        auto r = feed(s, bytes);
        REQUIRE_FALSE(r);
        CHECK(r.error().message == c.error);
        CHECK(s.procs[0].out[1].data.size() <= proto::kInitialCredit);
        // Errors are final: nothing more is taken from this guest.
        CHECK_FALSE(feed(s, response({{"id", 3}, {"ok", true}})));
    }
}

TEST_CASE("session: preserved fds are streams of their own, one way or both", "[session]") {
    Host h;
    shim::Session s(h);
    created(s);
    // fd 3 both ways (O_RDWR), fd 4 the guest writes, fd 5 the guest reads.
    auto& p = s.procs[0];
    p.in[3];
    p.out[3];
    p.out[4];
    p.in[5];
    s.request("start", {{"process", 0}}, 7);
    REQUIRE(feed(s, response({{"id", 2}, {"ok", true}})));
    REQUIRE(feed(s, proto::encode(proto::Type::Data, proto::stream_id(0, 3), "both")));
    REQUIRE(feed(s, proto::encode(proto::Type::Data, proto::stream_id(0, 4), "out")));
    CHECK(p.out[3].data == "both");
    CHECK(p.out[4].data == "out");
    // What the guest reads returns credit on the same id, and only up to the window.
    p.in[3].credit.spend(10);
    REQUIRE(feed(s, proto::encode_credit(proto::stream_id(0, 3), 10)));
    CHECK(p.in[3].credit.left() == s.stdin_window);
    // The guest closing a two-way fd ends its output, not what it reads.
    REQUIRE(feed(s, proto::encode(proto::Type::Close, proto::stream_id(0, 3), "")));
    CHECK(p.out[3].eof);
    CHECK(p.in[3].open);
    // ... while closing a one-way input means its reader is gone.
    REQUIRE(feed(s, proto::encode(proto::Type::Close, proto::stream_id(0, 5), "")));
    CHECK_FALSE(p.in[5].open);
    CHECK_FALSE(p.drained());  // fd 4's output is not closed yet
    auto r = feed(s, proto::encode(proto::Type::Data, proto::stream_id(0, 5), "x"));
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "data on unknown stream 5");  // the guest never writes what it reads
}

TEST_CASE("session: a refused create reaches the shim; a forgotten client gets nothing", "[session]") {
    Host h;
    shim::Session s(h);
    s.procs[0].idx = 0;
    REQUIRE(feed(s, frame(proto::Type::Hello, 0, {{"version", proto::kVersion}})));
    auto r = feed(s, response({{"id", 1}, {"ok", false}, {"error", "no such file"}}));
    REQUIRE_FALSE(r);
    CHECK(h.created_errors == std::vector<std::string>{"create container in guest: no such file"});

    Host h2;
    shim::Session s2(h2);
    created(s2);
    s2.request("ps", {{"process", 0}}, 9);
    s2.forget_client(9);
    REQUIRE(feed(s2, response({{"id", 2}, {"ok", true}, {"result", json::array()}})));
    CHECK(h2.replies.empty());

    // The shim answers a kill itself when it stops a hung guest's VM.
    s2.request("kill", {{"signal", 9}}, 10);
    s2.request("ps", {{"process", 0}}, 11);
    s2.answer_pending("kill", proto::ControlReply{});
    CHECK(h2.replies == std::vector<std::pair<uint64_t, json>>{{10, {{"ok", true}}}});
    CHECK(s2.in_flight() == 1);  // the ps is still the guest's to answer
}

TEST_CASE("session: a windowed channel takes only what the agent said it read", "[session]") {
    Host h;
    shim::Session s(h);
    s.channel = proto::SendCredit(2048);
    created(s);  // HELLO and the create request are queued
    s.send(std::string(5000, 'x'));
    CHECK(s.writable() == 2048);
    s.out.erase(0, 2048);  // the shim wrote that much
    s.channel->spend(2048);
    CHECK(s.writable() == 0);
    REQUIRE(feed(s, proto::encode_credit(proto::kChannelStream, 1000)));
    CHECK(s.writable() == 1000);
    // More than was ever given: a lying guest.
    CHECK_FALSE(feed(s, proto::encode_credit(proto::kChannelStream, 2000)));
}

TEST_CASE("session: channel credit where no window was set is a protocol error", "[session]") {
    Host h;
    shim::Session s(h);
    created(s);
    CHECK(s.writable() == s.out.size());
    CHECK_FALSE(feed(s, proto::encode_credit(proto::kChannelStream, 1)));
}
