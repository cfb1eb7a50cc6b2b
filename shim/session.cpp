#include "shim/session.h"

#include "husk/log.h"

namespace husk::shim {

using nlohmann::json;

Result<void> Session::feed(const char* data, size_t n) {
    if (failed_) return tl::unexpected(*failed_);
    dec_.feed(data, n);
    for (;;) {
        auto f = dec_.next();
        Result<void> r = f ? (*f ? on_frame(**f) : Result<void>()) : tl::unexpected(f.error());
        if (!r) {
            failed_ = r.error();  // final: nothing more is taken from this guest
            return r;
        }
        if (!*f) return {};
    }
}

uint64_t Session::request(const std::string& method, const json& params, uint64_t client, uint32_t proc) {
    uint64_t id = next_req_++;
    json r = {{"id", id}, {"method", method}, {"params", params}};
    send(proto::encode(proto::Type::Request, 0, r.dump()));
    pending_[id] = Pending{client, method, proc};
    if (client) host_.busy(client);
    return id;
}

void Session::answer_pending(const std::string& method, const proto::ControlReply& r) {
    for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.method != method) {
            ++it;
            continue;
        }
        uint64_t client = it->second.client;
        it = pending_.erase(it);
        answer(client, r);
    }
}

void Session::attach(const proto::Attach& a) {
    attach_req_ = request("attach", proto::to_json(a));
    phase = Phase::Attaching;
}

void Session::attach_restored(const proto::Attach& a) {
    send(proto::encode(proto::Type::Hello, 0, json{{"version", proto::kVersion}}.dump()));
    attach(a);
}

void Session::resume_restored() {
    resume_req_ = request("resume", {{"restored", true}});
    phase = Phase::Resuming;
}

void Session::restart_boot() {
    dec_ = proto::Decoder();
    failed_.reset();
    pending_.clear();
    out.clear();
    create_req_ = attach_req_ = 0;
    channel_credit = channel_window;
    phase = Phase::Booting;
}

void Session::forget_client(uint64_t client) {
    for (auto& [id, pd] : pending_)
        if (pd.client == client) pd.client = 0;
}

void Session::answer(uint64_t client, const proto::ControlReply& r) {
    if (client) host_.reply(client, r);
}

void Session::answer(uint64_t client, bool ok, const std::string& err) { answer(client, status_reply(ok, err)); }

proto::ControlReply status_reply(bool ok, const std::string& err) { return ok ? proto::ControlReply{} : proto::refused(err); }

Result<void> Session::on_frame(const proto::Frame& f) {
    using proto::Type;
    auto proc_of = [&](uint32_t stream) -> Proc* {
        auto it = procs.find(proto::stream_process(stream));
        return it == procs.end() || !it->second.started ? nullptr : &it->second;
    };
    switch (f.type) {
        case Type::Hello: {
            json h = json::parse(f.payload, nullptr, false);
            if (phase != Phase::Booting || !h.is_object() || !h.contains("version") || !h["version"].is_number_unsigned())
                return fail("unexpected HELLO from agent", EPROTO);
            if (h["version"].get<uint32_t>() != proto::kVersion)
                return fail("agent speaks protocol " + h["version"].dump() + ", shim speaks " + std::to_string(proto::kVersion), EPROTO);
            if (h.contains("template") && !h["template"].is_boolean()) return fail("malformed HELLO from agent", EPROTO);
            send(proto::encode(Type::Hello, 0, json{{"version", proto::kVersion}}.dump()));
            if (h.value("template", false)) {
                log::debug("agent said hello (a template)");
                attach(TRY(host_.template_hello()));
                return {};
            }
            host_.booted();
            create_req_ = request("create", host_.create_params());
            phase = Phase::Creating;
            log::debug("agent said hello");
            return {};
        }
        case Type::Response: {
            json r = json::parse(f.payload, nullptr, false);
            if (!r.is_object() || !r.contains("id") || !r["id"].is_number_unsigned())
                return fail("malformed response from agent", EPROTO);
            return on_response(r);
        }
        case Type::Event: {
            json e = json::parse(f.payload, nullptr, false);
            if (!e.is_object()) return fail("malformed event from agent", EPROTO);
            return on_event(e);
        }
        case Type::Data: {
            uint32_t fd = proto::stream_fd(f.stream);
            Proc* p = proc_of(f.stream);
            if (!p || !p->out.count(fd)) return fail("data on unknown stream " + std::to_string(f.stream), EPROTO);
            auto& o = p->out[fd];
            if (o.eof) return fail("data after close on stream " + std::to_string(f.stream), EPROTO);
            // The agent may never exceed the credit we granted.
            if (o.data.size() + f.payload.size() > proto::kInitialCredit)
                return fail("agent overran its credit on stream " + std::to_string(f.stream), EPROTO);
            if (o.dead) send(proto::encode_credit(f.stream, uint32_t(f.payload.size())));
            else o.data += f.payload;
            return {};
        }
        case Type::Credit: {
            uint32_t c = TRY(proto::decode_credit(f));
            if (f.stream == proto::kChannelStream) {
                if (!channel_window || uint64_t(channel_credit) + c > channel_window)
                    return fail("agent returned channel credit it was not given", EPROTO);
                channel_credit += c;
                return {};
            }
            Proc* p = proc_of(f.stream);
            if (!p) return {};
            auto in = p->in.find(proto::stream_fd(f.stream));
            if (in == p->in.end()) return {};
            if (uint64_t(in->second.credit) + c > stdin_window) return fail("agent returned too much credit", EPROTO);
            in->second.credit += c;
            return {};
        }
        case Type::Close: {
            uint32_t fd = proto::stream_fd(f.stream);
            Proc* p = proc_of(f.stream);
            if (!p) return fail("close on unknown stream " + std::to_string(f.stream), EPROTO);
            // The guest's end of a two-way stream closes both ways: its
            // output ends, and nobody reads what we would send.
            bool known = false;
            if (auto o = p->out.find(fd); o != p->out.end()) o->second.eof = known = true;
            if (auto in = p->in.find(fd); in != p->in.end()) {
                if (!p->out.count(fd)) in->second.open = false;  // reader gone
                known = true;
            }
            if (!known) return fail("close on unknown stream " + std::to_string(f.stream), EPROTO);
            return {};
        }
        case Type::Request:
            return fail("agent sent a request", EPROTO);
    }
    return {};
}

Result<void> Session::on_response(const json& r) {
    uint64_t id = r["id"].get<uint64_t>();
    auto it = pending_.find(id);
    if (it == pending_.end()) return fail("response to unknown request " + std::to_string(id), EPROTO);
    Pending pd = it->second;
    pending_.erase(it);
    // (json::value() throws on a present field of another type: never on
    // what the guest sent.)
    if (r.contains("ok") && !r["ok"].is_boolean()) return fail("malformed response from agent", EPROTO);
    bool ok = r.contains("ok") && r["ok"].get<bool>();
    std::string err = r.contains("error") && r["error"].is_string() ? r["error"].get<std::string>() : "agent error";
    if (id == attach_req_) {
        if (phase != Phase::Attaching) return fail("unexpected answer to attach", EPROTO);
        if (!ok) return fail("attach the template's guest: " + err, EIO);
        log::debug("agent attached");
        host_.booted();
        create_req_ = request("create", host_.create_params());
        phase = Phase::Creating;
        return {};
    }
    if (id == resume_req_) {
        if (phase != Phase::Resuming) return fail("unexpected answer to resume", EPROTO);
        if (!ok) return fail("resume the checkpoint's guest: " + err, EIO);
        auto res = TRY(proto::resumed_from_json(r.contains("result") ? r["result"] : json()));
        TRY(host_.resumed(res));
        phase = Phase::Running;
        procs[0].started = true;
        log::debug("agent resumed from the checkpoint");
        host_.running();
        return {};
    }
    if (id == create_req_) {
        if (!ok) {
            host_.created(false, "create container in guest: " + err);
            return fail("create container in guest: " + err, EINVAL);
        }
        if (phase != Phase::Creating) return fail("unexpected answer to create", EPROTO);
        phase = Phase::Created;
        host_.created(true, "");
        return {};
    }
    if (pd.method == "start" && ok && pd.proc == 0 && phase == Phase::Created) {
        phase = Phase::Running;
        procs[0].started = true;
        host_.running();
    }
    host_.answered(pd.method, pd.proc, ok);
    // An exec, or a container that joins the sandbox (its init waits for
    // start): the process exists once the agent says so.
    if (pd.method == "exec" || (pd.method == "create" && pd.proc != 0)) {
        auto p = procs.find(pd.proc);
        if (!ok) {
            procs.erase(pd.proc);
            answer(pd.client, false, err);
            return {};
        }
        if (p == procs.end()) return {};
        // Its streams are live from now: a member's init killed before
        // start still closes them and reports its exit.
        p->second.started = true;
        const json* pid = r.contains("result") && r["result"].is_object() && r["result"].contains("pid")
                              ? &r["result"]["pid"] : nullptr;
        answer(pd.client, proto::ControlReply{.pid = pid && pid->is_number_integer() ? pid->get<int64_t>() : 0});
        return {};
    }
    if ((pd.method == "ps" || pd.method == "stats") && ok) {
        answer(pd.client, proto::ControlReply{.result = r.contains("result") ? r["result"] : json::array()});
        return {};
    }
    answer(pd.client, ok, err);
    return {};
}

Result<void> Session::on_event(const json& e) {
    std::string ev = e.contains("event") && e["event"].is_string() ? e["event"].get<std::string>() : "";
    if (ev == "exit") {
        if (!e.contains("process") || !e["process"].is_number_unsigned()) return fail("malformed exit event", EPROTO);
        auto it = procs.find(e["process"].get<uint32_t>());
        if (it == procs.end() || !it->second.started || it->second.exited)
            return fail("exit event for unknown process " + e["process"].dump(), EPROTO);
        auto& p = it->second;
        if (e.contains("signal") && e["signal"].is_number_integer()) p.sig = e["signal"].get<int>();
        else if (e.contains("code") && e["code"].is_number_integer()) p.code = e["code"].get<int>();
        else return fail("malformed exit event", EPROTO);
        p.exited = true;
        log::debug("process exited: " + e.dump());
        if (p.idx == 0) {
            phase = Phase::Exiting;
            exit_deadline = Clock::now() + std::chrono::seconds(5);
        }
    } else if (ev == "log") {
        if (e.contains("msg") && e["msg"].is_string()) log::debug("agent: " + e["msg"].get<std::string>());
    }
    return {};
}

}  // namespace husk::shim
