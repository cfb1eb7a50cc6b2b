#include "hypervisors/cloud-hypervisor/cloud_hypervisor.h"

namespace husk::cloud_hypervisor {

using nlohmann::json;

std::string binary_path() { return find_vmm_binary("HUSK_CLOUD_HYPERVISOR", "cloud-hypervisor"); }

std::vector<ApiCall> translate(const VmConfig& cfg) {
    std::string cmdline = cfg.cmdline + " console=ttyS0 husk.vmm=cloud-hypervisor";
    if (cfg.channel.kind != ChannelKind::None) cmdline += " husk.channel=vsock";
    json payload = {{"kernel", cfg.kernel}, {"cmdline", cmdline}};
    if (!cfg.initrd.empty()) payload["initramfs"] = cfg.initrd;
    json vm = {
        {"cpus", {{"boot_vcpus", cfg.vcpus}, {"max_vcpus", cfg.vcpus}}},
        // A virtio-fs daemon maps the guest's memory: then it is shared.
        {"memory", {{"size", cfg.memory_mib << 20}, {"shared", !cfg.shares.empty()}}},
        {"payload", payload},
        // The 8250 at ttyS0 writes to our stdout; no virtio-console.
        {"serial", {{"mode", "Tty"}}},
        {"console", {{"mode", "Off"}}},
    };
    if (!cfg.disks.empty()) {
        json disks = json::array();
        for (size_t i = 0; i < cfg.disks.size(); ++i)
            disks.push_back({{"id", "disk" + std::to_string(i)}, {"path", cfg.disks[i].path}, {"readonly", cfg.disks[i].readonly}});
        vm["disks"] = disks;
    }
    if (!cfg.shares.empty()) {
        // Cloud Hypervisor has no 9p: every share is virtiofsd's, by socket.
        json fs = json::array();
        for (size_t i = 0; i < cfg.shares.size(); ++i)
            fs.push_back({{"id", "fs" + std::to_string(i)}, {"tag", cfg.shares[i].tag}, {"socket", cfg.shares[i].socket_path},
                          {"num_queues", 1}, {"queue_size", 1024}});
        vm["fs"] = fs;
    }
    if (!cfg.nics.empty()) {
        // Opened by name; no ip/mask, or Cloud Hypervisor would address
        // the host's side of the tap.
        json nets = json::array();
        for (size_t i = 0; i < cfg.nics.size(); ++i)
            nets.push_back({{"id", "net" + std::to_string(i)}, {"tap", cfg.nics[i].tap}, {"mac", cfg.nics[i].mac},
                            {"mtu", cfg.nics[i].mtu}});
        vm["net"] = nets;
    }
    if (cfg.channel.kind != ChannelKind::None)
        vm["vsock"] = {{"cid", cfg.channel.vsock_cid}, {"socket", cfg.channel.socket_path}};
    if (cfg.free_page_reporting) vm["balloon"] = {{"size", 0}, {"deflate_on_oom", true}, {"free_page_reporting", true}};
    return {{"PUT", "/api/v1/vm.create", vm}, {"PUT", "/api/v1/vm.boot", nullptr}};
}

std::vector<std::string> command(const std::string& binary) {
    return {binary, "--api-socket", std::string("path=") + kApiSocket};
}

Capabilities CloudHypervisor::capabilities() const {
    Capabilities c = ApiHypervisor::capabilities();
    c.shares = c.virtio_fs = true;
    c.nine_p = false;
    return c;
}

std::string CloudHypervisor::unavailable() const {
    return kvm_vmm_unavailable(binary_path(), "install Cloud Hypervisor's release binary or set HUSK_CLOUD_HYPERVISOR");
}

ApiVmmLaunch CloudHypervisor::plan(const VmConfig& cfg, const std::string& /*log_path*/) const {
    ApiVmmLaunch l;
    l.name = "cloud-hypervisor";
    l.argv = command(binary_path());
    l.socket = kApiSocket;
    l.calls = translate(cfg);
    l.pause = {"PUT", "/api/v1/vm.pause", nullptr};
    l.resume = {"PUT", "/api/v1/vm.resume", nullptr};
    return l;
}

}  // namespace husk::cloud_hypervisor
