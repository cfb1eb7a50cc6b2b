// What the guest sends the shim: any byte sequence, cut anywhere. The
// decoder must bound memory, never crash, and stay dead after an error;
// payloads (HELLO, RESPONSE, EVENT, REQUEST JSON; CREDIT) must decode to
// a typed message or fail as values, and round-trip when they decode.
// The first byte picks the chunk size.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/network.h"
#include "protocol/agent.h"
#include "protocol/messages.h"
#include "protocol/protocol.h"

using namespace husk;

namespace {

// A typed message's decoder: a value or an error, and what it accepts
// encodes to JSON that decodes to the same value.
template <class T>
void round_trip(const nlohmann::json& j) {
    auto v = proto::decode<T>(j, "m");
    if (!v) return;
    auto again = proto::decode<T>(proto::to_json(*v), "m");
    if (!again || !(*again == *v)) __builtin_trap();
}

// Every typed message of protocol/agent.h, both directions: a REQUEST's
// params are the agent's to decode, the rest the shim's.
void agent_messages(const nlohmann::json& j) {
    round_trip<proto::Hello>(j);
    round_trip<proto::Response>(j);
    round_trip<proto::ExitEvent>(j);
    round_trip<proto::Spawned>(j);
    round_trip<proto::Request>(j);
    round_trip<proto::PsProcess>(j);
    if (j.is_array())
        for (const auto& x : j) round_trip<proto::PsProcess>(x);
    const nlohmann::json& p = j.is_object() && j.contains("params") ? j["params"] : j;
    round_trip<proto::Create>(p);
    round_trip<proto::Exec>(p);
    round_trip<proto::Start>(p);
    round_trip<proto::Kill>(p);
    round_trip<proto::Resize>(p);
    round_trip<proto::Target>(p);
    round_trip<proto::Resume>(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    size_t chunk = size_t(data[0] % 64) + 1;
    ++data, --size;
    proto::Decoder dec;
    bool dead = false;
    for (size_t off = 0; off < size && !dead; off += chunk) {
        dec.feed(reinterpret_cast<const char*>(data) + off, std::min(chunk, size - off));
        for (;;) {
            auto f = dec.next();
            if (!f) {
                dead = true;
                if (dec.next()) __builtin_trap();  // errors are sticky
                break;
            }
            if (!*f) break;
            const auto& fr = **f;
            if (fr.payload.size() > proto::kMaxPayload) __builtin_trap();
            switch (fr.type) {
                case proto::Type::Credit:
                    (void)proto::decode_credit(fr);
                    break;
                case proto::Type::Hello:
                case proto::Type::Request:
                case proto::Type::Response:
                case proto::Type::Event: {
                    auto j = nlohmann::json::parse(fr.payload, nullptr, false);
                    if (j.is_object() && j.contains("network")) (void)interfaces_from_json(j["network"]);
                    agent_messages(j);
                    // The attach decoder (the agent's side of a typed
                    // message): a value or an error, and what it accepts
                    // encodes back to what it decodes from.
                    if (auto a = proto::attach_from_json(j.is_object() && j.contains("params") ? j["params"] : j)) {
                        auto again = proto::attach_from_json(proto::to_json(*a));
                        if (!again || again->entropy != a->entropy || again->vcpus != a->vcpus) __builtin_trap();
                    }
                    break;
                }
                default:
                    break;
            }
        }
        if (dec.buffered() > proto::kHeaderSize + proto::kMaxPayload + chunk) __builtin_trap();
    }
    return 0;
}
