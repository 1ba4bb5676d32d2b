"""High availability on etcd (issue 16, shared/spec/ha.md): the etcd client, the fencing gate,
the promotion rules (all sans-I/O) and the HA task (`karma.ha.loop`)."""
