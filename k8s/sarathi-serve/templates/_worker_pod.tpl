{{- /*
One worker pod's template: a Deployment's pods, or (pipelineParallelSize > 1) each pod of a
LeaderWorkerSet group, one per pipeline stage.
*/}}
{{- define "sarathi.workerPodTemplate" }}
{{- $r := .root }}
{{- $v := .set }}
{{- $name := .name }}
{{- $config := .config }}
{{- $resources := .resources }}
{{- $vol := $r.Values.model.volume }}
{{- $cacheOnVolume := .cacheOnVolume }}
{{- $pipeline := include "sarathi.workerPipelined" $r }}
metadata:
  labels:
    {{- include "sarathi.componentLabels" (list $r "worker" $v.name) | nindent 4 }}
  annotations:
    checksum/config: {{ toJson $config | sha256sum }}
    {{- with include "sarathi.scrapeAnnotations" (list $r $r.Values.metrics.port "/metrics") | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $r.Values.worker.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "sarathi.podSpecCommon" $r | nindent 2 }}
  {{- with include "sarathi.scheduling" $r.Values.worker | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $r.Values.worker.terminationGracePeriodSeconds }}
  {{- with $r.Values.worker.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  containers:
    - name: worker
      image: {{ include "sarathi.workerImage" $r }}
      imagePullPolicy: {{ $r.Values.image.pullPolicy }}
      command: ["python", "-m", "sarathi_serve.worker"]
      {{- if $pipeline }}
      # One pod per pipeline stage (LeaderWorkerSet): the stage is the pod's index in
      # its group, and the group meets at the leader's (stage 0's) address.
      args:
        - --pipeline-stage=$(LWS_WORKER_INDEX)
        - --group-addr=$(LWS_LEADER_ADDRESS):{{ $r.Values.worker.pipelineGroupPort }}
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ $name }}
      env:
        - name: SARATHI_WORKER_WORKER_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- include "sarathi.commonEnv" $r | nindent 8 }}
        {{- with $r.Values.worker.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: health
          containerPort: {{ $r.Values.worker.port }}
          protocol: TCP
        {{- if $r.Values.metrics.enabled }}
        - name: metrics
          containerPort: {{ $r.Values.metrics.port }}
          protocol: TCP
        {{- end }}
        {{- if $pipeline }}
        - name: group
          containerPort: {{ $r.Values.worker.pipelineGroupPort }}
          protocol: TCP
        {{- end }}
      # The health server starts once the model is loaded.
      startupProbe:
        grpc:
          port: {{ $r.Values.worker.port }}
          service: ""
        periodSeconds: {{ $r.Values.worker.startupProbe.periodSeconds }}
        failureThreshold: {{ $r.Values.worker.startupProbe.failureThreshold }}
      readinessProbe:
        grpc:
          port: {{ $r.Values.worker.port }}
          service: ""
        periodSeconds: 10
        timeoutSeconds: 5
      livenessProbe:
        grpc:
          port: {{ $r.Values.worker.port }}
          service: ""
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $r.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: shm
          mountPath: /dev/shm
        {{- if $vol.enabled }}
        - name: models
          mountPath: {{ $vol.mountPath }}
          {{- if $vol.readOnly }}
          readOnly: true
          {{- end }}
        {{- end }}
        {{- if not $cacheOnVolume }}
        - name: cache
          mountPath: /var/cache/sarathi-serve
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 4Gi
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $r.Values.worker.shmSizeLimit }}
    {{- if $vol.enabled }}
    - name: models
      persistentVolumeClaim:
        claimName: {{ include "sarathi.modelClaimName" $r }}
        {{- if $vol.readOnly }}
        readOnly: true
        {{- end }}
    {{- end }}
    {{- if not $cacheOnVolume }}
    - name: cache
      emptyDir:
        sizeLimit: 8Gi
    {{- end }}
{{- end }}
