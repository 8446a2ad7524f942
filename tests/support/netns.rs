//! Network namespaces for blackhole tests (root only). Filled in by the blackhole tests.
