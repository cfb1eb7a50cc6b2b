// The shim's agent session (shim/session.h) driven by a hostile guest: the
// input interleaves bytes from the guest with what the shim's own side
// does (start, exec, ps, drain output, a client going away), so the
// fuzzer reaches every phase. Nothing the guest sends may crash the shim
// (an uncaught exception included), make it buffer more output than it
// granted, hand more stdin credit than the window, or answer a client
// twice or one that never asked.
//
// Input: a sequence of ops, one byte each (op % 8), some with operands:
//   0-3  feed: the next byte is a length L, then L bytes from the guest
//   4    start the container (as `husk start` does, when created)
//   5    exec a process (when created or running)
//   6    drain every output buffer, returning its credit; retire execs
//   7    a `ps` from a client, or (odd operand) forget the newest client
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "shim/session.h"

using namespace husk;
using nlohmann::json;

namespace {

struct Host : shim::SessionHost {
    std::set<uint64_t> waiting;  // clients with a request out
    unsigned creates = 0;
    proto::Create create_params() override { return {}; }
    void created(bool, const std::string&) override {
        if (++creates > 1) __builtin_trap();  // one create, one answer
    }
    void running() override {}
    void busy(uint64_t client) override { waiting.insert(client); }
    void reply(uint64_t client, const proto::ControlReply& r) override {
        // Only a client that asked, once per request, with a reply that
        // husk's strict decoder takes.
        if (!waiting.erase(client) || !proto::control_reply_from_json(proto::to_json(r))) __builtin_trap();
    }
};

// stdio, and for odd indices preserved fds as the shim sets them up: 3
// both ways, 4 written by the guest, 5 read by it.
void add_proc(shim::Session& s, uint32_t idx) {
    auto& p = s.procs[idx];
    p.idx = idx;
    p.in[0].credit = proto::SendCredit(s.stdin_window);
    std::vector<uint32_t> outs = {1, 2};
    if (idx & 1) {
        outs.insert(outs.end(), {3, 4});
        p.in[3].credit = p.in[5].credit = proto::SendCredit(s.stdin_window);
    }
    for (uint32_t i : outs) p.out[i].stream = proto::stream_id(idx, i);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Host host;
    shim::Session s(host);
    add_proc(s, 0);
    uint64_t next_client = 1;
    uint32_t next_proc = 1;
    size_t requests = 0;
    for (size_t i = 0; i < size;) {
        uint8_t op = data[i++];
        bool live = s.phase == shim::Phase::Created || s.phase == shim::Phase::Running;
        switch (op % 8) {
            case 0: case 1: case 2: case 3: {
                size_t len = i < size ? data[i++] : 0;
                len = std::min(len, size - i);
                auto r = s.feed(reinterpret_cast<const char*>(data) + i, len);
                i += len;
                if (!r) return 0;  // the shim stops the VM: the session is over
                break;
            }
            case 4:
                if (s.phase == shim::Phase::Created) s.request("start", {{"process", 0}}, next_client++), ++requests;
                break;
            case 5:
                if (live) {
                    uint32_t idx = next_proc++;
                    add_proc(s, idx);
                    s.procs[idx].waiter = next_client;
                    s.request("exec", {{"process_index", idx}}, next_client++, idx);
                    ++requests;
                }
                break;
            case 6:
                for (auto it = s.procs.begin(); it != s.procs.end();) {
                    for (auto& [f, o] : it->second.out) {
                        if (!o.data.empty()) s.send(proto::encode_credit(o.stream, uint32_t(o.data.size())));
                        o.data.clear();
                    }
                    bool retire = it->first != 0 && it->second.exited;
                    it = retire ? s.procs.erase(it) : std::next(it);
                }
                break;
            case 7:
                if (i < size && (data[i++] & 1)) {
                    s.forget_client(next_client - 1);
                    host.waiting.erase(next_client - 1);
                } else if (live) {
                    s.request("ps", {{"process", 0}}, next_client++);
                    ++requests;
                }
                break;
        }
        for (const auto& [idx, p] : s.procs) {
            if (p.idx != idx) __builtin_trap();
            for (const auto& [f, in] : p.in)
                if (in.credit.left() > s.stdin_window) __builtin_trap();
            for (const auto& [f, o] : p.out)
                if (o.data.size() > proto::kInitialCredit) __builtin_trap();
            if (p.out.size() != ((idx & 1) ? 4u : 2u) || p.in.size() != ((idx & 1) ? 3u : 1u)) __builtin_trap();
        }
        if (s.in_flight() > requests + 1) __builtin_trap();  // + the create request
        s.out.clear();  // the channel took it
    }
    return 0;
}
