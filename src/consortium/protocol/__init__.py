"""Sans-I/O protocol state machines: round schedule, rounds with failover, cosigning, SecAgg+."""
