{{/*
The RBAC rules, written once and used by the ClusterRole (rbac.scope=cluster) or split between a
small ClusterRole and one Role per watched namespace (rbac.scope=namespaces).
Each rule says why it is there. tests/kube/test_rbac.py proves every verb needed: it runs the
operator with only these rules, then once without each verb, and sees a 403 or a stalled resource.
*/}}

{{/* Cluster-level reads: what cannot be granted by a Role. */}}
{{- define "redis-messaging-operator.rules.cluster" -}}
# -- What the framework (Kopf) needs, cluster-wide -------------------------------------------------
# Kopf lists and watches CustomResourceDefinitions to find the RedisMessaging resource and to notice
# when its CRD is installed, upgraded or removed while the operator runs.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# Kopf lists and watches Namespaces when it serves named namespaces (watchNamespaces), to start
# serving one as soon as it exists.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
# -- What the operator needs, cluster-wide (not exercised by tests/kube/test_rbac.py) -------------
# Volume expansion: a larger persistence.storage.size is applied only when the claims' StorageClass
# (named, or the default one) allows expansion.
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list"]
{{- end }}

{{/* Rules on the objects of the namespaces the operator serves. */}}
{{- define "redis-messaging-operator.rules.namespaced" -}}
# -- What the framework (Kopf) needs ---------------------------------------------------------------
# Kopf lists and watches RedisMessaging resources: their events start every reconcile pass.
- apiGroups: ["redis-messaging.dev"]
  resources: ["redismessagings"]
  verbs: ["list", "watch"]
# Kopf lists and watches the children of every resource (only those labelled
# app.kubernetes.io/name=redis-messaging: the label selector is applied by the API server) into
# in-memory indices: a pass reads them there, and a change of a pod, a StatefulSet or a claim wakes its
# owner's pass at once. No reconcile pass starts before every index is filled.
- apiGroups: [""]
  resources: ["pods", "configmaps", "secrets", "services", "persistentvolumeclaims"]
  verbs: ["list", "watch"]
# ... the same for the StatefulSets,
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["list", "watch"]
# ... the PodDisruptionBudgets,
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch"]
# ... and the NetworkPolicy (spec.networkPolicy).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch"]
# Consumer autoscaling: HorizontalPodAutoscalers are indexed by namespace; one aimed at a workload the
# operator scales is a conflict, and the operator refuses to fight it.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch"]
# -- What the operator needs -----------------------------------------------------------------------
# Status: conditions, observedGeneration, the master and the connection details.
- apiGroups: ["redis-messaging.dev"]
  resources: ["redismessagings/status"]
  verbs: ["patch"]
# Every child carries an ownerReference with blockOwnerDeletion (deleting a resource removes its
# children); clusters with the OwnerReferencesPermissionEnforcement admission plugin (OpenShift)
# allow setting it only to those who may update the owner's finalizers.
- apiGroups: ["redis-messaging.dev"]
  resources: ["redismessagings/finalizers"]
  verbs: ["update"]
# Secrets the user names (spec.auth.secretName, spec.tls.secretName, the ACL users' Secrets) carry no
# label of ours: each is read by name, at most once per safety-net period.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Children in the core group: the ConfigMap (redis.conf, sentinel.conf), the Secrets (<name>-auth,
# <name>-connection) and the Services, compared with their indexed copies and written by server-side
# apply (a PATCH, which needs create when it creates the object); a generated password is created once.
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services"]
  verbs: ["create", "patch"]
# Children: the redis and Sentinel StatefulSets (or the shards'), applied like the objects above.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["create", "patch"]
# Children: the PodDisruptionBudgets of redis and Sentinel, applied like the objects above.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
# Pods: the role label of a resource's pods (what the master Service selects) follows the master
# chosen by Sentinel; consumer pods (not labelled by the operator) are listed to find the consumers
# whose pod is gone, and get a pod-deletion-cost annotation before a scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
# Events for every action of the operator (and for the handler failures Kopf reports).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Consumer autoscaling: reads and sets the replicas of the consumers of a stream group through the
# scale subresource of their Deployment or StatefulSet. (Consumer pods are listed, and annotated with
# a pod-deletion-cost before a scale-down, through the pods rule above.)
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["get", "patch"]
# Consumer autoscaling: refuses to fight a KEDA ScaledObject that scales the same target. Without
# KEDA the list is a 404, which the operator expects; without this rule it is a 403 even then.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list"]
# -- Capabilities whose grants tests/kube/test_rbac.py does not exercise ----------------------------
# Volume expansion: grows the PersistentVolumeClaims of the redis pods in place.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["patch"]
# Volume expansion re-creates a StatefulSet (its volumeClaimTemplates are immutable) while orphaning
# its pods; cluster scale-in deletes the StatefulSet of a shard whose slots were moved away.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["delete"]
# Ordered rolling updates replace the redis and Sentinel pods one at a time (OnDelete StatefulSets).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete"]
# Cluster scale-in deletes the PodDisruptionBudget of a removed shard.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["delete"]
# Monitoring turned off: the exporter's metrics Service and the dashboard ConfigMap are deleted.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["delete"]
# Monitoring (spec.monitoring): ServiceMonitor, PodMonitor and PrometheusRule, when the Prometheus
# Operator's CRDs are installed; listed by instance label, applied, deleted when no longer asked for.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "podmonitors", "prometheusrules"]
  verbs: ["list", "create", "patch", "delete"]
# spec.networkPolicy: the resource's NetworkPolicy, applied like the children above, and deleted
# when the spec turns it off.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
# TLS from an issuer (spec.tls.issuerRef): the cert-manager Certificate that fills the TLS Secret,
# when cert-manager's CRDs are installed; listed by instance label and applied.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["list", "create", "patch"]
{{- end }}
