// shim.sock's typed contract (protocol/control.h): what every request,
// reply and session line looks like on the wire (golden), and what the
// strict decoders refuse.
#include <csignal>
#include <functional>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "golden.h"
#include "protocol/control.h"
#include "protocol/creator.h"

using namespace husk;
using namespace husk::proto;
using nlohmann::json;

namespace {

// An exec's process.
proto::Process process(std::vector<std::string> args, bool terminal) {
    proto::Process p;
    p.args = std::move(args);
    p.env = {"PATH=/usr/bin:/bin"};
    p.terminal = terminal;
    return p;
}

// Every op as husk and the relays send it: one line each.
std::vector<ControlRequest> every_request() {
    return {
        {.op = Op::Start},
        {.op = Op::Start, .container = "member1"},
        {.op = Op::Kill, .signal = SIGTERM, .all = false},
        {.op = Op::Kill, .container = "member1", .signal = SIGKILL, .all = true},
        {.op = Op::Pause},
        {.op = Op::Resume},
        {.op = Op::Ps},
        {.op = Op::Stats, .container = "member1"},
        {.op = Op::Update, .files = {{"memory.max", "268435456"}, {"cpu.max", "50000 100000"}}},
        {.op = Op::Checkpoint, .image_path = "/var/lib/ckpt", .leave_running = true},
        {.op = Op::Exec, .process = process({"sh"}, true)},
        {.op = Op::Exec, .container = "member1", .process = process({"true"}, false), .preserve_fds = 2},
        {.op = Op::Create,
         .container = "member1",
         .preserve_fds = 1,
         .bundle = "/b/member1",
         .join = {{"ipc", "pod"}, {"uts", "pod"}},
         .trees = 3},
        {.op = Op::Create,
         .container = "member2",
         .bundle = "/b/member2",
         .join = {{"network", "pod"}},
         .trees = 1,
         .annotations = {{"org.husk.stdio", "console"}}},
        {.op = Op::Remove, .container = "member1"},
        {.op = Op::Signal, .signal = SIGINT},
        {.op = Op::Resize, .rows = 40, .cols = 120},
    };
}

std::string why(const json& j) {
    auto r = control_request_from_json(j);
    return r ? "decoded" : r.error().message;
}

// Each message as a line on the wire, after checking that it decodes back
// to the same.
template <class T, class Decode>
std::string encode_all(const std::vector<T>& all, Decode decode) {
    std::string text;
    for (const auto& m : all) {
        json j = to_json(m);
        text += j.dump() + "\n";
        auto back = decode(j);
        REQUIRE(back);
        CHECK(to_json(*back) == j);
    }
    return text;
}

}  // namespace

TEST_CASE("shim.sock: every request, encoded (golden) and decoded back to the same", "[control][protocol]") {
    check_golden("control-requests.jsonl", encode_all(every_request(), control_request_from_json));
}

TEST_CASE("shim.sock: a request takes its op's fields only, each of its type and range", "[control][protocol]") {
    CHECK(why(json::array()) == "shim.sock: a request is a JSON object");
    CHECK(why({{"signal", 9}}) == "shim.sock: no op");
    CHECK(why({{"op", "reboot"}}) == "shim.sock: unknown op reboot");
    // The misspelt key that once became a default silently.
    CHECK(why({{"op", "kill"}, {"signal", 9}, {"al", true}}) == "shim.sock: kill: unknown key al");
    CHECK(why({{"op", "kill"}, {"signal", 9}}) == "shim.sock: kill: missing all");
    CHECK(why({{"op", "start"}, {"signal", 9}}) == "shim.sock: start: unknown key signal");
    CHECK(why({{"op", "kill"}, {"signal", "9"}, {"all", false}}) == "shim.sock: signal: expected an integer in 0..64");
    CHECK(why({{"op", "kill"}, {"signal", 65}, {"all", false}}) == "shim.sock: signal: expected an integer in 0..64");
    CHECK(why({{"op", "kill"}, {"signal", 9.5}, {"all", false}}) == "shim.sock: signal: expected an integer in 0..64");
    CHECK(why({{"op", "kill"}, {"signal", 9}, {"all", 1}}) == "shim.sock: all: expected true or false");
    CHECK(why({{"op", "exec"}, {"process", "sh"}}) == "shim.sock: process: expected an object");
    CHECK(why({{"op", "exec"}, {"process", json::object()}}) == "shim.sock: process.args: missing");
    CHECK(why({{"op", "exec"}, {"process", proto::to_json(process({"sh"}, false))}, {"preserve_fds", 254}}) ==
          "shim.sock: preserve_fds: expected an integer in 0..253");
    CHECK(why({{"op", "update"}, {"files", {{"memory.max", 5}}}}) == "shim.sock: files: expected [[file, value], ...]");
    CHECK(why({{"op", "checkpoint"}, {"image_path", "ckpt"}, {"leave_running", false}}) ==
          "shim.sock: image_path: expected an absolute path");
    CHECK(why({{"op", "checkpoint"}, {"image_path", "/c"}, {"leave_running", false}, {"container", "m"}}) ==
          "shim.sock: checkpoint: unknown key container");
    CHECK(why({{"op", "create"}, {"container", "m"}, {"bundle", "/b"}, {"join", {{"ipc", 1}}}, {"trees", 1}}) ==
          "shim.sock: join: expected {type: container}");
    CHECK(why({{"op", "create"}, {"container", ""}, {"bundle", "/b"}, {"join", json::object()}, {"trees", 1}}) ==
          "shim.sock: container: expected a string");
    CHECK(why({{"op", "create"}, {"container", "m"}, {"bundle", "/b"}, {"join", json::object()}, {"trees", 1},
               {"annotations", {{"k", 1}}}}) == "shim.sock: annotations: expected {key: value}");
    CHECK(why({{"op", "create"}, {"container", "m"}, {"bundle", "/b"}, {"join", json::object()}, {"trees", 1},
               {"annotations", "k=v"}}) == "shim.sock: annotations: expected {key: value}");
    CHECK(why({{"op", "resize"}, {"rows", -1}, {"cols", 80}}) == "shim.sock: rows: expected an integer in 0..65535");
    CHECK(control_request_from_json({{"op", "kill"}}).error().code == EPROTO);
}

TEST_CASE("shim.sock: replies and a session's exit line", "[control][protocol]") {
    std::vector<std::pair<ControlReply, json>> cases = {
        {ControlReply{}, {{"ok", true}}},
        {refused("container not running"), {{"ok", false}, {"error", "container not running"}}},
        {refused("busy", EBUSY), {{"ok", false}, {"error", "busy"}, {"errno", EBUSY}}},
        {ControlReply{.pid = 42}, {{"ok", true}, {"pid", 42}}},
        {ControlReply{.result = json::array({1, 7})}, {{"ok", true}, {"result", {1, 7}}}},
        {ControlReply{.stats = json{{"memdump_us", 5}}}, {{"ok", true}, {"stats", {{"memdump_us", 5}}}}},
    };
    for (const auto& [r, j] : cases) {
        CHECK(to_json(r) == j);
        auto back = control_reply_from_json(j);
        REQUIRE(back);
        CHECK(to_json(*back) == j);
    }
    CHECK(!control_reply_from_json({{"ok", true}, {"error", "x"}}));
    CHECK(!control_reply_from_json({{"ok", false}}));
    CHECK(!control_reply_from_json({{"ok", true}, {"pid", "42"}}));
    CHECK(!control_reply_from_json({{"ok", true}, {"pdi", 42}}));
    CHECK(!control_reply_from_json({{"ok", false}, {"error", "x"}, {"errno", 0}}));

    CHECK(to_json(SessionExit{.code = 3}) == json{{"exit", {{"code", 3}}}});
    CHECK(to_json(SessionExit{.signal = SIGKILL}) == json{{"exit", {{"signal", 9}}}});
    CHECK(session_exit_from_json({{"exit", {{"code", 0}}}})->code == 0);
    CHECK(session_exit_from_json({{"exit", {{"signal", 15}}}})->signal == 15);
    CHECK(!session_exit_from_json({{"exit", {{"code", 256}}}}));
    CHECK(!session_exit_from_json({{"exit", {{"code", 1}, {"signal", 9}}}}));
    CHECK(!session_exit_from_json({{"exit", json::object()}}));
    CHECK(!session_exit_from_json({{"ok", true}}));
}

// protocol/creator.h: the reports on a shim's link to husk create and a
// relay's to husk exec/create.
TEST_CASE("creator link: every report, encoded (golden), decoded back, and read off a pipe", "[control][protocol]") {
    using Kind = Report::Kind;
    std::vector<Report> all = {
        {.kind = Kind::Progress, .text = "booting a VM to save as a template"},
        {.kind = Kind::Hooks},
        {.kind = Kind::Go},
        {.kind = Kind::Ok},
        {.kind = Kind::Error, .text = "start vm: boot timed out", .code = ETIMEDOUT},
        {.kind = Kind::Error, .text = "no reason that fits an errno"},
    };
    std::string text = encode_all(all, report_from_json);
    check_golden("creator-reports.jsonl", text);

    // All of them in one write: each is seen, in order, then EOF.
    int p[2];
    REQUIRE(::pipe(p) == 0);
    REQUIRE(::write(p[1], text.data(), text.size()) == ssize_t(text.size()));
    ::close(p[1]);
    ReportLink link(p[0]);
    for (const auto& r : all) {
        auto m = link.next();
        REQUIRE(m);
        REQUIRE(*m);
        CHECK(to_json(**m) == to_json(r));
    }
    auto end = link.next();
    REQUIRE(end);
    CHECK(!*end);
    ::close(p[0]);

    // An error keeps its errno; a newline in a message cannot split it.
    auto e = report_error(Error{ENOENT, "rootfs /x\ndoes not exist"});
    CHECK(e.kind == Kind::Error);
    CHECK(e.code == ENOENT);
    CHECK(e.text == "rootfs /x does not exist");
}

TEST_CASE("creator link: a report takes its kind's fields only; a starter hears ok, the error, or the death", "[control][protocol]") {
    auto why = [](const json& j) {
        auto r = report_from_json(j);
        return r ? "decoded" : r.error().message;
    };
    CHECK(why(json::array()) == "report: expected an object");
    CHECK(why({{"report", "okay"}}) == "report.report: unknown kind okay");
    CHECK(why({{"report", "ok"}, {"error", "x"}}) == "report.error: unknown key");
    CHECK(why({{"report", "progress"}}) == "report.step: missing");
    CHECK(why({{"report", "error"}, {"errno", 2}}) == "report.error: missing");
    CHECK(why({{"report", "error"}, {"error", "x"}, {"errno", "2"}}) == "report.errno: expected an integer in -2147483648..2147483647");
    CHECK(why({{"report", "error"}, {"error", "x"}, {"errno", 5000}}) == "report.errno: expected an errno in 1..4095");
    CHECK(why({{"report", "error"}, {"error", "x"}, {"errno", 0}}) == "report.errno: expected an errno in 1..4095");
    CHECK(why({{"report", "error"}, {"error", "a\nb"}}) == "report: a message is one line");
    CHECK(report_from_json({{"report", 1}}).error().code == EPROTO);

    auto await = [](const std::string& bytes) {
        int p[2];
        REQUIRE(::pipe(p) == 0);
        REQUIRE(::write(p[1], bytes.data(), bytes.size()) == ssize_t(bytes.size()));
        ::close(p[1]);
        auto r = await_report(p[0], "relay died");
        ::close(p[0]);
        return r ? Error{0, "ok"} : r.error();
    };
    CHECK(await("{\"report\":\"ok\"}\n").message == "ok");
    CHECK(await("{\"report\":\"progress\",\"step\":\"s\"}\n{\"report\":\"ok\"}\n").message == "ok");
    auto refused = await("{\"errno\":16,\"error\":\"busy\",\"report\":\"error\"}\n");
    CHECK(refused.message == "busy");
    CHECK(refused.code == EBUSY);
    CHECK(await("{\"error\":\"why\",\"report\":\"error\"}\n").code == EIO);
    auto died = await("");
    CHECK(died.message == "relay died");
    CHECK(died.code == EIO);
    CHECK(await("{\"report\":\"ok\"").message == "report: a message cut short");
    CHECK(await("ok\n").message == "report: expected an object");
    CHECK(await("{\"report\":\"hooks\"}\n").code == EPROTO);
}
