#include "hypervisors/firecracker/firecracker.h"

#include "husk/vm_template.h"

namespace husk::firecracker {

using nlohmann::json;

std::string binary_path() { return find_vmm_binary("HUSK_FIRECRACKER", "firecracker"); }

std::vector<ApiCall> translate(const VmConfig& cfg) {
    std::vector<ApiCall> c;
    // The serial console is ttyS0 (Firecracker's stdout); there is no PCI
    // bus, devices are virtio-mmio (Firecracker adds virtio_mmio.device=
    // for each to the command line).
    proto::BootParams b = cfg.boot;
    b.vmm = "firecracker";
    if (cfg.channel.kind != ChannelKind::None) b.channel = "vsock";
    std::string cmdline = cfg.cmdline + " console=ttyS0 pci=off" + proto::to_cmdline(b);
    c.push_back({"PUT", "/machine-config", {{"vcpu_count", cfg.vcpus}, {"mem_size_mib", cfg.memory_mib}, {"smt", false}}});
    json boot = {{"kernel_image_path", cfg.kernel}, {"boot_args", cmdline}};
    if (!cfg.initrd.empty()) boot["initrd_path"] = cfg.initrd;
    c.push_back({"PUT", "/boot-source", boot});
    for (size_t i = 0; i < cfg.disks.size(); ++i) {
        std::string id = "disk" + std::to_string(i);
        c.push_back({"PUT", "/drives/" + id,
                     {{"drive_id", id},
                      {"path_on_host", cfg.template_shape ? kJailPlaceholderDisk : cfg.disks[i].path},
                      {"is_root_device", false},
                      {"is_read_only", cfg.disks[i].readonly}}});
    }
    // Firecracker opens each tap by name; the guest sets the MTU itself.
    for (size_t i = 0; i < cfg.nics.size(); ++i) {
        std::string id = "net" + std::to_string(i);
        c.push_back({"PUT", "/network-interfaces/" + id,
                     {{"iface_id", id},
                      {"host_dev_name", cfg.nics[i].tap},
                      {"guest_mac", cfg.template_shape ? templates::mac(i) : cfg.nics[i].mac}}});
    }
    if (cfg.channel.kind != ChannelKind::None)
        c.push_back({"PUT", "/vsock", {{"guest_cid", cfg.channel.vsock_cid}, {"uds_path", cfg.channel.socket_path}}});
    if (cfg.free_page_reporting)
        c.push_back({"PUT", "/balloon", {{"amount_mib", 0}, {"deflate_on_oom", true}, {"free_page_reporting", true}}});
    c.push_back({"PUT", "/actions", {{"action_type", "InstanceStart"}}});
    return c;
}

ApiTemplateCalls template_calls(const VmConfig& cfg) {
    ApiTemplateCalls t;
    std::string dir = kJailSnapshotDir;
    // A snapshot is of a paused VM. The memory file is mapped, not read:
    // it may go once the load returns (the mapping keeps it).
    t.save = {{"PATCH", "/vm", {{"state", "Paused"}}},
              {"PUT", "/snapshot/create",
               {{"snapshot_type", "Full"}, {"snapshot_path", dir + "/vmstate"}, {"mem_file_path", dir + "/memory"}}}};
    t.restore = {{"PUT", "/snapshot/load",
                  {{"snapshot_path", dir + "/vmstate"},
                   {"mem_backend", {{"backend_type", "File"}, {"backend_path", dir + "/memory"}}},
                   {"resume_vm", true}}}};
    // The drive leaves its placeholder for the container's disk; the
    // guest is told the new size (a config-change interrupt).
    for (size_t i = 0; i < cfg.disks.size(); ++i) {
        std::string id = "disk" + std::to_string(i);
        t.disks.push_back({"PATCH", "/drives/" + id, {{"drive_id", id}, {"path_on_host", cfg.disks[i].path}}});
    }
    return t;
}

std::vector<std::string> command(const std::string& binary, const std::string& log_path) {
    // --log-path: Firecracker's own messages go to the VMM log, so its
    // stdout carries nothing but the guest console.
    return {binary, "--api-sock", kApiSocket, "--id", "husk", "--log-path", log_path, "--level", "Warning"};
}

Capabilities FirecrackerHypervisor::capabilities() const {
    Capabilities c = ApiHypervisor::capabilities();
    // /snapshot/create and /snapshot/load; no hot-plug at all, so a
    // template holds its NICs (taps by name, the template's MACs) and a
    // placeholder for the rootfs disk, which PATCH /drives replaces.
    c.templates = true;
    c.template_nics = 8;
    c.template_holds_nics = true;
    c.template_disks = true;
    return c;
}

std::string FirecrackerHypervisor::template_shape(const VmConfig& cfg) const {
    return api_template_shape("firecracker template 1", cfg, binary_path(), translate);
}

std::string FirecrackerHypervisor::vm_shape(const VmConfig& cfg) const {
    return api_vm_shape("firecracker vm 1", cfg, binary_path(), translate);
}

std::string FirecrackerHypervisor::unavailable() const {
    return kvm_vmm_unavailable(binary_path(), "install Firecracker's release binary or set HUSK_FIRECRACKER");
}

ApiVmmLaunch FirecrackerHypervisor::plan(const VmConfig& cfg, const std::string& log_path) const {
    ApiVmmLaunch l;
    l.name = "firecracker";
    l.argv = command(binary_path(), log_path);
    l.socket = kApiSocket;
    l.calls = translate(cfg);
    l.pause = {"PATCH", "/vm", {{"state", "Paused"}}};
    l.resume = {"PATCH", "/vm", {{"state", "Resumed"}}};
    l.tmpl = template_calls(cfg);  // a template's save and restore, and a checkpoint's
    return l;
}

}  // namespace husk::firecracker
