{{/*
Names, labels and paths match vpnctl/reconcile/{names,tenant_objects,agentdocs}.py
exactly (tests/unit/test_charts.py compares them), so an agent installed with this
chart and one installed by the controller are the same objects.
*/}}

{{- define "agent.name" -}}vpnctl-node-agent{{- end -}}

{{- define "agent.clusterName" -}}
{{- required "clusterName is required: the name of the CAPI Cluster this tenant cluster is (the Tunnel's spec.clusterName); set it with --set clusterName=<name>" .Values.clusterName -}}
{{- end -}}

{{- define "agent.selectorLabels" -}}
app.kubernetes.io/component: node-agent
vpnctl.io/cluster: {{ include "agent.clusterName" . | quote }}
{{- end -}}

{{- define "agent.labels" -}}
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: vpnctl
app.kubernetes.io/name: vpnctl
vpnctl.io/cluster: {{ include "agent.clusterName" . | quote }}
{{- end -}}

{{- define "agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
node.json, as compact JSON with sorted keys: the same document as agentdocs.node_role_config.
Its sha256 is the pod template's vpnctl.io/config-hash, computed the way
vpnctl.reconcile.diff.digest does, so a config change rolls the pods.
*/}}
{{- define "agent.nodeConfig" -}}
{{- if not .Values.server.remotes -}}
{{- fail "server.remotes is required: list where nodes reach the tenant's openvpn server (host and port of the <cluster>-vpn Service's external address)" -}}
{{- end -}}
{{- $remotes := list -}}
{{- range .Values.server.remotes -}}
{{- $remotes = append $remotes (list .host (int .port)) -}}
{{- end -}}
{{- $openvpn := dict
      "proto" .Values.server.protocol
      "remotes" $remotes
      "ca" "/etc/vpnctl/ca.crt"
      "cert" "/var/lib/vpnctl/node.crt"
      "key" "/var/lib/vpnctl/node.key"
      "tls_crypt_v2" "/var/lib/vpnctl/tls-crypt-v2-client.key"
      "management" "/run/vpnctl/client.sock"
      "reneg_sec" (int .Values.server.renegotiateSeconds) -}}
{{- $apiServer := required "apiServer is required: the tenant apiserver's URL as the nodes reach it, the server of the cluster's <cluster>-kubeconfig (CAPI's controlPlaneEndpoint), like https://203.0.113.10:6443; each node asks it for its tunnel certificate" .Values.apiServer -}}
{{- if not (regexMatch "^https://[^/]+/?$" $apiServer) -}}
{{- fail (printf "apiServer %q is not an https URL without a path, like https://203.0.113.10:6443" $apiServer) -}}
{{- end -}}
{{- $client := printf "%s/kubelet-client-current.pem" (trimSuffix "/" .Values.kubeletPkiDir) -}}
{{- $bootstrap := dict
      "server" (trimSuffix "/" $apiServer)
      "ca" "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
      "client_cert" $client
      "client_key" $client -}}
{{- $doc := dict
      "bootstrap" $bootstrap
      "health_address" (printf "0.0.0.0:%d" (int .Values.healthPort))
      "state_dir" "/var/lib/vpnctl"
      "openvpn" $openvpn
      "probe" (dict "target" (printf "%s:7947" .Values.server.tunnelIP)) -}}
{{- toJson $doc -}}
{{- end -}}
