"""High availability on etcd (issue 16, shared/spec/ha.md): the etcd request shapes and client,
the fencing gate and the promotion rules. The HA task that drives them is trio work and lives
with the other tasks, in `karma.server.ha_task`; nothing here imports the server."""
