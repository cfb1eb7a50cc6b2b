// The shim's side of the agent protocol, with no I/O: bytes from the guest
// in (feed), frames for the guest out (out), and the state they move: the
// requests in flight, the processes and their buffered output. The guest
// is untrusted: every frame is checked against what the shim asked for and
// granted, and anything else ends the session with an error (the shim then
// stops the VM). Kept apart from shim.cpp so that the fuzzer
// (tests/fuzz/fuzz_session.cpp) and the unit tests can drive it.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "protocol/control.h"
#include "protocol/messages.h"
#include "protocol/protocol.h"
#include "sys/sys.h"

namespace husk::shim {

using Clock = std::chrono::steady_clock;

// Milliseconds since `t`.
inline long long ms_since(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// The answer to a client's request that carries no result: ok, or
// refused with why.
proto::ControlReply status_reply(bool ok, const std::string& err = {});

// Bytes waiting for a destination fd, with the stream they came from so
// credit can be returned as they drain.
struct OutBuf {
    int fd = -1;
    sys::Fd own;  // set when the shim owns `fd` (exec stdio, a pty)
    uint32_t stream = 0;
    std::string data;
    bool eof = false;   // CLOSE received: close fd once drained
    bool dead = false;  // destination gone (EPIPE): drop further data
    // How much one write may take: a blocking pipe or socket that polled
    // writable takes PIPE_BUF without blocking; more only where a write
    // cannot block (`nb`, `sock`).
    size_t chunk = 4096;
    sys::Fd nb;         // a pipe destination reopened O_NONBLOCK (its own file description)
    bool sock = false;  // a socket destination: send(MSG_DONTWAIT)
    uint32_t owed = 0;  // written, credit not yet returned (returned in batches)
};

// Credit goes back to the agent once this much has drained (or the buffer
// is empty): one CREDIT frame per DATA frame would cost the guest a wakeup
// for every few KiB.
constexpr uint32_t kCreditBatch = proto::kInitialCredit / 4;

// A host fd whose bytes go to a stream of the guest (stdin, or a
// preserved fd the process reads), within the credit the agent returns.
struct InBuf {
    int fd = -1;
    sys::Fd own;  // set when the shim owns `fd`
    bool open = true;  // until EOF on fd, or the guest closed its end
    proto::SendCredit credit{};
};

// One process in the guest: the container's init (index 0) or an exec.
// Its streams by the fd of the process they are: in[0] stdin, out[1]
// stdout, out[2] stderr, and a preserved fd 3.. in `in`, `out` or both.
struct Proc {
    uint32_t idx = 0;
    std::string container;  // a container that joined the sandbox ("": the sandbox's own)
    bool started = false;
    bool tty = false;
    std::map<uint32_t, InBuf> in;
    std::map<uint32_t, OutBuf> out;
    bool exited = false;
    std::optional<int> code, sig;
    uint64_t waiter = 0;  // exec session told of the exit (0: none)

    bool drained() const {
        for (const auto& [fd, o] : out)
            if (!o.data.empty() || !(o.eof || o.dead)) return false;
        return true;
    }
};

struct Pending {
    uint64_t client = 0;  // 0: internal
    std::string method;
    uint32_t proc = 0;
};

// Attaching: a template's guest (its maker's, or a restored clone's) is
// told it is this container's (proto::Attach) before create. Resuming: a
// VM restored from a checkpoint, its container running already, is asked
// what of it is still open (proto::Resumed); then Running.
enum class Phase { Booting, Attaching, Resuming, Creating, Created, Running, Exiting };

// What the session needs from the shim around it.
class SessionHost {
public:
    virtual ~SessionHost() = default;
    // HELLO arrived: the guest is up (a template's: once attached).
    virtual void booted() {}
    // A template's HELLO arrived (the guest booted as one; a guest that
    // was not asked to is refused): save it if we make the template, plug
    // in what it could not hold, and say what to attach it with.
    virtual Result<proto::Attach> template_hello() { return fail("the agent booted as a template unasked", EPROTO); }
    // Then: the create request's parameters.
    virtual proto::Create create_params() = 0;
    // The create request's answer (the session is Created when `ok`).
    virtual void created(bool ok, const std::string& error) = 0;
    // The container's process started (the session is Running).
    virtual void running() = 0;
    // A checkpoint's guest is resumed (restore): take over its processes'
    // streams as the agent describes them. An error ends the session.
    virtual Result<void> resumed(const proto::Resumed& /*r*/) { return fail("no checkpoint was restored", EPROTO); }
    // A client's request was answered (`client` is never 0).
    virtual void reply(uint64_t client, const proto::ControlReply& r) = 0;
    // A request of the client's went to the agent.
    virtual void busy(uint64_t client) = 0;
    // A request about process `proc` was answered (before the client hears).
    virtual void answered(const std::string& /*method*/, uint32_t /*proc*/, bool /*ok*/) {}
};

class Session {
public:
    explicit Session(SessionHost& host) : host_(host) {}

    // Bytes from the guest. An error is the guest's fault and final: every
    // later feed returns it again.
    Result<void> feed(const char* data, size_t n);
    // A request to the agent; its answer goes to `client` (0: nobody).
    uint64_t request(const std::string& method, const nlohmann::json& params, uint64_t client = 0, uint32_t proc = 0);
    void send(const std::string& frame) { out += frame; }
    size_t in_flight() const { return pending_.size(); }
    // Answer every request of `method` in flight with `r`, now, and forget
    // them (the agent's answers would then be to unknown requests: the
    // caller is done with the guest).
    void answer_pending(const std::string& method, const proto::ControlReply& r);
    // The client is gone: answers to its requests go nowhere.
    void forget_client(uint64_t client);
    // A restored template's agent is past its HELLO: greet it and attach.
    void attach_restored(const proto::Attach& a);
    // A VM restored from a checkpoint: its agent, quiesced when it was
    // saved, is told to go on with us.
    void resume_restored();
    // A guest that failed before it was attached is replaced by a new boot
    // (a template that did not restore): forget everything of its channel.
    void restart_boot();

    Phase phase = Phase::Booting;
    std::map<uint32_t, Proc> procs;
    std::string out;  // frames for the agent, not yet written
    uint32_t stdin_window = proto::kInitialCredit;  // stdin bytes in flight per process
    // Capabilities::channel_window: bytes of `out` the channel may take now,
    // up to the window; none: unbounded.
    std::optional<proto::SendCredit> channel;
    // How much of `out` may be written now.
    size_t writable() const { return channel ? std::min<size_t>(out.size(), channel->left()) : out.size(); }
    Clock::time_point exit_deadline;                  // init exited: execs get this long to report

private:
    Result<void> on_frame(const proto::Frame& f);
    Result<void> on_response(const proto::Response& r);
    Result<void> on_event(const proto::ExitEvent& e);
    void answer(uint64_t client, const proto::ControlReply& r);
    void answer(uint64_t client, bool ok, const std::string& err);

    SessionHost& host_;
    proto::Decoder dec_;
    std::optional<Error> failed_;
    uint64_t next_req_ = 1;
    uint64_t create_req_ = 0, attach_req_ = 0, resume_req_ = 0;
    void attach(const proto::Attach& a);
    std::map<uint64_t, Pending> pending_;
};

}  // namespace husk::shim
