// The typed contracts that arrive as files or lines the shim and husk read
// back: state.json (written by one husk process, read by every other),
// a checkpoint image's husk-checkpoint.json (a directory the caller
// names), a VM template's seal, the config file (TOML), the agent's
// attach and resumed messages, and shim.sock's requests, replies and
// session lines (a local client's bytes, and the shim's). Each decoder either fails as a value or
// gives a struct that encodes and decodes to the same again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/checkpoint.h"
#include "husk/config.h"
#include "husk/state.h"
#include "husk/vm_template.h"
#include "protocol/control.h"
#include "protocol/messages.h"

using namespace husk;

static void same(bool ok) {
    if (!ok) std::abort();  // a round trip that changed the struct
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (auto s = state_from_json(j)) {
        auto again = state_from_json(state_to_json(*s));
        same(again && state_to_json(*again) == state_to_json(*s));
    }
    if (auto i = checkpoint::info_from_json(text)) {
        auto again = checkpoint::info_from_json(checkpoint::info_to_json(*i));
        same(again && checkpoint::info_to_json(*again) == checkpoint::info_to_json(*i));
    }
    if (auto s = templates::seal_from_json(text)) {
        auto again = templates::seal_from_json(templates::seal_to_json(*s));
        same(again && templates::seal_to_json(*again) == templates::seal_to_json(*s));
    }
    (void)parse_config(text, "fuzz.toml");
    if (auto a = proto::attach_from_json(j)) {
        auto again = proto::attach_from_json(proto::to_json(*a));
        same(again && proto::to_json(*again) == proto::to_json(*a));
    }
    if (auto r = proto::control_request_from_json(j)) {
        auto again = proto::control_request_from_json(proto::to_json(*r));
        same(again && proto::to_json(*again) == proto::to_json(*r));
    }
    if (auto r = proto::control_reply_from_json(j)) {
        auto again = proto::control_reply_from_json(proto::to_json(*r));
        same(again && proto::to_json(*again) == proto::to_json(*r));
    }
    if (auto e = proto::session_exit_from_json(j)) {
        auto again = proto::session_exit_from_json(proto::to_json(*e));
        same(again && proto::to_json(*again) == proto::to_json(*e));
    }
    if (auto r = proto::resumed_from_json(j)) {
        auto again = proto::resumed_from_json(proto::to_json(*r));
        same(again && proto::to_json(*again) == proto::to_json(*r));
    }
    return 0;
}
