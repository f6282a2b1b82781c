{{/* Building blocks shared by the core CAPI manager and the providers. */}}

{{- define "vpnctl.capi.selectorLabels" -}}
app.kubernetes.io/name: vpnctl
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A controller-runtime manager's leader election: Leases (and the Events it records
about them) in its own namespace. dict: root, name, namespace */}}
{{- define "vpnctl.capi.leaderElectionRole" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}-leader-election
  namespace: {{ .namespace }}
  labels:
    {{- include "vpnctl.capi.labels" .root | nindent 4 }}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, list, watch, create, update, patch, delete]
  - apiGroups: [""]
    resources: [events]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}-leader-election
  namespace: {{ .namespace }}
  labels:
    {{- include "vpnctl.capi.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}-leader-election
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ .namespace }}
{{- end -}}

{{/* A CAPI controller manager Deployment (core or provider), the way CAPI's own
images expect to run: /manager, webhook server on 9443 with its certificate in
/tmp/k8s-webhook-server/serving-certs, health on 9440, diagnostics on 8443.
dict: root name component namespace serviceAccount image pullPolicy replicas args
extraEnv certSecretName resources nodeSelector tolerations [command] */}}
{{- define "vpnctl.capi.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ .namespace }}
  labels:
    {{- include "vpnctl.capi.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: {{ .replicas | default 1 }}
  selector:
    matchLabels:
      {{- include "vpnctl.capi.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "vpnctl.capi.labels" .root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      {{- with .root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      terminationGracePeriodSeconds: 10
      securityContext:
        runAsNonRoot: true
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: manager
          image: {{ .image }}
          imagePullPolicy: {{ .pullPolicy | default "IfNotPresent" }}
          command:
            {{- toYaml (.command | default (list "/manager")) | nindent 12 }}
          {{- with .args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          env:
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_UID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.uid
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: webhook-server
              containerPort: 9443
              protocol: TCP
            - name: healthz
              containerPort: 9440
              protocol: TCP
            - name: metrics
              containerPort: 8443
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /readyz
              port: healthz
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz
          securityContext:
            allowPrivilegeEscalation: false
            privileged: false
            readOnlyRootFilesystem: true
            runAsUser: 65532
            runAsGroup: 65532
            capabilities:
              drop: [ALL]
          terminationMessagePolicy: FallbackToLogsOnError
          {{- with .resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- if .certSecretName }}
          volumeMounts:
            - name: cert
              mountPath: /tmp/k8s-webhook-server/serving-certs
              readOnly: true
          {{- end }}
      {{- if .certSecretName }}
      volumes:
        - name: cert
          secret:
            secretName: {{ .certSecretName }}
      {{- end }}
      {{- with .nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          effect: NoSchedule
        {{- with .tolerations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}
