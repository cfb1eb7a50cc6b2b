// The typed contracts that arrive as files or lines the shim and husk read
// back: state.json (written by one husk process, read by every other),
// a checkpoint image's husk-checkpoint.json (a directory the caller
// names), a VM template's seal, the config file (TOML), the agent's
// attach and resumed messages, shim.sock's requests, replies and
// session lines (a local client's bytes, and the shim's), and the reports
// on a shim's or a relay's link to its starter (protocol/creator.h).
// Each decoder either fails as a value or gives a struct that encodes and
// decodes to the same again.
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
#include "protocol/creator.h"
#include "protocol/messages.h"

using namespace husk;

// What a decoder took encodes, and decodes again to the same; else abort
// (a round trip that changed the struct).
template <typename Input, typename Decode, typename Encode>
static void round_trips(const Input& in, Decode decode, Encode encode) {
    auto first = decode(in);
    if (!first) return;
    auto again = decode(encode(*first));
    if (!again || encode(*again) != encode(*first)) std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto j = nlohmann::json::parse(text, nullptr, false);
    auto to_json = [](const auto& v) { return proto::to_json(v); };
    round_trips(j, state_from_json, state_to_json);
    round_trips(text, checkpoint::info_from_json, checkpoint::info_to_json);
    round_trips(text, templates::seal_from_json, templates::seal_to_json);
    (void)parse_config(text, "fuzz.toml");
    round_trips(j, proto::attach_from_json, to_json);
    round_trips(j, proto::control_request_from_json, to_json);
    round_trips(j, proto::control_reply_from_json, to_json);
    round_trips(j, proto::session_exit_from_json, to_json);
    round_trips(j, proto::resumed_from_json, to_json);
    round_trips(j, proto::report_from_json, to_json);
    return 0;
}
