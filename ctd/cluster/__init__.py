"""Cluster mode: nodes on etcd (docs/cluster.md). Loaded only when ctd.toml names etcd_endpoints,
except api.py and schema.py (the /1.0/cluster routes answer on a standalone ctd too)."""
