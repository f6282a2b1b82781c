"""Real tenant nodes for the lab: containerd, kubelet and kube-proxy in a network
namespace (``tenant_node``), what they need from the host (``node_host``), and the
local pause and workload images (``node_images``)."""
