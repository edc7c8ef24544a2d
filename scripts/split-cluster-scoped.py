#!/usr/bin/env python3
"""Splits rendered manifests into namespaced objects and cluster-scoped ones (Namespace,
StorageClass, …), for a deploy role that may only change its own namespace.
usage: split-cluster-scoped.py ALL NAMESPACED CLUSTER"""
import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "CustomResourceDefinition", "PersistentVolume"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
namespaced = [d for d in docs if d["kind"] not in CLUSTER_SCOPED]
cluster = [d for d in docs if d["kind"] in CLUSTER_SCOPED]
yaml.safe_dump_all(namespaced, open(sys.argv[2], "w"), sort_keys=False)
yaml.safe_dump_all(cluster, open(sys.argv[3], "w"), sort_keys=False)
print(f"{len(namespaced)} namespaced objects, {len(cluster)} cluster-scoped ({', '.join(sorted({d['kind'] for d in cluster}))})")
